"""MIL zoo: committed weights load and meet their cards' floors; k-fold storage round trip."""

import json

import pytest
import torch

import xaibench
from xaibench import zoo
from xaibench.adapters.mil.train import auroc, list_folds, load_fold, train_kfold

NAMES = ["mil_abmil", "mil_abmil_mh", "mil_clam_sb", "mil_clam_mb", "mil_type_aware", "mil_graphmil", "mil_abmil_confounded"]


def test_every_mil_zoo_entry_is_listed():
    assert set(NAMES) == set(zoo.list_zoo("mil_*"))


_SLIDES: dict[bool, object] = {}


def held_out(confounded: bool):
    """32 test slides of another seed than the cards' (one set per regime, shared by the models)."""
    if confounded not in _SLIDES:
        _SLIDES[confounded] = xaibench.create_dataset("mil_slides", n=32, batch_size=32, seed=123, split="test",
                                                      n_cells=256, confounded=confounded).all()
    return _SLIDES[confounded]


@pytest.mark.parametrize("name", NAMES)
def test_committed_weights_load_and_meet_the_floor(name):
    entry = zoo.get_entry(name)
    card = entry.card()["metrics"]
    assert card["val_accuracy"] >= card["accuracy_floor"] >= 0.8
    model = zoo.load(name)
    b = held_out(bool(entry.extra.get("dataset_params", {}).get("confounded")))
    with torch.no_grad():
        acc = float((model(b.inputs).argmax(-1) == b.targets).float().mean())
    assert acc >= card["accuracy_floor"] - 0.1, acc


def test_auroc_against_hand_counts():
    s = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    lab = torch.tensor([False, True, False, True, False])
    # pairs (pos, neg): (0.4: >0.1, >0.35, =0.4 -> 2.5), (0.8: 3) -> 5.5 / 6
    assert abs(auroc(s, lab) - 5.5 / 6) < 1e-12


def test_kfold_layout_round_trips(tmp_path):
    meta = train_kfold("mil_abmil", tmp_path, k=2, epochs=1, n_train=12)
    assert list_folds(tmp_path) == [0, 1] and meta["n_train"] == 12
    for folder in ("fold_0", "fold_1", "final_model"):
        assert (tmp_path / folder / "model.safetensors").exists()
        t = json.loads((tmp_path / folder / "transforms" / "transforms.json").read_text())["standardise"]
        assert len(t["mean"]) == len(t["std"]) == 22
    m0, m1, final = load_fold(tmp_path, 0), load_fold(tmp_path, 1), load_fold(tmp_path)
    assert not torch.equal(m0.feat_mean, m1.feat_mean)  # each fold fits its own transform on its own slides
    assert not m0.training and isinstance(final, type(m0))
    with pytest.raises(ValueError, match="stored folds"):
        load_fold(tmp_path, 7)
