"""The CNN pixel methods against independent references on the same model and settings:
captum / pytorch-grad-cam where those implement the method themselves; where ours wraps a
library (cnn.deeplift runs captum's DeepLift) or a sampler of ours is involved (SmoothGrad's
noise), a rule written out in the test."""

import contextlib
import copy
import io

import numpy as np
import pytest
import torch

import xaibench
from xaibench.adapters.cnn._common import make_baseline
from xaibench.testing.oracles import ConvReluNet, model_fingerprint


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


def rescale_rule(net, x, base, target):
    """DeepLIFT's rescale rule (Shrikumar et al. 2017, eq. 3 and the linear rule), layer by layer:
    a ReLU's multiplier is Δout/Δin (its derivative where Δin = 0), a linear layer's is its
    weight; the attribution is (x - x') times the input's multiplier. (B, C, H, W)."""
    zs, a, b = [], x, base
    for layer in net.layers:
        if isinstance(layer, torch.nn.ReLU):
            zs.append((a.clone(), b.clone()))  # before the in-place ReLU overwrites them
        a, b = layer(a), layer(b)
    shapes, h = [], x
    for layer in net.layers:
        shapes.append(h.shape)
        h = layer(h)
    m = torch.nn.functional.one_hot(target, 3).double()
    relu_i = len(zs)
    for layer, shape in zip(reversed(net.layers), reversed(shapes)):
        if isinstance(layer, torch.nn.Linear):
            m = m @ layer.weight.double()
        elif isinstance(layer, torch.nn.ReLU):
            relu_i -= 1
            z, zb = (t.double() for t in zs[relu_i])
            dz = z - zb
            slope = (z.clamp_min(0) - zb.clamp_min(0)) / torch.where(dz == 0, torch.ones_like(dz), dz)
            m = m * torch.where(dz.abs() < 1e-10, (z > 0).double(), slope)
        elif isinstance(layer, torch.nn.Flatten):
            m = m.reshape(shape)
        elif isinstance(layer, torch.nn.Conv2d):
            m = torch.nn.grad.conv2d_input(shape, layer.weight.double(), m, stride=layer.stride, padding=layer.padding)
    return (x - base).double() * m


@pytest.mark.parametrize("baseline", [0.0, 0.5, "mean"])
def test_deeplift_equals_the_rescale_rule_by_hand(baseline):
    # reference: rescale_rule above (multipliers written out layer by layer), and completeness
    # against two forward passes; captum, which cnn.deeplift wraps, is not the reference
    net = ConvReluNet().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 12, 12, generator=g)
    t = torch.tensor([0, 2, 1])
    base = x.mean(dim=(2, 3), keepdim=True).expand_as(x) if baseline == "mean" else torch.full_like(x, baseline)
    with torch.no_grad():  # the reference in float64
        net64, x64, base64 = copy.deepcopy(net).double(), x.double(), base.double()
        ref = rescale_rule(net64, x64, base64, t)
        diff = (net64(x64) - net64(base64)).gather(1, t[:, None])[:, 0]
    assert (ref.flatten(1).sum(1) - diff).abs().max() < 1e-9  # the reference itself sums to delta
    x_ = x64.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net64(x_).gather(1, t[:, None]).sum(), x_)
    assert ((x64 - base64) * grad - ref).abs().max() > 0.05  # ReLUs switch: not gradient × input here
    ours = xaibench.explain(net, x, "cnn.deeplift", target=t, baseline=baseline)
    close(ours.values, ref.sum(1))
    close(ours.values.flatten(1).sum(1), diff, tol=1e-5)
    close(ours.extras["delta"], ours.values.flatten(1).sum(1).double() - diff, tol=1e-5)
    assert net.layers[1].inplace  # the caller's in-place ReLU is left as it was


def test_deeplift_sums_to_delta_on_a_resnet(model, data):
    # reference: f(x) - f(x') from two forward passes (summation-to-delta is exact for a
    # constant baseline; the max-pool rule is not for baselines that vary in space)
    x, t = data
    black = xaibench.explain(model, x, "cnn.deeplift", target=t, baseline=0.0)
    with torch.no_grad():
        f = model(x).gather(1, t[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    close(black.values.flatten(1).sum(1), f, tol=1e-4)
    close(black.extras["delta"], black.values.flatten(1).sum(1) - f, tol=1e-4)


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
    with pytest.raises(RuntimeError, match="does not contain some of the input/output attributes"):
        DeepLift(tv).attribute(x, target=1)


def test_fullgrad_equals_pytorch_grad_cam(model, data):
    FullGrad = pytest.importorskip("pytorch_grad_cam").FullGrad  # an optional test extra
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
    # one bias term per convolutional bias layer of the model (its BatchNorms; the convs have no bias)
    n_bias = sum(isinstance(m, torch.nn.BatchNorm2d) or (isinstance(m, torch.nn.Conv2d) and m.bias is not None)
                 for m in model.modules())
    assert layer.extras["n_layers"] == n_bias > 0 and (layer.values >= 0).all()


def test_gradcam_unfiltered_keeps_negative_evidence(model, data):
    x, t = data
    raw = xaibench.explain(model, x, "cnn.gradcam", target=t, relu=False).values
    pos = xaibench.explain(model, x, "cnn.gradcam", target=t).values
    assert (raw < 0).any() and (pos >= 0).all()
    # bilinear upsampling commutes with the clamp only away from sign changes: compare layer maps
    raw_l = xaibench.explain(model, x, "cnn.gradcam", target=t, relu=False).extras["layer_map"]
    pos_l = xaibench.explain(model, x, "cnn.gradcam", target=t).extras["layer_map"]
    close(raw_l.clamp_min(0), pos_l)


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_guided_gradcam_equals_captum(model, data, layer):
    # reference: captum's GuidedGradCam (its own GradCAM and guided backprop), bilinear upsampling
    from captum.attr import GuidedGradCam

    x, t = data
    ref_model = plain_copy(model)
    ref = GuidedGradCam(ref_model, ref_model.get_submodule(layer)).attribute(x, target=t, interpolate_mode="bilinear")
    close(xaibench.explain(model, x, "cnn.guided_gradcam", target=t, layer=layer).values, ref.sum(1))


def documented_noise(image, n, seed):
    """The noise rule cnn.smoothgrad documents, written out here: a torch.Generator seeded by the
    8-byte little-endian blake2b digest (key = str(seed)) of the image's float32 bytes, top bit
    cleared; n standard-normal copies of the image's shape."""
    import hashlib

    digest = hashlib.blake2b(image.float().contiguous().numpy().tobytes(), digest_size=8, key=str(seed).encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return torch.randn((n, *image.shape), generator=g)


def test_smoothgrad_is_the_mean_gradient_over_explicit_noisy_copies(model, data):
    # reference: autograd input gradients at noisy copies built here from the documented rule
    # (documented_noise), averaged; the implementation's sampler is not used
    x, t = data
    ours = xaibench.explain(model, x, "cnn.smoothgrad", target=t, n_samples=3, noise_level=0.1, seed=5, reduce="sum")
    grads = []
    for i in range(len(x)):
        sigma = 0.1 * float(x[i].max() - x[i].min())
        noisy = (x[i] + sigma * documented_noise(x[i], 3, 5)).requires_grad_(True)
        (g,) = torch.autograd.grad(model(noisy)[:, t[i]].sum(), noisy)
        grads.append(g.mean(0).sum(0))
    close(ours.values, torch.stack(grads))
    no_noise = xaibench.explain(model, x, "cnn.smoothgrad", target=t, n_samples=2, noise_level=0.0)
    close(no_noise.values, xaibench.explain(model, x, "cnn.saliency", target=t).values)


class MomentProbe(torch.nn.Module):
    """Logit k = Σ x^(k+2)/(k+2), gradient x^(k+1): SmoothGrad of these reads out the first,
    second and fourth moments of the noise it added."""

    def forward(self, x):
        return torch.stack([(x**p / p).flatten(1).sum(1) for p in (2, 3, 5)], 1)


def test_smoothgrad_noise_is_gaussian_with_the_stated_scale():
    # reference: the statistics of N(0, σ²), σ = noise_level × (max - min), read out through
    # MomentProbe's known gradients; nothing of the implementation's sampler is reused
    n, level = 64, 0.5
    g = torch.Generator().manual_seed(7)
    x = 2.0 * (torch.rand(2, 1, 32, 32, generator=g) < 0.5).float()  # values {0, 2}: range 2
    sigma = level * 2.0
    probe = MomentProbe()
    first = xaibench.explain(probe, x, "cnn.smoothgrad", target=0, n_samples=n, noise_level=level, reduce="sum").values
    eps_bar = (first - x[:, 0]) / sigma  # the mean of n standard normals, per pixel: N(0, 1/n)
    assert abs(float(eps_bar.mean())) < 5 / (n * eps_bar[0].numel()) ** 0.5
    assert abs(float(eps_bar.std()) * n**0.5 - 1) < 0.05
    a, b = eps_bar[0].flatten(), eps_bar[1].flatten()
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.1  # independent between images
    assert abs(float(torch.corrcoef(torch.stack([a[:-1], a[1:]]))[0, 1])) < 0.1  # and between pixels
    second = xaibench.explain(probe, x, "cnn.smoothgrad", target=1, n_samples=n, noise_level=level, reduce="sum").values
    zero = x[:, 0] == 0  # there the gradient (x + σε)² averages to σ² mean(ε²)
    assert abs(float(second[zero].mean()) / sigma**2 - 1) < 0.03
    fourth = xaibench.explain(probe, x, "cnn.smoothgrad", target=2, n_samples=n, noise_level=level, reduce="sum").values
    assert abs(float(fourth[zero].mean()) / sigma**4 - 3) < 0.2  # E ε⁴ = 3: Gaussian (uniform gives 1.8)


def test_relus_restored_after_an_error(model, data):
    x, _ = data
    before = model_fingerprint(model)
    for method in ("cnn.guided_backprop", "cnn.deconvolution", "cnn.deeplift"):
        with pytest.raises(ValueError, match="target"):
            xaibench.explain(model, x, method, target=7)
        assert model_fingerprint(model) == before
