"""Run a benchmark: lock the folder, check the grid, skip finished cells, execute, commit, report.

    result = run_benchmark("default", out="reports/default", resume=True)
    result.run_dir / "report.html"

Guarantees: one writer per run folder (an OS lock, released even when the process is
killed); every cell committed atomically with the files it wrote (a manifest), so ``--force``
deletes exactly what a run wrote and nothing of the user's; a failing cell is recorded as
failed and the grid goes on; ``--resume`` recomputes only missing, failed or changed cells and
refuses when the data a finished cell read has changed on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigMismatchError, RunExistsError
from ..report import build_report
from ..store import (
    DB_NAME,
    EXAMPLES_DIR,
    FORMAT,
    LOCK_NAME,
    CellResult,
    RunLock,
    Store,
    now,
    save_examples,
)
from .config import BenchmarkConfig, Cell, expand, load_config
from .ray_executor import RayExecutor  # noqa: F401  (registers the "ray" executor; Ray itself is imported on use)
from .executor import create_executor, make_jobs
from .preflight import check_grid
from .work import RunContext, check_device_name, execute_job, resolve_device

#: Names a run writes into its folder; a folder holding any of them that is not a run is refused.
RUN_OUTPUTS = (DB_NAME, EXAMPLES_DIR, "figures", "results.csv", "results.parquet", "summary.csv", "skipped.csv",
               "report.md", "report.html")


@dataclass
class RunResult:
    """What :func:`run_benchmark` did: the folder, cells run now / already done / failed, report files."""

    run_dir: Path
    config: BenchmarkConfig
    n_cells: int
    n_run: int
    n_resumed: int
    seconds: float
    report: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return len(self.failed)


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


def safe_folder_name(name: str) -> str:
    """A benchmark name as one safe folder name (no separators, no leading dots, no ``..``)."""
    safe = re.sub(r"[^A-Za-z0-9._@-]+", "_", name).lstrip(".") or "run"
    return safe[:100]


def default_run_dir(cfg: BenchmarkConfig) -> Path:
    """``reports/<safe name>``: a config's name never makes a path outside ``reports/``."""
    return Path("reports") / safe_folder_name(cfg.name)


def clear_run(run_dir: Path, store: Store) -> None:
    """Delete exactly the files the previous run recorded in its manifest, then its database."""
    for rel in store.files():
        p = (run_dir / rel).resolve()
        if run_dir.resolve() in p.parents and p.is_file():
            p.unlink()
    for sub in (EXAMPLES_DIR, "figures"):
        d = run_dir / sub
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _drop_db(run_dir: Path) -> None:
    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
        (run_dir / name).unlink(missing_ok=True)


def _prepare(run_dir: Path, resume: bool, force: bool, cells: list[Cell]) -> Store:
    """Open (or start) the run's store under the lock; returns it with changed cells forgotten."""
    db = run_dir / DB_NAME
    if db.exists() and db.stat().st_size > 0:
        old = Store.open(run_dir)
        if force:
            clear_run(run_dir, old)
            old.close()
            _drop_db(run_dir)
        else:
            done = old.done_cells()
            if not resume and done:
                old.close()
                raise RunExistsError(f"{run_dir} already holds results ({len(done)} finished cells); continue that "
                                     "run with --resume or overwrite it with --force")
            _check_resume(run_dir, old, done, cells)
            return old
    elif run_dir.is_dir():
        clash = sorted(n for n in RUN_OUTPUTS if (run_dir / n).exists())
        if clash:
            raise RunExistsError(f"{run_dir} holds {clash} but no xaibench run; choose an empty folder with --out "
                                 "(xaibench never overwrites files it did not write)")
        _drop_db(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Store(db)


def _check_resume(run_dir: Path, store: Store, done: dict[str, tuple[str, str]], cells: list[Cell]) -> None:
    """Refuse a resume whose data changed under finished cells; forget cells whose settings changed."""
    changed_data, changed_spec = [], []
    for c in cells:
        if c.key not in done:
            continue
        spec_hash, fp = done[c.key]
        if spec_hash != c.spec_hash:
            changed_spec.append(c.key)
        elif fp != c.data_fp:
            changed_data.append(c.key)
    if changed_data:
        raise ConfigMismatchError(
            f"cannot resume {run_dir}: the data of {len(changed_data)} finished cell(s) changed on disk since they ran "
            f"(e.g. {changed_data[0]}); scores of old and new files would be mixed. Restore the files, or start "
            "over with --force")
    store.forget_cells(changed_spec)
    store.prune_cells([c.key for c in cells])


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
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
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
    device: str | None = None,
    executor_options: dict[str, Any] | None = None,
) -> RunResult:
    """Run a benchmark into a run folder and build its report.

    Args:
        config: a TOML path, a built-in benchmark name, a :class:`BenchmarkConfig`, or None (``default``).
        out: the run folder (default ``reports/<safe benchmark name>``).
        resume: continue a run in ``out``: finished cells are kept; missing, failed and changed ones run.
        force: delete what the previous run in ``out`` wrote (its manifest) first.
        n_samples: override every study's ``n_samples``.
        quiet: no progress display.
        executor: registered executor name (``"local"``, ``"ray"``).
        report: build the report files at the end.
        on_cell: called after each cell is committed (for tools and tests).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (default: the benchmark's ``device``,
            else ``cpu``); models and batches are moved there once per job. Not part of the config hash:
            the run records the devices its cells ran on, and ``regress`` flags a change.
        executor_options: settings of the executor (ray: ``address``, ``workers``, ``gpus_per_worker``).

    Returns:
        a :class:`RunResult`; ``failed`` maps failed cells to their reasons (they are retried by ``resume``).

    Raises:
        ConfigError: the benchmark is invalid (every problem listed, checked before any cell runs).
        RunLockedError: another live process is running in ``out``.
        RunExistsError: ``out`` has results and neither ``resume`` nor ``force`` was given, or holds
            files of the user's.
        ConfigMismatchError: ``resume`` when the data of finished cells changed on disk.
    """
    t0 = time.perf_counter()
    cfg = config if isinstance(config, BenchmarkConfig) else load_config(config, n_samples=n_samples)
    device = check_device_name(device or getattr(cfg, "device", None) or "cpu")
    if executor == "local":
        resolve_device(device)  # a device this machine lacks fails before anything runs
    runner = create_executor(executor, **(executor_options or {}))
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    fps = check_grid(cfg)
    cells = [c.with_data_fp(fps.get(f"{c.study.name}/{c.dataset.label}", "")) for c in expand(cfg)]
    failed: dict[str, str] = {}
    with RunLock(run_dir):
        store = _prepare(run_dir, resume, force, cells)
        try:
            meta = store.get_meta()
            started = {"started_at": now()} if "started_at" not in meta else {
                "resumed_at": [*meta.get("resumed_at", []), now()]}
            store.set_meta(format=FORMAT, name=cfg.name, description=cfg.description, seed=cfg.seed,
                           config_hash=cfg.hash, config=cfg.record(), config_source=cfg.source, versions=versions(),
                           host=host_info(), data_fingerprints=fps, finished_at=None, device=device,
                           executor=executor, **started)
            costs: dict[str, Any] = dict(meta.get("cell_costs") or {})
            devices = set(meta.get("devices") or [])
            dtypes = set(meta.get("dtypes") or [])
            store.plan(cells)
            done = store.done_cells()
            todo = [c for c in cells if c.key not in done]
            ctx = RunContext(run=cfg.name, config_hash=cfg.hash, seed=cfg.seed, device=device)
            n_per_cell = {c.key: c.study.n_samples for c in cells}
            prog = _Progress(progress_enabled(quiet), len(todo))

            def commit(res: CellResult) -> None:
                files: list[str] = []
                if res.examples is not None and not res.error:
                    try:
                        files = save_examples(run_dir, res.key, res.examples)
                    except OSError as exc:  # e.g. a full disk: this cell fails, the grid goes on
                        res = dataclasses.replace(res, rows=[], skipped=[], examples=None,
                                                  error=f"writing the cell's example maps failed: {exc}")
                store.commit_cell(res, files)
                if res.error:
                    failed[res.key] = res.error
                else:  # what the cell cost, for `xaibench plan --from RUN` and the record of devices
                    costs[res.key] = {"seconds": res.seconds, "n_samples": n_per_cell.get(res.key),
                                      "forwards": res.forwards, "device": res.device, "dtype": res.dtype}
                    devices.add(res.device or "cpu")
                    dtypes.add(res.dtype or "float32")
                    store.set_meta(cell_costs=costs, devices=sorted(devices), dtypes=sorted(dtypes))
                prog.cell()
                if on_cell is not None:
                    on_cell(res)

            with prog.show():
                runner.run(make_jobs(todo), functools.partial(execute_job, ctx), commit, prog.batch)
            # the whole call's seconds (config checks and loading included, the report not): what `plan` prices
            store.set_meta(finished_at=now(), n_failed=len(failed), run_seconds=time.perf_counter() - t0)
        finally:
            store.close()
        paths: dict[str, Path] = build_report(run_dir, quiet=quiet) if report else {}
    return RunResult(run_dir=run_dir, config=cfg, n_cells=len(cells), n_run=len(todo),
                     n_resumed=len(cells) - len(todo), seconds=time.perf_counter() - t0, report=paths, failed=failed)


__all__ = ["LOCK_NAME", "RUN_OUTPUTS", "RunResult", "clear_run", "default_run_dir", "run_benchmark", "safe_folder_name"]
