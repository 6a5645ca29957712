"""ViT explainers on vit_tiny_patch16_224 (random weights), batch 8×3×224×224.

``vit.gradcam`` side by side with pytorch-grad-cam's GradCAM (reshape transform for the
14×14 grid, target ``blocks[-1].norm1``): grad-cam runs a full ``loss.backward()``; ours
takes one ``torch.autograd.grad`` to the layer. Goal: ≥ 2× faster. The other three
explainers are xaibench-only entries; "limit" is one plain forward pass.

FLOP floor of ``vit.gradcam`` at its default layer (``blocks[-1].norm1``): the rest of the last
block (attention + MLP, 8.1% of the forward's FLOPs here) is recorded and differentiated back to
the layer, so ≈ 1.08× a forward; the remainder is autograd's elementwise backward work.
"""

import pytest
import timm
import torch

import xaibench

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

GROUP = "vit.gradcam vit_tiny 8x3x224"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return model, x, torch.arange(8) % 10


def test_gradcam_xaibench(benchmark, setup):
    model, x, target = setup
    benchmark.group = GROUP
    benchmark.extra_info["side"] = "xaibench"
    ex = xaibench.create_explainer("vit.gradcam", model)
    out = benchmark.pedantic(ex.explain, args=(x, target), rounds=5, warmup_rounds=1)
    assert out.values.shape == (8, 196)


def test_gradcam_pytorch_grad_cam(benchmark, setup):
    model, x, target = setup
    benchmark.group = GROUP
    benchmark.extra_info["side"] = "anchor"

    def reshape(t):
        return t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[-1]).permute(0, 3, 1, 2)

    cam = GradCAM(model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape)
    targets = [ClassifierOutputTarget(int(t)) for t in target]
    try:
        out = benchmark.pedantic(lambda: cam(input_tensor=x, targets=targets), rounds=5, warmup_rounds=1)
    finally:
        cam.activations_and_grads.release()
    assert out.shape == (8, 224, 224)


def test_forward_only(benchmark, setup):
    model, x, _ = setup
    benchmark.group = GROUP
    benchmark.extra_info["side"] = "limit"

    def fwd():
        with torch.inference_mode():
            return model(x)

    benchmark.pedantic(fwd, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("name", ["vit.attention", "vit.rollout", "vit.chefer"])
def test_token_explainers(benchmark, setup, name):
    model, x, target = setup
    benchmark.group = f"{name} vit_tiny 8x3x224"
    benchmark.extra_info["side"] = "xaibench"
    ex = xaibench.create_explainer(name, model)
    out = benchmark.pedantic(ex.explain, args=(x, target), rounds=5, warmup_rounds=1)
    assert out.values.shape == (8, 196)
