"""Shortcut metrics: how much of a map's relevance sits on a known non-causal cue.

A dataset with a shortcut (``faces`` with ``shortcut="mark"`` or ``"border"``) puts the
cue's pixels in ``batch.meta["shortcut_mask"]`` (B, H, W) bool. A method that reveals a
shortcut-trained model's reliance on the cue puts its relevance there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench import Attribution, Batch, MetricScores, register_metric

NO_CUE = "no shortcut cue"


def _cue_mask(batch: Batch, who: str) -> Tensor:
    cue = batch.meta.get("shortcut_mask")
    if cue is None:
        raise ValueError(f"{who}: needs batch.meta['shortcut_mask'] (B, H, W); use a dataset with a shortcut cue, "
                         "e.g. create_dataset('faces', shortcut='mark')")
    cue = torch.stack([torch.as_tensor(c) for c in cue]) if isinstance(cue, list) else torch.as_tensor(cue)
    if cue.ndim != 3 or cue.shape[0] != len(batch):
        raise ValueError(f"{who}: expected meta['shortcut_mask'] of shape ({len(batch)}, H, W), got {tuple(cue.shape)}")
    return cue.bool()


def _example():
    from xaibench.testing import MetricExample

    g = torch.Generator().manual_seed(0)
    b, s = 16, 32
    cue = torch.zeros(b, s, s, dtype=torch.bool)
    for i in range(b):
        y, x = torch.randint(0, s - 6, (2,), generator=g).tolist()
        cue[i, y:y + 6, x:x + 6] = True
    batch = Batch(inputs=torch.rand(b, 3, s, s, generator=g), targets=torch.zeros(b, dtype=torch.long),
                  ids=[f"s{i}" for i in range(b)], meta={"shortcut_mask": cue})

    def empty(bt: Batch, i: int) -> Batch:
        out = bt.select(list(range(len(bt))))
        out.meta["shortcut_mask"] = out.meta["shortcut_mask"].clone()
        out.meta["shortcut_mask"][i] = False
        return out

    return MetricExample(batch=batch, perfect=Attribution(values=cue.float(), kind="pixel", method="perfect"), empty=empty)


@register_metric("shortcut_relevance", direction="higher", category="shortcut", kinds=("pixel", "token"),
                 undefined=NO_CUE, example=_example)
def shortcut_relevance(attr: Attribution, batch: Batch) -> MetricScores:
    """Share of the positive relevance that falls on the shortcut cue, in [0, 1]. (B,)

    On a model known to rely on the cue (trained with it), a higher share means the method
    reveals that reliance better — the metric's direction. On a model that never saw the cue
    it measures stray relevance, and the method comparison reads the other way round.
    NaN when the sample has no cue or the map has no positive relevance.
    """
    m = attr.pixel_map().float()
    cue = _cue_mask(batch, "shortcut_relevance")
    if m.shape[-2:] != cue.shape[-2:]:
        m = F.interpolate(m[:, None], size=cue.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    pos = m.clamp_min(0).flatten(1)
    total = pos.sum(1)
    score = (pos * cue.flatten(1)).sum(1) / total.clamp_min(1e-30)
    reasons: list[str | None] = [None] * len(score)
    for i, (has_cue, t) in enumerate(zip(cue.flatten(1).any(1).tolist(), total.tolist())):
        if not has_cue:
            reasons[i] = NO_CUE
        elif t <= 0:
            reasons[i] = "no positive relevance"
    bad = torch.tensor([r is not None for r in reasons])
    return MetricScores(torch.where(bad, torch.full_like(score, math.nan), score), reasons)
