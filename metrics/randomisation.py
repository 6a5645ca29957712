"""Model-parameter randomisation sanity check (Adebayo et al., Sanity checks for saliency maps,
NeurIPS 2018), cascading from the output layer down.

A copy of the model has its parametrised layers re-initialised one at a time, output layer
first, each step keeping the layers randomised before it (the cascade); after every step the
explainer that made the attribution (``attr.method`` with ``attr.params``) explains the batch
again, for the same target, and the new map is compared with the original one. A method whose
maps stay similar while the model is destroyed does not explain the model. The caller's model
is never touched.

What we do, and how it differs from Quantus 0.6 ``MPRT``:

- the summary score is the mean similarity over the randomised steps only. Quantus averages
  its per-layer scores together with the unrandomised model's (a similarity of the original map
  with itself, 1 by construction), which pulls every method towards 1 by 1/(L+1) and makes the
  score depend on how many layers a model has, not on what the method does (in Quantus'
  ``recompute_average_correlation_per_sample`` the loop skips a key ``"orig"`` while the scores
  are stored under ``"original"``);
- the cascade re-initialises each layer with its own ``reset_parameters`` (the initialisation the
  architecture was built with; seeded), a layer without one from N(0, std of its weights).
  Normalisation layers (batch/layer/group/instance norm) are not randomised steps: their affine
  parameters and statistics rescale, they do not mix features;
- the similarity is computed on each sample's maps alone (Spearman rank correlation with or
  without absolute values, SSIM as ``skimage.metrics.structural_similarity`` on maps min-max
  scaled to [0, 1], or the overlap of the top-k% sets), never normalised across the batch.

Lower similarity = the method is more sensitive to the model = better.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from xaibench import Attribution, Batch, MetricScores, register_metric
from xaibench.explainers import model_guard

from ._common import NO_EXPLAINER, remake_explainer
from .localisation_extra import average_ranks

Similarity = Literal["spearman", "spearman_abs", "ssim", "top_k"]
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def cascade_layers(model: nn.Module) -> list[str]:
    """Names of the modules the cascade randomises, output side first: every module that holds
    parameters of its own, except normalisation layers, in reverse registration order."""
    names = [n for n, m in model.named_modules()
             if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, _NORMS)]
    return names[::-1]


def randomise_(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module``'s own parameters in place, seeded (see the module docstring)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for p in module.parameters(recurse=False):
                p.normal_(0.0, float(p.std()) if p.numel() > 1 else 0.02)


def _maps2d(v: Tensor, attr: Attribution) -> Tensor:
    if attr.kind == "pixel":
        return v
    if attr.kind == "token":
        h, w = attr.extras["grid"]
        return v.reshape(-1, int(h), int(w))
    raise ValueError(f"model_randomisation: SSIM needs 2-D maps (pixel or token), got {attr.kind!r}")


def ssim(a: Tensor, b: Tensor, win_size: int = 7) -> Tensor:
    """SSIM of each pair of (B, H, W) maps after scaling each map to [0, 1] by its own min and max,
    as ``skimage.metrics.structural_similarity(a, b, data_range=1)`` (7×7 uniform windows, sample
    covariance, K1 = 0.01, K2 = 0.03, mean over the windows inside the image). (B,)"""
    def scale(m: Tensor) -> Tensor:
        f = m.flatten(1)
        lo, hi = f.min(1).values, f.max(1).values
        return ((f - lo[:, None]) / (hi - lo).clamp_min(1e-30)[:, None]).reshape(m.shape)

    x, y = scale(a.double())[:, None], scale(b.double())[:, None]
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"ssim: maps {tuple(x.shape[-2:])} are smaller than the {win_size}x{win_size} window")
    pool = lambda v: F.avg_pool2d(v, win_size, stride=1)
    n = win_size**2
    cov = n / (n - 1)
    ux, uy = pool(x), pool(y)
    vx = cov * (pool(x * x) - ux * ux)
    vy = cov * (pool(y * y) - uy * uy)
    vxy = cov * (pool(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def similarity(a: Tensor, b: Tensor, kind: str, top_k: float = 0.1, attr: Attribution | None = None) -> Tensor:
    """Per-sample similarity of two batches of maps (B, ...). (B,) float64.

    ``spearman`` / ``spearman_abs``: rank correlation (ties share ranks); 0 when either map is
    constant (no ranking to agree with). ``ssim``: see :func:`ssim`. ``top_k``: |T_a ∩ T_b| / k of
    the k = ceil(top_k · n) highest values (ties in index order)."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    if kind in ("spearman", "spearman_abs"):
        if kind == "spearman_abs":
            fa, fb = fa.abs(), fb.abs()
        ra, rb = average_ranks(fa), average_ranks(fb)
        ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
        den = (ra.norm(dim=1) * rb.norm(dim=1))
        return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))
    if kind == "ssim":
        return ssim(_maps2d(a, attr), _maps2d(b, attr)) if attr is not None else ssim(a, b)
    if kind == "top_k":
        k = max(1, math.ceil(top_k * fa.shape[1] - 1e-9))
        ta = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, torch.argsort(-fa, dim=1, stable=True)[:, :k], True)
        tb = torch.zeros_like(fb, dtype=torch.bool).scatter_(1, torch.argsort(-fb, dim=1, stable=True)[:, :k], True)
        return (ta & tb).sum(1).double() / k
    raise ValueError(f"similarity: expected 'spearman', 'spearman_abs', 'ssim' or 'top_k', got {kind!r}")


def cascading_randomisation(attr: Attribution, batch: Batch, model: nn.Module, *, similarity_kind: Similarity = "spearman",
                            top_k: float = 0.1, layers: int = 0, seed: int = 0) -> tuple[Tensor, list[str]] | None:
    """Per-step similarities (B, L) of the re-explained maps with ``attr.values`` and the names of
    the layers randomised at each step (cumulative), or None when ``attr.method`` is no
    registered explainer."""
    rand = copy.deepcopy(model).eval()
    explainer = remake_explainer(attr, rand, "model_randomisation")
    if explainer is None:
        return None
    target = attr.extras.get("target")
    if not isinstance(target, Tensor):
        target = batch.targets if isinstance(batch.targets, Tensor) else None
    if target is None and batch.inputs.ndim == 4:
        with model_guard(model), torch.no_grad():
            out = model(batch.inputs)
        target = out.argmax(1) if out.ndim == 2 else None
    names = cascade_layers(rand)
    if layers:
        names = names[: int(layers)]
    sims = []
    for step, name in enumerate(names):
        randomise_(rand.get_submodule(name), seed * 100_003 + step)
        new = explainer.explain_batch(batch, target)
        sims.append(similarity(attr.values, new.values.to(attr.values.device), similarity_kind, top_k, attr))
    return torch.stack(sims, 1), names


def _example():
    from xaibench.explainers import EXPLAINERS
    from xaibench.testing import MetricExample

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(6, 3, 12, 12, generator=g)
    batch = Batch(inputs=x, targets=torch.zeros(6, dtype=torch.long), ids=[f"s{i}" for i in range(6)])
    attr = EXPLAINERS.get("cnn.saliency")(model).explain(x, batch.targets)
    return MetricExample(batch=batch, perfect=attr, model=model)


_SKIP = {"perfect": "scores the method (it re-runs the explainer on randomised models), not a given map; "
                    "tests/test_metrics_randomisation.py compares a model-dependent and a model-independent method",
         "empty": "uses no ground truth",
         "composition": "the contract's random map names no explainer to re-run (it scores NaN); batch "
                        "independence is tested in tests/test_metrics_randomisation.py"}


@register_metric("model_randomisation", direction="lower", category="randomisation",
                 kinds=("pixel", "token", "event", "event_head", "event_vector", "voxel"), needs_model=True,
                 range=(-1.0, 1.0), undefined=NO_EXPLAINER, example=_example, contract_skip=_SKIP)
def model_randomisation(attr: Attribution, batch: Batch, *, similarity: Similarity = "spearman",
                        top_k: Annotated[float, Field(gt=0, le=1)] = 0.1, layers: Annotated[int, Field(ge=0)] = 0,
                        seed: int = 0, model: nn.Module | None = None) -> MetricScores:
    """Mean similarity between the original map and the maps after cascading randomisation of
    the model's layers, output layer first (the unrandomised model is not part of the mean).
    Lower = the maps depend on the model's parameters. (B,) in [-1, 1].

    Args:
        similarity: ``"spearman"`` (rank correlation), ``"spearman_abs"`` (of |map|),
            ``"ssim"`` (pixel and token maps) or ``"top_k"`` (overlap of the top-k% sets).
        top_k: the top fraction for ``"top_k"``.
        layers: randomise only the top this many layers (0 = all; one explainer call each).
        seed: the re-initialisation seed.

    References: Adebayo et al., Sanity checks for saliency maps, NeurIPS 2018.
    """
    if model is None:
        raise ValueError("model_randomisation: needs the model; call metric(attr, batch, model=model)")
    res = cascading_randomisation(attr, batch, model, similarity_kind=similarity, top_k=top_k, layers=layers, seed=seed)
    if res is None:
        return MetricScores(torch.full((len(batch),), math.nan), [NO_EXPLAINER] * len(batch))
    sims, _ = res
    return MetricScores.from_nan(sims.mean(1).float(), NO_EXPLAINER)
