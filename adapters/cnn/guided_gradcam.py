"""Guided GradCAM for CNNs (``cnn.guided_gradcam``): guided backprop ⊙ upsampled GradCAM."""

from __future__ import annotations

from torch import Tensor

from xaibench import register_explainer
from xaibench.explainers import Target

from ._common import LayerRef, PixelExplainer
from .cam import GradCAM
from .gradients import GuidedBackprop


@register_explainer("cnn.guided_gradcam")
class GuidedGradCAM(PixelExplainer):
    """Guided GradCAM (Selvaraju et al. 2017): the guided-backprop gradients (B, C, H, W)
    multiplied pixel-wise by the bilinearly upsampled GradCAM map, then reduced over channels
    (signed ``"sum"`` by default): high-resolution and class-discriminative.
    """

    volumes = True
    #: the fine-grained gradients multiplied by the CAM (``cnn.guided_deconvolution`` swaps the rule)
    gradients = GuidedBackprop

    class Settings(PixelExplainer.Settings):
        layer: LayerRef = None
        """GradCAM's layer: a module of the model or its dotted name; None = the last convolutional stage."""
        relu: bool = True
        """Clamp the GradCAM map at 0 before multiplying (as the paper)."""

    def channels(self, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor, dict]:
        s = self.settings
        cam = GradCAM(self.model, layer=s.layer, relu=s.relu).explain(inputs, target)
        t = cam.extras["target"]
        guided, _ = self.gradients(self.model).channels(inputs, t)
        return guided * cam.values[:, None], t, {"cam": cam.values}
