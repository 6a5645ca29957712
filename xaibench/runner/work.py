"""The work of one job: load the model, make the batches, explain, score, build rows.

:func:`execute_job` is what an executor runs. It is a module-level function over plain
data (a :class:`RunContext` and a :class:`~xaibench.runner.executor.Job`), so a
distributed executor can ship it elsewhere. A cell that raises becomes a *failed* cell
result (its reason recorded); the job goes on with its other cells.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import random
import re
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from .. import zoo
from ..baselines import BASELINES
from ..data import create_dataset, create_model
from ..errors import CellError
from ..explainers import EXPLAINERS, Explainer
from ..metric import Metric, create_metric
from ..store import CellResult
from ..types import Attribution, Batch
from ..zoo import read_weights
from .config import Cell, Spec, Study
from .executor import BatchCallback, Job

#: Number of samples per cell saved as example maps (for overlays and family figures).
N_EXAMPLES = 4
#: Tensors larger than this (bytes) are not saved in the example files.
MAX_EXAMPLE_BYTES = 32 * 2**20


@dataclass(frozen=True)
class RunContext:
    """Plain data every job needs: run name, config hash, the benchmark seed and the device
    (as requested: ``auto`` is resolved where the job runs, so a worker picks its own GPU)."""

    run: str
    config_hash: str
    seed: int
    device: str = "cpu"


#: Device names ``--device`` accepts (``cuda:N`` with any index).
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(device: str) -> str:
    """``device`` if it is a valid ``--device`` value, else a ValueError saying what is allowed."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise ValueError(f"device: expected auto, cpu, cuda, cuda:N or mps, got {device!r}")
    return device


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for a ``--device`` value: ``auto`` is CUDA if present, else MPS, else CPU.

    Raises:
        ValueError: an unknown name, or a device this machine does not have (``cuda`` without CUDA,
            ``cuda:3`` on a machine with 2 GPUs, ``mps`` off Apple silicon).
    """
    check_device_name(device)
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            raise ValueError(f"device {device!r}: this machine has {n} CUDA device(s)"
                             + ("" if n else "; use --device cpu (or auto)"))
        if dev.index is None:  # recorded as cuda:N, the GPU actually used
            dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "mps" and not has_mps:
        raise ValueError(f"device {device!r}: MPS is not available here; use --device cpu (or auto)")
    return dev


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor (inputs, targets, masks, instance labels, boxes, per-sample meta) on
    ``device``; the same object when nothing moves."""
    if batch.inputs.device == device:
        return batch
    mv = lambda v: v.to(device) if isinstance(v, Tensor) else v  # noqa: E731
    return dataclasses.replace(
        batch, inputs=batch.inputs.to(device), targets=mv(batch.targets), masks=mv(batch.masks),
        instance_labels=mv(batch.instance_labels),
        boxes=None if batch.boxes is None else [mv(b) for b in batch.boxes],
        meta={k: mv(v) for k, v in batch.meta.items()})


def cell_seed(seed: int, key: str) -> int:
    """A seed for one cell, from the benchmark seed and the cell key (order-independent)."""
    h = hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def load_model(spec: Spec, seed: int) -> nn.Module:
    """A model from its spec: a zoo model (committed or given weights) or a seeded builder."""
    if spec.source == "zoo":
        return zoo.load(spec.name, spec.weights).eval()
    torch.manual_seed(seed)
    model = create_model(spec.name, **spec.params)
    if spec.weights:
        missing, unexpected = model.load_state_dict(read_weights(spec.weights), strict=False)
        if missing or unexpected:
            raise ValueError(f"model {spec.label!r}: weights {spec.weights} do not fit "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()


def build_dataset(study: Study, spec: Spec) -> Any:
    """The test split of a dataset for a study (seeded by the study's seed)."""
    return create_dataset(spec.name, n=study.n_samples, batch_size=study.batch_size, seed=study.seed,
                          split="test", **spec.params)


def _json(d: Any) -> str:
    return json.dumps(d, sort_keys=True, default=repr)


def _small(v: Any, k: int) -> Any:
    """First k samples of a per-sample tensor (or list of tensors), if small enough to keep; else None."""
    if isinstance(v, Tensor):
        v = v[:k].detach().cpu().clone()
        return v if v.numel() * v.element_size() <= MAX_EXAMPLE_BYTES else None
    if isinstance(v, (list, tuple)) and all(isinstance(x, Tensor) for x in v[:k]):
        items = [_small(x[None], 1) for x in v[:k]]
        return None if any(x is None for x in items) else [x[0] for x in items]
    return None


def examples_of(cell: Cell, attr: Attribution, batch: Batch) -> dict[str, Any]:
    """The first :data:`N_EXAMPLES` samples of a cell: maps, inputs, masks, ids (see store.load_examples)."""
    k = min(N_EXAMPLES, len(batch))
    extras = {}
    for name, v in attr.extras.items():
        if isinstance(v, Tensor) and v.ndim and v.shape[0] == attr.batch_size:
            extras[name] = _small(v, k)
        elif isinstance(v, (tuple, list, int, float, str)) and len(repr(v)) < 200:
            extras[name] = v
    return {
        "study": cell.study.name, "dataset": cell.dataset.label, "model": cell.model.label,
        "explainer": cell.explainer.label, "explainer_key": cell.explainer.name,
        "is_baseline": cell.baseline is not None, "kind": attr.kind, "values": _small(attr.values, k),
        "extras": extras, "inputs": _small(batch.inputs, k), "masks": _small(batch.masks, k),
        "targets": _small(batch.targets, k), "ids": list(batch.ids[:k]) if batch.ids else None,
    }


class JobState:
    """Per-job state: the model, the metrics, batches per dataset, and the attributions of the
    study's first explainer per dataset (baselines take their kind and shape from them)."""

    def __init__(self, ctx: RunContext, job: Job) -> None:
        self.ctx = ctx
        self.study = job.cells[0].study
        self.device = resolve_device(ctx.device)
        self.model = load_model(job.cells[0].model, self.study.seed).to(self.device)
        self.dtype = str(next(iter(self.model.parameters()), torch.empty(0)).dtype).removeprefix("torch.")
        self.metrics: list[tuple[Spec, Metric]] = [(s, create_metric(s.name, **s.params)) for s in self.study.metrics]
        self.batches: dict[str, list[Batch]] = {}
        self.first_maps: dict[str, list[Attribution]] = {}

    def batches_of(self, spec: Spec) -> list[Batch]:
        if spec.label not in self.batches:
            self.batches[spec.label] = [batch_to(b, self.device) for b in build_dataset(self.study, spec)]
            self._warm_up(self.batches[spec.label][0])
        return self.batches[spec.label]

    def _warm_up(self, batch: Batch) -> None:
        """One untimed forward, so one-off kernel set-up is not billed to the first explainer."""
        try:
            with torch.no_grad():
                self.model(batch.inputs)
        except Exception as exc:  # the explainers call the model their own way; only timing is affected
            warnings.warn(f"runner: warm-up forward of {type(self.model).__name__} failed ({exc}); "
                          "the first explainer's seconds include set-up", stacklevel=2)

    def target(self, cell: Cell, batch: Batch) -> Tensor | None:
        if self.study.target == "predicted":
            return None
        if batch.targets is None:
            raise CellError(f"cell {cell.key}: target = 'label' but dataset {cell.dataset.label!r} has no targets; "
                            "set target = \"predicted\" in the study")
        return batch.targets

    def explainer(self, spec: Spec) -> Explainer:
        return EXPLAINERS.get(spec.name)(self.model, **spec.params)

    def shapes_for_baselines(self, cell: Cell) -> list[Attribution]:
        """The first explainer's attributions of every batch of the cell's dataset (cached; recomputed
        when its cell ran in an earlier, resumed run)."""
        label = cell.dataset.label
        if label not in self.first_maps:
            ex = self.explainer(self.study.explainers[0])
            self.first_maps[label] = [ex.explain_batch(b, self.target(cell, b)) for b in self.batches_of(cell.dataset)]
        return self.first_maps[label]


class _Rows:
    """Accumulates the rows, skips and example maps of one cell."""

    def __init__(self, state: JobState, cell: Cell) -> None:
        self.state, self.cell = state, cell
        self.per_metric: dict[str, list[dict[str, Any]]] = {s.label: [] for s, _ in state.metrics}
        self.skipped: dict[str, str] = {}
        self.examples: dict[str, Any] | None = None
        self.start = 0

    def add(self, attr: Attribution, batch: Batch, seconds: float, params: str) -> None:
        cell, ctx, study = self.cell, self.state.ctx, self.cell.study
        if not isinstance(attr, Attribution) or attr.batch_size != len(batch):
            raise CellError(f"cell {cell.key}: explainer returned {type(attr).__name__} with "
                            f"{getattr(attr, 'batch_size', '?')} samples for a batch of {len(batch)}")
        if self.examples is None:
            self.examples = examples_of(cell, attr, batch)
        per_sample = seconds / len(batch)
        ids = batch.ids or [str(self.start + j) for j in range(len(batch))]
        for spec, metric in self.state.metrics:
            why = not_applicable(metric, attr, batch)
            if why:
                self.skipped.setdefault(spec.label, why)
                continue
            res = metric.evaluate(attr, batch, model=self.state.model)
            for j, sc in enumerate(res.scores.tolist()):
                nan = sc is None or math.isnan(sc)
                self.per_metric[spec.label].append({
                    "run": ctx.run, "study": study.name, "dataset": cell.dataset.label, "model": cell.model.label,
                    "explainer": cell.explainer.label, "explainer_key": cell.explainer.name,
                    "metric": spec.label, "metric_key": spec.name, "sample_index": self.start + j,
                    "sample_id": str(ids[j]), "score": None if nan else float(sc),
                    "undefined_reason": (res.reasons[j] or "undefined") if nan else None,
                    "seconds": per_sample, "protocol": _json(metric.protocol), "explainer_params": params,
                    "direction": str(metric.info.direction), "category": metric.info.category,
                    "is_baseline": int(cell.baseline is not None), "seed": study.seed, "config_hash": ctx.config_hash,
                })
        self.start += len(batch)

    def skip_all(self, reason: str) -> None:
        self.skipped.update({s.label: reason for s, _ in self.state.metrics})

    def result(self, t_cell: float) -> CellResult:
        cell = self.cell
        rows = [r for s, _ in self.state.metrics for r in self.per_metric[s.label]]
        skips = [{"metric": s.label, "metric_key": s.name, "reason": self.skipped[s.label]}
                 for s, _ in self.state.metrics if s.label in self.skipped]
        return CellResult(key=cell.key, index=cell.index, study=cell.study.name, dataset=cell.dataset.label,
                          model=cell.model.label, explainer=cell.explainer.label, is_baseline=cell.baseline is not None,
                          rows=rows, skipped=skips, seconds=time.perf_counter() - t_cell, examples=self.examples,
                          spec_hash=cell.spec_hash, data_fp=cell.data_fp)


def run_explainer_cell(state: JobState, cell: Cell, on_batch: BatchCallback) -> CellResult:
    """Explain every batch of a cell with its explainer, score every metric, build the rows."""
    t_cell = time.perf_counter()
    seed_everything(cell_seed(state.ctx.seed, cell.key))
    batches = state.batches_of(cell.dataset)
    explainer = state.explainer(cell.explainer)
    params = _json(explainer.settings.record())
    is_first = cell.explainer.label == cell.study.explainers[0].label and bool(cell.study.baselines)
    rows, maps = _Rows(state, cell), []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        attr = explainer.explain_batch(batch, state.target(cell, batch))
        rows.add(attr, batch, time.perf_counter() - t0, params)
        maps.append(attr)
        on_batch(cell.key, i + 1, len(batches))
    if is_first:
        state.first_maps[cell.dataset.label] = maps
    return rows.result(t_cell)


def run_baseline_cell(state: JobState, cell: Cell, on_batch: BatchCallback) -> CellResult:
    """Score a baseline (random, centre prior, ...) shaped like the study's first explainer's maps."""
    assert cell.baseline is not None
    t_cell = time.perf_counter()
    seed_everything(cell_seed(state.ctx.seed, cell.key))
    batches = state.batches_of(cell.dataset)
    shapes = state.shapes_for_baselines(cell)
    fn = BASELINES.get(cell.baseline.name)
    rows = _Rows(state, cell)
    for i, (batch, like) in enumerate(zip(batches, shapes)):
        t0 = time.perf_counter()
        attr = fn(like, batch, state.ctx.seed, **cell.baseline.params)
        if attr is None:
            rows.skip_all(f"baseline {cell.baseline.name!r} does not apply to {like.kind!r} attributions")
            on_batch(cell.key, len(batches), len(batches))
            break
        rows.add(attr, batch, time.perf_counter() - t0, _json(attr.params))
        on_batch(cell.key, i + 1, len(batches))
    return rows.result(t_cell)


def failed_cell(cell: Cell, exc: BaseException, ctx: RunContext, t_cell: float) -> CellResult:
    """The result of a cell that raised: no rows, the reason recorded (and retried on resume)."""
    tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return CellResult(key=cell.key, index=cell.index, study=cell.study.name, dataset=cell.dataset.label,
                      model=cell.model.label, explainer=cell.explainer.label, is_baseline=cell.baseline is not None,
                      seconds=time.perf_counter() - t_cell, spec_hash=cell.spec_hash, data_fp=cell.data_fp,
                      error=tb)


@contextlib.contextmanager
def count_forwards(model: nn.Module) -> Iterator[list[int]]:
    """Count the samples that pass through ``model``'s own forward (the sum of the leading dimension
    of its first tensor argument); a list ``[n]`` read after the block. Forwards an explainer runs on
    submodules alone (incremental occlusion) are not seen, so the count is a lower bound."""
    count = [0]

    def hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        if first is not None:
            count[0] += int(first.shape[0]) if first.ndim else 1

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()


def execute_cell(state: JobState, cell: Cell, on_batch: BatchCallback) -> CellResult:
    """Run one cell on a job's state: its result (done or failed, never raises but for KeyboardInterrupt),
    with the device, dtype and the number of model forwards it took."""
    t_cell = time.perf_counter()
    try:
        state.batches_of(cell.dataset)  # built (and the model warmed up) outside the forward count
        with count_forwards(state.model) as n_fwd:
            if cell.baseline is None:
                res = run_explainer_cell(state, cell, on_batch)
            else:
                res = run_baseline_cell(state, cell, on_batch)
    except Exception as exc:  # recorded as a failed cell; the grid goes on
        res = failed_cell(cell, exc, state.ctx, t_cell)
        n_fwd = [0]
    return dataclasses.replace(res, seconds=time.perf_counter() - t_cell, device=str(state.device),
                               dtype=state.dtype, forwards=n_fwd[0])


def execute_job(ctx: RunContext, job: Job, on_batch: BatchCallback) -> Iterator[CellResult]:
    """Run the cells of one job, yielding each cell's result (done or failed) as soon as it is complete."""
    t0 = time.perf_counter()
    try:
        state = JobState(ctx, job)
    except Exception as exc:  # the model could not be built: every cell of the job fails with that reason
        for cell in job.cells:
            yield failed_cell(cell, exc, ctx, t0)
        return
    for cell in job.cells:
        yield execute_cell(state, cell, on_batch)


def not_applicable(metric: Metric, attr: Attribution, batch: Batch) -> str | None:
    """Why a metric cannot score this attribution/batch, or None."""
    info = metric.info
    if attr.kind not in info.kinds:
        return f"attribution kind {attr.kind!r} not in the metric's kinds {tuple(info.kinds)}"
    missing = [n for n in info.needs if getattr(batch, n, None) is None]
    if missing:
        return f"dataset gives no {', '.join(missing)} (ground truth the metric needs)"
    return None
