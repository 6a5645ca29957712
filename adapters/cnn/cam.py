"""Class-activation-map explainers: a base class that fixes the steps, and GradCAM / HiResCAM.

The base class captures the target layer's output as a gradient leaf, runs one forward,
and takes one ``torch.autograd.grad`` of Σ_i logit[i, target_i] to that layer: no
parameter gradients and nothing upstream of the layer is differentiated. A new CAM variant
overrides :meth:`CAMExplainer.cam` only.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from xaibench.explainers import (
    Explainer, Target, capture_layer, find_module, model_guard, resolve_target,
)
from xaibench.types import Attribution
from xaibench import register_explainer

from ._common import LayerRef
from ._volume import VOLUME_FIXTURES, VOLUME_KINDS, attribution, check_spatial, upsample


def default_cnn_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage: timm's last ``feature_info`` module, else the last
    top-level child that contains a ``Conv2d`` or ``Conv3d`` (``layer4`` of a torchvision ResNet)."""
    info = getattr(model, "feature_info", None)
    if info is not None:
        try:
            name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
            return model.get_submodule(name)
        except (AttributeError, KeyError, IndexError, TypeError):
            pass
    last = None
    for child in model.children():
        if any(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in child.modules()):
            last = child
    if last is None:
        raise ValueError("layer: found no convolutional stage in the model; pass layer= (a module or dotted name)")
    return last


class CAMExplainer(Explainer):
    """Base of CAM methods: ``map = cam(activations, gradients)`` at a layer, upsampled.

    Returns (from :meth:`explain`): a ``pixel`` Attribution (B, H, W) at input resolution,
    bilinearly upsampled, raw (never min-max scaled); ``extras["layer_map"]`` holds the
    (B, h, w) map at the layer's resolution and ``extras["target"]`` the explained classes.
    Volumes (B, C, D, H, W) give a ``voxel`` Attribution (B, D, H, W), trilinearly upsampled
    from the (B, d, h, w) layer map (MONAI's GradCAM before its min-max scaling).
    """

    kind = "pixel"
    kinds = VOLUME_KINDS
    kind_fixtures = VOLUME_FIXTURES

    class Settings(Explainer.Settings):
        layer: LayerRef = None
        """The layer whose activations are used: a module of the model or its dotted name
        (``"layer4"``); None = the last convolutional stage."""
        relu: bool = True
        """Clamp the map at 0; False keeps negative evidence."""

    def __init__(self, model: nn.Module, **params: Any) -> None:
        super().__init__(model, **params)
        if self.settings.layer is not None:  # a wrong layer name fails at construction (before any run)
            find_module(model, self.settings.layer)

    def cam(self, acts: Tensor, grads: Tensor) -> Tensor:
        """(B, C, h, w) activations and gradients -> (B, h, w) map ((B, C, d, h, w) -> (B, d, h, w))."""
        raise NotImplementedError

    def default_layer(self, model: nn.Module) -> nn.Module:
        return default_cnn_layer(model)

    def to_spatial(self, t: Tensor, inputs: Tensor) -> Tensor:
        """Layer output -> (B, C, h, w) (or (B, C, d, h, w) for volumes). CNN layers already are;
        token models override."""
        if t.ndim != inputs.ndim:
            raise ValueError(f"{self.name}: layer output must be (B, C{', d' if inputs.ndim == 5 else ''}, h, w), "
                             f"got {tuple(t.shape)}; choose a convolutional layer")
        return t

    def check_inputs(self, inputs: Tensor) -> None:
        check_spatial(inputs, self.name)

    def layer_gradients(self, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor, Tensor]:
        """(activations, gradients, targets) at the layer, with one autograd.grad call."""
        layer = self.settings.layer
        module = self.default_layer(self.model) if layer is None else find_module(self.model, layer)
        with model_guard(self.model), capture_layer(module) as store, torch.enable_grad():
            logits = self.model(inputs.detach())  # nothing before the layer is recorded, whatever the inputs
            if "act" not in store:
                raise ValueError(f"{self.name}: layer {layer!r} was not called in the forward pass")
            t = resolve_target(logits, target)
            score = logits.gather(1, t[:, None]).sum()
            (grads,) = torch.autograd.grad(score, store["act"], allow_unused=True)
            acts = store["act"].detach()
        if grads is None:
            warnings.warn(f"{self.name}: the output does not depend on layer {layer!r}; the map is zero", stacklevel=3)
            grads = torch.zeros_like(acts)
        return acts, grads, t

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        self.check_inputs(inputs)
        acts, grads, t = self.layer_gradients(inputs, target)
        cam = self.cam(self.to_spatial(acts, inputs), self.to_spatial(grads, inputs))
        if self.settings.relu:
            cam = cam.clamp_min(0)
        return attribution(self, upsample(cam, inputs.shape[2:]), layer_map=cam.detach(), target=t)


@register_explainer("cnn.gradcam")
class GradCAM(CAMExplainer):
    """GradCAM (Selvaraju et al. 2017): channel weights = spatial mean of the gradients.

    On a global-average-pool + linear head the gradient is spatially constant, so GradCAM
    and HiResCAM coincide at the last stage; they differ at earlier layers or other heads.
    """

    def cam(self, acts: Tensor, grads: Tensor) -> Tensor:
        return (grads.mean(dim=tuple(range(2, grads.ndim)), keepdim=True) * acts).sum(1)


@register_explainer("cnn.hirescam")
class HiResCAM(CAMExplainer):
    """HiResCAM (Draelos & Carin 2020): gradients times activations, summed over channels."""

    def cam(self, acts: Tensor, grads: Tensor) -> Tensor:
        return (grads * acts).sum(1)
