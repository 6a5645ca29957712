"""The CNN pixel methods equal captum / pytorch-grad-cam on the same model and settings."""

import contextlib
import copy
import io

import numpy as np
import pytest
import torch

import xaibench
from xaibench.adapters.cnn._common import make_baseline
from xaibench.testing.oracles import model_fingerprint


@pytest.fixture(scope="module")
def model():
    """A narrow timm ResNet (in-place ReLUs) with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    m = xaibench.create_model("cnn.small_resnet", num_classes=3, drop_rate=0.0)
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.4 - 0.2)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(mod.num_features, generator=g) * 0.6 - 0.3)
    return m.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(2)
    return torch.rand(2, 3, 40, 40, generator=g), torch.tensor([2, 0])


def plain_copy(model):
    """captum's hook-based methods need non-in-place ReLUs: give them a copy without."""
    c = copy.deepcopy(model)
    for m in c.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return c


def close(a, b, tol=1e-5):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert torch.allclose(a, b, atol=tol * max(1.0, float(b.abs().max())), rtol=1e-4), float((a - b).abs().max())


@pytest.mark.parametrize("window,stride,baseline", [(10, 5, 0.0), (10, 5, "mean"), (10, 5, "blur"), ((6, 9), (3, 4), 0.5)])
def test_occlusion_equals_captum(model, data, window, stride, baseline):
    from captum.attr import Occlusion

    x, t = data
    ours = xaibench.explain(model, x, "cnn.occlusion", target=t, window=window, stride=stride, baseline=baseline,
                            batch_size=37)
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ref = Occlusion(model).attribute(x, sliding_window_shapes=(3, wh, ww), strides=(3, sh, sw), target=t,
                                     baselines=make_baseline(x, baseline, "test"), perturbations_per_eval=16)
    assert torch.equal(ref[:, 0], ref[:, 2])  # the window spans the channels: one value per pixel
    close(ours.values, ref[:, 0])


def test_saliency_equals_captum(model, data):
    from captum.attr import Saliency

    x, t = data
    close(xaibench.explain(model, x, "cnn.saliency", target=t).values,
          Saliency(model).attribute(x, target=t).amax(1))
    close(xaibench.explain(model, x, "cnn.saliency", target=t, reduce="sum").values,
          Saliency(model).attribute(x, target=t, abs=False).sum(1))


@pytest.mark.parametrize("method,cls", [("cnn.guided_backprop", "GuidedBackprop"), ("cnn.deconvolution", "Deconvolution")])
def test_modified_backprop_equals_captum(model, data, method, cls):
    import captum.attr

    x, t = data
    ref = getattr(captum.attr, cls)(plain_copy(model)).attribute(x, target=t)
    close(xaibench.explain(model, x, method, target=t).values, ref.sum(1))
    close(xaibench.explain(model, x, method, target=t, reduce="abs_max").values, ref.abs().amax(1))


@pytest.mark.parametrize("quadrature,baseline", [("gausslegendre", 0.0), ("riemann_trapezoid", "blur")])
def test_integrated_gradients_equal_captum(model, data, quadrature, baseline):
    from captum.attr import IntegratedGradients

    x, t = data
    ours = xaibench.explain(model, x, "cnn.integrated_gradients", target=t, n_steps=12, quadrature=quadrature,
                            baseline=baseline, batch_size=7)
    ref, delta = IntegratedGradients(model).attribute(x, baselines=make_baseline(x, baseline, "test"), target=t,
                                                      n_steps=12, method=quadrature, return_convergence_delta=True)
    close(ours.values, ref.sum(1))
    close(ours.extras["delta"], delta, tol=1e-4)


def test_deeplift_equals_captum_and_sums_to_delta(model, data):
    from captum.attr import DeepLift

    x, t = data
    ours = xaibench.explain(model, x, "cnn.deeplift", target=t, baseline="mean")
    ref, delta = DeepLift(plain_copy(model)).attribute(x, baselines=make_baseline(x, "mean", "test"), target=t,
                                                       return_convergence_delta=True)
    close(ours.values, ref.sum(1))
    close(ours.extras["delta"], delta)
    # summation-to-delta is exact for a constant baseline (captum's max-pool rule is not for
    # baselines that vary in space: |delta| ~ 1e-3 there)
    black = xaibench.explain(model, x, "cnn.deeplift", target=t, baseline=0.0)
    with torch.no_grad():
        f = model(x).gather(1, t[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    close(black.values.flatten(1).sum(1), f, tol=1e-4)


def test_deeplift_on_reused_relus():
    """torchvision's ResNet calls one in-place ReLU module twice per block: captum's DeepLift
    refuses it; ours runs on a copy with one fresh ReLU per call and keeps summation-to-delta."""
    import torchvision
    from captum.attr import DeepLift

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.rand(1, 3, 32, 32)
    before = model_fingerprint(tv)
    attr = xaibench.explain(tv, x, "cnn.deeplift", target=1)
    assert model_fingerprint(tv) == before
    with torch.no_grad():
        f = tv(x)[0, 1] - tv(torch.zeros_like(x))[0, 1]
    close(attr.values.sum(), f, tol=1e-4)
    with pytest.raises(RuntimeError):
        DeepLift(tv).attribute(x, target=1)


def test_fullgrad_equals_pytorch_grad_cam(model, data):
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, t = data
    ours = xaibench.explain(model, x, "cnn.fullgrad", target=t, normalise="channel").values
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a warning about target_layers
        cam = FullGrad(copy.deepcopy(model), [])
    ref = cam(x, targets=[ClassifierOutputTarget(int(c)) for c in t])
    cam.activations_and_grads.release()
    flat = ours.flatten(1)
    flat = flat - flat.min(1, keepdim=True).values
    flat = flat / (flat.max(1, keepdim=True).values + 1e-7)  # grad-cam's final min-max
    np.testing.assert_allclose(flat.view_as(ours).numpy(), ref, atol=1e-5)
    layer = xaibench.explain(model, x, "cnn.fullgrad", target=t)  # the paper's per-layer rescaling
    assert layer.extras["n_layers"] == 13 and (layer.values >= 0).all()


def test_gradcam_unfiltered_keeps_negative_evidence(model, data):
    x, t = data
    raw = xaibench.explain(model, x, "cnn.gradcam", target=t, relu=False).values
    pos = xaibench.explain(model, x, "cnn.gradcam", target=t).values
    assert (raw < 0).any() and (pos >= 0).all()
    # bilinear upsampling commutes with the clamp only away from sign changes: compare layer maps
    raw_l = xaibench.explain(model, x, "cnn.gradcam", target=t, relu=False).extras["layer_map"]
    pos_l = xaibench.explain(model, x, "cnn.gradcam", target=t).extras["layer_map"]
    close(raw_l.clamp_min(0), pos_l)


def test_guided_gradcam_is_guided_backprop_times_gradcam(model, data):
    from captum.attr import GuidedBackprop

    x, t = data
    gb = GuidedBackprop(plain_copy(model)).attribute(x, target=t)
    cam = xaibench.explain(model, x, "cnn.gradcam", target=t).values
    close(xaibench.explain(model, x, "cnn.guided_gradcam", target=t).values, (gb * cam[:, None]).sum(1))


def test_smoothgrad_is_mean_gradient_over_its_noise(model, data):
    from xaibench.adapters.cnn.gradients import sample_noise

    x, t = data
    ours = xaibench.explain(model, x, "cnn.smoothgrad", target=t, n_samples=3, noise_level=0.1, seed=5, reduce="sum")
    grads = []
    for i in range(2):
        span = 0.1 * (x[i].max() - x[i].min())
        noisy = (x[i] + sample_noise(x[i], 3, 5) * span).requires_grad_(True)
        (g,) = torch.autograd.grad(model(noisy)[:, t[i]].sum(), noisy)
        grads.append(g.mean(0).sum(0))
    close(ours.values, torch.stack(grads))
    no_noise = xaibench.explain(model, x, "cnn.smoothgrad", target=t, n_samples=2, noise_level=0.0)
    close(no_noise.values, xaibench.explain(model, x, "cnn.saliency", target=t).values)


def test_relus_restored_after_an_error(model, data):
    x, _ = data
    before = model_fingerprint(model)
    for method in ("cnn.guided_backprop", "cnn.deconvolution", "cnn.deeplift"):
        with pytest.raises(ValueError, match="target"):
            xaibench.explain(model, x, method, target=7)
        assert model_fingerprint(model) == before
