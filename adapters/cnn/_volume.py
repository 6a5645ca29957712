"""What lets the CNN methods run on volumes: input checks for (B, C, H, W) images or
(B, C, D, H, W) volumes, and ``pixel`` / ``voxel`` attributions chosen by the input.

A method that works on both returns a ``pixel`` Attribution (B, H, W) for images and a
``voxel`` Attribution (B, D, H, W) for volumes, always at input resolution.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from xaibench.explainers import Explainer
from xaibench.types import Attribution

#: ``kinds`` of a CNN method that also explains volumes, and the contract fixture of ``voxel``
#: (the zoo 3-D CNN on 16³ volumes): the contract suite runs such a method on both.
VOLUME_KINDS: tuple[str, ...] = ("pixel", "voxel")
VOLUME_FIXTURES: dict[str, str] = {"voxel": "cnn3d"}


def check_spatial(inputs: Tensor, who: str) -> int:
    """The number of spatial dims (2 or 3) of ``inputs``; ValueError unless it is a floating
    (B, C, H, W) or (B, C, D, H, W) tensor."""
    if not isinstance(inputs, Tensor):  # ValueError, as for every bad input of an explainer (the contract)
        raise ValueError(f"{who}: expected inputs as a torch.Tensor (B, C, H, W) or (B, C, D, H, W), "  # noqa: TRY004
                         f"got {type(inputs).__name__}")
    if inputs.ndim not in (4, 5):
        raise ValueError(f"{who}: expected images (B, C, H, W) or volumes (B, C, D, H, W), got shape "
                         f"{tuple(inputs.shape)}; add a batch dimension with inputs.unsqueeze(0)")
    if not inputs.is_floating_point():
        raise ValueError(f"{who}: expected floating-point inputs, got {inputs.dtype}")
    return inputs.ndim - 2


def attribution(explainer: Explainer, values: Tensor, **extras: Any) -> Attribution:
    """A ``pixel`` (B, H, W) or ``voxel`` (B, D, H, W) Attribution of ``explainer``, by ``values``' shape."""
    if values.ndim == 3:
        return explainer._attribution(values, **extras)
    return Attribution(values=values.detach(), kind="voxel", method=explainer.name,
                       params=explainer.settings.record(), extras=extras)


def upsample(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """(B, h, w) or (B, d, h, w) maps to ``size``: bilinear / trilinear, align_corners=False
    (MONAI's and pytorch-grad-cam's rule)."""
    mode = "bilinear" if maps.ndim == 3 else "trilinear"
    return F.interpolate(maps[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]
