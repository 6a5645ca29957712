"""Issue-11 metrics side by side with Quantus 0.6 on the same inputs (pytest-benchmark).

Localisation (target: ≥ 100× Quantus): 256 maps of 224², each with a box-shaped mask (the box
metrics get the boxes, Quantus the rasterised masks): ``pointing_game`` and ``pointing_game_box``
vs ``PointingGame``, ``relevance_mass`` and ``energy_pointing_game`` vs
``RelevanceMassAccuracy``, ``relevance_rank`` vs ``RelevanceRankAccuracy``, ``auroc`` vs ``AUC``,
``top_k_intersection`` vs ``TopKIntersection``. Ours include the non-finite check every metric
call makes.

Faithfulness (targets: ≥ 10× Quantus and ≤ 1.2× the forward passes the curves need): a timm
resnet18 (random weights, 10 classes) on 16 images of 3×64²; deletion curve with 16 steps of
256 pixels vs ``PixelFlipping(features_in_step=256)``, and region
perturbation of 16 8×8 regions vs ``RegionPerturbation``. The "limit" is the same number of
forward passes (17 images per sample: 16 steps and the unperturbed image) on prebuilt inputs,
batched as our metric batches them. Logits on both sides. The network takes one channel
(``in_chans=1``): Quantus' PixelFlipping flips (channel, pixel) features and needs
``features_in_step`` to divide H·W, so one channel keeps both sides at 16 steps of 256 pixels.

Measured 2026-11-29 (2 cores, load ~1-2), Quantus / ours: localisation (threaded numpy row
kernels, metrics/_rows.py) ``auroc`` 183x (was 15x), ``energy_pointing_game`` 204x,
``pointing_game`` 659x, ``pointing_game_box`` 891x, ``relevance_mass`` 306x, ``relevance_rank``
239x, ``top_k_intersection`` 271x [target ≥ 100x: met]. Faithfulness: ours 1.02x (deletion) and
0.97x (region perturbation) the forward limit [≤ 1.2x: met], but Quantus 0.6 itself ran at
1.02x and 1.18x that limit: it batches each step over the batch, so it does the same forward
passes (16 per sample, ours 17 with the unperturbed image) and its overhead is small. Being 10x
faster than Quantus would need 10x fewer forward FLOPs than the curves need [target ≥ 10x:
impossible by construction]. Off this benchmark: a 1-conv CNN (Quantus / ours 0.76: Quantus's
batches of 16 stay in cache, ours of 128 do not) and a linear model (3.3x: the forward is
cheaper than building the perturbed images on either side).
"""

import warnings

import numpy as np
import pytest
import torch
from xaibench.metrics.localisation_extra import boxes_to_masks

import xaibench
from xaibench import Attribution, Batch

quantus = pytest.importorskip("quantus")

N_MAPS, SIZE = 256, 224


@pytest.fixture(scope="module")
def loc_case():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(N_MAPS, SIZE, SIZE, generator=g)
    corner = torch.randint(0, SIZE - 60, (N_MAPS, 2), generator=g).float()
    wh = torch.randint(10, 60, (N_MAPS, 2), generator=g).float()
    boxes = [torch.cat([c, c + s])[None] for c, s in zip(corner, wh)]
    masks = boxes_to_masks(boxes, (SIZE, SIZE))
    batch = Batch(inputs=torch.zeros(N_MAPS, 1, 1, 1), masks=masks, boxes=boxes)
    np_kw = {"model": None, "x_batch": np.zeros((N_MAPS, 1, SIZE, SIZE), np.float32), "y_batch": np.zeros(N_MAPS, int),
                 "a_batch": maps[:, None].numpy(), "s_batch": masks[:, None].float().numpy()}
    return Attribution(values=maps, kind="pixel", method="t"), batch, np_kw


LOC = {  # ours -> (Quantus class, kwargs)
    "pointing_game_box": ("PointingGame", {}),
    "pointing_game": ("PointingGame", {}),
    "energy_pointing_game": ("RelevanceMassAccuracy", {}),
    "relevance_mass": ("RelevanceMassAccuracy", {}),
    "relevance_rank": ("RelevanceRankAccuracy", {}),
    "auroc": ("AUC", {}),
    "top_k_intersection": ("TopKIntersection", {"k": 1000}),
}


@pytest.mark.parametrize("name", sorted(LOC))
def test_localisation_xaibench(benchmark, loc_case, name):
    attr, batch, _ = loc_case
    benchmark.group = f"{name} 256x224^2 vs quantus {LOC[name][0]}"
    benchmark.extra_info["side"] = "xaibench"
    metric = xaibench.create_metric(name)
    out = benchmark.pedantic(metric, args=(attr, batch), rounds=3, warmup_rounds=1)
    assert out.shape == (N_MAPS,)


@pytest.mark.parametrize("name", sorted(LOC))
def test_localisation_quantus(benchmark, loc_case, name):
    _, _, kw = loc_case
    cls, params = LOC[name]
    benchmark.group = f"{name} 256x224^2 vs quantus {cls}"
    benchmark.extra_info["side"] = "anchor"
    metric = getattr(quantus, cls)(disable_warnings=True, normalise=False, **params)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(**kw)

    out = benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    assert len(out) == N_MAPS


# ------------------------------------------------------------------ faithfulness

B, S, STEP_PX = 16, 64, 256


@pytest.fixture(scope="module")
def faith_case():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, 1, S, S, generator=g)
    x.view(B, -1)[:, 0] = 0.0  # Quantus' "black" is the image minimum: 0 as ours
    a = torch.rand(B, S, S, generator=g)
    t = torch.randint(0, 10, (B,), generator=g)
    return model, Batch(inputs=x, targets=t, ids=[str(i) for i in range(B)]), Attribution(values=a, kind="pixel", method="t")


def _quantus_faith(metric, model, batch, attr):
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(model=model, x_batch=batch.inputs.numpy(), y_batch=batch.targets.numpy(),
                          a_batch=attr.values[:, None].numpy(), softmax=False, device="cpu", channel_first=True,
                          batch_size=B)
    return run


FAITH = {
    "deletion": ({"step": STEP_PX / S**2, "output": "logit", "batch_size": 128}, "deletion_auc",
                 lambda: quantus.PixelFlipping(features_in_step=STEP_PX, normalise=False, abs=False, disable_warnings=True)),
    "region_perturbation": ({"patch": 8, "regions": 16, "output": "logit", "batch_size": 128}, "region_perturbation",
                            lambda: quantus.RegionPerturbation(patch_size=8, regions_evaluation=16, normalise=False, abs=False,
                                                               disable_warnings=True)),
}


def _group(kind):
    return f"{kind} resnet18 16x1x64^2 16 steps vs quantus"


@pytest.mark.parametrize("kind", sorted(FAITH))
def test_faithfulness_xaibench(benchmark, faith_case, kind):
    model, batch, attr = faith_case
    params, name, _ = FAITH[kind]
    benchmark.group = _group(kind)
    benchmark.extra_info["side"] = "xaibench"
    metric = xaibench.create_metric(name, **params)
    out = benchmark.pedantic(lambda: metric(attr, batch, model=model), rounds=3, warmup_rounds=1)
    assert out.shape == (B,)


@pytest.mark.parametrize("kind", sorted(FAITH))
def test_faithfulness_quantus(benchmark, faith_case, kind):
    model, batch, attr = faith_case
    benchmark.group = _group(kind)
    benchmark.extra_info["side"] = "anchor"
    out = benchmark.pedantic(_quantus_faith(FAITH[kind][2](), model, batch, attr), rounds=1, warmup_rounds=0)
    assert len(out) == B


@pytest.mark.parametrize("kind", sorted(FAITH))
def test_faithfulness_forward_limit(benchmark, faith_case, kind):
    model, batch, _ = faith_case
    benchmark.group = _group(kind)
    benchmark.extra_info["side"] = "limit"
    imgs = batch.inputs.repeat_interleave(17, 0)  # 16 perturbed images + the unperturbed one per sample

    def forward():
        with torch.no_grad():
            return [model(c) for c in imgs.split(128)]

    benchmark.pedantic(forward, rounds=3, warmup_rounds=1)
