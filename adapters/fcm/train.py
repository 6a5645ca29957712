"""Zoo entries of the FCM family: ReluFormers trained on synthetic B-ALL marrow, reproducibly from a seed.

- ``fcm_reluformer``: per-event blast classification (10 markers, d=64, 4 heads, 2 layers);
  the card reports F1 per blast-fraction regime (<0.1%, 0.1–1%, 1–10%, ≥10%).
- ``fcm_reluformer_polygon``: regression of the four gates of the synthetic hierarchy
  (singlets, lymphoid, CD19+, blasts) as 8-vertex polygons; the card reports the mean vertex
  error per gate.

Every training step draws fresh samples (the generator is infinite), seeded by step.
Retrain with ``xaibench zoo train fcm_reluformer`` (300 steps of 4 × 4,096 events: ~22 min on a shared
2-core CPU; the polygon model ~13 min).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench import Batch, create_dataset
from xaibench.datasets.fcm_synthetic import GATES, MARKERS, REGIMES
from xaibench.zoo import ZooEntry, register_zoo

WEIGHTS = Path(__file__).parent / "weights"
#: blast-fraction range of each regime (for per-regime validation sets)
REGIME_RANGES = dict(zip(REGIMES, [(1e-4, 1e-3), (1e-3, 1e-2), (1e-2, 0.1), (0.1, 0.9)]))


def train_batches(entry: ZooEntry, seed: int, steps: int) -> Iterator[Batch]:
    """One fresh batch of training samples per step (sample i of step s is seeded by (seed, s, i))."""
    ex = entry.extra
    for step in range(steps):
        yield create_dataset(entry.dataset, n=ex["batch_size"], batch_size=ex["batch_size"], seed=seed * 1_000_003 + step,
                             split="train", n_events=ex["n_events"], **ex.get("dataset_params", {})).all()


def fit(model: nn.Module, entry: ZooEntry, seed: int, loss_fn, desc: str) -> float:
    """AdamW + one-cycle schedule over ``extra["steps"]`` fresh batches. Returns the last 50 steps' mean loss."""
    from xaibench.progress import progress_bar

    ex = entry.extra
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=ex["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=ex["lr"], total_steps=ex["steps"], pct_start=0.1)
    model.train()
    losses: list[float] = []
    with progress_bar(total=ex["steps"], desc=desc) as advance:
        for batch in train_batches(entry, seed, ex["steps"]):
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            advance(1)
    model.eval()
    return sum(losses[-50:]) / len(losses[-50:])


def classify_loss(pos_weight: float):
    def loss(model: nn.Module, batch: Batch) -> Tensor:
        logits = model(batch.inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.instance_labels.reshape(-1).long(),
                               weight=torch.tensor([1.0, pos_weight]))
    return loss


def polygon_loss(model: nn.Module, batch: Batch) -> Tensor:
    target = torch.stack([p["vertices"] for p in batch.polygons])
    return F.smooth_l1_loss(model(batch.inputs), target, beta=0.1)


def validation(entry: ZooEntry, seed: int, regime: str) -> Iterator[Batch]:
    ex = entry.extra
    return iter(create_dataset(entry.dataset, n=ex["n_val"], batch_size=2, seed=seed, split="val",
                               n_events=ex["val_events"], blast_fraction=REGIME_RANGES[regime]))


@torch.no_grad()
def f1_by_regime(model: nn.Module, entry: ZooEntry, seed: int) -> dict[str, Any]:
    """Mean and median per-sample blast F1 in each blast-fraction regime, on fresh validation samples."""
    from xaibench.metrics.fcm_gradient_step import f1_score

    out: dict[str, Any] = {}
    for regime in REGIMES:
        f1s: list[float] = []
        for batch in validation(entry, seed, regime):
            pred = model(batch.inputs).argmax(-1) == 1
            f1s += f1_score(pred, batch.instance_labels.bool()).tolist()
        out[regime] = {"mean": round(statistics.fmean(f1s), 4), "median": round(statistics.median(f1s), 4), "n": len(f1s)}
    return out


def train_classifier(entry: ZooEntry, model: nn.Module, seed: int) -> dict[str, Any]:
    """Train the per-event blast classifier; card: final loss and F1 per blast-fraction regime."""
    loss = fit(model, entry, seed, classify_loss(entry.extra["pos_weight"]), f"zoo train {entry.name}")
    return {"final_loss": round(loss, 5), "f1_by_regime": f1_by_regime(model, entry, seed),
            "val_events": entry.extra["val_events"]}


@torch.no_grad()
def train_polygon(entry: ZooEntry, model: nn.Module, seed: int) -> dict[str, Any]:
    """Train the gate-polygon regressor; card: mean vertex distance per gate (marker units)."""
    with torch.enable_grad():
        loss = fit(model, entry, seed, polygon_loss, f"zoo train {entry.name}")
    errs: dict[str, list[float]] = {g[0]: [] for g in GATES}
    for regime in REGIMES:
        for batch in validation(entry, seed, regime):
            target = torch.stack([p["vertices"] for p in batch.polygons])
            d = (model(batch.inputs) - target).norm(dim=-1).mean(-1)  # (B, P)
            for j, g in enumerate(GATES):
                errs[g[0]] += d[:, j].tolist()
    return {"final_loss": round(loss, 5),
            "vertex_error": {g: round(statistics.fmean(v), 4) for g, v in errs.items()},
            "val_events": entry.extra["val_events"]}


_COMMON = {"n_events": 4096, "batch_size": 4, "n_val": 8, "val_events": 50_000}

register_zoo(ZooEntry(
    name="fcm_reluformer", model="fcm.reluformer",
    model_params={"n_markers": len(MARKERS), "d_model": 64, "n_heads": 4, "n_layers": 2, "task": "classify"},
    train=train_classifier, weights_dir=WEIGHTS, seed=0, dataset="fcm_ball",
    description="ReluFormer classifying every event of a synthetic B-ALL marrow as blast or not",
    extra={**_COMMON, "steps": 300, "lr": 3e-3, "pos_weight": 3.0},
))

register_zoo(ZooEntry(
    name="fcm_reluformer_polygon", model="fcm.reluformer",
    model_params={"n_markers": len(MARKERS), "d_model": 64, "n_heads": 4, "n_layers": 2, "task": "polygon",
                  "gate_dims": [[MARKERS.index(g[1]), MARKERS.index(g[2])] for g in GATES],
                  "gate_names": [g[0] for g in GATES]},
    train=train_polygon, weights_dir=WEIGHTS, seed=0, dataset="fcm_ball",
    description="ReluFormer regressing the gates singlets → lymphoid → CD19+ → blasts as 8-vertex polygons",
    extra={**_COMMON, "steps": 300, "lr": 3e-3, "dataset_params": {"blast_fraction": (0.003, 0.9)}},
))

