"""Every committed zoo card declares a held-out score at or above its floor, and the floor is above chance.

The cards are read from the package folders (``adapters/*/weights/*.json``), so a card added
without a floor fails here. Each family's own test evaluates the committed weights on a fixed
held-out set against the same floor (this test checks what the cards declare).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xaibench.zoo import card_floor

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted(ROOT.glob("adapters/*/weights/*.json"))
#: a floor must beat chance by this much (higher-is-better scores such as accuracy)
MARGIN = 0.1


def test_there_are_cards():
    assert len(CARDS) >= 10


#: Committed models whose held-out score is known to sit below their card's floor, with why. Each
#: is a strict xfail: the reports mark their cells, and a retrained model that reaches its floor
#: turns the xfail into a failure here, so the entry must then be removed.
BELOW_FLOOR: dict[str, str] = {}


def _case(p: Path):
    if p.stem in BELOW_FLOOR:
        return pytest.param(p, id=p.stem, marks=pytest.mark.xfail(reason=BELOW_FLOOR[p.stem], strict=True))
    return pytest.param(p, id=p.stem)


@pytest.mark.parametrize("path", [_case(p) for p in CARDS])
def test_card_declares_a_score_at_or_above_a_floor_above_chance(path: Path):
    card = json.loads(path.read_text())
    fl = card_floor(card)
    assert fl.floor is not None, (f"{path.name}: no floor declared; add metrics.accuracy_floor (with test_accuracy) "
                                  "or a card field floor = {metric, value, chance}")
    assert fl.score is not None, f"{path.name}: floor {fl.floor} but no held-out score {fl.metric!r}"
    assert fl.status == "ok", f"{path.name}: {fl.text()}"
    assert fl.chance is not None, (f"{path.name}: chance level unknown for {fl.metric!r}; declare floor.chance "
                                   "(or model_params.num_classes for accuracy)")
    if fl.direction == "higher":
        assert fl.floor >= fl.chance + MARGIN, f"{path.name}: floor {fl.floor} is not clearly above chance {fl.chance}"
    else:
        assert fl.floor < fl.chance, f"{path.name}: floor {fl.floor} is not below (better than) chance {fl.chance}"


# ----------------------------------------------------------------------------- the card reader itself

def test_reader_follows_the_key_conventions():
    card = {"model_params": {"num_classes": 4}, "metrics": {"val_accuracy": 0.9, "test_accuracy": 0.8,
                                                            "accuracy_floor": 0.85}}
    fl = card_floor(card)
    assert (fl.metric, fl.score, fl.floor, fl.status, fl.chance) == ("test_accuracy", 0.8, 0.85, "below floor", 0.25)
    del card["metrics"]["test_accuracy"]
    fl = card_floor(card)
    assert (fl.metric, fl.status) == ("val_accuracy", "ok") and "≥ floor 0.850" in fl.text()
    f1 = card_floor({"metrics": {"test_f1": 0.7, "f1_floor": 0.6, "chance": 0.1}})
    assert (f1.metric, f1.status, f1.chance) == ("test_f1", "ok", 0.1)


def test_reader_takes_a_declared_pair_and_lower_is_better():
    card = {"metrics": {"vertex_error": 0.12}, "floor": {"metric": "vertex_error", "value": 0.2, "direction": "lower",
                                                          "chance": 0.6, "why": "regression"}}
    fl = card_floor(card)
    assert (fl.status, fl.direction, fl.chance) == ("ok", "lower", 0.6) and "≤" in fl.text()
    card["metrics"]["vertex_error"] = 0.3
    assert card_floor(card).status == "below floor"


def test_reader_says_when_there_is_no_floor_or_card():
    assert card_floor({}).status == "no card"
    fl = card_floor({"metrics": {"val_accuracy": 0.5}})
    assert fl.status == "no floor" and fl.score == 0.5


def test_training_writes_a_declared_floor_onto_the_card(tmp_path):
    """A train function may return ``floor`` (a declared {metric, value, direction, chance, why}):
    ``zoo.train`` writes it as the card's field, next to the metrics, so a lower-is-better floor
    survives a retrain instead of being added by hand."""
    from xaibench import zoo
    from xaibench.zoo import ZOO, ZooEntry, register_zoo

    decl = {"metric": "test_loss", "value": 0.5, "direction": "lower", "chance": 1.0, "why": "toy"}
    name = "_toy_declared_floor"
    register_zoo(ZooEntry(name=name, model="cnn.small_resnet", model_params={}, weights_dir=tmp_path,
                          train=lambda entry, model, seed: {"test_loss": 0.3, "floor": dict(decl)}))
    try:
        card = zoo.train(name, out_dir=tmp_path)
    finally:
        ZOO.remove(name)
    assert card["floor"] == decl and "floor" not in card["metrics"]
    written = json.loads((tmp_path / f"{name}.json").read_text())
    fl = card_floor(written)
    assert (fl.metric, fl.direction, fl.status, fl.chance) == ("test_loss", "lower", "ok", 1.0)
