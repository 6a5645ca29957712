"""Occlusion sensitivity for CNNs (``cnn.occlusion``), with many windows per forward pass.

Occlusion (Zeiler & Fergus 2014): slide a window over the image, replace the
pixels under it (all channels) by a baseline, and record how much the target logit drops.
A pixel's value is the mean drop over the windows that cover it — exactly captum's
``Occlusion`` with ``sliding_window_shapes=(C, h, w)``, the same strides and baseline.
Windows start at multiples of the stride, ``ceil((H - h) / stride) + 1`` per axis, the last
one cut at the border (so every pixel is covered when stride <= window).

Occlusion is almost only forward passes: the perturbed images are built for a whole chunk
of windows (and samples) at once with one ``torch.where``, one forward scores the chunk, and
one matrix product spreads the drops back onto the pixels.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Annotated, Literal

import torch
from pydantic import Field, StrictInt
from torch import Tensor

from xaibench import register_explainer
from xaibench.explainers import Explainer, Target, model_guard, resolve_target
from xaibench.types import Attribution

from ._common import BaselineRule, make_baseline
from .incremental import occlusion_drops
from ._volume import VOLUME_FIXTURES, VOLUME_KINDS, attribution, check_spatial

_Side = Annotated[StrictInt, Field(ge=1)]
#: A window size or stride: one positive int (square) or (h, w) positive ints.
Size2 = _Side | tuple[_Side, _Side]
#: As :data:`Size2`, or (d, h, w) for volumes.
SizeN = _Side | tuple[_Side, _Side] | tuple[_Side, _Side, _Side]


def _sides(v: SizeN, nd: int, what: str, who: str) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * nd
    if len(v) != nd:
        raise ValueError(f"{who}: {what} {tuple(v)} has {len(v)} sides but the inputs have {nd} spatial dims; "
                         f"give an int or {nd} sides")
    return tuple(int(i) for i in v)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis (captum's count and placement)."""
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


PIXELS_PER_FORWARD = 200_000
#: Volumes want larger batches: the zoo 3-D CNN (8-24 channels) took 0.6-1.2 s for 96 volumes of
#: 32³ in batches of 48, 0.5-2.7 s in batches of 16 and 1.7-7.8 s in batches of 6 (2 loaded cores).
VOXELS_PER_FORWARD = 1_600_000


def auto_batch_size(*sizes: int) -> int:
    """Occluded images per forward pass for (h, w) images or (d, h, w) volumes: ~PIXELS_PER_FORWARD
    pixels (voxels), 1..256."""
    return max(1, min(256, PIXELS_PER_FORWARD // math.prod(sizes)))


def auto_volume_batch_size(*sizes: int) -> int:
    """Occluded volumes per forward pass for (d, h, w) volumes: ~VOXELS_PER_FORWARD voxels, 1..256."""
    return max(1, min(256, VOXELS_PER_FORWARD // math.prod(sizes)))


@functools.lru_cache(maxsize=16)
def window_masks_nd(shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """(P, *shape) bool masks of the P occlusion windows, row-major over window positions."""
    starts = [window_starts(n, k, s) for n, k, s in zip(shape, window, stride)]
    corners = list(itertools.product(*starts))
    m = torch.zeros(len(corners), *shape, dtype=torch.bool)
    for i, c in enumerate(corners):
        m[(i, *(slice(a, a + k) for a, k in zip(c, window)))] = True
    return m


@functools.lru_cache(maxsize=16)
def window_corners_nd(shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """(P, nd) long: the first index of each window's full ``window``-sized box, in the order of
    :func:`window_masks_nd` (a window cut at the border: its box shifted inside the image)."""
    starts = [[min(a, n - k) for a in window_starts(n, k, s)] for n, k, s in zip(shape, window, stride)]
    return torch.tensor(list(itertools.product(*starts)), dtype=torch.long).view(-1, len(shape))


def window_masks(h: int, w: int, window: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """(P, h, w) bool masks of the P occlusion windows, row-major over window positions."""
    return window_masks_nd((h, w), tuple(window), tuple(stride))


@register_explainer("cnn.occlusion")
class Occlusion(Explainer):
    """Occlusion sensitivity: mean drop of the target logit over the windows covering a pixel.

    Volumes (B, C, D, H, W) are occluded with (d, h, w) boxes and give a ``voxel`` Attribution
    (B, D, H, W). Where MONAI's ``OcclusionSensitivity`` (constant ``mode``, ``overlap = 1 -
    stride / window``, no activation) places the same windows, i.e. when (size - window) is a
    multiple of the stride on every axis, its map is ``logit - ours`` (it reports the mean
    occluded logit over the windows covering a voxel, we the mean drop); otherwise MONAI moves
    its last window flush to the border where ours is cut at the border (captum's rule).

    Returns:
        a ``pixel`` Attribution (B, H, W) (``voxel`` (B, D, H, W) for volumes), signed (positive:
        occluding the region lowers the target logit), the same value for every channel of a
        pixel; ``extras["target"]``.
    """

    kind = "pixel"
    kinds = VOLUME_KINDS
    kind_fixtures = VOLUME_FIXTURES

    class Settings(Explainer.Settings):
        window: SizeN = 10
        """Window side in pixels, an int or (h, w) ((d, h, w) for volumes) (10: the facial-CNN study's 10×10
        square); it spans all channels."""
        stride: SizeN = 5
        """Step between windows in pixels, an int or (h, w) ((d, h, w) for volumes)."""
        baseline: BaselineRule = 0.0
        """What replaces the window: a number (0.0 = black), ``"mean"`` (the image's per-channel
        mean) or ``"blur"`` (the image blurred with ``blur_sigma`` px)."""
        blur_sigma: Annotated[float, Field(gt=0)] = 5.0
        """Gaussian sigma of the ``"blur"`` baseline in pixels."""
        batch_size: Annotated[int, Field(ge=1)] | None = None
        """Occluded images per forward pass; None picks about :data:`PIXELS_PER_FORWARD` pixels
        per pass (15 images of 112², 48 of 64²; :data:`VOXELS_PER_FORWARD` for volumes, 48 of 32³): CPU forwards were fastest there (larger batches
        spill the caches: resnet18 at 112² took 1.7 s per image with 16 per pass, 2.2 s with 64
        and 3.0 s with 484)."""
        engine: Literal["auto", "incremental", "plain"] = "auto"
        """``"incremental"``: exact incremental inference (Krypton, :mod:`.incremental`): each layer
        is recomputed only where a window's receptive field reaches, from the cached unoccluded
        activations (images and volumes, torch.fx-traceable CNNs; ``batch_size`` None: 64 windows
        per pass, 128 for volumes); ``"plain"``: every occluded image through the whole model;
        ``"auto"``: incremental where the model can be traced, else plain. ``extras["engine"]`` names the engine that ran
        (and why incremental could not)."""

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        nd = check_spatial(inputs, self.name)
        p = self.settings
        window, stride = _sides(p.window, nd, "window", self.name), _sides(p.stride, nd, "stride", self.name)
        b, shape = inputs.shape[0], tuple(inputs.shape[2:])
        if any(k > n for k, n in zip(window, shape)):
            raise ValueError(f"{self.name}: window {window} larger than the input {shape}; use a smaller window")
        auto = auto_volume_batch_size if nd == 3 else auto_batch_size
        bs = auto(*shape) if p.batch_size is None else p.batch_size
        x = inputs.detach()
        base = make_baseline(x, p.baseline, self.name, float(p.blur_sigma))
        masks = window_masks_nd(shape, window, stride).to(x.device)
        n = masks.shape[0]
        drops = torch.empty(b * n, dtype=x.dtype, device=x.device)
        with model_guard(self.model), torch.no_grad():
            logits = self.model(x)
            t = resolve_target(logits, target)
            ref = logits.gather(1, t[:, None])[:, 0]
            engine = occlusion_drops(self.model, p.engine, x, base, masks, window, t, ref, drops, p.batch_size,
                                     window_corners_nd(shape, window, stride).to(x.device))
            for s in range(b * n if engine == "incremental" else 0, b * n, bs):  # the plain forwards
                j = torch.arange(s, min(s + bs, b * n), device=x.device)
                i, k = j // n, j % n
                if b == 1:  # broadcast the one image and baseline instead of gathering copies
                    occluded = torch.where(masks[k][:, None], base, x)
                else:
                    occluded = torch.where(masks[k][:, None], base[i], x[i])
                drops[s:s + len(j)] = ref[i] - self.model(occluded).gather(1, t[i][:, None])[:, 0]
        if nd == 3:
            values = spread_boxes(drops.view(b, n), shape, window, stride)
        else:
            flat = masks.view(n, -1).to(x.dtype)
            values = (drops.view(b, n) @ flat) / flat.sum(0).clamp_min(1)
        return attribution(self, values.view(b, *shape), target=t, n_windows=n, engine=engine)


def spread_boxes(drops: Tensor, shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """Mean of the windows' drops over the windows covering each voxel, (B, P) -> (B, *shape).

    The windows' sum is a transposed convolution of the (B, *grid) drops with a ones kernel of the
    window's size and the stride; windows cut at the border (captum's rule) are the output cropped
    to ``shape``. The same numbers as the (B, P) @ (P, voxels) mask product, without the (P, voxels)
    float masks (45 MB for 343 windows of 32³)."""
    grid = tuple(len(window_starts(n, k, st)) for n, k, st in zip(shape, window, stride))
    ones = torch.ones(1, 1, *window, dtype=drops.dtype, device=drops.device)
    up = {2: torch.nn.functional.conv_transpose2d, 3: torch.nn.functional.conv_transpose3d}[len(shape)]
    crop = (slice(None), 0, *(slice(0, n) for n in shape))
    total = up(drops.view(-1, 1, *grid), ones, stride=stride)[crop]
    counts = up(torch.ones(1, 1, *grid, dtype=drops.dtype, device=drops.device), ones, stride=stride)[crop]
    return total / counts.clamp_min(1)
