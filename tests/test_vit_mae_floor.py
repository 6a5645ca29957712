"""The MAE pre-training model (the 'mae' init of vit_study) has learned to reconstruct hidden
patches: its held-out loss is clearly below the chance level of per-patch-normalised targets
(1.0, predicting the patch mean) and at or below the floor its card declares."""

import json

from xaibench import zoo
from xaibench.adapters.vit.models import data_params
from xaibench.adapters.vit.pretrain import MAE_LOSS_FLOOR, held_out_mae_loss
from xaibench.zoo import card_floor


def test_committed_mae_reconstructs_held_out_patches_below_its_floor():
    entry = zoo.get_entry("vit_pre_mae")
    card = json.loads(entry.weights_path.with_suffix(".json").read_text())
    fl = card_floor(card)
    assert (fl.direction, fl.floor, fl.chance) == ("lower", MAE_LOSS_FLOOR, 1.0)
    data = data_params(entry)
    assert card["metrics"].get("dataset_params", {}) == data  # measured on the images it pre-trained on
    loss = held_out_mae_loss(zoo.load("vit_pre_mae").eval(), n=256, **data)
    assert loss <= MAE_LOSS_FLOOR < 1.0, loss
    assert abs(loss - card["metrics"]["test_mae_loss"]) < 0.03, (loss, card["metrics"]["test_mae_loss"])
