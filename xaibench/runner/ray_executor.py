"""The Ray executor: grid cells as tasks on a Ray cluster (or a local Ray on this machine).

    xaibench run vit_study --executor ray --workers 4                 # a local Ray with 4 workers
    xaibench run vit_study --executor ray --address auto --gpus-per-worker 1 --device cuda

Each worker is a Ray actor that builds what a cell needs itself — the model from the cell's spec
(zoo name + weights digest, or the user's weights path; never a pickled model from the driver),
the dataset from its seeded generator — and keeps one job's state (model, batches) for the next
cell of the same (study, model). The driver hands out cells so a worker stays on its job while it
has cells left, then takes the next job (or helps with the largest one left), and gets every
finished cell back as soon as it is done: **the driver alone** commits it into the run's SQLite
store, so locking, ``--resume`` and the report work exactly as with the local executor.

What crosses the wire is plain data: the run context and each cell as dicts of str/int/float/
lists, and each result as rows (dicts of plain values) plus the example maps as safetensors bytes
with a JSON tree. Ray moves those with its own serialiser internally; nothing pickled is ever
written into the run folder. A worker that dies (killed, out of memory, a segfault) loses only the
cell it was running: Ray restarts the actor and runs that cell again (``max_task_retries``); a cell
whose worker dies on every try is recorded as failed, and the grid goes on.

Ray is an optional extra: ``pip install 'xaibench[ray]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import os
import sys
import time
import warnings
from collections import deque
from typing import Any, Callable, Sequence

from ..baselines import BASELINES
from ..data import DATASETS, MODELS
from ..errors import XaibenchError
from ..explainers import EXPLAINERS
from ..metric import METRICS
from ..store import CellResult
from .config import Cell, Study
from .executor import BatchCallback, Job, WorkFn, register_executor
from .specs import Spec
from .work import RunContext, execute_job

#: How often Ray runs a cell again after its worker died (then it is recorded as failed).
MAX_TASK_RETRIES = 2


class MissingExtraError(XaibenchError, ImportError):
    """An optional dependency (extra) is not installed; the message says how to install it."""


def import_ray() -> Any:
    """The ``ray`` module, or a MissingExtraError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingExtraError("--executor ray needs Ray, which is not installed: pip install 'xaibench[ray]' "
                                "(or pip install 'ray[default]'); or run with --executor local") from None
    return ray


# ----------------------------------------------------------------------------- plain data

def cell_to_data(cell: Cell) -> dict[str, Any]:
    """A cell as plain JSON-able data (its study, specs, index and data fingerprint)."""
    st = cell.study
    study = {f.name: getattr(st, f.name) for f in dataclasses.fields(Study)}
    for k in ("datasets", "models", "explainers", "metrics", "baselines"):
        study[k] = [dataclasses.asdict(s) for s in study[k]]
    return {"index": cell.index, "study": study, "dataset": dataclasses.asdict(cell.dataset),
            "model": dataclasses.asdict(cell.model), "explainer": dataclasses.asdict(cell.explainer),
            "baseline": None if cell.baseline is None else dataclasses.asdict(cell.baseline),
            "data_fp": cell.data_fp, "spec_hash": cell.spec_hash}


def cell_from_data(d: dict[str, Any]) -> Cell:
    """The :class:`Cell` of :func:`cell_to_data` (its spec hash checked against the driver's).

    Raises:
        ValueError: the rebuilt cell hashes differently (the worker's xaibench differs from the driver's).
    """
    st = dict(d["study"])
    for k in ("datasets", "models", "explainers", "metrics", "baselines"):
        st[k] = tuple(Spec(**s) for s in st[k])
    cell = Cell(index=d["index"], study=Study(**st), dataset=Spec(**d["dataset"]), model=Spec(**d["model"]),
                explainer=Spec(**d["explainer"]), baseline=None if d["baseline"] is None else Spec(**d["baseline"]),
                data_fp=d["data_fp"])
    if cell.spec_hash != d["spec_hash"]:
        raise ValueError(f"cell {cell.key}: the worker rebuilt a different cell (spec hash {cell.spec_hash}, driver "
                         f"{d['spec_hash']}); install the same xaibench and plugins on the workers as on the driver")
    return cell


def result_to_data(res: CellResult) -> dict[str, Any]:
    """A cell result as plain data: rows and skips as dicts, example maps as safetensors bytes + JSON."""
    from safetensors.torch import save

    from ..store import _flatten
    d = {f.name: getattr(res, f.name) for f in dataclasses.fields(CellResult) if f.name != "examples"}
    if res.examples is not None:
        tensors: dict[str, Any] = {}
        tree = _flatten(res.examples, "x", tensors)
        d["examples"] = {"tree": json.dumps(tree), "tensors": save(tensors)}
    else:
        d["examples"] = None
    return d


def result_from_data(d: dict[str, Any]) -> CellResult:
    """The :class:`CellResult` of :func:`result_to_data` (reads safetensors and JSON only)."""
    from safetensors.torch import load

    from ..store import _unflatten
    d = dict(d)
    ex = d.pop("examples")
    examples = None if ex is None else _unflatten(json.loads(ex["tree"]), load(ex["tensors"]))
    return CellResult(**d, examples=examples)


def plugin_modules(cells: Sequence[Cell]) -> list[str]:
    """Modules that define the plugins the cells use, so a worker imports a plugin the driver registered
    outside the entry points (a user's module); built-in wings load through their entry points anyway."""
    mods: set[str] = set()

    def add(reg: Any, name: str) -> None:
        try:
            mod = getattr(reg.get(name), "__module__", None)
        except Exception:  # noqa: BLE001 - an unknown name is the config checker's business, not ours
            return
        if mod and mod != "__main__":
            mods.add(mod)

    for c in cells:
        add(DATASETS, c.dataset.name)
        if c.model.source == "model":
            add(MODELS, c.model.name)
        if c.baseline is None:
            add(EXPLAINERS, c.explainer.name)
        else:
            add(BASELINES, c.baseline.name)
        for m in c.study.metrics:
            add(METRICS, m.name)
    return sorted(mods)


# ----------------------------------------------------------------------------- the worker

class CellWorker:
    """A Ray actor running cells; keeps the state (model, batches) of its current job."""

    def __init__(self) -> None:
        from ..registry import load_plugins
        load_plugins()  # at start-up, while the driver hands out the first cells
        self.key: tuple[Any, ...] | None = None
        self.state: Any = None

    def run(self, ctx: dict[str, Any], cell_data: dict[str, Any], imports: Sequence[str] = ()) -> dict[str, Any]:
        """Run one cell; its result as plain data (a failed cell when anything goes wrong)."""
        from .work import JobState, execute_cell, failed_cell

        for mod in imports:  # a user's plugin module registered outside the entry points (cached after once)
            importlib.import_module(mod)
        run_ctx = RunContext(**ctx)
        cell = cell_from_data(cell_data)
        key = (run_ctx, json.dumps([cell.study.name, cell.model.label, cell.model.identity()], sort_keys=True,
                                   default=str))
        if key != self.key:
            self.state, self.key = None, None  # frees the previous job's model (and GPU memory) first
            try:
                self.state = JobState(run_ctx, Job(cell.study.name, cell.model.label, (cell,)))
                self.key = key
            except Exception as exc:  # noqa: BLE001 - the model could not be built: this cell fails with why
                return result_to_data(failed_cell(cell, exc, run_ctx, time.perf_counter()))
        return result_to_data(execute_cell(self.state, cell, lambda *_: None))

    def ping(self) -> int:
        return os.getpid()


# ----------------------------------------------------------------------------- the executor

@register_executor("ray")
class RayExecutor:
    """Run grid cells as tasks of Ray actors; the driver (this process) commits every result.

    Args:
        address: a running Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``); None starts a
            local Ray on this machine with ``workers`` CPUs (or reuses one this process started).
        workers: number of worker actors (default: the cluster's CPUs, or its GPUs / ``gpus_per_worker``).
        gpus_per_worker: GPUs reserved by each worker (fractions share a GPU); Ray makes them the worker's
            visible devices, so ``--device cuda`` means "this worker's GPU".
        cpus_per_worker: CPUs reserved by each worker (its torch threads).

    Raises:
        MissingExtraError: Ray is not installed (the message says how to install it).
    """

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0) -> None:
        import_ray()
        if workers is not None and int(workers) < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if gpus_per_worker < 0 or cpus_per_worker <= 0:
            raise ValueError(f"--gpus-per-worker must be >= 0 and cpus per worker > 0, got {gpus_per_worker}, "
                             f"{cpus_per_worker}")
        self.address, self.workers = address, workers
        self.gpus_per_worker, self.cpus_per_worker = float(gpus_per_worker), float(cpus_per_worker)

    # -------------------------------------------------------------- cluster
    def _connect(self) -> bool:
        """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
        ray = import_ray()
        if ray.is_initialized():
            return False
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
            return True
        start_local_ray(self.workers or os.cpu_count() or 1)
        return True

    def _n_actors(self) -> int:
        ray = import_ray()
        if self.workers:
            return int(self.workers)
        res = ray.cluster_resources()
        n = int(res.get("CPU", 1) // self.cpus_per_worker)
        if self.gpus_per_worker > 0:
            n = min(n, int(res.get("GPU", 0) // self.gpus_per_worker))
        return max(1, n)

    # -------------------------------------------------------------- run
    def run(self, jobs: Sequence[Job], work: WorkFn, on_result: Callable[[CellResult], None],
            on_batch: BatchCallback) -> None:
        ctx = _context_of(work)
        if ctx.device.startswith("cuda") and self.gpus_per_worker == 0:
            raise ValueError(f"--device {ctx.device} with --executor ray needs GPUs for the workers: add "
                             "--gpus-per-worker G (e.g. 1, or 0.5 to share a GPU between two workers)")
        cells = [c for j in jobs for c in j.cells]
        if not cells:
            return
        ray = import_ray()
        started = self._connect()
        try:
            self._run(ray, jobs, dataclasses.asdict(ctx), plugin_modules(cells), on_result, on_batch)
        finally:
            if started:
                ray.shutdown()

    def _actor(self, ray: Any) -> Any:
        cls = ray.remote(CellWorker).options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                                             max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)
        return cls.remote()

    def _run(self, ray: Any, jobs: Sequence[Job], ctx: dict[str, Any], imports: list[str],
             on_result: Callable[[CellResult], None], on_batch: BatchCallback) -> None:
        queues = [deque(j.cells) for j in jobs]
        data = {c.key: cell_to_data(c) for j in jobs for c in j.cells}
        n = min(self._n_actors(), len(data))
        actors = [self._actor(ray) for _ in range(n)]  # released at the end: idle workers hold no resources
        try:
            self._loop(ray, actors, queues, data, ctx, imports, on_result, on_batch)
        finally:
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)

    def _loop(self, ray: Any, actors: list[Any], queues: list[deque[Cell]], data: dict[str, Any],
              ctx: dict[str, Any], imports: list[str], on_result: Callable[[CellResult], None],
              on_batch: BatchCallback) -> None:
        n = len(actors)
        current: list[int | None] = [None] * n  # the job each actor holds
        flight: dict[Any, tuple[int, Cell]] = {}

        def next_cell(a: int) -> Cell | None:
            j = current[a]
            if j is None or not queues[j]:
                held = {x for x in current if x is not None}
                fresh = [i for i, q in enumerate(queues) if q and i not in held]
                if fresh:
                    j = fresh[0]
                else:  # every job left is held: help the one with most cells left (from its end)
                    left = [i for i, q in enumerate(queues) if q]
                    if not left:
                        return None
                    j = max(left, key=lambda i: len(queues[i]))
                    current[a] = j
                    return queues[j].pop()
                current[a] = j
            return queues[j].popleft()

        def submit(a: int) -> None:
            cell = next_cell(a)
            if cell is not None:
                flight[actors[a].run.remote(ctx, data[cell.key], imports)] = (a, cell)

        for a in range(n):
            submit(a)
        while flight:
            ready, _ = ray.wait(list(flight), num_returns=1)
            for ref in ready:
                a, cell = flight.pop(ref)
                try:
                    res = result_from_data(ray.get(ref))
                except ray.exceptions.RayError as exc:  # the worker died on every try: the cell fails
                    res = _lost(cell, exc)
                    with contextlib.suppress(Exception):
                        ray.kill(actors[a], no_restart=True)
                    actors[a], current[a] = self._actor(ray), None
                on_batch(cell.key, 1, 1)
                on_result(res)
                submit(a)


def _lost(cell: Cell, exc: BaseException) -> CellResult:
    why = " ".join(str(exc).split())[:300]
    return CellResult(key=cell.key, index=cell.index, study=cell.study.name, dataset=cell.dataset.label,
                      model=cell.model.label, explainer=cell.explainer.label, is_baseline=cell.baseline is not None,
                      spec_hash=cell.spec_hash, data_fp=cell.data_fp,
                      error=f"the Ray worker running this cell died {MAX_TASK_RETRIES + 1} times "
                            f"({type(exc).__name__}: {why})")


def _context_of(work: WorkFn) -> RunContext:
    """The run context bound into the runner's work function (``partial(execute_job, ctx)``)."""
    if isinstance(work, functools.partial) and work.func is execute_job and work.args \
            and isinstance(work.args[0], RunContext):
        return work.args[0]
    raise TypeError("the ray executor runs the runner's cells itself: pass work=functools.partial(execute_job, ctx)")


def start_local_ray(workers: int) -> None:
    """Start a local Ray with ``workers`` CPUs whose workers see the driver's import path (so a plugin
    module the driver imports from a folder of the user's imports on the workers too).

    The path reaches the workers through the environment the local Ray processes inherit (set
    while they start, then restored), not through a ``runtime_env``: a runtime environment makes
    Ray set up every worker through its runtime-env agent, which cost 1.4 s of a 2.9 s start of two
    workers that import torch (measured)."""
    ray = import_ray()
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ray.init(num_cpus=int(workers), include_dashboard=False, log_to_driver=False, configure_logging=False)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


__all__ = ["MissingExtraError", "RayExecutor", "cell_from_data", "cell_to_data", "result_from_data",
           "result_to_data", "start_local_ray"]
