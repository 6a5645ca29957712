"""Contract-test fixture of the CNN family: a random narrow ResNet on lesion images."""

from __future__ import annotations

import torch

from xaibench.testing.fixtures import FixtureCase, register_fixture


@register_fixture("cnn")
def cnn_fixture() -> FixtureCase:
    from xaibench import create_dataset, create_model

    torch.manual_seed(0)
    model = create_model("cnn.small_resnet", num_classes=2).eval()
    batch = create_dataset("lesions", n=4, batch_size=4, seed=123).all()
    bad = [batch.inputs[0], batch.inputs[:, 0]]  # missing batch dim; missing channel dim
    return FixtureCase(model=model, batch=batch, bad_inputs=bad)
