"""The facial-CNN zoo: committed weights are small, load, and behave as their cards say."""

import pytest
import torch

import xaibench
from xaibench import zoo
from xaibench.adapters.cnn.faces_models import IMBALANCE_COUNTS, MINORITY

NAMES = ["face_cnn", "face_embedder", "face_cnn_shortcut", *[f"face_cnn_imb{n}" for n in IMBALANCE_COUNTS]]


def _load(name):
    entry = zoo.get_entry(name)
    if not entry.weights_path.exists():
        # committed package data: a lost file is a failure, not a skip
        pytest.fail(f"{name}: committed weights missing at {entry.weights_path}; train with `xaibench zoo train {name}`")
    return zoo.load(name), entry.card()


@pytest.fixture(scope="module")
def test_faces():
    return xaibench.create_dataset("faces", n=60, batch_size=60, seed=11, split="test").all()


@pytest.mark.parametrize("name", NAMES)
def test_weights_small_and_card(name):
    _, card = _load(name)
    assert zoo.get_entry(name).weights_path.stat().st_size < 1_500_000
    assert card["name"] == name and card["seed"] == 0 and "test_accuracy" in card["metrics"]


def test_classifier_beats_chance_on_fresh_faces(test_faces):
    model, _ = _load("face_cnn")
    with torch.no_grad():
        acc = (model(test_faces.inputs).argmax(1) == test_faces.targets).float().mean()
    assert acc > 0.6  # chance is 0.2


def test_shortcut_model_relies_on_the_cue():
    model, card = _load("face_cnn_shortcut")
    mark = dict(shortcut="mark", n=60, batch_size=60, seed=12)
    val = xaibench.create_dataset("faces", split="val", **mark).all()
    test = xaibench.create_dataset("faces", split="test", **mark).all()
    with torch.no_grad():
        acc_val = (model(val.inputs).argmax(1) == val.targets).float().mean()
        follows_cue = (model(test.inputs).argmax(1) == test.meta["cue_class"]).float().mean()
    assert acc_val > 0.8 and follows_cue > 0.5  # at test it predicts the mark's class, not the face's


def test_embedder_groups_faces_by_syndrome(test_faces):
    model, _ = _load("face_embedder")
    with torch.no_grad():
        e = model.embed(test_faces.inputs)
    sim = e @ e.T
    same = test_faces.targets[:, None] == test_faces.targets[None]
    off = ~torch.eye(len(e), dtype=torch.bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.2


def test_imbalance_models_have_their_counts():
    for n in IMBALANCE_COUNTS:
        _, card = _load(f"face_cnn_imb{n}")
        counts = card["metrics"]["train_counts"]
        assert counts[MINORITY] == n and all(c == 300 for i, c in enumerate(counts) if i != MINORITY)
