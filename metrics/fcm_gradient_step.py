"""The gradient-step experiment of Kowarsch et al. (2023, appendix 7.3) as a metric.

Move every false-negative event a fixed step along its gradient (the direction the explainer
says raises its positive-class output) and measure how much the sample's F1 improves. A
faithful classification gradient (``fcm.gradient`` with ``selection="false_negative"``) turns
false negatives into true positives; random directions do not.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from xaibench import Attribution, Batch, MetricScores, register_metric
from xaibench.explainers import model_guard

NO_FN = "no false negatives"


def f1_score(pred: Tensor, labels: Tensor) -> Tensor:
    """Per-sample F1 of (B, N) bool predictions against (B, N) bool labels. (B,)"""
    tp = (pred & labels).sum(-1).float()
    return 2 * tp / (pred.sum(-1) + labels.sum(-1)).clamp_min(1).float()


@register_metric("gradient_step_f1_gain", direction="higher", category="faithfulness", kinds=("event_vector",),
                 needs=("instance_labels",), needs_model=True, range=(-1.0, 1.0), undefined=NO_FN,
                 example=lambda: _example())
def gradient_step_f1_gain(attr: Attribution, batch: Batch, *, step: float = 0.5, positive: Annotated[int, Field(ge=0)] = 1,
                          model: nn.Module | None = None) -> MetricScores:
    """F1 after moving the false negatives ``step`` (marker units) along their unit gradient,
    minus F1 before. (B,) in [-1, 1]; NaN for a sample without false negatives.

    Args:
        step: length of each false negative's move along its gradient direction.
        positive: the positive class of the model's per-event (B, N, C) logits.
    """
    if model is None:
        raise ValueError("gradient_step_f1_gain: needs the classifier; call metric(attr, batch, model=model)")
    x = batch.inputs
    labels = batch.instance_labels.bool()
    g = attr.values.to(x.dtype)
    if g.shape != x.shape:
        raise ValueError(f"gradient_step_f1_gain: gradients {tuple(g.shape)} do not match events {tuple(x.shape)}")
    with model_guard(model), torch.no_grad():
        pred = model(x).argmax(-1) == positive
        fn = labels & ~pred
        unit = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        moved = model(x + step * unit * fn[..., None]).argmax(-1) == positive
    gain = f1_score(moved, labels) - f1_score(pred, labels)
    gain = torch.where(fn.any(-1), gain, torch.full_like(gain, math.nan))
    return MetricScores.from_nan(gain, NO_FN)


def _example():
    """Contract example: a per-event linear classifier; the perfect direction is its weight difference."""
    from xaibench.testing import MetricExample

    g = torch.Generator().manual_seed(0)
    b, n, m = 8, 300, 4
    x = torch.randn(b, n, m, generator=g)
    model = nn.Linear(m, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]]))
        model.bias.zero_()
    margin = x[..., 0] - x[..., 1]
    labels = margin > -0.6  # events with margin in (-0.6, 0] are false negatives
    perfect = Attribution(values=torch.tensor([1.0, -1.0, 0.0, 0.0]).expand(b, n, m).clone(), kind="event_vector",
                          method="perfect")
    return MetricExample(batch=Batch(inputs=x, instance_labels=labels, ids=[f"s{i}" for i in range(b)]),
                         perfect=perfect, model=model)
