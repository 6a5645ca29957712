"""The face-study report figures explain the balanced set once per method and share the maps
between the class-level and the patient-wise figure (issue 13: report build speed). Pinned to
the previous computation: ``class_maps`` explaining the correctly classified faces itself, and
``patient_maps`` explaining the one-face-per-syndrome sub-batch (the independent reference
here is the explainer run on exactly the samples each figure shows)."""

import pytest
import torch

from xaibench import zoo
from xaibench.runner import load_config
from xaibench.studies.faces import figures
from xaibench.studies.faces.analyses import class_maps, patient_maps

#: the default benchmark's faces_cnn methods, picked as the report picks them (xaibench/benchmarks/default.toml)
METHODS = figures._methods(next(s for s in load_config("default").record()["studies"] if s["name"] == "faces_cnn"))


@pytest.fixture(scope="module")
def setup(monkeypatch_module):
    monkeypatch_module.setattr(figures, "PER_CLASS", 2)
    model = zoo.load("face_cnn")
    ds, classes = figures._balanced({"name": "faces"}, 0)
    batch = ds.all()
    return model, batch, classes, figures._explain_once(model, batch, METHODS)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_explain_once_restores_threads(setup):
    n = torch.get_num_threads()
    with figures._one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n


@pytest.mark.parametrize("i", range(len(METHODS)))
def test_class_maps_from_shared_maps_equal_explaining_again(setup, i):
    model, batch, classes, explained = setup
    m = METHODS[i]
    ref = class_maps(model, [batch], m["name"], m.get("params") or {}, num_classes=len(classes), classes=classes)
    got = class_maps(model, [batch], m["name"], m.get("params") or {}, num_classes=len(classes), classes=classes,
                     maps=[explained[i]])
    assert torch.equal(got.counts, ref.counts) and got.counts.sum() > 0
    torch.testing.assert_close(got.maps, ref.maps, equal_nan=True, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.faces, ref.faces, equal_nan=True)


def test_patient_maps_from_shared_maps_equal_explaining_the_sub_batch(setup):
    model, batch, classes, explained = setup
    idx = [int(torch.nonzero(batch.targets == c)[0]) for c in range(len(classes))]
    ref = patient_maps(model, batch.select(idx), {f"{m['name']}@{i}": m.get("params") or {}
                                                   for i, m in enumerate(METHODS)})
    for full, a in zip(explained, ref.values()):
        torch.testing.assert_close(full[idx], a.pixel_map(), atol=1e-5, rtol=1e-4)


def test_class_maps_refuses_too_few_maps(setup):
    model, batch, _, explained = setup
    with pytest.raises(ValueError, match="fewer maps than batches"):
        class_maps(model, [batch, batch], "cnn.saliency", maps=[explained[1]])
