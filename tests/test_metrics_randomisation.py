"""Cascading model-parameter randomisation (Adebayo et al. 2018): GradCAM's maps lose their
similarity as the zoo CNN is destroyed; a model-independent map (an edge detector on the input)
keeps it. References: scipy's spearmanr and skimage's SSIM for the similarities; a hand-built
cascade for the layer order."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from xaibench.metrics.randomisation import cascade_layers, cascading_randomisation, similarity, ssim

import xaibench
from xaibench.explainers import EXPLAINERS, register_explainer
from xaibench.testing.oracles import SobelEdges, model_fingerprint


@pytest.fixture(scope="module")
def setup():
    register_explainer("test.edges")(SobelEdges)
    try:
        model = xaibench.zoo.load("lesion_cnn")
        batch = xaibench.create_dataset("lesions", n=4, batch_size=4, seed=0).all()
        gc = xaibench.create_explainer("cnn.gradcam", model).explain(batch.inputs, batch.targets)
        edges = EXPLAINERS.get("test.edges")(model).explain(batch.inputs, batch.targets)
        curves = {name: cascading_randomisation(a, batch, model, similarity_kind="spearman")
                  for name, a in (("gradcam", gc), ("edges", edges))}
        yield model, batch, gc, edges, curves
    finally:
        EXPLAINERS.remove("test.edges")
    assert "test.edges" not in EXPLAINERS.names()


def test_gradcam_similarity_falls_edges_stay(setup):
    model, batch, gc, edges, curves = setup
    sims_gc, names = curves["gradcam"]
    sims_e, names_e = curves["edges"]
    assert names == names_e == cascade_layers(model) and names[0] == "fc"
    # a model-independent map is untouched by every randomisation step (Adebayo et al., fig. 2 "edge detector")
    assert torch.allclose(sims_e, torch.ones_like(sims_e), atol=1e-9)
    # GradCAM: from 1 (the unrandomised model) the similarity falls at once, at the logits, and
    # never comes back (Adebayo et al. fig. 2: Grad-CAM is sensitive from the top layer on)
    per_step = sims_gc.mean(0)
    assert (per_step < 0.5).all() and float(per_step.mean()) < 0.2
    ssim_gc = cascading_randomisation(gc, batch, model, similarity_kind="ssim", layers=2)[0]
    ssim_e = cascading_randomisation(edges, batch, model, similarity_kind="ssim", layers=2)[0]
    assert (ssim_gc < 0.5).all() and torch.allclose(ssim_e, torch.ones_like(ssim_e))
    metric = xaibench.create_metric("model_randomisation", layers=3)
    s_gc, s_e = metric(gc, batch, model=model), metric(edges, batch, model=model)
    assert torch.allclose(s_gc.double(), sims_gc[:, :3].mean(1), atol=1e-6)  # summary = mean over randomised steps only
    assert (s_gc < s_e - 0.3).all() and torch.allclose(s_e, torch.ones(4))


def test_model_untouched_and_seeded(setup):
    model, batch, gc, _, curves = setup
    before = model_fingerprint(model)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    again, _ = cascading_randomisation(gc, batch, model, similarity_kind="spearman", layers=2)
    assert model_fingerprint(model) == before
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    assert torch.allclose(again, curves["gradcam"][0][:, :2], atol=1e-6)  # same seed, same cascade


def test_batch_composition_independent(setup):
    model, batch, gc, _, _ = setup
    metric = xaibench.create_metric("model_randomisation", layers=2, similarity="top_k")
    full = metric(gc, batch, model=model)
    idx = [3, 1]
    sub = metric(gc.select(idx), batch.select(idx), model=model)
    assert torch.allclose(sub, full[idx], atol=1e-6)


def test_maps_without_an_explainer_score_nan_with_reason(setup):
    model, batch, gc, _, _ = setup
    res = xaibench.create_metric("model_randomisation").evaluate(gc.replace(method="baseline.random"), batch, model=model)
    assert res.scores.isnan().all() and all("not a registered explainer" in r for r in res.reasons)


def test_similarities_equal_scipy_and_skimage():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 20, 17, generator=g)
    b = a + 0.5 * torch.rand(5, 20, 17, generator=g)
    a[0, :5] = 0.3  # ties
    b[1] = b[1].round(decimals=1)
    ours = similarity(a, b, "spearman")
    ref = [spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic for i in range(5)]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)
    ours_abs = similarity(a - 0.5, b - 0.5, "spearman_abs")
    ref_abs = [spearmanr((a[i] - 0.5).abs().flatten().numpy(), (b[i] - 0.5).abs().flatten().numpy()).statistic for i in range(5)]
    np.testing.assert_allclose(ours_abs.numpy(), ref_abs, atol=1e-10)

    def mm(m):
        return ((m - m.min()) / (m.max() - m.min())).double().numpy()

    ref_ssim = [structural_similarity(mm(a[i]), mm(b[i]), data_range=1.0) for i in range(5)]
    np.testing.assert_allclose(ssim(a, b).numpy(), ref_ssim, atol=1e-10)
    # top-k overlap by hand: sets of the 10% highest (maps without ties)
    k = math.ceil(0.1 * 340)
    a2, b2 = a + 1e-4 * torch.rand(a.shape, generator=g), b + 1e-4 * torch.rand(b.shape, generator=g)
    ref_top = [len(set(np.argsort(-a2[i].flatten().numpy())[:k].tolist()) & set(np.argsort(-b2[i].flatten().numpy())[:k].tolist())) / k
               for i in range(5)]
    np.testing.assert_allclose(similarity(a2, b2, "top_k").numpy(), ref_top)
    # a constant map has no ranking: similarity 0, not NaN
    assert float(similarity(torch.ones(1, 4, 4), a[:1, :4, :4], "spearman")[0]) == 0.0


def test_cascade_order_skips_norms_and_is_output_first():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 2))
    assert cascade_layers(model) == ["5", "0"]


def test_mean_excludes_the_unrandomised_model_unlike_quantus_mprt(setup):
    # Quantus 0.6 MPRT averages the per-layer similarities together with the original model's
    # similarity to itself (1 by construction): with L layers its mean is (1 + Σ s_l) / (L + 1).
    # That is not a measurement and it depends on the model's depth: the same per-layer curve on a
    # deeper model moves Quantus's score; ours is the mean of the randomised steps only.
    # The cause, in Quantus' own code: recompute_average_correlation_per_sample skips a key named
    # "orig", but the original model's scores are stored under "original", so they are averaged in.
    quantus = pytest.importorskip("quantus")
    mprt = quantus.MPRT(return_average_correlation=True, disable_warnings=True)
    mprt.evaluation_scores = {"original": [1.0, 1.0], "fc": [0.0, 0.2], "conv1": [0.2, 0.1]}
    np.testing.assert_allclose(mprt.recompute_average_correlation_per_sample(), [0.4, 0.4333333333])
    _, _, _, _, curves = setup
    sims, _ = curves["gradcam"]
    ours = sims.mean(1)
    quantus_rule = (1 + sims.sum(1)) / (sims.shape[1] + 1)
    assert (quantus_rule > ours).all()
    doubled = torch.cat([sims, sims], 1)  # the same curve on a model twice as deep
    assert torch.allclose(doubled.mean(1), ours)
    assert not torch.allclose((1 + doubled.sum(1)) / (doubled.shape[1] + 1), quantus_rule)
