"""ViT zoo: every dataset × initialisation entry, committed weights that load and still classify
as their card says, and the MAE pre-training model."""

import pytest
import torch

import xaibench
from xaibench import zoo
from xaibench.adapters.vit.models import DATASETS, INITS

FINETUNED = [f"vit_{d}_{i}" for d in DATASETS for i in INITS]


def test_zoo_has_every_dataset_and_initialisation():
    names = set(xaibench.list_zoo("vit_*"))
    assert set(FINETUNED) | {"vit_pre_supervised", "vit_pre_mae", "vit_pre_dino"} <= names
    for n in FINETUNED:
        e = zoo.get_entry(n)
        assert e.dataset == DATASETS[n.split("_")[1]] and e.extra["init"] == n.split("_")[2]


@pytest.mark.parametrize("name", FINETUNED)
def test_committed_weights_load_and_match_the_card(name):
    entry = zoo.get_entry(name)
    # committed package data: a lost file is a failure, not a skip
    assert entry.weights_path.exists(), f"{name}: committed weights missing; train with `xaibench zoo train {name}`"
    assert entry.weights_path.stat().st_size < 2_000_000
    model = zoo.load(name)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    card = entry.card()
    assert card["metrics"]["init"] == entry.extra["init"]
    val = xaibench.create_dataset(entry.dataset, n=96, batch_size=96, seed=entry.seed, split="val").all()
    with torch.no_grad():
        acc = float((model(val.inputs).argmax(1) == val.targets).float().mean())
    # the first 96 of the card's validation samples: within sampling noise of the card's accuracy
    assert abs(acc - card["metrics"]["val_accuracy"]) < 0.15, (acc, card["metrics"])


def test_mae_reconstruction_loss_and_patchify():
    torch.manual_seed(0)
    mae = xaibench.create_model("vit.mae")
    x = torch.rand(2, 3, 64, 64)
    p = mae.patchify(x)
    assert p.shape == (2, 64, 8 * 8 * 3)
    torch.testing.assert_close(p[0, 9].reshape(8, 8, 3).permute(2, 0, 1), x[0, :, 8:16, 8:16])
    g = torch.Generator().manual_seed(0)
    loss = mae(x, 0.75, g)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert mae.encoder.blocks[0].attn.qkv.weight.grad is not None


@pytest.mark.parametrize("init", ["mae", "dino"])
def test_pretrained_encoder_is_copied_into_the_classifier(init):
    assert zoo.get_entry(f"vit_pre_{init}").weights_path.exists(), (
        f"committed pre-training weights missing; train with `xaibench zoo train vit_pre_{init}`")
    from xaibench.adapters.vit.models import load_pretrained
    torch.manual_seed(0)
    model = xaibench.create_model("vit.small", num_classes=2)
    load_pretrained(model, init)
    pre = zoo.load(f"vit_pre_{init}").encoder  # DINO: the teacher backbone
    torch.testing.assert_close(model.blocks[2].attn.qkv.weight, pre.blocks[2].attn.qkv.weight)
    torch.testing.assert_close(model.pos_embed, pre.pos_embed)
