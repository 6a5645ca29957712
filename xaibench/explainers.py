"""The explainer contract: base class, registration and the model-safety helpers.

An explainer is built with the model and its settings and then called::

    explainer = xaibench.create_explainer("cnn.gradcam", model, layer="layer4")
    attr = explainer.explain(images, target)        # -> Attribution

Every explainer leaves the caller's model exactly as it found it (hooks, ``requires_grad``,
train/eval mode, in-place flags): use :func:`model_guard` and :func:`capture_layer`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor, nn

from .registry import FAMILY_KEY, Registry
from .settings import Settings, validate
from .util import close_matches
from .types import KINDS, Attribution, Batch

Target = int | Tensor | None


@dataclass(frozen=True)
class ExplainerInfo:
    """Metadata of a registered explainer: key, family, output kind, one-line summary.

    ``kinds``: every kind the explainer returns (its main ``kind`` first), e.g. ``("pixel",
    "voxel")`` for a CNN method that also explains volumes; ``kind_fixtures``: the contract
    fixture of each further kind, as (kind, fixture) pairs. The contract suite runs the
    explainer once per kind: on ``fixture`` for ``kind``, on each of ``kind_fixtures`` for theirs.
    """

    name: str
    family: str
    kind: str
    summary: str
    fixture: str
    kinds: tuple[str, ...] = ()
    kind_fixtures: tuple[tuple[str, str], ...] = ()

    def fixture_kind(self, fixture: str) -> str:
        """The kind the explainer returns on contract fixture ``fixture``."""
        return {fx: k for k, fx in self.kind_fixtures}.get(fixture, self.kind)


def nonfinite_rows(t: Tensor) -> Tensor:
    """(B,) bool on ``t``'s device: rows of a floating (B, ...) tensor that hold NaN or ±Inf.

    A row's max is NaN when it holds a NaN and its max or min is ±Inf when it holds one: two
    vectorised reductions instead of a (B, n) ``isfinite`` map (256 maps of 224²: 2 ms, not 40
    ms; 16 images of 3x224²: 1 ms, not 7 ms)."""
    flat = t.detach().reshape(t.shape[0], -1)
    if flat.shape[1] == 0:
        return torch.zeros(t.shape[0], dtype=torch.bool, device=t.device)
    return ~(torch.isfinite(flat.amax(1)) & torch.isfinite(flat.amin(1)))


def nonfinite_samples(inputs: Tensor, *, nan_padding: bool = False) -> list[int]:
    """Indices of the samples of ``inputs`` (B, ...) that hold NaN or ±Inf.

    With ``nan_padding``, rows of set inputs (B, N, m) that are entirely NaN are padding and
    not counted; a sample that is padding only is.
    """
    if inputs.ndim == 0:
        return []
    if nan_padding and inputs.ndim == 3:
        bad = ~torch.isfinite(inputs.detach())
        pad = torch.isnan(inputs.detach()).all(-1)  # (B, N)
        per = (bad & ~pad[..., None]).flatten(1).any(1) | pad.all(1)
    else:
        per = nonfinite_rows(inputs)
    return torch.nonzero(per).flatten().tolist()


def _input_checked(fn: Callable[..., Attribution]) -> Callable[..., Attribution]:
    """Wrap an explainer's ``explain`` / ``explain_batch`` so :meth:`Explainer.screen_inputs` runs first."""

    @functools.wraps(fn)
    def checked(self: "Explainer", *args: Any, **kw: Any) -> Attribution:
        x = args[0] if args else kw.get("inputs", kw.get("batch"))
        x = x.inputs if isinstance(x, Batch) else x
        self.screen_inputs(x)
        target = args[1] if len(args) > 1 else kw.get("target")
        if target is not None and isinstance(x, Tensor) and x.ndim > 0:
            class_indices(target, int(x.shape[0]))  # strings, 0.7, wrong shapes: ValueError (range: the explainer)
        return fn(self, *args, **kw)

    checked.__xaibench_checked__ = True  # type: ignore[attr-defined]
    return checked


class Explainer:
    """Base of every explainer. Subclasses set ``kind``, declare ``Settings`` and implement :meth:`explain`.

    Settings are a frozen, typed :class:`xaibench.Settings` model nested in the class and
    extended by subclasses; they are validated when the explainer is built (a bad value
    raises :class:`~xaibench.errors.SettingsError` naming the setting and what is allowed),
    read as ``self.settings.<name>``, and recorded by :meth:`get_params` for reports.

    Inputs are checked before a subclass's :meth:`explain` / :meth:`explain_batch` runs (the
    base wraps both when a subclass defines them, so every explainer gets the same check, see
    :meth:`screen_inputs`): a floating tensor with NaN/Inf raises ``ValueError`` naming the
    samples, images whose channel count differs from the model's first convolution raise
    ``ValueError`` saying what the model expects, and a target that is not integer class
    indices (a string, ``0.7``) raises ``ValueError`` (:func:`class_indices`). Set inputs
    (B, N, m) may carry all-NaN rows as padding (the bag convention of ``mil_folder``) unless
    ``nan_padding = False``.

    Args:
        model: the model to explain; never modified.
        **params: the explainer's settings (see its ``Settings``).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "pixel"
    #: Every kind the explainer returns when its inputs call for it (the main ``kind`` first);
    #: empty = ``(kind,)``. Each further kind names its contract fixture in :attr:`kind_fixtures`.
    kinds: ClassVar[tuple[str, ...]] = ()
    #: kind -> contract-test fixture, for each kind of :attr:`kinds` beyond the main one.
    kind_fixtures: ClassVar[dict[str, str]] = {}
    #: Set inputs (B, N, m): all-NaN rows are padding, not refused (a sample of padding only is).
    #: Set False where the model does not mask padding rows.
    nan_padding: ClassVar[bool] = True

    class Settings(Settings):
        """No settings."""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for meth in ("explain", "explain_batch"):
            fn = cls.__dict__.get(meth)
            if callable(fn) and not getattr(fn, "__xaibench_checked__", False):
                setattr(cls, meth, _input_checked(fn))

    def screen_inputs(self, inputs: Any) -> None:
        """Refuse inputs no explanation can be trusted on (called before every ``explain``).

        Only floating tensors are checked; other inputs are left to the explainer.

        Raises:
            ValueError: NaN/Inf in some samples (named by index); images (B, C, H, W) or
                volumes (B, C, D, H, W) with another channel count than the model's first
                convolution takes.
        """
        if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
            return
        who = self.name or type(self).__name__
        bad = nonfinite_samples(inputs, nan_padding=self.nan_padding)
        if bad:
            shown = bad if len(bad) <= 10 else [*bad[:10], "..."]
            raise ValueError(
                f"{who}: inputs of samples {shown} ({len(bad)} of {inputs.shape[0]}) contain NaN/Inf; "
                "the model's outputs on them, and so any explanation, are meaningless. Drop or repair "
                "those samples first, e.g. keep = torch.isfinite(x).flatten(1).all(1); x = x[keep]")
        if inputs.ndim in (4, 5) and isinstance(self.model, nn.Module):
            check_channels(self.model, inputs, who)

    def __init__(self, model: nn.Module, **params: Any) -> None:
        self.model = model
        self.settings = validate(type(self).Settings, params, f"explainer {self.name or type(self).__name__!r}")
        self.params: dict[str, Any] = dict(self.settings)

    def get_params(self) -> dict[str, Any]:
        """The settings this explainer runs with (defaults filled in)."""
        return dict(self.params)

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        """Explain ``inputs`` for ``target`` (int, (B,) tensor, or None = predicted class).

        Raises:
            ValueError: NaN/Inf in some samples' inputs (named), images with a channel count the
                model does not take, a target that is not integer class indices (see
                :meth:`screen_inputs`, :func:`resolve_target`).
        """
        raise NotImplementedError

    def explain_batch(self, batch: "Batch", target: Target = None) -> Attribution:
        """Explain a whole :class:`Batch` (the runner calls this). The default explains
        ``batch.inputs`` for ``target``; explainers that need more of the batch (query
        events, ground truth for a selection) override it."""
        return self.explain(batch.inputs, target)

    def __call__(self, inputs: Tensor, target: Target = None) -> Attribution:
        return self.explain(inputs, target)

    def _attribution(self, values: Tensor, **extras: Any) -> Attribution:
        return Attribution(values=values.detach(), kind=self.kind, method=self.name,
                           params=self.settings.record(), extras=extras)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def _explainer_info(name: str, cls: type, *, fixture: str | None = None) -> ExplainerInfo:
    if cls.kind not in KINDS:
        raise ValueError(f"register_explainer({name!r}): kind {cls.kind!r} not in {KINDS}")
    # kinds inherited from a parent with another main kind (ViT GradCAM from the CNN's) do not apply
    own = tuple(cls.kinds)
    kinds = own if own and (own[0] == cls.kind or "kinds" in cls.__dict__) else (cls.kind,)
    if kinds[0] != cls.kind or len(set(kinds)) != len(kinds) or not set(kinds) <= set(KINDS):
        raise ValueError(f"register_explainer({name!r}): kinds {kinds} must be distinct kinds of {KINDS}, "
                         f"the main kind {cls.kind!r} first")
    extra = dict(cls.kind_fixtures) if len(kinds) > 1 else {}
    if set(extra) != set(kinds[1:]):
        raise ValueError(f"register_explainer({name!r}): kind_fixtures must name a contract fixture for each further "
                         f"kind {kinds[1:]}, got {sorted(extra)}")
    cls.name = name
    doc = inspect.getdoc(cls) or ""
    family = name.split(".")[0]
    return ExplainerInfo(name, family, cls.kind, doc.split("\n")[0], fixture or family, kinds,
                         tuple((k, extra[k]) for k in kinds[1:]))


#: The explainer registry: keys ``family.method``, values :class:`Explainer` subclasses.
EXPLAINERS: Registry[type[Explainer]] = Registry(
    "explainer", base=Explainer, key_pattern=FAMILY_KEY, key_form="'family.method' (lower_snake parts)",
    make_info=_explainer_info, functions=False)

#: ``@register_explainer("cnn.hirescam", fixture=None)``: class decorator registering an
#: :class:`Explainer` subclass (``fixture``: the contract-test fixture, default its family).
register_explainer = EXPLAINERS.register


# ----------------------------------------------------------------------------- model safety

@contextlib.contextmanager
def model_guard(model: nn.Module, *, eval_mode: bool = True, freeze: bool = True) -> Iterator[nn.Module]:
    """Run with the model in eval mode and its parameters frozen; restore both afterwards.

    Freezing parameters means a backward pass computes only the gradients an explainer
    asks for (no parameter gradients). Train/eval flags are restored module by module,
    ``requires_grad`` parameter by parameter, even when the body raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        if freeze:
            for p, _ in grads:
                p.requires_grad_(False)
        yield model
    finally:
        for p, rg in grads:
            p.requires_grad_(rg)
        for m, tr in modes:
            m.training = tr


def find_module(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """Resolve ``layer`` (a module of ``model`` or a dotted name like ``"layer4.1"``).

    Raises:
        ValueError: the name does not exist or the module is not part of the model.
    """
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError("layer: the given module is not part of the model")
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = close_matches(layer, names, cutoff=0.4)
        raise ValueError(
            f"layer: model has no submodule {layer!r}"
            + (f"; close: {close}" if close else f"; e.g. {names[-5:]}")
        ) from None


@contextlib.contextmanager
def capture_layer(module: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Capture a module's output as a gradient leaf for one forward pass.

    Inside the block, a forward of the model stores the module's output in
    ``store["act"]``, detached from everything before it and requiring grad, so that
    ``torch.autograd.grad(score, store["act"])`` computes only the layer's gradient:
    nothing upstream of the layer is differentiated. The hook is removed on exit.
    """
    store: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _inp: Any, out: Tensor) -> Tensor:
        if not isinstance(out, Tensor):
            raise ValueError(f"capture_layer: layer output must be a Tensor, got {type(out).__name__}")
        leaf = out.detach().requires_grad_(True)
        store["act"] = leaf
        return leaf.clone()  # a non-leaf view, so in-place ops downstream stay legal

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def class_indices(target: int | Tensor | Any, b: int, k: int | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """Turn an explicit ``target`` into a (B,) long tensor of class indices, refusing anything
    that is not one (for explainers that resolve ``None`` their own way).

    Args:
        target: an int (same class for all), or a (B,) tensor / list of integer class indices
            (a one-element one applies to all). Floats are accepted only when they are whole
            numbers (``1.0``); nothing is truncated.
        b: the batch size.
        k: the number of classes, when known: indices must lie in [0, k).

    Raises:
        ValueError: a string, a non-integer number (``0.7``), NaN, wrong shape, or an index
            outside [0, k).
    """
    if isinstance(target, int):
        t = torch.full((b,), target, dtype=torch.long, device=device)
    else:
        if isinstance(target, (str, bytes)) or (
                isinstance(target, (list, tuple)) and any(isinstance(v, (str, bytes)) for v in target)):
            raise ValueError(f"target: expected class indices (int or a ({b},) integer tensor), got the string(s) "
                             f"{target!r}; map class names to their indices first")
        try:
            raw = torch.as_tensor(target, device=device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"target: expected None, an int or a ({b},) integer tensor, got "
                             f"{type(target).__name__} ({e})") from None
        if raw.is_complex() or (raw.is_floating_point() and not bool((torch.isfinite(raw) & (raw == raw.round())).all())):
            shown = raw.reshape(-1).tolist() if isinstance(target, Tensor) else target
            raise ValueError(f"target: class indices must be whole numbers, got {shown!r}; pass integer class "
                             "indices (a float target is never truncated)")
        t = raw.long().reshape(-1)
        if t.numel() == 1 and b != 1:
            t = t.expand(b)
        if t.shape[0] != b:
            raise ValueError(f"target: expected an int or a ({b},) tensor, got shape {tuple(raw.shape)}")
    if k is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
        raise ValueError(f"target: class indices must lie in [0, {k}), got {t.tolist()}")
    return t


def resolve_target(logits: Tensor, target: Target) -> Tensor:
    """Turn ``target`` into a (B,) long tensor of class indices.

    Args:
        logits: (B, K) model outputs.
        target: None (predicted class), or class indices as :func:`class_indices` takes them.

    Raises:
        ValueError: see :func:`class_indices` (strings, non-integer numbers, wrong shape, an
            index outside [0, K)).
    """
    if target is None:
        return logits.argmax(-1)
    return class_indices(target, logits.shape[0], logits.shape[-1], logits.device)


def first_conv(model: nn.Module, ndim: int) -> nn.Module | None:
    """The first ``Conv2d`` (for (B, C, H, W) inputs) or ``Conv3d`` (for (B, C, D, H, W)) of
    ``model`` in module order, the stem that reads the input channels; None if it has none."""
    kind = {4: nn.Conv2d, 5: nn.Conv3d}.get(ndim)
    if kind is None:
        return None
    for m in model.modules():
        if isinstance(m, kind) and m.in_channels > 0:  # a lazy conv has 0 until its first call
            return m
    return None


def check_channels(model: nn.Module, inputs: Tensor, who: str) -> None:
    """Raise ``ValueError`` when images (B, C, H, W) or volumes (B, C, D, H, W) have another
    channel count than the model's first convolution takes (models without one pass)."""
    conv = first_conv(model, inputs.ndim)
    if conv is None or inputs.shape[1] == conv.in_channels:
        return
    c, got = conv.in_channels, int(inputs.shape[1])
    hint = (f"repeat the grey channel (x.expand(-1, {c}, *x.shape[2:]))" if got == 1
            else "convert the inputs to the model's channels")
    raise ValueError(f"{who}: the model expects {c}-channel inputs (its first {type(conv).__name__} has "
                     f"in_channels={c}), got {got} channels in inputs of shape {tuple(inputs.shape)}; "
                     f"{hint}, or use a model built for {got} channels")


def check_images(inputs: Tensor, who: str, model: nn.Module | None = None) -> None:
    """Raise ``ValueError`` unless ``inputs`` is a (B, C, H, W) floating tensor (with the
    channel count of ``model``'s first Conv2d when a model is given)."""
    if not isinstance(inputs, Tensor):
        raise ValueError(f"{who}: expected inputs as a torch.Tensor (B, C, H, W), got {type(inputs).__name__}")
    if inputs.ndim != 4:
        raise ValueError(
            f"{who}: expected inputs (B, C, H, W), got shape {tuple(inputs.shape)}; "
            "add a batch dimension with inputs.unsqueeze(0)"
        )
    if not inputs.is_floating_point():
        raise ValueError(f"{who}: expected floating-point inputs, got {inputs.dtype}")
    if model is not None:
        check_channels(model, inputs, who)
