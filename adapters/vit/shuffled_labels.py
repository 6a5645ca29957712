"""A zoo ViT trained on shuffled labels: the data-randomisation reference (Adebayo et al. 2018) of
``vit_large_random`` (same architecture and initialisation, ``roi_large``), for the
``data_randomisation`` metric."""

from __future__ import annotations

from typing import Any

from torch import nn

from xaibench.zoo import ZooEntry, register_zoo, train_on_shuffled_labels

from .models import WEIGHTS, unfused


def train_vit_on_shuffled_labels(entry: ZooEntry, model: nn.Module, seed: int) -> dict[str, Any]:
    """:func:`xaibench.zoo.train_on_shuffled_labels` on timm's unfused attention path (faster backward on CPU)."""
    with unfused(model):
        return train_on_shuffled_labels(entry, model, seed)


register_zoo(ZooEntry(
    name="vit_large_shuffled", model="vit.small", model_params={"num_classes": 2},
    train=train_vit_on_shuffled_labels, weights_dir=WEIGHTS, seed=0, dataset="roi_large",
    description="vit_large_random's architecture trained on permuted labels (roi_large): data-randomisation reference",
    extra={"n_train": 128, "epochs": 300, "lr": 2e-3, "batch_size": 32, "shuffled_of": "vit_large_random"},
))
