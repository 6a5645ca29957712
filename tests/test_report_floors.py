"""Reports mark the rows of a model below its card's floor (or without one); the card must describe the weights run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import xaibench
from xaibench.report.findings import model_floors, row_notes
from xaibench.runner import parse_config, run_benchmark
from xaibench.zoo import ZooEntry, register_zoo


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    """Two zoo models with the same weights: one card above its floor, one below."""
    d = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in xaibench.create_model("cnn.small_resnet").state_dict().items()}
    cards = {"_floor_ok": 0.95, "_floor_below": 0.55}
    for name, acc in cards.items():
        save_file(state, str(d / f"{name}.safetensors"))
        (d / f"{name}.json").write_text(json.dumps({"model_params": {"num_classes": 2}, "metrics": {
            "test_accuracy": acc, "accuracy_floor": 0.85}}))
        try:
            register_zoo(ZooEntry(name=name, model="cnn.small_resnet", model_params={}, train=lambda *a: {},
                                  weights_dir=d, dataset="lesions"))
        except Exception:  # registered by an earlier module run in this process
            pass
    return d


def test_floor_status_per_study_model(zoo_dir):
    meta = {"config": {"studies": [{"name": "s", "models": [
        {"name": "_floor_ok", "label": "good", "source": "zoo"},
        {"name": "_floor_below", "label": "bad", "source": "zoo"},
        {"name": "cnn.small_resnet", "label": "mine", "source": "model"},
    ]}]}}
    floors = model_floors(meta)
    assert floors[("s", "good")].status == "ok" and floors[("s", "bad")].status == "below floor"
    assert floors[("s", "mine")].status == "no floor"
    assert row_notes(meta) == {("s", "bad"): "below floor", ("s", "mine"): "no floor"}
    # a run with other weights than the card describes: the card's score does not apply
    meta["config"]["studies"][0]["models"][0]["weights_sha256"] = "0" * 16
    assert model_floors(meta)[("s", "good")].status == "no floor"


def test_report_marks_rows_of_a_model_below_its_floor(zoo_dir, tmp_path):
    cfg = parse_config({"name": "fl", "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"zoo": "_floor_ok", "label": "good"},
                                                         {"zoo": "_floor_below", "label": "bad"}],
        "explainers": ["cnn.saliency"], "metrics": ["relevance_mass"], "n_samples": 2, "batch_size": 2,
        "baselines": []}]})
    run_benchmark(cfg, tmp_path / "run", quiet=True)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| lesions | bad ⚠ below floor |" in md and "| lesions | good |" in md
    floors = md[md.index("## Models without a passing floor"):md.index("## Study")]
    assert "test\\_accuracy 0.550 &lt; floor 0.850" in floors and "good" not in floors
    html = (tmp_path / "run" / "report.html").read_text()
    assert "⚠ below floor" in html
