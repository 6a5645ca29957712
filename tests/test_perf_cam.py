"""CAM methods at the cost of a forward (issue 13): nothing before the target layer records autograd.

Reference: a forward hook on modules before and after the target layer reads whether their
outputs are part of an autograd graph (``requires_grad``). Before the layer nothing may be
(even when the caller's inputs require grad); after it the captured layer output is the
gradient leaf, so the graph starts there.
"""

import pytest
import timm
import torch

import xaibench


def _recorded(model, explain, before, after):
    seen = {}

    def hook(name):
        def record(_m, _i, out):
            seen.setdefault(name, out.requires_grad)
        return record

    handles = [before.register_forward_hook(hook("before")), after.register_forward_hook(hook("after"))]
    try:
        explain()
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("name", ["cnn.gradcam", "cnn.hirescam"])
def test_cnn_cams_record_nothing_before_the_layer(name):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
    x = torch.rand(2, 3, 64, 64).requires_grad_(True)  # a caller's tensor that requires grad
    ex = xaibench.create_explainer(name, model, layer="layer3")
    seen = _recorded(model, lambda: ex.explain(x, 1), before=model.layer2, after=model.layer4)
    assert seen == {"before": False, "after": True}


def test_vit_gradcam_records_nothing_before_the_layer():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=64).eval()
    x = torch.rand(2, 3, 64, 64).requires_grad_(True)
    ex = xaibench.create_explainer("vit.gradcam", model)  # layer: blocks[-1].norm1
    seen = _recorded(model, lambda: ex.explain(x, 1), before=model.blocks[-2], after=model.blocks[-1].attn)
    assert seen == {"before": False, "after": True}
