"""Data-randomisation sanity check (Adebayo et al. 2018, sec. 4): zoo models trained on shuffled
labels (one per image family) and the ``data_randomisation`` metric comparing a method's maps on
the real and the shuffled-label model. GradCAM's maps share little with their shuffled-label
counterparts; a model-independent map (an edge detector on the input, a test-only explainer)
is identical on both. References: scipy's spearmanr for the similarity; the models' accuracy on
true labels measured here."""

from __future__ import annotations

import pytest
import torch

import xaibench
from xaibench import zoo
from xaibench.explainers import EXPLAINERS, register_explainer
from xaibench.testing.oracles import SobelEdges, model_fingerprint

ss = pytest.importorskip("scipy.stats")

PAIRS = [("lesion_cnn", "lesion_cnn_shuffled", "lesions", "cnn.gradcam"),
         ("face_cnn", "face_cnn_shuffled", "faces", "cnn.gradcam"),
         ("vit_large_random", "vit_large_shuffled", "roi_large", "vit.gradcam")]


@pytest.fixture(scope="module")
def edges():
    register_explainer("test.data_edges")(SobelEdges)
    yield "test.data_edges"
    EXPLAINERS.remove("test.data_edges")


def _batch(dataset, n=8):
    return xaibench.create_dataset(dataset, n=n, batch_size=n, seed=0, split="test").all()


@pytest.mark.parametrize("real,shuffled,dataset,method", PAIRS)
def test_shuffled_label_model_learnt_nothing_of_the_task(real, shuffled, dataset, method):
    entry = zoo.get_entry(shuffled)
    assert entry.model == zoo.get_entry(real).model and entry.extra["shuffled_of"] == real
    batch = _batch(dataset, 64)
    with torch.no_grad():
        acc_real = float((zoo.load(real)(batch.inputs).argmax(1) == batch.targets).float().mean())
        acc_shuf = float((zoo.load(shuffled)(batch.inputs).argmax(1) == batch.targets).float().mean())
    k = int(batch.targets.max()) + 1
    assert acc_real > 0.8 and acc_shuf < 1 / k + 0.2  # chance level on true labels
    card = entry.card()["metrics"]
    assert card["shuffled_label_accuracy"] > 0.8  # it did fit (memorise) its permuted labels


@pytest.mark.parametrize("real,shuffled,dataset,method", PAIRS)
def test_gradcam_maps_change_edges_do_not(real, shuffled, dataset, method, edges):
    model, ref = zoo.load(real), zoo.load(shuffled)
    batch = _batch(dataset)
    metric = xaibench.create_metric("data_randomisation", reference=shuffled)
    gc = xaibench.create_explainer(method, model).explain(batch.inputs, batch.targets)
    ed = EXPLAINERS.get(edges)(model).explain(batch.inputs, batch.targets)
    s_gc, s_ed = metric(gc, batch, model=model), metric(ed, batch, model=model)
    assert torch.allclose(s_ed, torch.ones(8))  # a model-independent map survives (Adebayo et al.: edge detector)
    assert float(s_gc.mean()) < 0.3 and (s_gc < s_ed - 0.3).all()
    # the score is the Spearman correlation of the two maps of each sample (reference: scipy)
    gc_ref = xaibench.create_explainer(method, ref).explain(batch.inputs, batch.targets)
    for i in range(8):
        a, b = gc.values[i].flatten().numpy(), gc_ref.values[i].flatten().numpy()
        if a.min() == a.max() or b.min() == b.max():  # a constant map ranks nothing: 0 by convention (scipy: NaN)
            assert float(s_gc[i]) == 0.0
            continue
        assert float(s_gc[i]) == pytest.approx(float(ss.spearmanr(a, b).statistic), abs=1e-5)


def test_batch_independent_model_untouched_and_nan_with_reasons():
    model = zoo.load("lesion_cnn")
    batch = _batch("lesions")
    before = model_fingerprint(model)
    metric = xaibench.create_metric("data_randomisation", reference="lesion_cnn_shuffled", similarity="ssim")
    attr = xaibench.create_explainer("cnn.gradcam", model).explain(batch.inputs, batch.targets)
    full = metric(attr, batch, model=model)
    idx = [5, 0, 2]
    sub = metric(attr.select(idx), batch.select(idx), model=model)
    assert torch.allclose(sub, full[idx], atol=1e-6)
    assert model_fingerprint(model) == before
    res = xaibench.create_metric("data_randomisation").evaluate(attr, batch, model=model)  # no reference named
    assert torch.isnan(res.scores).all() and "reference" in res.reasons[0]
    rnd = xaibench.Attribution(values=torch.rand(8, 64, 64), kind="pixel", method="baseline.random")
    res = metric.evaluate(rnd, batch, model=model)
    assert torch.isnan(res.scores).all() and "not a registered explainer" in res.reasons[0]
