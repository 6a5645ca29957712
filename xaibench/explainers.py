"""The explainer contract: base class, registration and the model-safety helpers.

An explainer is built with the model and its settings and then called::

    explainer = xaibench.create_explainer("cnn.gradcam", model, layer="layer4")
    attr = explainer.explain(images, target)        # -> Attribution

Every explainer leaves the caller's model exactly as it found it (hooks, ``requires_grad``,
train/eval mode, in-place flags): use :func:`model_guard` and :func:`capture_layer`.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
from torch import Tensor, nn

from .registry import FAMILY_KEY, Registry
from .settings import Settings, _legacy_defaults, validate
from .util import close_matches
from .types import KINDS, Attribution, Batch

Target = int | Tensor | None


@dataclass(frozen=True)
class ExplainerInfo:
    """Metadata of a registered explainer: key, family, output kind, one-line summary."""

    name: str
    family: str
    kind: str
    summary: str
    fixture: str


class Explainer:
    """Base of every explainer. Subclasses set ``kind``, declare ``Settings`` and implement :meth:`explain`.

    Settings are a frozen, typed :class:`xaibench.Settings` model nested in the class and
    extended by subclasses; they are validated when the explainer is built (a bad value
    raises :class:`~xaibench.errors.SettingsError` naming the setting and what is allowed),
    read as ``self.settings.<name>``, and recorded by :meth:`get_params` for reports.

    Args:
        model: the model to explain; never modified.
        **params: the explainer's settings (see its ``Settings``).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "pixel"

    class Settings(Settings):
        """No settings."""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        _legacy_defaults(cls)

    def __init__(self, model: nn.Module, **params: Any) -> None:
        self.model = model
        self.settings = validate(type(self).Settings, params, f"explainer {self.name or type(self).__name__!r}")
        self.params: dict[str, Any] = dict(self.settings)

    def get_params(self) -> dict[str, Any]:
        """The settings this explainer runs with (defaults filled in)."""
        return dict(self.params)

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        """Explain ``inputs`` for ``target`` (int, (B,) tensor, or None = predicted class)."""
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
    cls.name = name
    doc = inspect.getdoc(cls) or ""
    family = name.split(".")[0]
    return ExplainerInfo(name, family, cls.kind, doc.split("\n")[0], fixture or family)


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


def resolve_target(logits: Tensor, target: Target) -> Tensor:
    """Turn ``target`` into a (B,) long tensor of class indices.

    Args:
        logits: (B, K) model outputs.
        target: None (predicted class), an int (same class for all), or (B,) tensor.

    Raises:
        ValueError: wrong shape, or a class index outside [0, K).
    """
    b, k = logits.shape[0], logits.shape[-1]
    if target is None:
        t = logits.argmax(-1)
    elif isinstance(target, int):
        t = torch.full((b,), target, dtype=torch.long, device=logits.device)
    else:
        t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
        if t.numel() == 1 and b != 1:
            t = t.expand(b)
        if t.shape[0] != b:
            raise ValueError(f"target: expected an int or a ({b},) tensor, got shape {tuple(torch.as_tensor(target).shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
        raise ValueError(f"target: class indices must lie in [0, {k}), got {t.tolist()}")
    return t


def check_images(inputs: Tensor, who: str) -> None:
    """Raise ``ValueError`` unless ``inputs`` is a (B, C, H, W) floating tensor."""
    if not isinstance(inputs, Tensor):
        raise ValueError(f"{who}: expected inputs as a torch.Tensor (B, C, H, W), got {type(inputs).__name__}")
    if inputs.ndim != 4:
        raise ValueError(
            f"{who}: expected inputs (B, C, H, W), got shape {tuple(inputs.shape)}; "
            "add a batch dimension with inputs.unsqueeze(0)"
        )
    if not inputs.is_floating_point():
        raise ValueError(f"{who}: expected floating-point inputs, got {inputs.dtype}")
