"""Committed FCM zoo weights load and work; the report figures draw from a run folder."""

import json

import pandas as pd
import pytest
import torch

import xaibench
from xaibench.store import save_examples
from xaibench import zoo
from xaibench.studies.fcm.figures import fcm_head_fractions, fcm_projections
from xaibench.metrics.fcm_gradient_step import f1_score


@pytest.fixture(scope="module")
def batch():
    return xaibench.create_dataset("fcm_ball", n=2, batch_size=2, seed=11, split="test", n_events=5000,
                                   blast_fraction=(0.05, 0.5)).all()


def test_classifier_weights_find_blasts(batch):
    model = zoo.load("fcm_reluformer")
    with torch.no_grad():
        pred = model(batch.inputs).argmax(-1) == 1
    assert float(f1_score(pred, batch.instance_labels).min()) > 0.8
    card = zoo.get_entry("fcm_reluformer").card()
    assert set(card["metrics"]["f1_by_regime"]) == {"<0.1%", "0.1-1%", "1-10%", ">=10%"}


def test_polygon_weights_place_the_gates(batch):
    model = zoo.load("fcm_reluformer_polygon")
    with torch.no_grad():
        polys = model(batch.inputs)
    truth = torch.stack([p["vertices"] for p in batch.polygons])
    err = (polys - truth).norm(dim=-1).mean(-1)  # (B, P) mean vertex distance
    assert float(err[:, :3].max()) < 0.6
    assert model.gate_names == list(batch.polygons[0]["names"])


def test_figures_draw_from_a_run_folder(tmp_path, batch, monkeypatch):
    monkeypatch.setattr("xaibench.studies.fcm.figures.N_BACKGROUND", 1000)  # fewer grey points: faster
    model = zoo.load("fcm_reluformer")
    (tmp_path / "examples").mkdir()
    for i, (key, params) in enumerate([("fcm.attention", {"n_queries": 100}), ("fcm.gradient", {"selection": "positive"})]):
        a = xaibench.create_explainer(key, model, **params).explain_batch(batch)
        save_examples(tmp_path, f"s/d/m/{key}", {
            "study": "s", "dataset": "d", "model": "m", "explainer": key, "explainer_key": key, "is_baseline": False,
            "kind": a.kind, "values": a.values, "extras": a.extras, "inputs": batch.inputs, "masks": None,
            "targets": batch.targets, "ids": batch.ids})
    figs = fcm_projections(tmp_path, pd.DataFrame(), pd.DataFrame())
    assert len(figs) == 2 and all(p.exists() for _, p in figs)
    rows = [{"study": "s", "dataset": "d", "model": "m", "explainer": e, "explainer_key": k, "metric": f"top5%@H{h}",
             "metric_key": "top_k_positive_fraction", "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6,
             "protocol": json.dumps({"head": h, "k": 0.05}), "is_baseline": k is None}
            for h in range(4) for e, k in [("attention@L0", "fcm.attention"), ("baseline.random", None)]]
    heads = fcm_head_fractions(tmp_path, pd.DataFrame(), pd.DataFrame(rows))
    assert len(heads) == 1 and heads[0][1].exists()
