"""Gradient methods for CNNs: saliency, SmoothGrad, integrated gradients, guided backprop
and deconvolution (``cnn.*``), all pixel maps (B, H, W) batched over samples.

Each method computes per-channel attributions (B, C, H, W) and reduces them over channels
by its ``reduce`` rule (see :func:`~xaibench.adapters.cnn._common.reduce_channels`):
``abs_max`` for saliency and SmoothGrad (Simonyan et al.'s maximum magnitude over colour
channels), the signed ``sum`` for integrated gradients, guided backprop and deconvolution.
Guided backprop and deconvolution swap every ``nn.ReLU`` for a non-in-place one with the
modified backward inside a context manager, so timm's shared in-place ReLUs never change
the caller's model.
"""

from __future__ import annotations

import hashlib
import typing
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from xaibench import register_explainer
from xaibench.explainers import Target, model_guard

from ._common import BaselineRule, ModifiedReLU, PixelExplainer, Reduction, input_gradient, make_baseline, relus_swapped

#: A quadrature rule of integrated gradients (captum's names).
Quadrature = Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
IG_METHODS: tuple[str, ...] = typing.get_args(Quadrature)


def _chunked_gradients(model: torch.nn.Module, points: Tensor, t: Tensor, batch_size: int) -> Tensor:
    """Input gradients of many points (N, C, H, W) for targets (N,), ``batch_size`` per pass."""
    out = torch.empty_like(points)
    for s in range(0, len(points), batch_size):
        out[s:s + batch_size] = input_gradient(model, points[s:s + batch_size], t[s:s + batch_size])[0]
    return out


@register_explainer("cnn.saliency")
class Saliency(PixelExplainer):
    """Saliency map (Simonyan et al. 2014): ∂ logit_target / ∂ pixel, reduced over channels."""

    volumes = True

    class Settings(PixelExplainer.Settings):
        reduce: Reduction = "abs_max"
        """Channel reduction: ``"abs_max"`` is the paper's rule; ``"sum"`` keeps the gradient's sign."""

    def channels(self, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor]:
        with model_guard(self.model):
            return input_gradient(self.model, inputs, target)


def sample_noise(x: Tensor, n: int, seed: int) -> Tensor:
    """(n, C, H, W) standard normal noise for one image ``x`` (C, H, W), seeded by ``seed`` and
    the image's own bytes: the same image gets the same noise whatever its batch or position,
    and different images get independent noise (so class-level averages do not inherit one
    shared noise pattern)."""
    h = hashlib.blake2b(x.detach().cpu().float().contiguous().numpy().tobytes(), digest_size=8,
                        key=str(int(seed)).encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(h, "little") & ((1 << 63) - 1))
    return torch.randn((n, *x.shape), generator=g).to(x.device, x.dtype)


@register_explainer("cnn.smoothgrad")
class SmoothGrad(PixelExplainer):
    """SmoothGrad (Smilkov et al. 2017): the input gradient averaged over noisy copies.

    The mean of the raw gradients over ``n_samples`` copies x + N(0, σ²), σ = ``noise_level`` ×
    (max - min of the image), is reduced over channels (default ``"abs_max"``, as saliency).
    The target is fixed on the clean image. Noise is drawn per sample from ``seed`` and the
    image's content (:func:`sample_noise`), never from the global RNG: every call is
    reproducible and a batch gives the same maps as each sample alone.
    """

    volumes = True

    class Settings(PixelExplainer.Settings):
        reduce: Reduction = "abs_max"
        """Channel reduction of the averaged gradient (``"abs_max"``, as saliency)."""
        n_samples: Annotated[int, Field(ge=1)] = 16
        """Noisy copies per image."""
        noise_level: Annotated[float, Field(ge=0)] = 0.15
        """σ of the Gaussian noise as a share of the image's value range (max - min)."""
        seed: int = 0
        """Noise seed (combined with each image's content)."""
        batch_size: Annotated[int, Field(ge=1)] = 64
        """Noisy images per forward/backward pass (speed only; the map does not depend on it)."""

    def channels(self, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor]:
        s = self.settings
        n = s.n_samples
        t = self.targets(inputs, target)
        span = (inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1)) * float(s.noise_level)
        noisy = torch.cat([inputs[i] + sample_noise(inputs[i], n, s.seed) * span[i]
                           for i in range(len(inputs))])
        with model_guard(self.model):
            grads = _chunked_gradients(self.model, noisy, t.repeat_interleave(n), s.batch_size)
        return grads.view(len(inputs), n, *inputs.shape[1:]).mean(1), t


def path_weights(method: str, n: int, who: str) -> tuple[list[float], list[float]]:
    """(alphas, weights) of an n-point quadrature of ∫_0^1 along the path (captum's rules)."""
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return (0.5 * (1 + x)).tolist(), (0.5 * w).tolist()
    if method not in IG_METHODS:
        raise ValueError(f"{who}: quadrature must be one of {IG_METHODS}, got {method!r}")
    if n < 2:
        raise ValueError(f"{who}: riemann methods need n_steps >= 2, got {n}")
    weights = [1 / n] * n
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        return torch.linspace(0, 1, n).tolist(), weights
    lo, hi = {"riemann_left": (0, 1 - 1 / n), "riemann_right": (1 / n, 1),
              "riemann_middle": (1 / (2 * n), 1 - 1 / (2 * n))}[method]
    return torch.linspace(lo, hi, n).tolist(), weights


@register_explainer("cnn.integrated_gradients")
class IntegratedGradients(PixelExplainer):
    """Integrated gradients (Sundararajan et al. 2017): (x - x') ⊙ ∫ ∇f(x' + α(x - x')) dα.

    Per-channel attributions sum to ≈ f(x) - f(x') (completeness); the default ``"sum"``
    reduction keeps that and the sign. ``extras["delta"]`` (B,) is the completeness error
    Σ attribution - (f(x) - f(x')).
    """

    volumes = True

    class Settings(PixelExplainer.Settings):
        baseline: BaselineRule = 0.0
        """The reference x': a number (a constant image; 0.0 = black), ``"mean"`` (each image's
        per-channel mean) or ``"blur"`` (the image blurred with a Gaussian of 5 px)."""
        n_steps: Annotated[int, Field(ge=1)] = 32
        """Quadrature points along the path (the ``riemann_*`` rules need at least 2)."""
        quadrature: Quadrature = "gausslegendre"
        """The quadrature rule: ``"gausslegendre"`` (captum's default) or a ``"riemann_*"`` rule."""
        batch_size: Annotated[int, Field(ge=1)] = 128
        """Path points per forward/backward pass (speed only)."""

    def channels(self, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor, dict]:
        p = self.settings
        alphas, weights = path_weights(p.quadrature, p.n_steps, self.name)
        base = make_baseline(inputs, p.baseline, self.name)
        t = self.targets(inputs, target)
        a = torch.tensor(alphas, dtype=inputs.dtype, device=inputs.device)
        w = torch.tensor(weights, dtype=inputs.dtype, device=inputs.device)
        b, n = len(inputs), len(alphas)
        diff = inputs - base
        ones = (1,) * (inputs.ndim - 1)  # broadcast over (C, H, W) or (C, D, H, W)
        points = (base[:, None] + a.view(1, n, *ones) * diff[:, None]).flatten(0, 1)
        with model_guard(self.model):
            grads = _chunked_gradients(self.model, points, t.repeat_interleave(n), p.batch_size)
            with torch.no_grad():
                ends = self.model(torch.cat([inputs, base])).gather(1, t.repeat(2)[:, None])[:, 0]
        attr = diff * (grads.view(b, n, *inputs.shape[1:]) * w.view(1, n, *ones)).sum(1)
        return attr, t, {"delta": (attr.flatten(1).sum(1) - (ends[:b] - ends[b:])).detach()}


class _ModifiedBackprop(PixelExplainer):
    guided: bool = True
    volumes = True

    def channels(self, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor]:
        with model_guard(self.model), relus_swapped(self.model, lambda _r: ModifiedReLU(self.guided)) as m:
            return input_gradient(m, inputs, target)


@register_explainer("cnn.guided_backprop")
class GuidedBackprop(_ModifiedBackprop):
    """Guided backpropagation (Springenberg et al. 2015): at every ReLU only positive gradients
    pass, and only where the forward input was positive. Signed ``"sum"`` over channels by
    default. ReLUs outside ``nn.ReLU`` modules (functional calls, other activations) keep
    their ordinary gradient, as in captum."""

    guided = True


@register_explainer("cnn.deconvolution")
class Deconvolution(_ModifiedBackprop):
    """Deconvolution (Zeiler & Fergus 2014): at every ReLU only positive gradients pass,
    regardless of the forward input. Signed ``"sum"`` over channels by default."""

    guided = False
