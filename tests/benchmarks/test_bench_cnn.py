"""cnn.gradcam vs pytorch-grad-cam's GradCAM on a timm resnet18, 16×3×224×224, side by side.

grad-cam runs a full ``loss.backward()`` (every parameter gradient); ours takes one
``torch.autograd.grad`` to the target layer. Goal: ≥ 2× faster. The "limit" entry is one
plain forward pass (no gradients), the floor of any CAM method.

The other CAM-style methods (issue 13: "at the cost of a forward") each get a group with the
same forward as "limit": ``cnn.hirescam`` (one gradient to the layer, nothing before it
recorded), ``cnn.fullgrad`` and ``cnn.guided_gradcam``.

Why FullGrad and guided GradCAM cannot reach 1.15× a forward: both need ∂f/∂x, the gradient at
the *input*, so the backward runs through every convolution, and a convolution's input
gradient costs the same multiply-adds as its forward. Counted with
``torch.utils.flop_counter`` on this resnet18: forward 3.63 GFLOP per image, forward + input
gradient 7.25 GFLOP (**2.00×** the forward). FullGrad is exactly that one forward and one
backward (2.0× in FLOPs); guided GradCAM is GradCAM (1.0×) plus guided backprop (2.0×), 3.0×.
Their groups therefore carry a second floor, side ``input_gradient``: one forward and one
backward to the input with frozen parameters, timed here; ``ours / input_gradient`` is the
ratio that can approach 1 (FullGrad) or 1.5 (guided GradCAM).
"""

import pytest
import timm
import torch

import xaibench

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


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


@pytest.mark.parametrize("name", ["cnn.fullgrad", "cnn.guided_gradcam"])
def test_cam_family_input_gradient_floor(benchmark, setup, name):
    """The floor of any method that needs ∂f/∂x: one forward and one backward to the input
    (parameters frozen), i.e. 2.0× the forward's multiply-adds."""
    model, x, target = setup
    benchmark.group = f"{name} resnet18 16x3x224"
    benchmark.extra_info.update(side="input_gradient", flops_over_forward=2.0,
                                method_flops_over_forward={"cnn.fullgrad": 2.0, "cnn.guided_gradcam": 3.0}[name])

    def fwd_bwd():
        xx = x.detach().requires_grad_(True)
        with xaibench.explainers.model_guard(model), torch.enable_grad():
            logits = model(xx)
            return torch.autograd.grad(logits.gather(1, target[:, None]).sum(), xx)[0]

    benchmark.pedantic(fwd_bwd, rounds=3, warmup_rounds=1)
