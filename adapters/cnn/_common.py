"""Shared pieces of the CNN pixel-attribution methods: channel reduction, baselines, the
base class, and the ReLU-swapping context manager of the modified-backprop methods."""

from __future__ import annotations

import contextlib
import copy
import typing
from typing import Annotated, Any, Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import PlainSerializer, StrictFloat
from torch import Tensor, nn

from xaibench.explainers import Explainer, Target, model_guard, resolve_target
from xaibench.types import Attribution

from ._volume import VOLUME_FIXTURES, VOLUME_KINDS, attribution, check_spatial

#: A channel-reduction rule (see :func:`reduce_channels`).
Reduction = Literal["sum", "abs_sum", "abs_max", "l2"]
REDUCTIONS: tuple[str, ...] = typing.get_args(Reduction)

#: A reference image rule (see :func:`make_baseline`): a number (bools rejected), ``"mean"`` or ``"blur"``.
BaselineRule = StrictFloat | Literal["mean", "blur"]

#: A layer setting: a dotted module name, the module itself, or None (the method's default);
#: a module is recorded by its ``repr`` in protocols and reports.
LayerRef = Annotated[str | nn.Module | None,
                     PlainSerializer(lambda v: v if v is None or isinstance(v, str) else repr(v), when_used="json")]


def reduce_channels(t: Tensor, how: str, who: str = "reduce") -> Tensor:
    """(B, C, H, W) per-channel attributions -> (B, H, W) pixel map.

    Rules: ``"sum"`` (signed sum over channels; keeps completeness of IG/DeepLIFT),
    ``"abs_sum"``, ``"abs_max"`` (the largest magnitude over channels, as Simonyan et al.'s
    saliency maps) and ``"l2"`` (Euclidean norm over channels).
    """
    if how == "sum":
        return t.sum(1)
    if how == "abs_sum":
        return t.abs().sum(1)
    if how == "abs_max":
        return t.abs().amax(1)
    if how == "l2":
        return t.pow(2).sum(1).sqrt()
    raise ValueError(f"{who}: reduce must be one of {REDUCTIONS}, got {how!r}")


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Per-channel Gaussian blur (reflect padding) of (B, C, H, W) images."""
    r = max(1, int(3 * sigma + 0.5))
    ax = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(ax**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    pad = F.pad(x, (r, r, r, r), mode="reflect") if min(x.shape[-2:]) > r else F.pad(x, (r, r, r, r), mode="replicate")
    out = F.conv2d(pad, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def make_baseline(inputs: Tensor, baseline: float | str, who: str, blur_sigma: float = 5.0) -> Tensor:
    """The reference image for occlusion / integrated gradients / DeepLIFT, shaped like ``inputs``.

    ``baseline`` is a number (a constant image, e.g. 0.0 = black), ``"mean"`` (each image's
    per-channel mean) or ``"blur"`` (the image blurred with a Gaussian of ``blur_sigma`` px).
    Each sample's baseline depends only on that sample.
    """
    if isinstance(baseline, bool):
        raise ValueError(f"{who}: baseline must be a number, 'mean' or 'blur', got {baseline!r}")
    if isinstance(baseline, (int, float)):
        return torch.full_like(inputs, float(baseline))
    if baseline == "mean":
        return inputs.mean(dim=tuple(range(2, inputs.ndim)), keepdim=True).expand_as(inputs).clone()
    if baseline == "blur":
        if inputs.ndim != 4:
            raise ValueError(f"{who}: the 'blur' baseline is for (B, C, H, W) images; use a number or 'mean' for volumes")
        return gaussian_blur(inputs, float(blur_sigma))
    raise ValueError(f"{who}: baseline must be a number, 'mean' or 'blur', got {baseline!r}")


class PixelExplainer(Explainer):
    """Base of the CNN pixel methods: per-channel attributions, then a channel reduction.

    Subclasses implement :meth:`channels`: (B, C, H, W) attributions, the resolved (B,)
    targets and optionally a dict of extras. Every
    method documents its default ``reduce`` rule; signed methods keep their sign under
    ``"sum"``.

    Returns (from :meth:`explain`): a ``pixel`` Attribution (B, H, W), raw;
    ``extras["target"]`` holds the explained classes (B,). Methods with ``volumes = True``
    also take (B, C, D, H, W) volumes and then return a ``voxel`` Attribution (B, D, H, W).
    """

    kind = "pixel"
    #: whether the method also explains (B, C, D, H, W) volumes (it then declares the kinds
    #: pixel and voxel, and the contract suite runs it on the 3-D fixture too)
    volumes: bool = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.volumes:
            cls.kinds, cls.kind_fixtures = VOLUME_KINDS, VOLUME_FIXTURES

    class Settings(Explainer.Settings):
        reduce: Reduction = "sum"
        """How per-channel attributions become one map: ``"sum"`` (signed; keeps completeness),
        ``"abs_sum"``, ``"abs_max"`` (largest magnitude over channels) or ``"l2"`` (channel norm)."""

    def channels(self, inputs: Tensor, target: Target) -> tuple[Any, ...]:
        raise NotImplementedError

    def targets(self, inputs: Tensor, target: Target) -> Tensor:
        """Resolve ``target`` with one gradient-free forward (for methods that need it first)."""
        with model_guard(self.model), torch.no_grad():
            logits = self.model(inputs)
        return resolve_target(logits, target)

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        if check_spatial(inputs, self.name) == 3 and not self.volumes:
            raise ValueError(f"{self.name}: explains (B, C, H, W) images only, got a volume {tuple(inputs.shape)}")
        per_channel, t, *extras = self.channels(inputs.detach(), target)
        return attribution(self, reduce_channels(per_channel, self.settings.reduce, self.name), target=t,
                           **(extras[0] if extras else {}))


def input_gradient(model: nn.Module, x: Tensor, target: Target) -> tuple[Tensor, Tensor]:
    """∂ logit[i, t_i] / ∂ x_i for every sample (B, C, H, W), with one forward and one
    backward of Σ_i logit[i, t_i], and the resolved targets (B,). Guard the model first."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        t = resolve_target(logits, target)
        (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), x)
    return g, t


# ----------------------------------------------------------------------------- ReLU swapping

def _relu_call_counts(model: nn.Module, probe: Tensor) -> dict[int, int]:
    counts: dict[int, int] = {}
    handles = [m.register_forward_hook(lambda mod, i, o: counts.__setitem__(id(mod), counts.get(id(mod), 0) + 1))
               for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return counts


class _PerCall(nn.Module):
    """Stands in for a module called k times per forward: call j uses its own copy j mod k,
    so methods that keep per-module state (captum's DeepLift) see one call per module."""

    def __init__(self, replicas: list[nn.Module]):
        super().__init__()
        self.replicas = nn.ModuleList(replicas)
        self._next = 0

    def forward(self, x: Tensor) -> Tensor:
        m = self.replicas[self._next % len(self.replicas)]
        self._next += 1
        return m(x)


@contextlib.contextmanager
def relus_swapped(model: nn.Module, factory: Callable[[nn.ReLU], nn.Module], *, on_copy: bool = False,
                  probe: Tensor | None = None) -> Iterator[nn.Module]:
    """Every ``nn.ReLU`` of ``model`` replaced by ``factory(relu)`` inside the block.

    timm reuses in-place ReLU modules; modified-backprop methods need a fresh, non-in-place
    module per call. With ``on_copy=False`` the modules are swapped on the model itself and
    put back on exit (even on error), so the caller's model ends exactly as it was. With
    ``on_copy=True`` a deep copy is swapped instead (for libraries that attach state to
    modules, e.g. captum's DeepLift); given ``probe`` inputs, a ReLU module that the forward
    calls k > 1 times is replaced by k separate replacements, one per call.

    Yields:
        the model to run (the original or the copy).
    """
    target = copy.deepcopy(model) if on_copy else model
    counts = _relu_call_counts(target, probe) if (on_copy and probe is not None) else {}
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(target.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                swaps.append((parent, name, child))
    try:
        for parent, name, child in swaps:
            k = counts.get(id(child), 1)
            new = factory(child) if k <= 1 else _PerCall([factory(child) for _ in range(k)])
            setattr(parent, name, new)
        yield target
    finally:
        if not on_copy:
            for parent, name, child in swaps:
                setattr(parent, name, child)


class _GuidedReLUFn(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients: where the input was positive
    (guided backprop) or everywhere (deconvolution)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, guided: bool) -> Tensor:
        ctx.guided = guided
        if guided:
            ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        g = g.clamp_min(0)
        if ctx.guided:
            (x,) = ctx.saved_tensors
            g = g * (x > 0).to(g.dtype)
        return g, None


class ModifiedReLU(nn.Module):
    """A non-in-place ReLU with the guided-backprop (``guided=True``) or deconvnet backward."""

    def __init__(self, guided: bool):
        super().__init__()
        self.guided = guided

    def forward(self, x: Tensor) -> Tensor:
        return _GuidedReLUFn.apply(x, self.guided)
