"""CNN model builders (timm) and the lesion zoo entry ``lesion_cnn``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from xaibench import register_model
from xaibench.zoo import ZooEntry, register_zoo, train_classifier

WEIGHTS = Path(__file__).parent / "weights"


@register_model("cnn.timm")
def timm_cnn(arch: str = "resnet18", num_classes: int = 2, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Any timm CNN with random weights: ``create_model("cnn.timm", arch="resnet18")``."""
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model("cnn.small_resnet")
def small_resnet(num_classes: int = 2, channels: tuple[int, ...] = (16, 32, 64, 96),
                 layers: tuple[int, ...] = (1, 1, 1, 1), in_chans: int = 3, drop_rate: float = 0.1,
                 output_stride: int = 8) -> nn.Module:
    """A narrow timm ResNet (BasicBlock) sized for CPU training: ~0.3M parameters.

    ``output_stride=8`` (dilated last stages) keeps an 8×8 last-stage map on 64 px inputs,
    fine enough for CAM localisation."""
    from timm.models.resnet import BasicBlock, ResNet
    return ResNet(block=BasicBlock, layers=tuple(layers), channels=tuple(channels), num_classes=num_classes,
                  in_chans=in_chans, stem_width=16, drop_rate=drop_rate,
                  output_stride=output_stride)


def flip_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal/vertical flips (masks are not needed in training)."""
    if bool(torch.rand((), generator=g) < 0.5):
        x = x.flip(-1)
    if bool(torch.rand((), generator=g) < 0.5):
        x = x.flip(-2)
    return x


def train_on_dataset(entry: ZooEntry, model: nn.Module, seed: int) -> dict[str, Any]:
    """Train a zoo classifier on ``entry.dataset`` with the settings in ``entry.extra``."""
    from xaibench import create_dataset

    ex = entry.extra
    dparams = dict(ex.get("dataset_params", {}))

    def train_batches(epoch: int):
        # a fresh set of samples per epoch: the generator is infinite, so no overfitting to a fixed set
        return create_dataset(entry.dataset, n=ex["n_train"], batch_size=ex.get("batch_size", 32),
                              seed=seed * 1000 + epoch, split="train", **dparams)

    val = create_dataset(entry.dataset, n=ex.get("n_val", 256), batch_size=128, seed=seed, split="val", **dparams)
    metrics = train_classifier(model, train_batches, val, epochs=ex["epochs"], lr=ex.get("lr", 3e-3), seed=seed,
                               desc=f"zoo train {entry.name}", augment=flip_augment if ex.get("flip", True) else None)
    metrics["test_accuracy"] = held_out_accuracy(model, entry.dataset, **dparams)
    if "accuracy_floor" in ex:
        metrics["accuracy_floor"] = ex["accuracy_floor"]
    return metrics


#: held-out samples for a zoo card's ``test_accuracy`` (split "test": never trained or validated on)
N_HELD_OUT = 512


def held_out_accuracy(model: nn.Module, dataset: str, n: int = N_HELD_OUT, **params: Any) -> float:
    """Accuracy of ``model`` on the first ``n`` samples of ``dataset``'s "test" split (seed 0)."""
    from xaibench import create_dataset
    from xaibench.zoo import evaluate_accuracy

    return evaluate_accuracy(model, create_dataset(dataset, n=n, batch_size=128, seed=0, split="test", **params))


register_zoo(ZooEntry(
    name="lesion_cnn", model="cnn.small_resnet", model_params={"num_classes": 2},
    train=train_on_dataset, weights_dir=WEIGHTS, seed=0, dataset="lesions",
    description="narrow timm ResNet classifying bright round vs dark irregular lesions (64 px)",
    extra={"n_train": 1024, "epochs": 12, "lr": 4e-3, "batch_size": 32, "accuracy_floor": 0.9},
))
