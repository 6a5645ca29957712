"""Faithfulness of instance-set maps (FCM events, MIL cells): comprehensiveness and sufficiency.

Remove the top-k% instances the map ranks highest (comprehensiveness) or keep only them
(sufficiency) and measure the change of the explained output (DeYoung et al., ERASER, ACL 2020,
with instances in place of tokens). Scores are averaged over k = 1, 5, 20% by default. Every k is
one forward pass over the whole batch: all samples keep the same number of instances, gathered
in their original order.

The explained output is the softmax probability (or logit) of the target class: for a set
classifier with (B, C) outputs (ABMIL) that of the set; for a per-instance classifier with
(B, N, C) outputs (the FCM ReluFormer) its mean over the instances present, i.e. the predicted
fraction of the class (the blast fraction for class 1). The target is the attribution's
``extras["target"]``, else ``batch.targets``, else ``target_class`` when set, else the predicted
class of a set classifier; a per-instance classifier with none of those scores class 1 (the
positive class, the FCM convention). ``event_head`` maps are averaged over heads, ``event_vector``
maps scored by their norm. Top-k = ceil(k·N) instances, ties broken by instance order.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from xaibench import Attribution, Batch, register_metric
from xaibench.explainers import model_guard

from ._common import Output, resolve_target, select_output
from .instance_sets import event_scores

Ks = Annotated[tuple[Annotated[float, Field(gt=0, lt=1)], ...],
               Field(description="the top fractions of instances (default 1, 5 and 20%)")]
TargetClass = Annotated[Annotated[int, Field(ge=0)] | None,
                        Field(description="score this class instead of the attribution's / batch's target")]
SET_KINDS = ("event", "event_head", "event_vector")


def _outputs(model: nn.Module, x: Tensor, rank: Tensor, ks: tuple[float, ...], target: Tensor, output: Output,
             keep_top: bool) -> Tensor:
    """(B, len(ks)) explained output with the top-k instances removed (``keep_top=False``) or
    alone (``keep_top=True``)."""
    b, n = rank.shape
    cols = []
    for k in ks:
        n_top = max(1, math.ceil(k * n - 1e-9))
        top = rank < n_top
        sel = top if keep_top else ~top
        if not bool(sel.any(1).all()):
            cols.append(torch.full((b,), math.nan, device=x.device))
            continue
        # the selected instances of every sample in their original order (equal counts per sample)
        idx = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, : int(sel[0].sum())]
        sub = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
        cols.append(select_output(model(sub), target, output))
    return torch.stack(cols, 1)


def _set_scores(attr: Attribution, batch: Batch, model: nn.Module | None, who: str, ks, output, target_class,
                keep_top: bool) -> Tensor:
    if model is None:
        raise ValueError(f"{who}: needs the model; call metric(attr, batch, model=model)")
    x = batch.inputs
    s = event_scores(attr, "mean", who).mean(1)  # (B, N)
    if x.ndim != 3 or s.shape[1] != x.shape[1]:
        raise ValueError(f"{who}: expected set inputs (B, N, m) with one score per instance, got inputs "
                         f"{tuple(x.shape)} and scores {tuple(s.shape)}")
    order = torch.argsort(-s.double(), dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(s.shape[1], device=order.device).expand_as(order)).to(x.device)
    with model_guard(model), torch.no_grad():
        full = model(x)
        default = target_class if target_class is not None else (1 if full.ndim == 3 else None)
        t = resolve_target(attr, batch, full, default)
        if target_class is not None:
            t = torch.full_like(t, int(target_class))
        base = select_output(full, t, output)
        outs = _outputs(model, x, rank, tuple(ks), t, output, keep_top)
    return (base[:, None] - outs).mean(1)


def _example():
    """A set classifier whose class-1 logit is 4 × the mean of feature 0; positives carry a high
    feature 0, so the true instances are the perfect map."""
    from xaibench.testing import MetricExample

    g = torch.Generator().manual_seed(0)
    b, n, m = 8, 200, 3
    labels = torch.rand(b, n, generator=g) < 0.15
    x = torch.randn(b, n, m, generator=g)
    x[..., 0] += 3 * labels

    class MeanPool(nn.Module):
        def forward(self, v: Tensor) -> Tensor:
            z = 4 * v[..., 0].mean(1) - 1.5
            return torch.stack([torch.zeros_like(z), z], 1)

    batch = Batch(inputs=x, instance_labels=labels, targets=torch.ones(b, dtype=torch.long), ids=[f"s{i}" for i in range(b)])
    return MetricExample(batch=batch, perfect=Attribution(values=labels.float(), kind="event", method="perfect"),
                         model=MeanPool())


NO_GT = {"empty": "uses no ground truth (the model's output is the reference)"}
DEFAULT_KS = (0.01, 0.05, 0.2)


@register_metric("comprehensiveness", direction="higher", category="faithfulness", kinds=SET_KINDS, needs_model=True,
                 range=(-math.inf, math.inf), example=_example, contract_skip=NO_GT)
def comprehensiveness(attr: Attribution, batch: Batch, *, ks: Ks = DEFAULT_KS, output: Output = "probability",
                      target_class: TargetClass = None, model: nn.Module | None = None) -> Tensor:
    """Output drop when the top-k% instances are removed, f(x) − f(x without top-k), averaged
    over ``ks``. Higher = the map found the instances the output rests on. (B,)

    References: DeYoung et al., ERASER, ACL 2020.
    """
    return _set_scores(attr, batch, model, "comprehensiveness", ks, output, target_class, keep_top=False).float()


@register_metric("sufficiency", direction="lower", category="faithfulness", kinds=SET_KINDS, needs_model=True,
                 range=(-math.inf, math.inf), example=_example, contract_skip=NO_GT)
def sufficiency(attr: Attribution, batch: Batch, *, ks: Ks = DEFAULT_KS, output: Output = "probability",
                target_class: TargetClass = None, model: nn.Module | None = None) -> Tensor:
    """Output drop when only the top-k% instances are kept, f(x) − f(top-k only), averaged over
    ``ks``. Lower (negative: the top instances alone give a stronger output) = better. (B,)

    References: DeYoung et al., ERASER, ACL 2020.
    """
    return _set_scores(attr, batch, model, "sufficiency", ks, output, target_class, keep_top=True).float()
