"""Localisation metrics: does the map point at / cover the ground-truth region?

All accept ``pixel`` maps and ``token`` attributions that carry an upsampled
``extras["pixel"]``; maps are bilinearly resized to the mask when sizes differ. A sample
with an empty mask scores NaN ("empty mask"). Each sample's score depends only on that
sample. Maps are used raw: no normalisation unless a threshold rule implies it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from xaibench import Attribution, Batch, MetricScores, register_metric

EMPTY = "empty mask"


def map_and_mask(attr: Attribution, batch: Batch, who: str) -> tuple[Tensor, Tensor]:
    """(B, H, W) float map resized to the masks, and the (B, H, W) bool masks."""
    m = attr.pixel_map().float()
    masks = batch.masks.bool()
    if m.ndim != 3:
        raise ValueError(f"{who}: expected attr (B, H, W), got {tuple(m.shape)}")
    if m.shape[-2:] != masks.shape[-2:]:
        m = F.interpolate(m[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return m, masks


def _with_empty(scores: Tensor, masks: Tensor, extra: list[tuple[Tensor, str]] = ()) -> MetricScores:
    empty = masks.flatten(1).sum(1) == 0
    reasons: list[str | None] = [None] * len(scores)
    for cond, why in [(empty, EMPTY), *extra]:
        scores = torch.where(cond, torch.full_like(scores, math.nan), scores)
        for i in torch.nonzero(cond).flatten().tolist():
            reasons[i] = reasons[i] or why
    return MetricScores(scores, reasons)


def disk_dilate(masks: Tensor, radius: float) -> Tensor:
    """Pixels with a mask pixel at Euclidean distance < radius (TorchRay's tolerance)."""
    if radius <= 0:
        return masks
    r = int(math.ceil(radius))
    ax = torch.arange(-r, r + 1, dtype=torch.float32)
    kernel = ((ax[:, None] ** 2 + ax[None, :] ** 2) < radius**2).float()[None, None]
    return F.conv2d(masks.float()[:, None], kernel, padding=r)[:, 0] > 0


@register_metric("pointing_game", direction="higher", category="localisation", kinds=("pixel", "token"),
                 needs=("masks",), undefined=EMPTY)
def pointing_game(attr: Attribution, batch: Batch, *, tolerance: float = 0.0) -> MetricScores:
    """1.0 if the map's maximum lies in the mask (or within ``tolerance`` px of it, strict <,
    as TorchRay), else 0.0; NaN for an empty mask. Ties take the first maximum in raster
    order; a flat map therefore points at the top-left pixel. (B,)

    References: Zhang et al., Top-down neural attention by excitation backprop, 2016.
    """
    m, masks = map_and_mask(attr, batch, "pointing_game")
    region = disk_dilate(masks, float(tolerance))
    idx = m.flatten(1).argmax(1)
    hit = region.flatten(1).gather(1, idx[:, None])[:, 0].float()
    return _with_empty(hit, masks)


# ------------------------------------------------------------------ binarisation rules

def otsu_threshold(m: Tensor, nbins: int = 256) -> Tensor:
    """Per-map Otsu threshold (B,), the same rule as ``skimage.filters.threshold_otsu``:
    a ``nbins`` histogram over each map's own range, threshold at a bin centre."""
    b = m.shape[0]
    flat = m.flatten(1).double()
    lo, hi = flat.min(1).values, flat.max(1).values
    width = (hi - lo) / nbins
    safe = torch.where(width > 0, width, torch.ones_like(width))
    idx = ((flat - lo[:, None]) / safe[:, None]).floor().clamp(0, nbins - 1).long()
    hist = torch.zeros(b, nbins, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(flat))
    centres = lo[:, None] + (torch.arange(nbins, dtype=torch.float64)[None] + 0.5) * width[:, None]
    w1 = hist.cumsum(1)
    w2 = hist.flip(1).cumsum(1).flip(1)
    m1 = (hist * centres).cumsum(1) / w1.clamp_min(1e-300)
    m2 = ((hist * centres).flip(1).cumsum(1) / w2.flip(1).clamp_min(1e-300)).flip(1)
    var = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    thr = centres.gather(1, var.argmax(1, keepdim=True))[:, 0]
    return torch.where(width > 0, thr, hi).to(m.dtype)


def binarise(m: Tensor, masks: Tensor, threshold: str | float) -> Tensor:
    """Binarise (B, H, W) maps by a named rule.

    Rules: ``"otsu"`` (per map, as CheXlocalize), ``"mean"`` (above the map's mean, as
    Chefer's segmentation evaluation after min-max, which does not move the cut), ``"gt_area"``
    (the top-k pixels, k = the mask's area; threshold-free), or a float q in (0, 1): above
    the map's q-quantile. A flat map gives an empty prediction under every rule but gt_area.
    """
    flat = m.flatten(1)
    if threshold == "otsu":
        pred = flat > otsu_threshold(m)[:, None]
    elif threshold == "mean":
        pred = flat > flat.mean(1, keepdim=True)
    elif threshold == "gt_area":
        k = masks.flatten(1).sum(1)
        order = torch.argsort(flat, dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
        pred = rank < k[:, None]
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < float(threshold) < 1:
        pred = flat > torch.quantile(flat.double(), float(threshold), dim=1, keepdim=True).to(flat.dtype)
    else:
        raise ValueError(f"iou: threshold must be 'otsu', 'mean', 'gt_area' or a quantile in (0, 1), got {threshold!r}")
    return pred.reshape(m.shape)


@register_metric("iou", direction="higher", category="localisation", kinds=("pixel", "token"),
                 needs=("masks",), undefined=EMPTY)
def iou(attr: Attribution, batch: Batch, *, threshold: str | float = "otsu") -> MetricScores:
    """Intersection over union of the binarised map with the mask; NaN for an empty mask. (B,)

    ``threshold`` names the binarisation rule (see :func:`binarise`); it is part of the
    score's protocol, so reports only compare IoUs measured with the same rule.
    """
    m, masks = map_and_mask(attr, batch, "iou")
    pred = binarise(m, masks, threshold)
    inter = (pred & masks).flatten(1).sum(1).float()
    union = (pred | masks).flatten(1).sum(1).float()
    return _with_empty(inter / union.clamp_min(1), masks)


@register_metric("relevance_mass", direction="higher", category="localisation", kinds=("pixel", "token"),
                 needs=("masks",), undefined=EMPTY)
def relevance_mass(attr: Attribution, batch: Batch) -> MetricScores:
    """Share of the positive relevance that falls inside the mask, in [0, 1] (negative
    relevance is ignored, so signed maps stay in range). NaN for an empty mask or a map with
    no positive relevance. (B,)

    References: Arras et al., CLEVR-XAI, 2022 (relevance mass accuracy).
    """
    m, masks = map_and_mask(attr, batch, "relevance_mass")
    pos = m.clamp_min(0).flatten(1)
    total = pos.sum(1)
    inside = (pos * masks.flatten(1)).sum(1)
    return _with_empty(inside / total.clamp_min(1e-30), masks, [(total <= 0, "no positive relevance")])


@register_metric("relevance_rank", direction="higher", category="localisation", kinds=("pixel", "token"),
                 needs=("masks",), undefined=EMPTY)
def relevance_rank(attr: Attribution, batch: Batch) -> MetricScores:
    """Share of the k highest-scoring pixels that lie in the mask, k = the mask's area
    (threshold-free; ties broken in raster order). NaN for an empty mask. (B,)

    References: Arras et al., CLEVR-XAI, 2022 (relevance rank accuracy).
    """
    m, masks = map_and_mask(attr, batch, "relevance_rank")
    pred = binarise(m, masks, "gt_area")
    k = masks.flatten(1).sum(1).float()
    return _with_empty((pred & masks).flatten(1).sum(1).float() / k.clamp_min(1), masks)
