"""cnn.gradcam vs pytorch-grad-cam's GradCAM on a timm resnet18, 16×3×224×224, side by side.

grad-cam runs a full ``loss.backward()`` (every parameter gradient); ours takes one
``torch.autograd.grad`` to the target layer. Goal: ≥ 2× faster. The "limit" entry is one
plain forward pass (no gradients), the floor of any CAM method.

The other CAM-style methods (issue 13: "at the cost of a forward") each get a group with the
same forward as "limit": ``cnn.hirescam`` (one gradient to the layer, nothing before it
recorded), ``cnn.fullgrad`` and ``cnn.guided_gradcam`` (these need the input gradient, so a
full backward: about forward + backward by construction).
"""

import pytest
import timm
import torch

import xaibench

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    target = torch.arange(16) % 10
    return model, x, target


def test_gradcam_xaibench(benchmark, setup):
    model, x, target = setup
    benchmark.group = "gradcam resnet18 16x3x224"
    benchmark.extra_info["side"] = "xaibench"
    ex = xaibench.create_explainer("cnn.gradcam", model, layer="layer4")
    out = benchmark.pedantic(ex.explain, args=(x, target), rounds=5, warmup_rounds=1)
    assert out.values.shape == (16, 224, 224)


def test_gradcam_pytorch_grad_cam(benchmark, setup):
    model, x, target = setup
    benchmark.group = "gradcam resnet18 16x3x224"
    benchmark.extra_info["side"] = "anchor"
    cam = GradCAM(model=model, target_layers=[model.layer4])
    targets = [ClassifierOutputTarget(int(t)) for t in target]
    try:
        out = benchmark.pedantic(lambda: cam(input_tensor=x, targets=targets), rounds=5, warmup_rounds=1)
    finally:
        cam.activations_and_grads.release()
    assert out.shape == (16, 224, 224)


def test_gradcam_forward_only(benchmark, setup):
    model, x, _ = setup
    benchmark.group = "gradcam resnet18 16x3x224"
    benchmark.extra_info["side"] = "limit"

    def fwd():
        with torch.inference_mode():
            return model(x)

    benchmark.pedantic(fwd, rounds=5, warmup_rounds=1)


CAM_FAMILY = ["cnn.hirescam", "cnn.fullgrad", "cnn.guided_gradcam"]


@pytest.mark.parametrize("name", CAM_FAMILY)
def test_cam_family_xaibench(benchmark, setup, name):
    model, x, target = setup
    benchmark.group = f"{name} resnet18 16x3x224"
    benchmark.extra_info["side"] = "xaibench"
    ex = xaibench.create_explainer(name, model)
    out = benchmark.pedantic(ex.explain, args=(x, target), rounds=3, warmup_rounds=1)
    assert out.values.shape == (16, 224, 224)


@pytest.mark.parametrize("name", CAM_FAMILY)
def test_cam_family_forward_only(benchmark, setup, name):
    model, x, _ = setup
    benchmark.group = f"{name} resnet18 16x3x224"
    benchmark.extra_info["side"] = "limit"

    def fwd():
        with torch.inference_mode():
            return model(x)

    benchmark.pedantic(fwd, rounds=3, warmup_rounds=1)
