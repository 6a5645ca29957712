"""cnn.occlusion vs captum's Occlusion on a timm resnet18 (random weights), 10×10 window spanning
the channels, stride 5, black baseline, side by side, at 1×3×112² (484 windows) and 1×3×224²
(1936 windows).

Groups "... vs captum best batching" (the issue-13 targets: ≥ 1.3× at 112², ≥ 2× at 224²):
ours with the default engine (exact incremental inference, :mod:`xaibench.adapters.cnn.incremental`)
next to captum at the ``perturbations_per_eval`` that was fastest here, and the "limit": the
occluded forward passes alone, batched as the plain engine batches them, on prebuilt inputs
(the floor of any method that runs every occluded image through the whole network; the
incremental engine goes below it, so xaibench/limit < 1 is possible). Our plain engine is an
extra entry at 112² (side "plain"; at 224² it would be another ~2000 full forwards, the
"limit" entry's cost). captum's default ``perturbations_per_eval=1`` is ~2× slower than its
best batching here (REFERENCE.md), so it is no longer run.

FLOPs (``torch.utils.flop_counter`` over every window's incremental pass vs the plain forwards):
the incremental engine does 0.63× the plain FLOPs at 112² and 0.38× at 224² (layer3/layer4's
maps are covered after a few convolutions). Since captum at its best batching costs about the
plain forwards, 2× captum at 224² needs ≤ 0.5× their time; measured 0.69× (quiet machine): the
small patch convolutions, gathers and pastes run ~1.8× less efficiently per FLOP.
"""

import pytest
import timm
import torch
from xaibench.adapters.cnn.occlusion import auto_batch_size, window_masks

import xaibench

captum_attr = pytest.importorskip("captum.attr")

WINDOW, STRIDE, TARGET = 10, 5, 3
#: captum's fastest perturbations_per_eval measured here: 112²: 16 of 4..484 (1.72 s; 1 -> 4.7 s,
#: 64 -> 1.95 s, 484 -> 3.5 s); 224²: the same ~200k pixels per forward (4 images)
CAPTUM_BEST_PPE = {112: 16, 224: 4}
ROUNDS = {112: 3, 224: 1}  # 224²: one round (~2000 windows; minutes per round on 2 cores)


def group(size: int, vs: str = "captum best batching") -> str:
    return f"occlusion resnet18 1x3x{size} w10 s5 vs {vs}"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10).eval()


def _image(size: int) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _captum(model, x, ppe):
    occ = captum_attr.Occlusion(model)
    return lambda: occ.attribute(x, sliding_window_shapes=(3, WINDOW, WINDOW), strides=STRIDE, baselines=0.0,
                                 target=TARGET, perturbations_per_eval=ppe)


@pytest.mark.parametrize("size,engine", [(112, "auto"), (112, "plain"), (224, "auto")])
def test_occlusion_xaibench(benchmark, model, size, engine):
    x = _image(size)
    benchmark.group = group(size)
    benchmark.extra_info["side"] = "xaibench" if engine == "auto" else "plain"
    ex = xaibench.create_explainer("cnn.occlusion", model, window=WINDOW, stride=STRIDE, baseline=0.0, engine=engine)
    rounds = ROUNDS[size] if engine == "auto" else 1
    out = benchmark.pedantic(ex.explain, args=(x, TARGET), rounds=rounds, warmup_rounds=1 if size == 112 else 0)
    benchmark.extra_info["engine"] = out.extras["engine"]
    assert out.extras["engine"] == ("incremental" if engine == "auto" else "plain")
    assert out.values.shape == (1, size, size) and out.extras["n_windows"] == (484 if size == 112 else 1936)


@pytest.mark.parametrize("size", [112, 224])
def test_occlusion_captum_best(benchmark, model, size):
    x = _image(size)
    benchmark.group = group(size)
    benchmark.extra_info.update(side="anchor", perturbations_per_eval=CAPTUM_BEST_PPE[size])
    out = benchmark.pedantic(_captum(model, x, CAPTUM_BEST_PPE[size]), rounds=ROUNDS[size],
                             warmup_rounds=1 if size == 112 else 0)
    if size == 112:  # the same map (independent reference: captum)
        ours = xaibench.create_explainer("cnn.occlusion", model, window=WINDOW, stride=STRIDE).explain(x, TARGET)
        torch.testing.assert_close(ours.values, out[:, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [112, 224])
def test_occlusion_forwards_only(benchmark, model, size):
    x = _image(size)
    benchmark.group = group(size)
    benchmark.extra_info["side"] = "limit"
    masks = window_masks(size, size, (WINDOW, WINDOW), (STRIDE, STRIDE))
    occluded = torch.where(masks[:, None], torch.zeros(()), x)  # prebuilt: (P, 3, size, size)
    bs = auto_batch_size(size, size)  # as the plain engine batches

    def forwards():
        with torch.no_grad():
            for s in range(0, len(occluded), bs):
                model(occluded[s:s + bs])

    benchmark.pedantic(forwards, rounds=ROUNDS[size], warmup_rounds=0)
