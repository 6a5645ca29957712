"""ROAD: RemOve And Debias (Rong et al., ICML 2022) with noisy linear imputation.

The top (MoRF) or bottom (LeRF) p% of a map's pixels are removed and *imputed* from their
neighbours instead of painted with a constant, so the removal pattern itself leaks no class
information. Each removed pixel takes the weighted mean of its 8 neighbours (1/6 direct, 1/12
diagonal; known and imputed alike), which is a sparse linear system per image and channel; here
it is solved for every (sample, percentage, channel) at once by batched conjugate gradients on
the symmetric form (Σ_j w_ij) x_i − Σ_j w_ij x_j = 0, then Gaussian noise (std ``noise``) is
added to the imputed pixels. The noise of a sample comes from its own id (its input bytes
without ids), so its score never depends on the batch. Tested equal to scipy's sparse solver.

ROAD's reference implementation solves each image on the CPU with ``scipy.sparse.linalg.spsolve``;
Quantus 0.6's ``ROAD`` scores only the first batch and crashes on RGB images.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from xaibench import Attribution, Batch, register_metric
from xaibench.explainers import model_guard

from ._common import Output, per_sample_randn, sample_seeds, select_output
from .faithfulness import KINDS, NO_GT, UNBOUNDED, BatchSize, _example, _setup

_W = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
Percentages = tuple[Annotated[float, Field(gt=0, lt=1)], ...]


def _neighbours(v: Tensor) -> Tensor:
    """Σ_j w_ij v_j over the in-image neighbours of every pixel, (N, 1, H, W)."""
    return F.conv2d(v, _W.to(v)[None, None], padding=1)


def linear_impute(x: Tensor, removed: Tensor, *, tol: float = 1e-6, max_iter: int = 2000) -> Tensor:
    """Noiseless linear imputation: ``removed`` pixels of (N, C, H, W) images solved from the
    neighbour equations, the rest kept. ``removed`` (N, H, W) bool. Conjugate gradients, batched
    over images and channels, to a relative residual of ``tol``."""
    n, c, h, w = x.shape
    u = removed[:, None].expand(n, c, h, w).reshape(n * c, 1, h, w).to(x.dtype)
    known = x.reshape(n * c, 1, h, w) * (1 - u)
    deg = _neighbours(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device))  # Σ_j w_ij inside the image

    def A(v: Tensor) -> Tensor:
        return u * (deg * v - _neighbours(v))

    b = u * _neighbours(known)
    sol = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum((1, 2, 3))
    stop = (tol**2) * rs.clamp_min(1e-30)
    for _ in range(max_iter):
        if bool((rs <= stop).all()):
            break
        ap = A(p)
        alpha = rs / (p * ap).sum((1, 2, 3)).clamp_min(1e-30)
        alpha = torch.where(rs <= stop, torch.zeros_like(alpha), alpha)
        sol = sol + alpha[:, None, None, None] * p
        r = r - alpha[:, None, None, None] * ap
        rs_new = (r * r).sum((1, 2, 3))
        p = r + (rs_new / rs.clamp_min(1e-30))[:, None, None, None] * p
        rs = rs_new
    return (known + u * sol).reshape(n, c, h, w)


def road_curve(model: nn.Module, x: Tensor, m: Tensor, target: Tensor, seeds: list[int], *, percentages: tuple[float, ...],
               order: str, noise: float, output: Output, batch_size: int) -> Tensor:
    """(B, P) explained output after removing-and-imputing each percentage of pixels."""
    b, c, h, w = x.shape
    flat = m.flatten(1).double()
    idx = torch.argsort(-flat if order == "morf" else flat, dim=1, stable=True)
    rank = torch.empty_like(idx).scatter_(1, idx, torch.arange(h * w, device=x.device).expand(b, -1))
    counts = torch.tensor([round(p * h * w) for p in percentages], device=x.device)
    n_p = len(percentages)
    eps = per_sample_randn(seeds, (n_p, c, h, w), dtype=x.dtype, device=x.device) * noise
    out = torch.empty(b * n_p, dtype=torch.float32, device=x.device)  # stays on the device: no per-chunk sync
    jobs = torch.arange(b * n_p, device=x.device)
    with model_guard(model), torch.no_grad():
        for chunk in jobs.split(batch_size):
            bi, pi = chunk // n_p, chunk % n_p
            removed = (rank[bi] < counts[pi][:, None]).reshape(-1, h, w)
            imgs = linear_impute(x[bi], removed) + removed[:, None] * eps[bi, pi]
            out[chunk] = select_output(model(imgs), target.to(x.device)[bi], output)
    return out.reshape(b, n_p)


_DEFAULT_P = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _road(attr, batch, model, who, order, percentages, noise, output, batch_size, seed) -> Tensor:
    x, m, t = _setup(attr, batch, model, who)
    return road_curve(model, x, m, t, sample_seeds(batch, seed), percentages=tuple(percentages), order=order,
                      noise=noise, output=output, batch_size=batch_size).mean(1)


@register_metric("road", direction="lower", category="faithfulness", kinds=KINDS, needs_model=True, range=UNBOUNDED,
                 example=_example, contract_skip=NO_GT)
def road(attr: Attribution, batch: Batch, *, percentages: Percentages = _DEFAULT_P,
         noise: Annotated[float, Field(ge=0)] = 0.01, output: Output = "probability", batch_size: BatchSize = 64,
         seed: int = 0, model: nn.Module | None = None) -> Tensor:
    """Mean explained output after removing the most relevant p% of pixels (noisy linear
    imputation), over the given percentages. Lower = the map found what the model needs. (B,)

    Args:
        percentages: the removed shares (Rong et al.: 10% to 90%).
        noise: std of the Gaussian noise added to imputed pixels (the reference's 0.01).
        output: ``"probability"`` or ``"logit"``.
        batch_size: images per forward pass.
        seed: combined with each sample's id for its noise.

    References: Rong et al., A consistent and efficient evaluation strategy for attribution
    methods, ICML 2022.
    """
    return _road(attr, batch, model, "road", "morf", percentages, noise, output, batch_size, seed).float()


@register_metric("road_gap", direction="higher", category="faithfulness", kinds=KINDS, needs_model=True, range=UNBOUNDED,
                 example=_example, contract_skip=NO_GT)
def road_gap(attr: Attribution, batch: Batch, *, percentages: Percentages = _DEFAULT_P,
             noise: Annotated[float, Field(ge=0)] = 0.01, output: Output = "probability", batch_size: BatchSize = 64,
             seed: int = 0, model: nn.Module | None = None) -> Tensor:
    """ROAD LeRF minus ROAD MoRF (mean outputs over the percentages): high when removing the
    map's bottom keeps the output and removing its top does not. (B,)

    Args:
        percentages: the removed shares.
        noise: std of the Gaussian noise added to imputed pixels.
        output: ``"probability"`` or ``"logit"``.
        batch_size: images per forward pass.
        seed: combined with each sample's id for its noise.
    """
    args = (percentages, noise, output, batch_size, seed)
    return (_road(attr, batch, model, "road_gap", "lerf", *args) - _road(attr, batch, model, "road_gap", "morf", *args)).float()
