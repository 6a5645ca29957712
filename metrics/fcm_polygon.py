"""Polygon-query gradient metrics: what Kowarsch et al. (2023, fig. 3) judged by eye, as numbers.

For ``fcm.polygon_gradient`` attributions (gradients of ‖R(E) − Q‖ for Q = the predicted
polygon P translated by ``shift``), a model that ties a gate to its events has its largest
gradients on the events inside P, pointing so that moving the events along −gradient moves
them with the translation:

- ``polygon_gradient_inside``: share of the top-``top`` events' gradient norm carried by
  events inside P (in the gate's 2D projection);
- ``polygon_gradient_alignment``: mean cosine between −gradient projected onto the gate's
  two markers and the translation, over the top-``top`` events.

P, the gate's markers and the shift come from the attribution's extras; attributions without
them (baselines) are scored against the model's own predicted polygon with the metric's
``gate`` and ``shift`` settings.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor, nn

from xaibench import Attribution, Batch, MetricScores, register_metric
from xaibench.explainers import model_guard

ZERO = "zero gradient"
#: settings shared by both polygon metrics (documented once)
Top = Annotated[int, Field(ge=1, description="how many events with the largest gradient norms are scored")]
Gate = Annotated[int, Field(description="the model's gate index, used when the attribution carries no polygon "
                                        "query (baselines)")]
Shift = Annotated[tuple[float, float], Field(description="the query's (dx, dy) translation, used when the "
                                                         "attribution carries none")]
SKIP = {"empty": "no ground truth: scored against the model's own predicted polygon"}


def points_in_polygon(points: Tensor, vertices: Tensor) -> Tensor:
    """Even-odd rule: which points lie inside each polygon. (B, N, 2), (B, V, 2) -> (B, N) bool."""
    x, y = points[..., 0:1], points[..., 1:2]  # (B, N, 1)
    x0, y0 = vertices[:, None, :, 0], vertices[:, None, :, 1]  # (B, 1, V)
    x1, y1 = torch.roll(x0, -1, -1), torch.roll(y0, -1, -1)
    crosses = (y0 > y) != (y1 > y)
    xi = x0 + (y - y0) * (x1 - x0) / torch.where(y1 == y0, torch.ones_like(y1), y1 - y0)
    return ((crosses & (x < xi)).sum(-1) % 2) == 1


def polygon_query(attr: Attribution, batch: Batch, model: nn.Module | None, gate: int, shift: Any,
                  who: str) -> tuple[Tensor, tuple[int, int], Tensor]:
    """(predicted polygon (B, V, 2), marker dims (x, y), shift (2,)) from extras, else from the model."""
    ex = attr.extras
    if "polygon" in ex and "dims" in ex:
        return ex["polygon"].float(), tuple(ex["dims"]), torch.as_tensor(ex.get("shift", shift), dtype=torch.float32)
    if model is None or not getattr(model, "gate_dims", None):
        raise ValueError(f"{who}: the attribution carries no polygon query (extras 'polygon', 'dims') and no "
                         "polygon model was given; explain with fcm.polygon_gradient or pass model=")
    with model_guard(model), torch.no_grad():
        polys = model(batch.inputs)
    return polys[:, gate].float(), tuple(model.gate_dims[gate]), torch.as_tensor(shift, dtype=torch.float32)


def _top(attr: Attribution, top: int) -> tuple[Tensor, Tensor]:
    """Indices (B, k) of the ``top`` largest gradient norms and those norms (B, k)."""
    norms = attr.values.float().norm(dim=-1)
    k = min(int(top), norms.shape[-1])
    val, idx = norms.topk(k, dim=-1)
    return idx, val


@register_metric("polygon_gradient_inside", direction="higher", category="polygon_query", kinds=("event_vector",),
                 needs_model=True, undefined=ZERO, contract_skip=SKIP,
                 example=lambda: _example())
def polygon_gradient_inside(attr: Attribution, batch: Batch, *, top: Top = 100, gate: Gate = 0,
                            shift: Shift = (0.5, 0.0), model: nn.Module | None = None) -> MetricScores:
    """Share of the top-``top`` events' gradient norm that lies on events inside the predicted
    polygon (2D projection of the gate). 1 = the gate is explained by its own events. (B,)
    """
    poly, dims, _ = polygon_query(attr, batch, model, gate, shift, "polygon_gradient_inside")
    idx, val = _top(attr, top)
    pts = batch.inputs[..., list(dims)].float().gather(1, idx[..., None].expand(-1, -1, 2))
    inside = points_in_polygon(pts, poly)
    total = val.sum(-1)
    share = (val * inside).sum(-1) / total.clamp_min(1e-30)
    share = torch.where(total > 0, share, torch.full_like(share, math.nan))
    return MetricScores.from_nan(share, ZERO)


@register_metric("polygon_gradient_alignment", direction="higher", category="polygon_query", kinds=("event_vector",),
                 needs_model=True, range=(-1.0, 1.0), undefined=ZERO, contract_skip=SKIP,
                 example=lambda: _example())
def polygon_gradient_alignment(attr: Attribution, batch: Batch, *, top: Top = 100, gate: Gate = 0,
                               shift: Shift = (0.5, 0.0), model: nn.Module | None = None) -> MetricScores:
    """Mean cosine between the translation and −gradient projected on the gate's markers, over the
    top-``top`` events by gradient norm (events with no in-plane component are left out). (B,)

    1 = moving the events along −gradient moves them with the query; 0 = unrelated.
    """
    _, dims, sh = polygon_query(attr, batch, model, gate, shift, "polygon_gradient_alignment")
    idx, _ = _top(attr, top)
    g = -attr.values.float()[..., list(dims)].gather(1, idx[..., None].expand(-1, -1, 2))  # (B, k, 2)
    norm = g.norm(dim=-1)
    ok = norm > 0
    cos = (g @ (sh / sh.norm().clamp_min(1e-30))) / norm.clamp_min(1e-30)
    n = ok.sum(-1)
    mean = (cos * ok).sum(-1) / n.clamp_min(1)
    mean = torch.where(n > 0, mean, torch.full_like(mean, math.nan))
    return MetricScores.from_nan(mean, ZERO)


def _example():
    """Contract example: a perfect query gradient (inside P, against the shift) vs random vectors."""
    from xaibench import create_model
    from xaibench.adapters.fcm.fixture import fixture_batch
    from xaibench.testing import MetricExample

    batch = fixture_batch(n=4, n_events=400)
    gates = batch.polygons[0]
    torch.manual_seed(0)
    model = create_model("fcm.reluformer", n_markers=10, d_model=8, n_heads=2, n_layers=1, task="polygon",
                         gate_dims=[list(d) for d in gates["dims"]]).eval()
    dims = tuple(gates["dims"][1])
    poly = torch.stack([p["vertices"][1] for p in batch.polygons])
    inside = points_in_polygon(batch.inputs[..., list(dims)], poly)
    vals = torch.zeros_like(batch.inputs)
    vals[..., dims[0]] = -inside.float()  # -grad points along +x, the shift
    perfect = Attribution(values=vals, kind="event_vector", method="perfect",
                          extras={"polygon": poly, "dims": dims, "shift": (0.5, 0.0)})
    return MetricExample(batch=batch, perfect=perfect, model=model)
