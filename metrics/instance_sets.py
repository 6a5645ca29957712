"""Instance-set metrics: do the highest-scored events / instances hold the positives?

For attributions over sets (FCM events, MIL instances): ``event`` (B, N) scores,
``event_head`` (B, heads, N) per-head scores (pick one with ``head=``), or ``event_vector``
(B, N, m) gradients (scored by their L2 norm). Ground truth is ``batch.instance_labels``
(B, N); a sample without positives scores NaN ("no positive instances").
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from xaibench import Attribution, Batch, MetricScores, register_metric

NO_POS = "no positive instances"


def event_scores(attr: Attribution, head: int | str = "mean", who: str = "metric") -> Tensor:
    """(B, H, N) scores: one row for ``event``, the selected head(s) for ``event_head``,
    the vector norm for ``event_vector``."""
    v = attr.values.float()
    if attr.kind == "event":
        return v[:, None]
    if attr.kind == "event_vector":
        return v.norm(dim=-1)[:, None]
    if attr.kind != "event_head":
        raise ValueError(f"{who}: expected an event, event_head or event_vector attribution, got {attr.kind!r}")
    if isinstance(head, str):
        if head not in ("mean", "max"):
            raise ValueError(f"{who}: head must be an int, 'mean' or 'max', got {head!r}")
        return v
    if not -v.shape[1] <= int(head) < v.shape[1]:
        raise ValueError(f"{who}: head {head} out of range for {v.shape[1]} heads")
    return v[:, int(head)][:, None]


def top_k_counts(scores: Tensor, labels: Tensor, n_top: int) -> Tensor:
    """Expected number of positives among the ``n_top`` highest scores, (B, H).

    Ties at the threshold are shared fairly (the expectation under random tie-breaking), so
    a constant map scores exactly chance and event order never matters."""
    thr = torch.kthvalue(-scores, n_top, dim=-1, keepdim=True).values.neg()
    lab = labels[:, None].expand_as(scores)
    gt, eq = scores > thr, scores == thr
    n_gt, n_eq = gt.sum(-1), eq.sum(-1)
    pos_gt, pos_eq = (gt & lab).sum(-1), (eq & lab).sum(-1)
    return pos_gt + (n_top - n_gt) * pos_eq / n_eq.clamp_min(1)


@register_metric("top_k_positive_fraction", direction="higher", category="instance_set",
                 kinds=("event", "event_head", "event_vector"), needs=("instance_labels",), undefined=NO_POS)
def top_k_positive_fraction(attr: Attribution, batch: Batch, *, k: Annotated[float, Field(gt=0, le=1)] = 0.05,
                            head: int | Literal["mean", "max"] = "mean") -> MetricScores:
    """n_pos@top-k / min(n@top-k, n_pos) (Kowarsch et al. 2023, eq. 6): precision@k when there are
    at least k positives, recall@k otherwise. (B,)

    0 when no positive is among the top k; 1 when all positives are in it or it holds only
    positives. Top k = ceil(k · N) events. Ties at the threshold count fractionally.

    Args:
        k: the top fraction (default 0.05, the paper's 5%).
        head: for ``event_head``: a head index, or ``"mean"`` / ``"max"`` over the per-head scores.
            A head index on an attribution without heads scores NaN (one metric entry per head
            in a study then stays blank for gradient maps instead of repeating their score).

    Returns:
        (B,) scores in [0, 1]; NaN for a sample with no positive events.
    """
    labels = batch.instance_labels.bool()
    s = event_scores(attr, head, "top_k_positive_fraction")
    if s.shape[-1] != labels.shape[-1]:
        raise ValueError(f"top_k_positive_fraction: {s.shape[-1]} scores per sample but {labels.shape[-1]} labels")
    n = s.shape[-1]
    n_top = max(1, math.ceil(k * n - 1e-9))
    n_pos = labels.sum(-1)  # (B,)
    frac = top_k_counts(s, labels, n_top) / n_pos.clamp(min=1, max=n_top)[:, None]
    frac = frac.max(1).values if head == "max" else frac.mean(1)
    frac = torch.where(n_pos > 0, frac, torch.full_like(frac, math.nan))
    if not isinstance(head, str) and attr.kind != "event_head":  # a per-head entry on a map without heads
        why = f"head={head} asks for one head; {attr.kind!r} attributions have none"
        return MetricScores(torch.full_like(frac, math.nan), [why] * len(frac))
    return MetricScores.from_nan(frac.float(), NO_POS)
