"""Reports of a run folder, rebuilt from its results database at any time.

    from xaibench.report import build_report
    paths = build_report("reports/default")   # results.csv/.parquet, summary.csv, report.md/.html, figures/

Families add figures with :func:`xaibench.report.figures.register_figure`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..stats import paired_vs_best_baseline, summarise


@dataclass
class RunData:
    """Everything a report is made of, read from a run folder's database."""

    run_dir: Path
    meta: dict[str, Any]
    results: pd.DataFrame
    summary: pd.DataFrame
    skipped: pd.DataFrame
    cells: pd.DataFrame


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder: metadata, the long results table, its summary, skips and cells.

    Raises:
        FileNotFoundError: the folder has no results database.
    """
    from ..runner.store import Store

    run_dir = Path(run_dir)
    with Store.open(run_dir) as store:
        meta = store.get_meta()
        results = store.results()
        skipped = store.skipped()
        cells = store.cells()
    summary = summarise(results, seed=int(meta.get("seed", 0) or 0))
    return RunData(run_dir, meta, results, summary, skipped, cells)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_report(run_dir: str | Path) -> dict[str, Path]:
    """(Re)build every report file of a run folder from its database.

    Returns:
        name -> path for ``results.csv``, ``results.parquet``, ``summary.csv``, ``skipped.csv``,
        ``report.md``, ``report.html``.
    """
    from .figures import run_figures
    from .html import render_html
    from .markdown import render_markdown

    data = load_run(run_dir)
    d = data.run_dir
    paths = {name: d / name for name in ("results.csv", "results.parquet", "summary.csv", "skipped.csv",
                                         "report.md", "report.html")}
    data.results.to_csv(paths["results.csv"], index=False)
    data.results.to_parquet(paths["results.parquet"], index=False)
    data.summary.to_csv(paths["summary.csv"], index=False)
    data.skipped.to_csv(paths["skipped.csv"], index=False)
    paired = paired_vs_best_baseline(data.results, data.summary, seed=int(data.meta.get("seed", 0) or 0))
    figures, errors = run_figures(d, data.results, data.summary)
    args = (d, data.meta, data.summary, data.skipped, paired, figures, errors, data.cells)
    _write(paths["report.md"], render_markdown(*args))
    _write(paths["report.html"], render_html(*args))
    return paths


__all__ = ["RunData", "build_report", "load_run"]
