"""Contract-test fixture of the CNN family: the zoo's trained lesion CNN on lesion images
(random weights if the committed weights are missing: random ResNets give near-zero CAMs,
which would make the checks weak)."""

from __future__ import annotations

import warnings

import torch

from xaibench.testing.fixtures import FixtureCase, register_fixture


@register_fixture("cnn")
def cnn_fixture() -> FixtureCase:
    from xaibench import create_dataset, create_model, zoo

    try:
        model = zoo.load("lesion_cnn")
    except FileNotFoundError:
        warnings.warn("cnn fixture: lesion_cnn weights missing, using random weights", stacklevel=2)
        torch.manual_seed(0)
        model = create_model("cnn.small_resnet", num_classes=2).eval()
    batch = create_dataset("lesions", n=4, batch_size=4, seed=123).all()
    bad = [batch.inputs[0], batch.inputs[:, 0]]  # missing batch dim; missing channel dim
    return FixtureCase(model=model, batch=batch, bad_inputs=bad)
