"""cnn.occlusion vs captum's Occlusion on a timm resnet18 (random weights), 1×3×112×112,
10×10 window spanning the channels, stride 5 (484 windows), black baseline, side by side.

Group "... vs captum default": captum at its default ``perturbations_per_eval=1`` (goal:
≥ 2× faster) and the "limit": the 484 occluded forward passes alone, batched as ours, on
prebuilt inputs (goal: within 1.2×). Group "... vs captum best batching": captum at the
``perturbations_per_eval`` that was fastest here (goal: no slower).

Beyond the limit: a window changes only the activations inside its receptive field, so a
forward could recompute just that cone of each layer (sparse, incremental inference);
with resnet18's large receptive fields at 112 px the cone covers most of the deeper maps,
so the saving is mostly in the first stages. Not tried.
"""

import pytest
import timm
import torch

import xaibench
from xaibench.adapters.cnn.occlusion import auto_batch_size, window_masks

captum_attr = pytest.importorskip("captum.attr")

SHAPE, WINDOW, STRIDE, TARGET = (1, 3, 112, 112), 10, 5, 3
CAPTUM_BEST_PPE = 16  # the fastest of 4..484 measured here (1.72 s; 1 -> 4.7 s, 64 -> 1.95 s, 484 -> 3.5 s)
GROUP = "occlusion resnet18 1x3x112 w10 s5"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    return model, x


def _ours(model, x):
    return xaibench.create_explainer("cnn.occlusion", model, window=WINDOW, stride=STRIDE, baseline=0.0)


@pytest.mark.parametrize("group", [f"{GROUP} vs captum default", f"{GROUP} vs captum best batching"])
def test_occlusion_xaibench(benchmark, setup, group):
    model, x = setup
    benchmark.group = group
    benchmark.extra_info["side"] = "xaibench"
    ex = _ours(model, x)
    out = benchmark.pedantic(ex.explain, args=(x, TARGET), rounds=3, warmup_rounds=1)
    assert out.values.shape == (1, 112, 112) and out.extras["n_windows"] == 484


def test_occlusion_captum_default(benchmark, setup):
    model, x = setup
    benchmark.group = f"{GROUP} vs captum default"
    benchmark.extra_info["side"] = "anchor"
    occ = captum_attr.Occlusion(model)
    out = benchmark.pedantic(lambda: occ.attribute(x, sliding_window_shapes=(3, WINDOW, WINDOW), strides=STRIDE,
                                                   baselines=0.0, target=TARGET), rounds=1, warmup_rounds=0)
    ours = _ours(model, x).explain(x, TARGET).values
    torch.testing.assert_close(ours, out[:, 0], atol=1e-5, rtol=1e-4)


def test_occlusion_captum_best(benchmark, setup):
    model, x = setup
    benchmark.group = f"{GROUP} vs captum best batching"
    benchmark.extra_info["side"] = "anchor"
    benchmark.extra_info["perturbations_per_eval"] = CAPTUM_BEST_PPE
    occ = captum_attr.Occlusion(model)
    benchmark.pedantic(lambda: occ.attribute(x, sliding_window_shapes=(3, WINDOW, WINDOW), strides=STRIDE,
                                             baselines=0.0, target=TARGET, perturbations_per_eval=CAPTUM_BEST_PPE),
                       rounds=3, warmup_rounds=1)


def test_occlusion_forwards_only(benchmark, setup):
    model, x = setup
    benchmark.group = f"{GROUP} vs captum default"
    benchmark.extra_info["side"] = "limit"
    masks = window_masks(112, 112, (WINDOW, WINDOW), (STRIDE, STRIDE))
    occluded = torch.where(masks[:, None], torch.zeros(()), x)  # prebuilt: (484, 3, 112, 112)
    bs = auto_batch_size(112, 112)  # as cnn.occlusion batches by default

    def forwards():
        with torch.no_grad():
            for s in range(0, len(occluded), bs):
                model(occluded[s:s + bs])

    benchmark.pedantic(forwards, rounds=3, warmup_rounds=1)
