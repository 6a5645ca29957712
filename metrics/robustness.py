"""Robustness: how much does a map change when the input barely does?

Both metrics re-run the explainer that made the attribution (``attr.method`` with
``attr.params``) on ``n_samples`` perturbed copies of every input, for the same target, and
compare with the attribution's own map. The perturbations of a sample are drawn from a
generator seeded by ``seed`` and the sample's id (its input bytes without ids), so its score
never depends on the batch; the perturbed copies of a batch are explained ``batch_size`` at a
time. The radius is in input units and part of the protocol: scores measured at different radii
are not comparable. Lower = more robust.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from xaibench import Attribution, Batch, MetricScores, register_metric
from xaibench.explainers import model_guard

from ._common import NO_EXPLAINER, per_sample_rand, per_sample_randn, remake_explainer, saliency_example, sample_seeds

ZERO = "all-zero map"


def _target(attr: Attribution, batch: Batch, model: nn.Module) -> Tensor | None:
    t = attr.extras.get("target")
    if isinstance(t, Tensor) and t.numel() == len(batch):
        return t.reshape(-1)
    if isinstance(batch.targets, Tensor):
        return batch.targets
    with model_guard(model), torch.no_grad():
        out = model(batch.inputs)
    return out.argmax(1) if out.ndim == 2 else None


def perturbed_maps(attr: Attribution, batch: Batch, model: nn.Module, noise: Tensor, batch_size: int) -> Tensor | None:
    """Maps (B, n, ...) of the inputs plus ``noise`` (B, n, *input shape); None when the method is
    no registered explainer."""
    explainer = remake_explainer(attr, model, "robustness")
    if explainer is None:
        return None
    b, n = noise.shape[:2]
    x = (batch.inputs[:, None] + noise).flatten(0, 1)
    t = _target(attr, batch, model)
    t = None if t is None else t.repeat_interleave(n)
    rep = torch.arange(b).repeat_interleave(n)
    outs = []
    for chunk in torch.arange(b * n).split(batch_size):
        sub = batch.select(rep[chunk])
        sub.inputs = x[chunk]
        outs.append(explainer.explain_batch(sub, None if t is None else t[chunk]).values)
    return torch.cat(outs).reshape(b, n, *attr.values.shape[1:])


def _scores(num: Tensor, den: Tensor, phi: Tensor) -> MetricScores:
    zero = phi.flatten(1).abs().sum(1) == 0
    s = (num / den.clamp_min(1e-30)).max(1).values
    s = torch.where(zero, torch.full_like(s, math.nan), s).float()
    return MetricScores(s, [ZERO if z else None for z in zero.tolist()])


def _example():
    return saliency_example(6, 10)


_SKIP = {"perfect": "scores the method (it re-runs the explainer on perturbed inputs), not a given map; "
                    "tests/test_metrics_robustness.py checks it against hand-computed maps",
         "empty": "uses no ground truth",
         "composition": "the contract's random map names no explainer to re-run (it scores NaN); batch "
                        "independence is tested in tests/test_metrics_robustness.py"}
Radius = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]
KINDS = ("pixel", "token", "event", "event_head", "event_vector", "voxel")


@register_metric("max_sensitivity", direction="lower", category="robustness", kinds=KINDS, needs_model=True,
                 range=(0.0, math.inf), undefined=NO_EXPLAINER, example=_example, contract_skip=_SKIP)
def max_sensitivity(attr: Attribution, batch: Batch, *, radius: Radius = 0.02, n_samples: Count = 10, seed: int = 0,
                    batch_size: Count = 64, model: nn.Module | None = None) -> MetricScores:
    """Max-sensitivity (Yeh et al. 2019): max over ``n_samples`` inputs drawn uniformly from the
    L∞ ball of ``radius`` around x of ||Φ(x') − Φ(x)||₂ / ||Φ(x)||₂ (relative, as Quantus, so
    methods with maps of different scales compare). NaN for an all-zero map. (B,)

    Args:
        radius: half-width of the uniform noise, in input units.
        n_samples: perturbed copies per sample (one explained input each).
        seed: combined with each sample's id for its noise.
        batch_size: perturbed inputs per explainer call.

    References: Yeh et al., On the (in)fidelity and sensitivity of explanations, NeurIPS 2019.
    """
    if model is None:
        raise ValueError("max_sensitivity: needs the model; call metric(attr, batch, model=model)")
    x = batch.inputs
    noise = (per_sample_rand(sample_seeds(batch, seed), (n_samples, *x.shape[1:]), x.dtype, x.device) * 2 - 1) * radius
    maps = perturbed_maps(attr, batch, model, noise, batch_size)
    if maps is None:
        return MetricScores(torch.full((len(batch),), math.nan), [NO_EXPLAINER] * len(batch))
    phi = attr.values.to(maps)
    num = (maps - phi[:, None]).flatten(2).double().norm(dim=2)
    return _scores(num, phi.flatten(1).double().norm(dim=1)[:, None], phi)


@register_metric("local_lipschitz", direction="lower", category="robustness", kinds=KINDS, needs_model=True,
                 range=(0.0, math.inf), undefined=NO_EXPLAINER, example=_example, contract_skip=_SKIP)
def local_lipschitz(attr: Attribution, batch: Batch, *, radius: Radius = 0.02, n_samples: Count = 10, seed: int = 0,
                    batch_size: Count = 64, model: nn.Module | None = None) -> MetricScores:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018): max over ``n_samples`` Gaussian
    perturbations x' = x + δ, δ ~ N(0, radius²), of ||Φ(x') − Φ(x)||₂ / ||x' − x||₂. In map units
    per input unit (not scale-free). NaN for an all-zero map. (B,)

    Args:
        radius: standard deviation of the Gaussian noise, in input units.
        n_samples: perturbed copies per sample.
        seed: combined with each sample's id for its noise.
        batch_size: perturbed inputs per explainer call.

    References: Alvarez-Melis & Jaakkola, On the robustness of interpretability methods, 2018.
    """
    if model is None:
        raise ValueError("local_lipschitz: needs the model; call metric(attr, batch, model=model)")
    x = batch.inputs
    noise = per_sample_randn(sample_seeds(batch, seed), (n_samples, *x.shape[1:]), x.dtype, x.device) * radius
    maps = perturbed_maps(attr, batch, model, noise, batch_size)
    if maps is None:
        return MetricScores(torch.full((len(batch),), math.nan), [NO_EXPLAINER] * len(batch))
    phi = attr.values.to(maps)
    num = (maps - phi[:, None]).flatten(2).double().norm(dim=2)
    return _scores(num, noise.flatten(2).double().norm(dim=2), phi)
