"""GradCAM / HiResCAM: equivalence with pytorch-grad-cam, targets, layers, user models."""

import numpy as np
import pytest

from xaibench.errors import SettingsError
import timm
import torch
import torchvision

import xaibench
from xaibench.testing.oracles import hook_count


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-7)).reshape(m.shape)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=5).eval()


def _gradcam_lib(cls, model, layer, x, targets):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = cls(model=model, target_layers=[layer])
    try:
        tg = [ClassifierOutputTarget(int(t)) for t in targets]
        scaled = cam(input_tensor=x, targets=tg)
        acts = cam.activations_and_grads.activations[0].cpu().numpy()
        grads = cam.activations_and_grads.gradients[0].cpu().numpy()
        raw = cam.get_cam_image(x, layer, tg, acts, grads, False)
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(np.asarray(raw)).float(), torch.from_numpy(scaled).float()


@pytest.mark.parametrize("method,cls,layer", [
    ("cnn.gradcam", "GradCAM", "layer4"), ("cnn.hirescam", "HiResCAM", "layer4"),
    ("cnn.gradcam", "GradCAM", "layer3"), ("cnn.hirescam", "HiResCAM", "layer3"),
])
def test_equals_pytorch_grad_cam(resnet, method, cls, layer):
    # reference: pytorch-grad-cam (an optional test extra: only this test needs it)
    cls = getattr(pytest.importorskip("pytorch_grad_cam"), cls)
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 3, 4])
    ours = xaibench.explain(resnet, x, method, target=targets, layer=layer, relu=False)
    raw, scaled = _gradcam_lib(cls, resnet, resnet.get_submodule(layer), x, targets)
    # before grad-cam's min-max: the layer-resolution map, unfiltered
    torch.testing.assert_close(ours.extras["layer_map"], raw, atol=1e-5, rtol=1e-4)
    # after: ReLU, min-max, bilinear resize, min-max (grad-cam's post-processing) of our map
    ours_relu = xaibench.explain(resnet, x, method, target=targets, layer=layer)
    torch.testing.assert_close(_minmax(ours_relu.values), scaled, atol=2e-3, rtol=0)


def test_hirescam_differs_from_gradcam_where_gradients_vary(resnet):
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    g = xaibench.explain(resnet, x, "cnn.gradcam", target=1, layer="layer3", relu=False).values
    h = xaibench.explain(resnet, x, "cnn.hirescam", target=1, layer="layer3", relu=False).values
    assert (g - h).abs().max() > 1e-4
    # at the last stage of a GAP + linear head the gradient is spatially constant: identical maps
    g4 = xaibench.explain(resnet, x, "cnn.gradcam", target=1, relu=False).values
    h4 = xaibench.explain(resnet, x, "cnn.hirescam", target=1, relu=False).values
    torch.testing.assert_close(g4, h4, atol=1e-5, rtol=1e-4)


def test_relu_false_keeps_negative_values(resnet):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    a = xaibench.explain(resnet, x, "cnn.gradcam", relu=False, layer="layer3")
    assert (a.values < 0).any() and (a.values > 0).any()
    b = xaibench.explain(resnet, x, "cnn.gradcam", layer="layer3")
    assert (b.values >= 0).all()
    # ReLU is applied to the layer map (as grad-cam does), before upsampling
    torch.testing.assert_close(b.extras["layer_map"], a.extras["layer_map"].clamp_min(0))


def test_raw_values_not_minmax_scaled(resnet):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    a = xaibench.explain(resnet, x, "cnn.gradcam", relu=False)
    # scaling the logits scales the map: nothing normalises it away
    class Scaled(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m
        def forward(self, x):
            return 3.0 * self.m(x)
    s = xaibench.explain(Scaled(resnet), x, "cnn.gradcam", relu=False, layer=resnet.layer4)
    torch.testing.assert_close(s.values, 3 * a.values, atol=1e-5, rtol=1e-4)


def test_targets_int_tensor_and_default(resnet):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    pred = resnet(x).argmax(1)
    default = xaibench.explain(resnet, x, "cnn.gradcam")
    torch.testing.assert_close(default.values, xaibench.explain(resnet, x, "cnn.gradcam", target=pred).values)
    assert default.extras["target"].tolist() == pred.tolist()
    as_int = xaibench.explain(resnet, x, "cnn.gradcam", target=2)
    torch.testing.assert_close(as_int.values, xaibench.explain(resnet, x, "cnn.gradcam", target=torch.tensor([2, 2, 2])).values)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        xaibench.explain(resnet, x, "cnn.gradcam", target=7)
    with pytest.raises(ValueError, match="target"):
        xaibench.explain(resnet, x, "cnn.gradcam", target=torch.tensor([0, 1]))


def test_layer_by_name_module_and_errors(resnet):
    x = torch.randn(1, 3, 64, 64)
    a = xaibench.explain(resnet, x, "cnn.gradcam", layer="layer4")
    b = xaibench.explain(resnet, x, "cnn.gradcam", layer=resnet.layer4)
    c = xaibench.explain(resnet, x, "cnn.gradcam")  # default: last conv stage
    torch.testing.assert_close(a.values, b.values)
    torch.testing.assert_close(a.values, c.values)
    with pytest.raises(ValueError, match="layer5"):
        xaibench.explain(resnet, x, "cnn.gradcam", layer="layer5")
    with pytest.raises(ValueError, match="not part of the model"):
        xaibench.explain(resnet, x, "cnn.gradcam", layer=torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(SettingsError, match="accepted"):
        xaibench.create_explainer("cnn.gradcam", resnet, lyer="layer4")


@pytest.mark.parametrize("builder", [
    lambda: torchvision.models.resnet18(num_classes=4),
    lambda: torchvision.models.mobilenet_v3_small(num_classes=4),
    lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=4),
    lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=4),
])
def test_works_on_user_cnns_and_leaves_no_trace(builder):
    torch.manual_seed(0)
    model = builder().eval()
    inplace = [getattr(m, "inplace", None) for m in model.modules()]
    x = torch.randn(2, 3, 64, 64)
    for method in ("cnn.gradcam", "cnn.hirescam"):
        a = xaibench.explain(model, x, method, relu=False)
        assert a.values.shape == (2, 64, 64) and torch.isfinite(a.values).all()
        assert a.values.abs().sum() > 0
    assert hook_count(model) == 0
    assert all(p.requires_grad for p in model.parameters())
    assert [getattr(m, "inplace", None) for m in model.modules()] == inplace
    assert not model.training


def test_no_parameter_gradients_are_computed(resnet):
    x = torch.randn(2, 3, 64, 64)
    for p in resnet.parameters():
        p.grad = None
    xaibench.explain(resnet, x, "cnn.gradcam")
    assert all(p.grad is None for p in resnet.parameters())


def test_lesion_cnn_localises_better_than_baselines():
    from xaibench import zoo
    from xaibench.baselines import centre_baseline, random_baseline

    model = zoo.load("lesion_cnn")
    batch = xaibench.create_dataset("lesions", n=48, batch_size=48, seed=7).all()
    with torch.no_grad():
        acc = float((model(batch.inputs).argmax(1) == batch.targets).float().mean())
    assert acc > 0.9
    attr = xaibench.explain(model, batch.inputs, "cnn.gradcam", target=batch.targets)
    pg = xaibench.create_metric("pointing_game")
    ours = float(pg(attr, batch).nanmean())
    assert ours > float(pg(random_baseline(attr, batch, 0), batch).nanmean()) + 0.2
    assert ours > float(pg(centre_baseline(attr, batch, 0), batch).nanmean()) + 0.2
