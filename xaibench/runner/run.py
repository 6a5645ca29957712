"""Run a benchmark: plan the grid, skip finished cells, execute, commit, then build the report.

    result = run_benchmark("default", out="reports/default", resume=True)
    result.run_dir / "report.html"
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import BenchmarkConfig, expand, load_config
from .executor import create_executor, make_jobs
from .store import DB_NAME, CellResult, Store, now
from .work import RunContext, execute_job

EXAMPLES_DIR = "examples"
#: Files and folders a run writes into its folder (``--force`` removes these and nothing else).
RUN_OUTPUTS = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", EXAMPLES_DIR, "figures", "results.csv",
               "results.parquet", "summary.csv", "skipped.csv", "report.md", "report.html")


class RunExistsError(RuntimeError):
    """The run folder already holds results and neither resume nor force was asked for."""


class ConfigMismatchError(RuntimeError):
    """Resuming a run whose stored configuration differs from the given one."""


@dataclass
class RunResult:
    """What :func:`run_benchmark` did: the folder, cells run now / already done, report files."""

    run_dir: Path
    config: BenchmarkConfig
    n_cells: int
    n_run: int
    n_resumed: int
    seconds: float
    report: dict[str, Path] = field(default_factory=dict)


def versions() -> dict[str, str]:
    """Versions of python and the libraries that shape the numbers."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("xaibench", "torch", "torchvision", "timm", "captum", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def host_info() -> dict[str, Any]:
    import torch
    return {"node": platform.node(), "platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": bool(torch.cuda.is_available())}


def safe_name(key: str) -> str:
    """A file name for a cell key (readable part + short hash, so distinct keys never collide)."""
    import hashlib
    readable = "".join(ch if ch.isalnum() or ch in "._@-" else "_" for ch in key.replace("/", "__"))
    return f"{readable[:120]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def save_examples(run_dir: Path, res: CellResult) -> None:
    """Write a cell's example maps atomically (before its commit: a recomputed cell rewrites them)."""
    if res.examples is None:
        return
    import torch
    folder = run_dir / EXAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{safe_name(res.key)}.pt"
    tmp = folder / f".{final.name}.tmp"
    torch.save(res.examples, tmp)
    os.replace(tmp, final)


def clear_run(run_dir: Path) -> None:
    """Remove what a previous run wrote into ``run_dir`` (only the files a run writes)."""
    for name in RUN_OUTPUTS:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _prepare(run_dir: Path, cfg: BenchmarkConfig, resume: bool, force: bool) -> Store:
    db = run_dir / DB_NAME
    if db.exists() and force:
        clear_run(run_dir)
    elif db.exists():
        with Store(db) as old:
            n_done, meta = len(old.done_cells()), old.get_meta()
        stored = meta.get("config_hash")
        if resume and stored is not None and stored != cfg.hash:
            raise ConfigMismatchError(
                f"cannot resume {run_dir}: it was run with config hash {stored} ({meta.get('name')!r}), "
                f"the given config has hash {cfg.hash}; use the same config and --n-samples, "
                "or start over with --force")
        if not resume:
            if n_done:
                raise RunExistsError(
                    f"{run_dir} already holds results ({n_done} finished cells); continue that run with "
                    "--resume or overwrite it with --force")
            clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Store(db)


class _Progress:
    """A rich display with a bar over cells and one over the current cell's batches."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.prog: Any = None

    @contextlib.contextmanager
    def show(self) -> Iterator["_Progress"]:
        if not self.enabled:
            yield self
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=Console(stderr=True), transient=False) as prog:
            self.prog = prog
            self.cells = prog.add_task("cells", total=self.total)
            self.batches = prog.add_task("batches", total=1)
            yield self
        self.prog = None

    def batch(self, key: str, i: int, n: int) -> None:
        if self.prog is not None:
            self.prog.update(self.batches, description=key[-60:], completed=i, total=n)

    def cell(self) -> None:
        if self.prog is not None:
            self.prog.advance(self.cells)


def progress_enabled(quiet: bool) -> bool:
    if quiet or os.environ.get("XAIBENCH_QUIET"):
        return False
    return sys.stderr.isatty() or bool(os.environ.get("XAIBENCH_PROGRESS"))


def run_benchmark(
    config: str | Path | BenchmarkConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    n_samples: int | None = None,
    quiet: bool = False,
    executor: str = "local",
    report: bool = True,
    on_cell: Callable[[CellResult], None] | None = None,
) -> RunResult:
    """Run a benchmark into a run folder and build its report.

    Args:
        config: a TOML path, a built-in benchmark name, a :class:`BenchmarkConfig`, or None (``default``).
        out: the run folder (default ``reports/<benchmark name>``).
        resume: continue a run in ``out``: finished cells are kept, unfinished ones recomputed.
        force: delete the previous results in ``out`` first.
        n_samples: override every study's ``n_samples``.
        quiet: no progress display.
        executor: registered executor name (``"local"``).
        report: build the report files at the end.
        on_cell: called after each cell is committed (for tools and tests).

    Returns:
        a :class:`RunResult`.

    Raises:
        ConfigError: the benchmark is invalid.
        RunExistsError: ``out`` has results and neither ``resume`` nor ``force`` was given.
        ConfigMismatchError: ``resume`` of a run made with another configuration.
        CellError: a cell failed (finished cells stay committed; fix and ``resume``).
    """
    t0 = time.perf_counter()
    cfg = config if isinstance(config, BenchmarkConfig) else load_config(config, n_samples=n_samples)
    run_dir = Path(out) if out is not None else Path("reports") / cfg.name
    store = _prepare(run_dir, cfg, resume, force)
    try:
        meta = store.get_meta()
        started = {"started_at": now()} if "started_at" not in meta else {"resumed_at": [*meta.get("resumed_at", []), now()]}
        store.set_meta(name=cfg.name, description=cfg.description, seed=cfg.seed, config_hash=cfg.hash,
                       config=cfg.record(), config_source=cfg.source, versions=versions(), host=host_info(),
                       finished_at=None, **started)
        cells = expand(cfg)
        store.plan(cells)
        done = store.done_cells()
        todo = [c for c in cells if c.key not in done]
        ctx = RunContext(run=cfg.name, config_hash=cfg.hash, seed=cfg.seed)
        prog = _Progress(progress_enabled(quiet), len(todo))

        def commit(res: CellResult) -> None:
            save_examples(run_dir, res)
            store.commit_cell(res)
            prog.cell()
            if on_cell is not None:
                on_cell(res)

        with prog.show():
            create_executor(executor).run(make_jobs(todo), functools.partial(execute_job, ctx), commit, prog.batch)
        store.set_meta(finished_at=now())
    finally:
        store.close()
    paths: dict[str, Path] = {}
    if report:
        from ..report import build_report
        paths = build_report(run_dir)
    return RunResult(run_dir=run_dir, config=cfg, n_cells=len(cells), n_run=len(todo),
                     n_resumed=len(cells) - len(todo), seconds=time.perf_counter() - t0, report=paths)
