"""Guided deconvolution for CNNs (``cnn.guided_deconvolution``): deconvnet ⊙ upsampled GradCAM.

The facial-CNN thesis (Vijayananth 2022, GradCAM section, step 6) lists it beside Guided GradCAM,
after Selvaraju et al. (2017, section 3): "an element-wise multiplication ... of Grad-CAM's maps and
outputs of fine-grained visualization approaches like Guided-Backpropagation and Deconvolution ...
termed as Guided-GradCAM and Guided-Deconvolution". So it is Guided GradCAM with the deconvnet
backward (Zeiler & Fergus 2014: at every ReLU only positive gradients pass, whatever the forward
input's sign) in place of guided backprop's (positive gradients *and* positive forward input).
"""

from __future__ import annotations

from torch import Tensor

from xaibench import register_explainer
from xaibench.explainers import Target

from ._common import LayerRef, PixelExplainer
from .cam import GradCAM
from .gradients import Deconvolution


@register_explainer("cnn.guided_deconvolution")
class GuidedDeconvolution(PixelExplainer):
    """Guided deconvolution (Selvaraju et al. 2017; the facial-CNN thesis): the deconvnet
    gradients (B, C, H, W) of ``cnn.deconvolution`` multiplied pixel-wise by the bilinearly
    upsampled GradCAM map, then reduced over channels (signed ``"sum"`` by default):
    high-resolution and class-discriminative, as Guided GradCAM with the deconvnet ReLU rule.

    Example:
        >>> attr = xaibench.explain(model, images, "cnn.guided_deconvolution", target=labels)
        >>> attr.values.shape   # (B, H, W); extras["cam"] is the upsampled GradCAM map
    """

    volumes = True

    class Settings(PixelExplainer.Settings):
        layer: LayerRef = None
        """GradCAM's layer: a module of the model or its dotted name; None = the last convolutional stage."""
        relu: bool = True
        """Clamp the GradCAM map at 0 before multiplying (as Selvaraju et al.)."""

    def channels(self, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor, dict]:
        s = self.settings
        cam = GradCAM(self.model, layer=s.layer, relu=s.relu).explain(inputs, target)
        t = cam.extras["target"]
        deconv, _ = Deconvolution(self.model).channels(inputs, t)
        return deconv * cam.values[:, None], t, {"cam": cam.values}
