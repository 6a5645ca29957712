"""Faithfulness of image maps: does removing what the map ranks highest change the model's output?

Deletion / insertion curves (Petsiuk et al., RISE, 2018) and region perturbation (Samek et al.
2017) share one engine, :func:`perturbation_curves`: the map's pixels (or ``patch``×``patch``
regions, ranked by their summed relevance) are replaced by a baseline (deletion) or revealed on
top of it (insertion) in most-relevant-first (MoRF) or least-relevant-first (LeRF) order, and
the explained output is read after every step. All (sample, step) images of a batch go through
the model as a few large forward passes (``batch_size`` images each), built on the fly; a
sample's curve depends on its own image, map and target only.

The explained output is the softmax probability (or the logit) of the attribution's target
(``extras["target"]``), else ``batch.targets``, else the predicted class. ``pixel`` maps are used
at input resolution; ``token`` maps through their ``extras["pixel"]`` map, or, without one, their
patch grid repeated to the input (each token a region, exact).

Baselines: ``black`` = 0 in input units (Quantus' "black" is each image's minimum, the same for
images whose minimum is 0), ``mean`` = each image's per-channel mean, ``blur`` = the image under
a Gaussian blur (RISE's insertion baseline, kernel 11, sigma 5).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from xaibench import Attribution, Batch, register_metric
from xaibench.explainers import model_guard

from ._common import Output, resolve_target, select_output

Baseline = Literal["black", "blur", "mean"]
Order = Literal["morf", "lerf"]
Step = Annotated[float, Field(gt=0, le=0.5)]
Patch = Annotated[int, Field(ge=1, description="region size in pixels (1 = pixels), regions ranked by summed relevance")]
BatchSize = Annotated[int, Field(ge=1, description="images per forward pass")]
UNBOUNDED = (-math.inf, math.inf)


def gaussian_blur(x: Tensor, size: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) images, reflect padding (replicate on tiny images)."""
    ax = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    k = torch.exp(-ax**2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    r = size // 2
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.reshape(1, 1, 1, -1).expand(c, 1, 1, size), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.reshape(1, 1, -1, 1).expand(c, 1, size, 1), groups=c)


def baseline_images(x: Tensor, baseline: str) -> Tensor:
    """(B, C, H, W) baseline for each image (see the module docstring)."""
    if baseline == "black":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean((2, 3), keepdim=True).expand_as(x)
    if baseline == "blur":
        return gaussian_blur(x)
    raise ValueError(f"faithfulness: baseline must be 'black', 'blur' or 'mean', got {baseline!r}")


def image_map(attr: Attribution, x: Tensor, who: str) -> Tensor:
    """(B, H, W) map at the input's resolution (token grids repeated, see the module docstring)."""
    if x.ndim != 4:
        raise ValueError(f"{who}: expects images (B, C, H, W), got inputs {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if attr.kind == "token" and "pixel" not in attr.extras:
        h, w = (int(v) for v in attr.extras["grid"])
        if H % h or W % w:
            raise ValueError(f"{who}: input {H}x{W} is not a whole number of {h}x{w} patches")
        m = attr.values.reshape(-1, h, w).repeat_interleave(H // h, 1).repeat_interleave(W // w, 2)
    else:
        m = attr.pixel_map()
    if tuple(m.shape[-2:]) != (H, W):
        raise ValueError(f"{who}: map {tuple(m.shape[-2:])} is not at the input resolution {(H, W)}; resample it "
                         "explicitly first")
    return m.to(x.device).float()


def region_count(h: int, w: int, patch: int) -> int:
    """The number of ``patch``×``patch`` regions of an h×w map (the last row/column may be narrower)."""
    return math.ceil(h / patch) * math.ceil(w / patch)


def region_ranks(m: Tensor, patch: int, order: str) -> tuple[Tensor, int]:
    """(B, H*W) rank of each pixel's region in the removal order (0 = first) and the number of
    regions R. Regions are the ``patch``×``patch`` cells of a grid from the top-left corner (the
    last row/column may be narrower), scored by their summed relevance; ties keep raster order."""
    b, H, W = m.shape
    ys = torch.arange(H, device=m.device) // patch
    xs = torch.arange(W, device=m.device) // patch
    rid = (ys[:, None] * math.ceil(W / patch) + xs[None, :]).flatten()
    n_regions = region_count(H, W, patch)
    scores = torch.zeros(b, n_regions, dtype=torch.float64, device=m.device).index_add_(1, rid, m.flatten(1).double())
    order_idx = torch.argsort(-scores if order == "morf" else scores, dim=1, stable=True)
    rank = torch.empty_like(order_idx).scatter_(1, order_idx, torch.arange(n_regions, device=m.device).expand(b, -1))
    return rank[:, rid], n_regions


def perturbation_curves(model: nn.Module, x: Tensor, m: Tensor, target: Tensor, *, mode: Literal["deletion", "insertion"],
                        order: str = "morf", baseline: str = "black", patch: int = 1, per_step: int = 1,
                        n_steps: int | None = None, output: Output = "probability",
                        batch_size: int = 128) -> tuple[Tensor, Tensor]:
    """Output curves of deletion or insertion. Returns ``(curves, removed)``: curves (B, S+1), the
    explained output after 0, 1, ..., S steps of ``per_step`` regions each, and ``removed`` (S+1,)
    the fraction of regions removed (deletion) or revealed (insertion) at each point.

    Args:
        model: the classifier, (B, C, H, W) -> (B, K); run in eval mode without gradients.
        x: (B, C, H, W) images; m: (B, H, W) maps; target: (B,) classes.
        mode: ``"deletion"`` replaces regions by the baseline; ``"insertion"`` starts from the
            baseline and puts the image's regions back.
        n_steps: the number of steps (default: until every region is done).
    """
    b = x.shape[0]
    rank, n_regions = region_ranks(m, patch, order)
    total = math.ceil(n_regions / per_step)
    s = total if n_steps is None else min(int(n_steps), total)
    counts = (torch.arange(s + 1, device=x.device) * per_step).clamp(max=n_regions)
    base = baseline_images(x, baseline)
    flat_x, flat_base = x.flatten(2), base.flatten(2)
    vals = torch.empty(b * (s + 1), dtype=torch.float32, device=x.device)  # stays on the device: no per-chunk sync
    jobs = torch.arange(b * (s + 1), device=x.device)
    with model_guard(model), torch.no_grad():
        for chunk in jobs.split(batch_size):
            bi, si = chunk // (s + 1), chunk % (s + 1)
            done = (rank[bi] < counts[si][:, None])[:, None]  # (n, 1, H*W)
            keep_x = ~done if mode == "deletion" else done
            imgs = torch.where(keep_x, flat_x[bi], flat_base[bi]).reshape(len(chunk), *x.shape[1:])
            vals[chunk] = select_output(model(imgs), target.to(x.device)[bi], output)
    return vals.reshape(b, s + 1), counts.double() / n_regions


def _setup(attr: Attribution, batch: Batch, model: nn.Module | None, who: str) -> tuple[Tensor, Tensor, Tensor]:
    if model is None:
        raise ValueError(f"{who}: needs the model; call metric(attr, batch, model=model)")
    x = batch.inputs
    m = image_map(attr, x, who)
    target = resolve_target(attr, batch, None if attr.extras.get("target") is not None or batch.targets is not None
                            else _predict(model, x))
    return x, m, target


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with model_guard(model), torch.no_grad():
        return model(x)


def auc(curves: Tensor, xs: Tensor) -> Tensor:
    """Trapezoid area under (B, S+1) curves over the removed fractions ``xs`` (S+1,). (B,)"""
    return torch.trapezoid(curves.double(), xs.double()[None].expand_as(curves), dim=1)


def _curve_auc(attr, batch, model, who, *, mode, order, baseline, step, patch, output, batch_size) -> Tensor:
    x, m, t = _setup(attr, batch, model, who)
    n_regions = region_count(m.shape[1], m.shape[2], patch)
    per_step = max(1, round(step * n_regions))
    curves, xs = perturbation_curves(model, x, m, t, mode=mode, order=order, baseline=baseline, patch=patch,
                                     per_step=per_step, output=output, batch_size=batch_size)
    return auc(curves, xs)


def _example():
    """A linear classifier on 12x12 images: its exact occlusion drops (w · x per pixel, black
    baseline) are the perfect map."""
    from xaibench.testing import MetricExample

    g = torch.Generator().manual_seed(0)
    b, c, s = 8, 3, 12
    x = torch.rand(b, c, s, s, generator=g)
    w = torch.randn(c, s, s, generator=g) * 0.5
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1] = w.flatten()
        model[1].bias.zero_()
    perfect = Attribution(values=(w * x).sum(1), kind="pixel", method="exact_occlusion",
                          extras={"target": torch.ones(b, dtype=torch.long)})
    return MetricExample(batch=Batch(inputs=x, targets=torch.ones(b, dtype=torch.long), ids=[f"s{i}" for i in range(b)]),
                         perfect=perfect, model=model)


NO_GT = {"empty": "uses no ground truth (the model's output is the reference)"}
KINDS = ("pixel", "token")


@register_metric("deletion_auc", direction="lower", category="faithfulness", kinds=KINDS, needs_model=True,
                 range=UNBOUNDED, example=_example, contract_skip=NO_GT)
def deletion_auc(attr: Attribution, batch: Batch, *, baseline: Baseline = "black", step: Step = 0.05, patch: Patch = 1,
                 output: Output = "probability", batch_size: BatchSize = 128, model: nn.Module | None = None) -> Tensor:
    """Area under the deletion curve (most relevant first): the explained output as a growing
    share of the image is replaced by the baseline, over the removed fraction 0..1. Lower = the
    map found what the model needs sooner. (B,)

    Args:
        baseline: what removed pixels become: ``"black"`` (0), ``"blur"`` or ``"mean"``.
        step: the share of regions removed per step (0.05 = 20 steps, 21 forward passes per sample).
        patch: region size in pixels (1 = pixels; 8 = Samek's 8x8 regions), ranked by summed relevance.
        output: ``"probability"`` (softmax of the target) or ``"logit"``.

    References: Petsiuk et al., RISE, BMVC 2018.
    """
    return _curve_auc(attr, batch, model, "deletion_auc", mode="deletion", order="morf", baseline=baseline, step=step,
                      patch=patch, output=output, batch_size=batch_size).float()


@register_metric("insertion_auc", direction="higher", category="faithfulness", kinds=KINDS, needs_model=True,
                 range=UNBOUNDED, example=_example, contract_skip=NO_GT)
def insertion_auc(attr: Attribution, batch: Batch, *, baseline: Baseline = "blur", step: Step = 0.05, patch: Patch = 1,
                  output: Output = "probability", batch_size: BatchSize = 128, model: nn.Module | None = None) -> Tensor:
    """Area under the insertion curve (most relevant first): the explained output as the image's
    pixels are put back on the baseline (RISE inserts into a blurred image). Higher = better. (B,)

    Args:
        baseline: the starting image: ``"blur"`` (RISE), ``"black"`` or ``"mean"``.
        step: the share of regions revealed per step.

    References: Petsiuk et al., RISE, BMVC 2018.
    """
    return _curve_auc(attr, batch, model, "insertion_auc", mode="insertion", order="morf", baseline=baseline, step=step,
                      patch=patch, output=output, batch_size=batch_size).float()


@register_metric("deletion_gap", direction="higher", category="faithfulness", kinds=KINDS, needs_model=True,
                 range=UNBOUNDED, example=_example, contract_skip=NO_GT)
def deletion_gap(attr: Attribution, batch: Batch, *, baseline: Baseline = "black", step: Step = 0.05, patch: Patch = 1,
                 output: Output = "probability", batch_size: BatchSize = 128, model: nn.Module | None = None) -> Tensor:
    """Deletion AUC least-relevant-first minus most-relevant-first: large when removing the top of
    the map hurts the output and removing its bottom does not. Uses both curves, so a method
    that merely destroys the image fast (a baseline artefact) does not score well. (B,)

    Args:
        baseline: what removed pixels become: ``"black"``, ``"blur"`` or ``"mean"``.
        step: the share of regions removed per step (both curves).

    References: Rong et al., ROAD, ICML 2022 (MoRF and LeRF read together).
    """
    kw = {"mode": "deletion", "baseline": baseline, "step": step, "patch": patch, "output": output, "batch_size": batch_size}
    lerf = _curve_auc(attr, batch, model, "deletion_gap", order="lerf", **kw)
    morf = _curve_auc(attr, batch, model, "deletion_gap", order="morf", **kw)
    return (lerf - morf).float()


@register_metric("region_perturbation", direction="higher", category="faithfulness", kinds=KINDS, needs_model=True,
                 range=UNBOUNDED, example=_example, contract_skip=NO_GT)
def region_perturbation(attr: Attribution, batch: Batch, *, patch: Patch = 8, regions: Annotated[int, Field(ge=1)] = 100,
                        baseline: Baseline = "black", output: Output = "logit", batch_size: BatchSize = 128,
                        model: nn.Module | None = None) -> Tensor:
    """AOPC of region perturbation (Samek et al. 2017): perturb ``patch``×``patch`` regions one
    at a time, most relevant first, and average the output drop over the first ``regions`` steps:
    AOPC = 1/(L+1) Σ_{k=0..L} (f(x) − f(x_k)). Higher = better. (B,)

    Args:
        patch: region size in pixels (Samek: 9; Quantus: 8).
        regions: L, the number of regions perturbed (one per step, one forward pass each).
        baseline: what perturbed regions become: ``"black"``, ``"blur"`` or ``"mean"``.
        output: ``"logit"`` (as Samek and Quantus) or ``"probability"``.

    References: Samek et al., Evaluating the visualization of what a deep neural network has
    learned, IEEE TNNLS 2017.
    """
    x, m, t = _setup(attr, batch, model, "region_perturbation")
    curves, _ = perturbation_curves(model, x, m, t, mode="deletion", order="morf", baseline=baseline, patch=patch,
                                    per_step=1, n_steps=regions, output=output, batch_size=batch_size)
    return (curves[:, :1] - curves).mean(1).float()
