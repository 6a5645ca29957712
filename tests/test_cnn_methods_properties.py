"""Properties of the CNN pixel methods beyond the reference libraries: settings are checked,
channel reductions mean what they say, completeness, batching choices do not change maps."""

import math

import pytest
import torch

import xaibench
from xaibench.adapters.cnn._common import make_baseline, reduce_channels
from xaibench.adapters.cnn.occlusion import PIXELS_PER_FORWARD, auto_batch_size, window_starts


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return xaibench.create_model("cnn.small_resnet", num_classes=3, drop_rate=0.0).eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_reduce_channels_rules():
    t = torch.tensor([[-3.0, 1.0], [2.0, 2.0]]).view(1, 2, 1, 2)  # channels (-3, 2) and (1, 2)
    assert reduce_channels(t, "sum").tolist() == [[[-1.0, 3.0]]]
    assert reduce_channels(t, "abs_sum").tolist() == [[[5.0, 3.0]]]
    assert reduce_channels(t, "abs_max").tolist() == [[[3.0, 2.0]]]
    with pytest.raises(ValueError, match="reduce"):
        reduce_channels(t, "mean")


def test_baselines(x):
    assert (make_baseline(x, 0.25, "t") == 0.25).all()
    mean = make_baseline(x, "mean", "t")
    assert torch.allclose(mean[:, :, 0, 0], x.mean(dim=(2, 3)))
    # reference: scipy's Gaussian filter (mode "mirror" = torch's reflect padding, radius 3σ);
    # the equivalence tests hand make_baseline's images to captum, so they rest on this
    from scipy.ndimage import gaussian_filter

    for sigma in (2.0, 5.0):
        blur = make_baseline(x, "blur", "t", blur_sigma=sigma)
        ref = gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
        assert torch.allclose(blur.double(), torch.from_numpy(ref), atol=1e-5)
    with pytest.raises(ValueError, match="baseline"):
        make_baseline(x, "noise", "t")


def test_occlusion_window_layout_and_settings(model, x):
    assert window_starts(112, 10, 5) == list(range(0, 106, 5))  # 22 per axis, the last cut at the border
    ref = xaibench.explain(model, x, "cnn.occlusion", target=1, window=8, stride=4)
    for bs in (1, 7, 500):  # batching never changes the map
        other = xaibench.explain(model, x, "cnn.occlusion", target=1, window=8, stride=4, batch_size=bs)
        assert torch.allclose(other.values, ref.values, atol=1e-6)
    assert ref.extras["n_windows"] == 7 * 7
    for bad in ({"window": 0}, {"window": (3, 4, 5)}, {"stride": -1}, {"window": 40}, {"baseline": "noise"},
                {"batch_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):  # SettingsError is a ValueError
            xaibench.explain(model, x, "cnn.occlusion", target=1, **bad)


def test_occlusion_auto_batch_is_the_largest_under_the_pixel_budget():
    # reference: the documented rule as a property (pixels per forward <= PIXELS_PER_FORWARD,
    # 1..256 images, and one more image would exceed the budget), not the numbers it gives
    for sizes in [(112, 112), (64, 64), (32, 32), (7, 9), (500, 401), (2000, 2000), (8, 64, 64)]:
        pixels = math.prod(sizes)
        bs = auto_batch_size(*sizes)
        assert 1 <= bs <= 256
        assert bs == 1 or bs * pixels <= PIXELS_PER_FORWARD, (sizes, bs)
        assert bs == 256 or (bs + 1) * pixels > PIXELS_PER_FORWARD, (sizes, bs)


def test_occlusion_forwards_use_the_auto_batch(model):
    # reference: the batch sizes the model actually sees, recorded by a forward hook
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    seen = []
    handle = model.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    try:
        attr = xaibench.explain(model, x, "cnn.occlusion", target=1, window=4, stride=4, engine="plain")  # 256 windows
    finally:
        handle.remove()
    cap = auto_batch_size(64, 64)
    occluded = seen[1:]  # the first forward is the clean image
    assert sum(occluded) == attr.extras["n_windows"] == 256
    assert max(occluded) == cap and all(n * 64 * 64 <= max(PIXELS_PER_FORWARD, 64 * 64) for n in occluded)


def test_occlusion_sign(model, x):
    """Replacing the whole image by the baseline: the map is f(x) - f(baseline) everywhere."""
    full = xaibench.explain(model, x, "cnn.occlusion", target=2, window=32, stride=32, baseline=0.5)
    with torch.no_grad():
        drop = model(x)[:, 2] - model(torch.full_like(x, 0.5))[:, 2]
    assert torch.allclose(full.values, drop[:, None, None].expand_as(full.values), atol=1e-5)


def test_integrated_gradients_completeness(model, x):
    attr = xaibench.explain(model, x, "cnn.integrated_gradients", target=0, n_steps=64)
    assert attr.extras["delta"].abs().max() < 2e-2 * (1 + attr.values.flatten(1).sum(1).abs().max())
    with pytest.raises(ValueError, match="quadrature"):
        xaibench.explain(model, x, "cnn.integrated_gradients", quadrature="simpson")


def test_smoothgrad_noise_depends_on_the_image_not_its_position(model, x):
    a = xaibench.explain(model, x, "cnn.smoothgrad", target=1, n_samples=4)
    b = xaibench.explain(model, x.flip(0), "cnn.smoothgrad", target=1, n_samples=4)
    assert torch.allclose(a.values, b.values.flip(0), atol=1e-6)
    c = xaibench.explain(model, x, "cnn.smoothgrad", target=1, n_samples=4, seed=1)
    assert not torch.allclose(a.values, c.values)


def test_guided_backprop_and_deconvolution_differ_from_saliency(model, x):
    sal = xaibench.explain(model, x, "cnn.saliency", target=1, reduce="sum").values
    gbp = xaibench.explain(model, x, "cnn.guided_backprop", target=1).values
    dec = xaibench.explain(model, x, "cnn.deconvolution", target=1).values
    assert not torch.allclose(sal, gbp) and not torch.allclose(gbp, dec)
    # only the ReLU backward changes: a model without ReLU modules gives plain gradients
    lin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 32 * 32, 3))
    g = xaibench.explain(lin, x, "cnn.guided_backprop", target=1).values
    assert torch.allclose(g, xaibench.explain(lin, x, "cnn.saliency", target=1, reduce="sum").values)
