"""Guided GradCAM for CNNs (``cnn.guided_gradcam``): guided backprop ⊙ upsampled GradCAM."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from xaibench import register_explainer
from xaibench.explainers import Target

from ._common import PixelExplainer
from .cam import GradCAM
from .gradients import GuidedBackprop


@register_explainer("cnn.guided_gradcam")
class GuidedGradCAM(PixelExplainer):
    """Guided GradCAM (Selvaraju et al. 2017): the guided-backprop gradients (B, C, H, W)
    multiplied pixel-wise by the bilinearly upsampled GradCAM map, then reduced over channels
    (signed ``"sum"`` by default): high-resolution and class-discriminative.

    Settings:
        layer: GradCAM's layer (default: the last convolutional stage).
        relu: clamp the GradCAM map at 0 first (default True, as the paper).
        reduce: channel reduction.
    """

    defaults: dict[str, Any] = {"reduce": "sum", "layer": None, "relu": True}

    def channels(self, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor, dict]:
        cam = GradCAM(self.model, layer=self.params["layer"], relu=self.params["relu"]).explain(inputs, target)
        t = cam.extras["target"]
        guided, _ = GuidedBackprop(self.model).channels(inputs, t)
        return guided * cam.values[:, None], t, {"cam": cam.values}
