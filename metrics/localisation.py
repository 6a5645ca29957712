"""Localisation metrics: does the map point at / cover the ground-truth region?

All accept ``pixel`` maps, ``token`` attributions that carry an upsampled
``extras["pixel"]`` and ``voxel`` maps (B, D, H, W) against (B, D, H, W) masks. A sample with an empty mask scores NaN ("empty mask"); a map with any
NaN/Inf scores NaN ("non-finite attribution", see :meth:`xaibench.Metric.evaluate`). Each
sample's score depends only on that sample. Maps are used raw: no normalisation unless a
threshold rule implies it.

Input rule (nothing is resampled or thresholded behind the caller's back; a ``ValueError``
says what to do instead):

- the map must have the masks' resolution (B, H, W). A map of another size is refused: how to
  resample it (bilinear, nearest, box) changes the score, so it is the caller's explicit step,
  e.g. ``F.interpolate(m[:, None], size=masks.shape[-2:], mode="bilinear")[:, 0]``. Explainers
  return maps at input resolution and datasets give masks at input resolution, so a benchmark
  never meets this; a dataset that resamples masks on load documents it.
- masks must be binary: bool, or numbers that are all 0 or 1. A soft mask (any other value,
  NaN included) is refused: the cut that binarises it is a protocol choice
  (``masks >= 0.5``) the caller makes and reports.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from xaibench import Attribution, Batch, MetricScores, register_metric

from ._rows import positive_sums, row_argmax, row_counts, top_k_rows

EMPTY = "empty mask"


def binary_masks(masks: Tensor, who: str) -> Tensor:
    """``masks`` as bool; numbers must all be 0 or 1.

    Raises:
        ValueError: a soft mask (a value other than 0 and 1, NaN included).
    """
    if masks.dtype == torch.bool:
        return masks
    soft = (masks != 0) & (masks != 1)
    if bool(soft.any()):
        vals = masks[soft]
        raise ValueError(
            f"{who}: masks must be binary (bool, or numbers all 0 or 1), got a soft {masks.dtype} mask with "
            f"{int(soft.sum())} values other than 0/1 (e.g. {float(vals[0])}); binarise it first with the cut "
            "your protocol states, e.g. batch.masks = batch.masks >= 0.5")
    return masks != 0


def map_and_mask(attr: Attribution, batch: Batch, who: str) -> tuple[Tensor, Tensor]:
    """(B, H, W) float map (float64 maps stay float64) and the (B, H, W) bool masks, at one resolution;
    (B, D, H, W) both for ``voxel`` attributions.

    Raises:
        ValueError: the map is not (B, H, W) (or (B, D, H, W) for voxels), the masks are soft,
            or the two differ in size (see the module's input rule).
    """
    m = attr.values if attr.kind == "voxel" else attr.pixel_map()
    m = m.double() if m.dtype == torch.float64 else m.float()
    masks = binary_masks(batch.masks, who)
    want = 4 if attr.kind == "voxel" else 3
    if m.ndim != want or masks.ndim != want:
        shape = "(B, D, H, W)" if want == 4 else "(B, H, W)"
        raise ValueError(f"{who}: expected attr and masks {shape} for kind {attr.kind!r}, got attr "
                         f"{tuple(m.shape)} and masks {tuple(masks.shape)}")
    if m.shape[1:] != masks.shape[1:]:
        raise ValueError(
            f"{who}: the map is {tuple(m.shape[1:])} but the masks are {tuple(masks.shape[1:])}; maps are "
            "scored at the masks' resolution and never resampled silently. Resample explicitly (the rule is "
            "part of your protocol), e.g. F.interpolate(m[:, None], size=masks.shape[-2:], mode='bilinear')[:, 0]")
    return m, masks


def nan_where(scores: Tensor, conds: list[tuple[Tensor, str]]) -> MetricScores:
    """``scores`` with NaN wherever a (B,) condition holds, the first matching condition's text as
    the reason (conditions may sit on another device than the scores)."""
    reasons: list[str | None] = [None] * len(scores)
    for cond, why in conds:
        cond = cond.to(scores.device)  # row kernels answer on the CPU, device maps on their device
        scores = torch.where(cond, torch.full_like(scores, math.nan), scores)
        for i in torch.nonzero(cond).flatten().tolist():
            reasons[i] = reasons[i] or why
    return MetricScores(scores, reasons)


def _with_empty(scores: Tensor, masks: Tensor, extra: list[tuple[Tensor, str]] = ()) -> MetricScores:
    return nan_where(scores, [(row_counts(masks) == 0, EMPTY), *extra])


def disk_dilate(masks: Tensor, radius: float) -> Tensor:
    """Pixels with a mask pixel at Euclidean distance < radius (TorchRay's tolerance); a ball
    for (B, D, H, W) masks."""
    if radius <= 0:
        return masks
    r = int(math.ceil(radius))
    ax = torch.arange(-r, r + 1, dtype=torch.float32, device=masks.device)
    if masks.ndim == 4:
        kernel = ((ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2) < radius**2).float()
        return F.conv3d(masks.float()[:, None], kernel[None, None], padding=r)[:, 0] > 0
    kernel = ((ax[:, None] ** 2 + ax[None, :] ** 2) < radius**2).float()[None, None]
    return F.conv2d(masks.float()[:, None], kernel, padding=r)[:, 0] > 0


@register_metric("pointing_game", direction="higher", category="localisation", kinds=("pixel", "token", "voxel"),
                 needs=("masks",), undefined=EMPTY)
def pointing_game(attr: Attribution, batch: Batch, *, tolerance: Annotated[float, Field(ge=0)] = 0.0) -> MetricScores:
    """1.0 if the map's maximum lies in the mask (or within ``tolerance`` px of it, strict <,
    as TorchRay), else 0.0; NaN for an empty mask. Ties take the first maximum in raster
    order; a flat map therefore points at the top-left pixel. (B,)

    Args:
        tolerance: a hit within this many pixels of the mask (Euclidean, strict <) still counts;
            0 = the maximum must lie in the mask.

    References: Zhang et al., Top-down neural attention by excitation backprop, 2016.
    """
    m, masks = map_and_mask(attr, batch, "pointing_game")
    region = disk_dilate(masks, float(tolerance))
    idx = row_argmax(m.flatten(1))
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
    hist = torch.zeros(b, nbins, dtype=torch.float64, device=m.device).scatter_add_(1, idx, torch.ones_like(flat))
    centres = lo[:, None] + (torch.arange(nbins, dtype=torch.float64, device=m.device)[None] + 0.5) * width[:, None]
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
        pred = top_k_rows(flat, row_counts(masks)).to(flat.device)
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < float(threshold) < 1:
        pred = flat > torch.quantile(flat.double(), float(threshold), dim=1, keepdim=True).to(flat.dtype)
    else:
        raise ValueError(f"iou: threshold must be 'otsu', 'mean', 'gt_area' or a quantile in (0, 1), got {threshold!r}")
    return pred.reshape(m.shape)


@register_metric("iou", direction="higher", category="localisation", kinds=("pixel", "token", "voxel"),
                 needs=("masks",), undefined=EMPTY)
def iou(attr: Attribution, batch: Batch, *,
        threshold: Literal["otsu", "mean", "gt_area"] | Annotated[float, Field(gt=0, lt=1)] = "otsu") -> MetricScores:
    """Intersection over union of the binarised map with the mask; NaN for an empty mask. (B,)

    The threshold is part of the score's protocol, so reports only compare IoUs measured with
    the same rule.

    Args:
        threshold: the binarisation rule (see :func:`binarise`): ``"otsu"`` (per map),
            ``"mean"`` (above the map's mean), ``"gt_area"`` (the top-k pixels, k = the mask's
            area) or a quantile q in (0, 1) (above the map's q-quantile).
    """
    m, masks = map_and_mask(attr, batch, "iou")
    pred = binarise(m, masks, threshold)
    inter = row_counts(pred & masks).float()
    union = row_counts(pred | masks).float()
    return _with_empty(inter / union.clamp_min(1), masks)


@register_metric("relevance_mass", direction="higher", category="localisation", kinds=("pixel", "token", "voxel"),
                 needs=("masks",), undefined=EMPTY)
def relevance_mass(attr: Attribution, batch: Batch) -> MetricScores:
    """Share of the positive relevance that falls inside the mask, in [0, 1] (negative
    relevance is ignored, so signed maps stay in range). NaN for an empty mask or a map with
    no positive relevance. (B,)

    References: Arras et al., CLEVR-XAI, 2022 (relevance mass accuracy).
    """
    m, masks = map_and_mask(attr, batch, "relevance_mass")
    total, inside = positive_sums(m.flatten(1), masks.flatten(1))  # float64: no overflow from float32 maps
    share = (inside / total.clamp_min(1e-300)).to(m.dtype)
    return _with_empty(share, masks, [(total <= 0, "no positive relevance"),
                                      (~torch.isfinite(total), "positive relevance too large to sum")])


@register_metric("relevance_rank", direction="higher", category="localisation", kinds=("pixel", "token", "voxel"),
                 needs=("masks",), undefined=EMPTY)
def relevance_rank(attr: Attribution, batch: Batch) -> MetricScores:
    """Share of the k highest-scoring pixels that lie in the mask, k = the mask's area
    (threshold-free; ties broken in raster order). NaN for an empty mask. (B,)

    References: Arras et al., CLEVR-XAI, 2022 (relevance rank accuracy).
    """
    m, masks = map_and_mask(attr, batch, "relevance_rank")
    k = row_counts(masks)
    pred = top_k_rows(m.flatten(1), k)
    return _with_empty(row_counts(pred & masks.flatten(1)).float() / k.float().clamp_min(1), masks)
