"""Baseline attributions every method must beat: ``random`` and a ``centre`` prior.

A baseline takes an attribution of a real method (for its kind and shape) and the batch,
and returns an attribution of the same kind, or ``None`` where it does not apply. Each
sample's baseline depends only on the seed and that sample's id, never on the batch.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import sample_rng
from .registry import Registry
from .types import Attribution, Batch

BaselineFn = Callable[[Attribution, Batch, int], "Attribution | None"]


#: Baselines ``fn(like, batch, seed, *, settings...) -> Attribution | None``; their settings are
#: the typed keyword-only parameters.
BASELINES: Registry[BaselineFn] = Registry("baseline", key_pattern=r"_?[a-z][a-z0-9_]*", key_form="lower_snake")

#: ``@register_baseline("random")``: decorator registering a baseline function.
register_baseline = BASELINES.register


def list_baselines(pattern: str | None = None) -> list[str]:
    return BASELINES.names(pattern)


def _ids(batch: Batch) -> list[str]:
    return batch.ids if batch.ids is not None else [str(i) for i in range(len(batch))]


def _rand(shape: tuple[int, ...], seed: int, sid: str, signed: bool = False) -> Tensor:
    rng = sample_rng("baseline.random", seed, sid)
    return torch.from_numpy(rng.standard_normal(shape) if signed else rng.random(shape)).float()


def _pixel_from_tokens(tok: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    return F.interpolate(tok.reshape(-1, 1, *grid), size=size, mode="bilinear", align_corners=False)[:, 0]


@register_baseline("random")
def random_baseline(like: Attribution, batch: Batch, seed: int = 0, *, grid: int = 7) -> Attribution:
    """Uniform random scores; for pixel maps, CAM-like (a random ``grid``×``grid`` map upsampled);
    for ``event_vector`` attributions, standard-normal vectors (isotropic directions: uniform
    draws would all point into the positive orthant and bias direction metrics).

    Args:
        grid: side of the random low-resolution map that pixel maps are upsampled from.
    """
    v = like.values
    extras: dict = {}
    if like.kind == "pixel":
        h, w = v.shape[-2:]
        low = torch.stack([_rand((grid, grid), seed, s) for s in _ids(batch)])
        values = _pixel_from_tokens(low, (grid, grid), (h, w)).to(v.device)  # drawn on the CPU: same on every device
    else:
        signed = like.kind == "event_vector"
        values = torch.stack([_rand(tuple(v.shape[1:]), seed, s, signed) for s in _ids(batch)]).to(v.device)
        if like.kind == "token":
            extras["grid"] = like.extras["grid"]
            if "pixel" in like.extras:
                extras["pixel"] = _pixel_from_tokens(values, like.extras["grid"], like.extras["pixel"].shape[-2:])
    return Attribution(values=values, kind=like.kind, method="baseline.random", params={"seed": seed, "grid": grid}, extras=extras)


def _gauss(*sides: int, sigma: float) -> Tensor:
    """A Gaussian centred in a (h, w) or (d, h, w) grid, coordinates as fractions of each side."""
    r2 = sum(((torch.arange(n, dtype=torch.float32) + 0.5) / n - 0.5).reshape([-1 if i == j else 1 for j in range(len(sides))]) ** 2
             for i, n in enumerate(sides))
    return torch.exp(-r2 / (2 * sigma**2))


@register_baseline("centre")
def centre_baseline(like: Attribution, batch: Batch, seed: int = 0, *, sigma: float = 0.25) -> Attribution | None:
    """A centred Gaussian; for pixel, token and voxel maps (a 3-D Gaussian at the volume's centre).

    Args:
        sigma: the Gaussian's standard deviation as a fraction of the image (volume) side.
    """
    b, dev = like.batch_size, like.values.device
    if like.kind in ("pixel", "voxel"):
        sides = tuple(like.values.shape[1:])
        return Attribution(values=_gauss(*sides, sigma=sigma).to(dev).expand(b, *sides).clone(), kind=like.kind,
                           method="baseline.centre", params={"sigma": sigma})
    if like.kind == "token":
        gh, gw = like.extras["grid"]
        tok = _gauss(gh, gw, sigma=sigma).to(dev).reshape(1, -1).expand(b, -1).clone()
        extras = {"grid": (gh, gw)}
        if "pixel" in like.extras:
            h, w = like.extras["pixel"].shape[-2:]
            extras["pixel"] = _gauss(h, w, sigma=sigma).to(dev).expand(b, h, w).clone()
        return Attribution(values=tok, kind="token", method="baseline.centre", params={"sigma": sigma}, extras=extras)
    return None
