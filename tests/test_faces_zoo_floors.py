"""The facial-CNN zoo's committed weights meet the floors their cards state, on the first 100 faces
of the cards' own held-out sets (the test split; for the shortcut model the val split, where the
mark follows the class as in training)."""

import functools

import pytest
from xaibench.adapters.cnn.faces_models import IMBALANCE_COUNTS

import xaibench
from xaibench import zoo
from xaibench.zoo import card_floor, evaluate_accuracy

NAMES = ["face_cnn", "face_embedder", "face_cnn_shortcut", *[f"face_cnn_imb{n}" for n in IMBALANCE_COUNTS]]
N = 100  # of the card's 500: the same faces (samples are seeded one by one), a fast subset


@functools.cache
def held_out(split: str, shortcut: str | None):
    params = {"shortcut": shortcut} if shortcut else {}
    return xaibench.create_dataset("faces", n=N, batch_size=N, seed=0, split=split, **params).all()


@pytest.mark.parametrize("name", NAMES)
def test_committed_weights_meet_their_cards_floor(name):
    entry = zoo.get_entry(name)
    fl = card_floor(entry.card())
    assert fl.status == "ok" and fl.chance == 0.2 and fl.floor >= fl.chance + 0.5, fl.text()
    shortcut = entry.extra.get("dataset_params", {}).get("shortcut")
    # the shortcut model's floor is on faces with the cue (val split), the others' on the balanced test split
    split = "val" if fl.metric == "test_accuracy_with_cue" else "test"
    assert (split == "val") == bool(shortcut)
    assert evaluate_accuracy(zoo.load(name), [held_out(split, shortcut)]) >= fl.floor


def test_shortcut_card_says_why_its_test_accuracy_is_at_chance():
    m = zoo.get_entry("face_cnn_shortcut").card()["metrics"]
    assert m["test_accuracy"] < 0.3 and "chance" in m["floor_why"] and "accuracy_floor" not in m
