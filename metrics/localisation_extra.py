"""Localisation the way the ViT study scored it: boxes, the patch grid, energy, AUROC.

- **Boxes** (``batch.boxes``: per sample a (k, 4) tensor ``x0, y0, x1, y1`` in pixels, exclusive
  end, as the ROI datasets give them): ``pointing_game_box``, ``iou_box``,
  ``energy_pointing_game``. A box is a coarse proxy of the lesion (it holds background too),
  so report these next to the mask scores, not instead of them. A sample with no box scores
  NaN ("no box").
- **Token level** (``token`` attributions, ``extras["grid"] = (h, w)``): ``token_pointing_game``
  and ``token_iou`` score the map on the patch grid, without upsampling: a token is in the
  ground truth when its patch is covered by the mask at least ``cover`` (default: half).
- **Threshold-free pixel scores** against masks: ``auroc`` (how well pixel relevance
  separates mask from background) and ``top_k_intersection`` (Theiner et al. 2021).

Each sample's score depends on that sample alone; maps are used raw. Pixel maps must be at
the ground truth's resolution (the input rule of :mod:`xaibench.metrics.localisation`).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from xaibench import Attribution, Batch, MetricScores, register_metric

from ._rows import mann_whitney_u, positive_sums, row_argmax, row_counts, top_k_rows
from .localisation import EMPTY, binarise, binary_masks, map_and_mask, nan_where

NO_BOX = "no box"
PIXEL_KINDS = ("pixel", "token")


# ------------------------------------------------------------------ helpers

def padded_boxes(boxes: list[Tensor]) -> Tensor:
    """(B, K, 4) float64 boxes, each sample's padded with NaN rows (a NaN box contains nothing)."""
    rows = [torch.as_tensor(bx, dtype=torch.float64).reshape(-1, 4) for bx in boxes]
    k = max([1] + [len(r) for r in rows])
    out = torch.full((len(rows), k, 4), math.nan, dtype=torch.float64)
    for i, r in enumerate(rows):  # B small copies of a list the dataset gives; no per-pixel work
        out[i, : len(r)] = r
    return out


def boxes_to_masks(boxes: list[Tensor], shape: tuple[int, int]) -> Tensor:
    """Rasterise per-sample (k, 4) boxes ``x0, y0, x1, y1`` (exclusive end; clipped to the image)
    into (B, H, W) bool masks, the union of each sample's boxes. Pixel (y, x) is inside a box when
    x0 <= x < x1 and y0 <= y < y1 (fractional corners round to the pixel grid by that rule)."""
    h, w = shape
    pb = padded_boxes(boxes)
    ys = torch.arange(h, dtype=torch.float64)
    xs = torch.arange(w, dtype=torch.float64)
    iny = (ys >= pb[..., 1:2]) & (ys < pb[..., 3:4])  # (B, K, H)
    inx = (xs >= pb[..., 0:1]) & (xs < pb[..., 2:3])  # (B, K, W)
    out = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for j in range(pb.shape[1]):  # box slots (1-4 here), not samples
        out |= iny[:, j, :, None] & inx[:, j, None, :]
    return out


def _map(attr: Attribution, who: str) -> Tensor:
    m = attr.pixel_map()
    if m.ndim != 3:
        raise ValueError(f"{who}: expected a (B, H, W) map, got {tuple(m.shape)}")
    return m.double() if m.dtype == torch.float64 else m.float()


def map_and_boxes(attr: Attribution, batch: Batch, who: str) -> tuple[Tensor, Tensor]:
    """(B, H, W) map and the (B, H, W) bool union of each sample's boxes."""
    m = _map(attr, who)
    if batch.boxes is None or len(batch.boxes) != m.shape[0]:
        raise ValueError(f"{who}: needs batch.boxes, one (k, 4) tensor per sample")
    return m, boxes_to_masks(batch.boxes, tuple(m.shape[1:])).to(m.device)


def _scores(score: Tensor, conds: list[tuple[Tensor, str]]) -> MetricScores:
    return nan_where(score.float(), conds)


def _no_region(region: Tensor) -> Tensor:
    return row_counts(region) == 0


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..n of each row of (B, n) values, ties sharing their average rank (as
    ``scipy.stats.rankdata``), vectorised. (B, n) float64."""
    b, n = x.shape
    s, order = x.sort(dim=1, stable=True)
    pos = torch.arange(n, device=x.device).expand(b, n)
    new = torch.ones_like(s, dtype=torch.bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    start = torch.where(new, pos, torch.zeros_like(pos)).cummax(1).values
    last = torch.ones_like(new)
    last[:, :-1] = new[:, 1:]
    end = torch.where(last, pos, torch.full_like(pos, n)).flip(1).cummin(1).values.flip(1)
    avg = (start + end).double() / 2 + 1
    return torch.empty_like(avg).scatter_(1, order, avg)


# ------------------------------------------------------------------ boxes

def _box_example():
    from xaibench.testing import MetricExample

    g = torch.Generator().manual_seed(0)
    b, s = 12, 32
    boxes = []
    for i in range(b):
        x0, y0 = torch.randint(0, s - 10, (2,), generator=g).tolist()
        bw, bh = torch.randint(4, 10, (2,), generator=g).tolist()
        k = [[x0, y0, x0 + bw, y0 + bh]] + ([[2, 2, 5, 6]] if i % 3 == 0 else [])
        boxes.append(torch.tensor(k, dtype=torch.float32))
    batch = Batch(inputs=torch.rand(b, 3, s, s, generator=g), targets=torch.zeros(b, dtype=torch.long),
                  boxes=boxes, ids=[f"s{i}" for i in range(b)])

    def empty(bt: Batch, i: int) -> Batch:
        out = bt.select(list(range(len(bt))))
        out.boxes[i] = torch.zeros(0, 4)
        return out

    perfect = Attribution(values=boxes_to_masks(boxes, (s, s)).float(), kind="pixel", method="perfect")
    return MetricExample(batch=batch, perfect=perfect, empty=empty)


@register_metric("pointing_game_box", direction="higher", category="localisation", kinds=PIXEL_KINDS,
                 needs=("boxes",), undefined=NO_BOX, example=_box_example)
def pointing_game_box(attr: Attribution, batch: Batch) -> MetricScores:
    """1.0 if the map's maximum lies in any of the sample's boxes, else 0.0; NaN for a sample
    without boxes. Ties take the first maximum in raster order. (B,)

    References: Zhang et al., Top-down neural attention by excitation backprop, 2016 (boxes).
    """
    m = _map(attr, "pointing_game_box")
    if batch.boxes is None or len(batch.boxes) != m.shape[0]:
        raise ValueError("pointing_game_box: needs batch.boxes, one (k, 4) tensor per sample")
    h, w = m.shape[1:]
    pb = padded_boxes(batch.boxes)
    idx = row_argmax(m.flatten(1)).cpu()  # the boxes are CPU tensors
    y, x = (idx // w).double()[:, None], (idx % w).double()[:, None]
    inside = (x >= pb[..., 0]) & (x < pb[..., 2]) & (y >= pb[..., 1]) & (y < pb[..., 3])  # (B, K)
    # a box holds a pixel when some integer lies in [x0, x1) ∩ [0, w) and in [y0, y1) ∩ [0, h)
    any_px = ((pb[..., 0].clamp(min=0).ceil() < pb[..., 2].clamp(max=w))
              & (pb[..., 1].clamp(min=0).ceil() < pb[..., 3].clamp(max=h)))
    return _scores(inside.any(1).float(), [(~any_px.any(1), NO_BOX)])


@register_metric("iou_box", direction="higher", category="localisation", kinds=PIXEL_KINDS,
                 needs=("boxes",), undefined=NO_BOX, example=_box_example)
def iou_box(attr: Attribution, batch: Batch, *,
            threshold: Literal["otsu", "mean", "gt_area"] | Annotated[float, Field(gt=0, lt=1)] = "otsu") -> MetricScores:
    """Intersection over union of the binarised map with the union of the sample's boxes;
    NaN for a sample without boxes. (B,)

    Args:
        threshold: the binarisation rule, as for ``iou``: ``"otsu"``, ``"mean"``, ``"gt_area"``
            (top-k pixels, k = the boxes' area) or a quantile q in (0, 1).
    """
    m, region = map_and_boxes(attr, batch, "iou_box")
    pred = binarise(m, region, threshold)
    inter, union = row_counts(pred & region).float(), row_counts(pred | region).float()
    return _scores(inter / union.clamp_min(1), [(_no_region(region), NO_BOX)])


@register_metric("energy_pointing_game", direction="higher", category="localisation", kinds=PIXEL_KINDS,
                 needs=("boxes",), undefined=NO_BOX, example=_box_example)
def energy_pointing_game(attr: Attribution, batch: Batch) -> MetricScores:
    """Share of the map's positive energy inside the sample's boxes, in [0, 1] (Score-CAM's
    energy-based pointing game: Σ_box L⁺ / Σ L⁺). Negative values are ignored (a min-max
    normalisation would move them into the energy and change the score). NaN without boxes or
    without positive relevance. (B,)

    References: Wang et al., Score-CAM, CVPR-W 2020, section 4.2.
    """
    m, region = map_and_boxes(attr, batch, "energy_pointing_game")
    total, inside = positive_sums(m.flatten(1), region.flatten(1))  # float64: no overflow from float32 maps
    share = inside / total.clamp_min(1e-300)
    return _scores(share, [(_no_region(region), NO_BOX), (total <= 0, "no positive relevance")])


# ------------------------------------------------------------------ token level

def token_grid(attr: Attribution, who: str) -> tuple[Tensor, tuple[int, int]]:
    """(B, h, w) token map on its patch grid."""
    if attr.kind != "token":
        raise ValueError(f"{who}: expected a token attribution, got {attr.kind!r}")
    h, w = (int(v) for v in attr.extras["grid"])
    v = attr.values
    if v.shape[1] != h * w:
        raise ValueError(f"{who}: {v.shape[1]} tokens do not fill the grid {h}x{w}; pass the patch tokens only")
    return (v.double() if v.dtype == torch.float64 else v.float()).reshape(-1, h, w), (h, w)


def token_masks(masks: Tensor, grid: tuple[int, int], cover: float, who: str) -> Tensor:
    """(B, h, w) bool: patches whose area is covered by the mask at least ``cover`` (> 0: any
    covered pixel counts when ``cover`` is tiny). The mask size must be a multiple of the grid."""
    h, w = grid
    H, W = masks.shape[-2:]
    if H % h or W % w:
        raise ValueError(f"{who}: masks {H}x{W} are not a whole number of {h}x{w} patches")
    frac = F.avg_pool2d(masks.float()[:, None], (H // h, W // w))[:, 0]
    return frac >= cover - 1e-9


def _token_example():
    from xaibench.testing import MetricExample

    g = torch.Generator().manual_seed(0)
    b, s, p = 12, 32, 4  # 8x8 patches of 4 px
    masks = torch.zeros(b, s, s, dtype=torch.bool)
    for i in range(b):
        y, x = torch.randint(0, 6, (2,), generator=g).tolist()
        masks[i, y * p:(y + 2) * p, x * p:(x + 1 + i % 2) * p] = True
    tok = F.avg_pool2d(masks.float()[:, None], p)[:, 0].flatten(1)
    batch = Batch(inputs=torch.rand(b, 3, s, s, generator=g), masks=masks, ids=[f"s{i}" for i in range(b)])
    return MetricExample(batch=batch, perfect=Attribution(values=tok, kind="token", method="perfect",
                                                          extras={"grid": (8, 8)}))


Cover = Annotated[float, Field(gt=0, le=1)]


@register_metric("token_pointing_game", direction="higher", category="localisation", kinds=("token",),
                 needs=("masks",), undefined=EMPTY, example=_token_example)
def token_pointing_game(attr: Attribution, batch: Batch, *, cover: Cover = 0.5) -> MetricScores:
    """1.0 if the highest token's patch is a ground-truth patch, scored on the patch grid with no
    upsampling; NaN when no patch is covered enough. Ties take the first token. (B,)

    Args:
        cover: a patch is ground truth when at least this share of its pixels is in the mask.
    """
    v, grid = token_grid(attr, "token_pointing_game")
    gt = token_masks(binary_masks(batch.masks, "token_pointing_game"), grid, cover, "token_pointing_game")
    hit = gt.flatten(1).gather(1, v.flatten(1).argmax(1, keepdim=True))[:, 0].float()
    return _scores(hit, [(_no_region(gt), EMPTY)])


@register_metric("token_iou", direction="higher", category="localisation", kinds=("token",),
                 needs=("masks",), undefined=EMPTY, example=_token_example)
def token_iou(attr: Attribution, batch: Batch, *, cover: Cover = 0.5,
              threshold: Literal["otsu", "mean", "gt_area"] | Annotated[float, Field(gt=0, lt=1)] = "gt_area") -> MetricScores:
    """IoU of the binarised token map with the ground-truth patches, on the patch grid; NaN when
    no patch is covered enough. (B,)

    Args:
        cover: a patch is ground truth when at least this share of its pixels is in the mask.
        threshold: binarisation of the token map (as ``iou``); ``"gt_area"`` (default) keeps as
            many tokens as there are ground-truth patches.
    """
    v, grid = token_grid(attr, "token_iou")
    gt = token_masks(binary_masks(batch.masks, "token_iou"), grid, cover, "token_iou")
    pred = binarise(v, gt, threshold)
    inter, union = row_counts(pred & gt).float(), row_counts(pred | gt).float()
    return _scores(inter / union.clamp_min(1), [(_no_region(gt), EMPTY)])


# ------------------------------------------------------------------ threshold-free, masks

@register_metric("auroc", direction="higher", category="localisation", kinds=PIXEL_KINDS + ("voxel",),
                 needs=("masks",), undefined=EMPTY)
def auroc(attr: Attribution, batch: Batch) -> MetricScores:
    """Area under the ROC curve of pixel relevance as a classifier of mask vs background pixels
    (Mann-Whitney U / (n_in · n_out), ties counted half), in [0, 1]; 0.5 = chance. NaN for an
    empty mask or a mask covering the whole image. (B,)
    """
    m, masks = map_and_mask(attr, batch, "auroc")
    flat, lab = m.flatten(1), masks.flatten(1)
    n_pos = row_counts(lab).cpu()
    n_neg = lab.shape[1] - n_pos
    u = mann_whitney_u(flat, lab)
    score = u / (n_pos * n_neg).double().clamp_min(1)
    return _scores(score, [(n_pos == 0, EMPTY), (n_neg == 0, "mask covers the whole image")])


@register_metric("top_k_intersection", direction="higher", category="localisation",
                 kinds=PIXEL_KINDS + ("voxel",), needs=("masks",), undefined=EMPTY)
def top_k_intersection(attr: Attribution, batch: Batch, *, k: Annotated[int, Field(ge=1)] = 1000) -> MetricScores:
    """Share of the map's k highest pixels that lie in the mask (Theiner et al. 2021), ties broken
    in raster order; k is capped at the image size. NaN for an empty mask. (B,)

    Args:
        k: the number of top pixels (Quantus' default 1000, for 224² images).
    """
    m, masks = map_and_mask(attr, batch, "top_k_intersection")
    flat, lab = m.flatten(1), masks.flatten(1)
    kk = min(int(k), flat.shape[1])
    take = top_k_rows(flat, kk)  # ties at the k-th value: the first ones in raster order
    score = row_counts(take & lab).double() / kk
    return _scores(score, [(_no_region(masks), EMPTY)])
