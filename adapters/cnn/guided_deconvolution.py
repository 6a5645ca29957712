"""Guided deconvolution for CNNs (``cnn.guided_deconvolution``): deconvnet ⊙ upsampled GradCAM.

The facial-CNN thesis (Vijayananth 2022, GradCAM section, step 6) lists it beside Guided GradCAM,
after Selvaraju et al. (2017, section 3): "an element-wise multiplication ... of Grad-CAM's maps and
outputs of fine-grained visualization approaches like Guided-Backpropagation and Deconvolution ...
termed as Guided-GradCAM and Guided-Deconvolution". So it is Guided GradCAM with the deconvnet
backward (Zeiler & Fergus 2014: at every ReLU only positive gradients pass, whatever the forward
input's sign) in place of guided backprop's (positive gradients *and* positive forward input).
"""

from __future__ import annotations

from xaibench import register_explainer

from .gradients import Deconvolution
from .guided_gradcam import GuidedGradCAM


@register_explainer("cnn.guided_deconvolution")
class GuidedDeconvolution(GuidedGradCAM):
    """Guided deconvolution (Selvaraju et al. 2017; the facial-CNN thesis): the deconvnet
    gradients (B, C, H, W) of ``cnn.deconvolution`` multiplied pixel-wise by the bilinearly
    upsampled GradCAM map, then reduced over channels (signed ``"sum"`` by default):
    high-resolution and class-discriminative, as Guided GradCAM with the deconvnet ReLU rule.

    Example:
        >>> attr = xaibench.explain(model, images, "cnn.guided_deconvolution", target=labels)
        >>> attr.values.shape   # (B, H, W); extras["cam"] is the upsampled GradCAM map
    """

    gradients = Deconvolution
