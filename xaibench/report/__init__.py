"""Reports of a run folder, rebuilt from its results database at any time.

    from xaibench.report import build_report
    paths = build_report("reports/default")   # results.csv/.parquet, summary.csv, report.md/.html, figures/

Families add figures with :func:`xaibench.report.figures.register_figure`.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import StoreError
from ..progress import progress_bar
from ..stats import paired_vs_best_baseline
from ..store import RunData, RunLock, Store, load_run
from ..util import atomic_write_bytes, atomic_write_text
from .figures import list_figures, run_figures
from .findings import write_findings
from .html import render_html
from .markdown import render_markdown
from .parts import Report
from .statistics import cross_method_statistics
from .volume_figures import voxel_planes  # noqa: F401  (registers the figure of voxel maps' three planes)


def _steps(quiet: bool, total: int) -> Any:
    return progress_bar(total, "report") if not quiet else contextlib.nullcontext(lambda n=1: None)


def n_steps() -> int:
    """Steps of a report build shown by its progress bar: tables, statistics, each figure, two renderers."""
    return 4 + len(list_figures())


def _write_table(df: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write a table atomically; never replace a non-empty file with an empty table."""
    if df.empty and path.is_file() and path.stat().st_size > 0 and fmt == "csv" and len(path.read_text().splitlines()) > 1:
        raise StoreError(f"refusing to replace the non-empty {path} with an empty table; the database holds no rows "
                         "(was it replaced?)")
    buf = io.BytesIO()
    if fmt == "csv":
        df.to_csv(buf, index=False)
    else:
        df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def build_report(run: str | Path | RunData, *, quiet: bool = True, lock: bool = False) -> dict[str, Path]:
    """(Re)build every report file of a run folder from its database, each written atomically.

    Args:
        run: the run folder, or its already loaded :class:`RunData`.
        quiet: no progress display.
        lock: take the run folder's lock (the CLI's ``report`` does; the runner already holds it).

    Returns:
        name -> path for ``results.csv``, ``results.parquet``, ``summary.csv``, ``skipped.csv``,
        ``report.md``, ``report.html``.

    Raises:
        StoreError: no valid results database (nothing is written then).
        RunLockedError: with ``lock``, another process is writing the run.
    """
    run_dir = run.run_dir if isinstance(run, RunData) else Path(run)
    with (RunLock(run_dir) if lock else contextlib.nullcontext()):
        data = run if isinstance(run, RunData) else load_run(run_dir)
        d = data.run_dir
        paths = {name: d / name for name in ("results.csv", "results.parquet", "summary.csv", "skipped.csv",
                                             "report.md", "report.html")}
        with _steps(quiet, n_steps()) as step:
            _write_table(data.results, paths["results.csv"], "csv")
            _write_table(data.results, paths["results.parquet"], "parquet")
            _write_table(data.summary, paths["summary.csv"], "csv")
            _write_table(data.skipped, paths["skipped.csv"], "csv")
            step(1)
            paired = paired_vs_best_baseline(data.results, data.summary, seed=data.seed)
            # computed (and cached) before the figures: forked figure processes inherit it, and the
            # renderers reuse it, instead of each computing it again
            cross_method_statistics(data.results, data.summary, d)
            step(1)
            figures, errors = run_figures(d, data.results, data.summary, on_figure=lambda _name: step(1))
            paths.update(write_findings(data))
            report = Report(data, paired, figures, errors)
            atomic_write_text(paths["report.md"], render_markdown(report))
            step(1)
            atomic_write_text(paths["report.html"], render_html(report))
            step(1)
        written = [p.relative_to(d).as_posix() for p in paths.values()]
        written += [Path(os.path.relpath(p, d)).as_posix() for _, _, p in figures if Path(p).is_file()]
        with Store.open(d) as store:
            store.record_files(written)
    return paths


__all__ = ["Report", "RunData", "build_report", "load_run"]
