"""The work of one job: load the model, make the batches, explain, score, build rows.

:func:`execute_job` is what an executor runs. It is a module-level function over plain
data (a :class:`RunContext` and a :class:`~xaibench.runner.executor.Job`), so a
distributed executor can ship it elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from ..types import Attribution, Batch
from .config import Cell, Spec, Study
from .executor import BatchCallback, Job
from .store import CellResult

#: Number of samples per cell saved as example maps (for overlays and family figures).
N_EXAMPLES = 4
#: Tensors larger than this (bytes) are not saved in the example files.
MAX_EXAMPLE_BYTES = 32 * 2**20


class CellError(RuntimeError):
    """A grid cell failed; the message names the cell and the cause."""


@dataclass(frozen=True)
class RunContext:
    """Plain data every job needs: run name, config hash and the benchmark seed."""

    run: str
    config_hash: str
    seed: int


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
    from .. import zoo
    from ..data import create_model

    if spec.source == "zoo":
        return zoo.load(spec.name, spec.weights).eval()
    torch.manual_seed(seed)
    model = create_model(spec.name, **spec.params)
    if spec.weights:
        from safetensors.torch import load_file
        state = load_file(spec.weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"model {spec.label!r}: weights {spec.weights} do not fit "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()


def make_batches(study: Study, spec: Spec) -> list[Batch]:
    """All test batches of a dataset for a study (seeded by the study's seed)."""
    from ..data import create_dataset

    ds = create_dataset(spec.name, n=study.n_samples, batch_size=study.batch_size, seed=study.seed,
                        split="test", **spec.params)
    return list(ds)


def _json(d: Any) -> str:
    return json.dumps(d, sort_keys=True, default=repr)


def _target(study: Study, batch: Batch, cell: Cell) -> Tensor | None:
    if study.target == "predicted":
        return None
    if batch.targets is None:
        raise CellError(f"cell {cell.key}: target = 'label' but dataset {cell.dataset.label!r} has no targets; "
                        "set target = \"predicted\" in the study")
    return batch.targets


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
    """The first :data:`N_EXAMPLES` samples of a cell: maps, inputs, masks, ids (see figures.load_examples)."""
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


class _JobState:
    """Per-job caches: batches per dataset and the first explainer's attributions (baseline shapes)."""

    def __init__(self, ctx: RunContext, job: Job) -> None:
        self.ctx = ctx
        self.study = job.cells[0].study
        self.model = load_model(job.cells[0].model, self.study.seed)
        self.batches: dict[str, list[Batch]] = {}
        self.like: dict[str, list[Attribution]] = {}
        from ..metric import create_metric
        self.metrics = [(s, create_metric(s.name, **s.params)) for s in self.study.metrics]

    def batches_of(self, spec: Spec) -> list[Batch]:
        if spec.label not in self.batches:
            self.batches[spec.label] = make_batches(self.study, spec)
            self._warm_up(self.batches[spec.label][0])
        return self.batches[spec.label]

    def _warm_up(self, batch: Batch) -> None:
        """One untimed forward, so one-off kernel set-up is not billed to the first explainer."""
        try:
            with torch.no_grad():
                self.model(batch.inputs)
        except Exception as exc:  # the explainers will call the model their own way
            warnings.warn(f"runner: warm-up forward of {type(self.model).__name__} failed ({exc}); "
                          "the first explainer's seconds include set-up", stacklevel=2)

    def like_of(self, cell: Cell, i: int, batch: Batch) -> Attribution:
        """The first real explainer's attribution of batch i (recomputed if not cached)."""
        cached = self.like.get(cell.dataset.label)
        if cached is not None and i < len(cached):
            return cached[i]
        from .. import create_explainer
        first = self.study.explainers[0]
        return create_explainer(first.name, self.model, **first.params).explain_batch(batch, _target(self.study, batch, cell))


def execute_job(ctx: RunContext, job: Job, on_batch: BatchCallback) -> Iterator[CellResult]:
    """Run the cells of one job, yielding each cell's result as soon as it is complete.

    Raises:
        CellError: a cell failed (the message names the cell and the cause).
    """
    state = _JobState(ctx, job)
    for cell in job.cells:
        try:
            yield run_cell(state, cell, on_batch)
        except CellError:
            raise
        except Exception as exc:
            raise CellError(f"cell {cell.key} failed: {type(exc).__name__}: {exc}") from exc


def run_cell(state: _JobState, cell: Cell, on_batch: BatchCallback) -> CellResult:
    """Explain every batch of a cell, score every metric, and build the cell's rows."""
    from .. import create_explainer
    from ..baselines import BASELINES

    t_cell = time.perf_counter()
    study, ctx = cell.study, state.ctx
    seed_everything(cell_seed(ctx.seed, cell.key))
    batches = state.batches_of(cell.dataset)
    # the first explainer's maps give the baselines their kind and shape (kept only if baselines follow)
    is_first = bool(study.baselines) and cell.baseline is None and cell.explainer.label == study.explainers[0].label
    if cell.baseline is None:
        explainer = create_explainer(cell.explainer.name, state.model, **cell.explainer.params)
        ex_params = _json(explainer.get_params())
    else:
        base_fn = BASELINES.get(cell.baseline)
    per_metric: dict[str, list[dict[str, Any]]] = {s.label: [] for s, _ in state.metrics}
    skipped: dict[str, str] = {}
    examples = None
    likes: list[Attribution] = []
    start = 0
    for i, batch in enumerate(batches):
        target = _target(study, batch, cell)
        like = state.like_of(cell, i, batch) if cell.baseline is not None else None
        t0 = time.perf_counter()
        attr = explainer.explain_batch(batch, target) if like is None else base_fn(like, batch, ctx.seed)
        dt = time.perf_counter() - t0
        if is_first:
            likes.append(attr)
        if attr is None:  # a baseline that does not apply to this kind
            skipped.update({s.label: f"baseline {cell.baseline!r} does not apply to this attribution kind"
                            for s, _ in state.metrics})
            on_batch(cell.key, i + 1, len(batches))
            break
        if not isinstance(attr, Attribution) or attr.batch_size != len(batch):
            raise CellError(f"cell {cell.key}: explainer returned {type(attr).__name__} with "
                            f"{getattr(attr, 'batch_size', '?')} samples for a batch of {len(batch)}")
        if cell.baseline is not None:
            ex_params = _json(attr.params)
        if examples is None:
            examples = examples_of(cell, attr, batch)
        per_sample = dt / len(batch)
        ids = batch.ids or [str(start + j) for j in range(len(batch))]
        for spec, metric in state.metrics:
            why = _not_applicable(metric, attr, batch)
            if why:
                skipped.setdefault(spec.label, why)
                continue
            res = metric.evaluate(attr, batch, model=state.model)
            scores = res.scores.tolist()
            for j, sc in enumerate(scores):
                nan = sc is None or math.isnan(sc)
                per_metric[spec.label].append({
                    "run": ctx.run, "study": study.name, "dataset": cell.dataset.label, "model": cell.model.label,
                    "explainer": cell.explainer.label, "explainer_key": cell.explainer.name,
                    "metric": spec.label, "metric_key": spec.name, "sample_index": start + j,
                    "sample_id": str(ids[j]), "score": None if nan else float(sc),
                    "undefined_reason": (res.reasons[j] or "undefined") if nan else None,
                    "seconds": per_sample, "protocol": _json(metric.protocol), "explainer_params": ex_params,
                    "direction": metric.info.direction, "category": metric.info.category,
                    "is_baseline": int(cell.baseline is not None), "seed": study.seed, "config_hash": ctx.config_hash,
                })
        start += len(batch)
        on_batch(cell.key, i + 1, len(batches))
    if is_first:
        state.like[cell.dataset.label] = likes
    rows = [r for s, _ in state.metrics for r in per_metric[s.label]]
    skips = [{"metric": s.label, "metric_key": s.name, "reason": skipped[s.label]}
             for s, _ in state.metrics if s.label in skipped]
    return CellResult(key=cell.key, index=cell.index, study=study.name, dataset=cell.dataset.label,
                      model=cell.model.label, explainer=cell.explainer.label, is_baseline=cell.baseline is not None,
                      rows=rows, skipped=skips, seconds=time.perf_counter() - t_cell, examples=examples)


def _not_applicable(metric: Any, attr: Attribution, batch: Batch) -> str | None:
    """Why a metric cannot score this attribution/batch, or None."""
    info = metric.info
    if attr.kind not in info.kinds:
        return f"attribution kind {attr.kind!r} not in the metric's kinds {tuple(info.kinds)}"
    missing = [n for n in info.needs if getattr(batch, n, None) is None]
    if missing:
        return f"dataset gives no {', '.join(missing)} (ground truth the metric needs)"
    return None
