"""The lesion CNN (contract fixture and default-benchmark model) has learned its task: its committed
weights, run on held-out lesions (split "test", never trained or validated on), reach the floor
its card states, and the card's held-out score is what the weights give."""

import json

from xaibench import zoo
from xaibench.adapters.cnn.models import WEIGHTS, held_out_accuracy


def test_committed_lesion_cnn_meets_its_card_floor_on_held_out_lesions():
    card = json.loads((WEIGHTS / "lesion_cnn.json").read_text())["metrics"]
    acc = held_out_accuracy(zoo.load("lesion_cnn"), "lesions", n=256)
    assert acc >= card["accuracy_floor"] >= 0.9, acc
    # the card's score (512 samples) and this prefix of its held-out set agree
    assert abs(acc - card["test_accuracy"]) <= 0.03, (acc, card["test_accuracy"])
