"""Contract-test fixture of the ViT family: a random tiny timm ViT on 32 px ROI images."""

from __future__ import annotations

import torch

from xaibench.testing.fixtures import FixtureCase, register_fixture


@register_fixture("vit")
def vit_fixture() -> FixtureCase:
    from xaibench import create_dataset, create_model

    torch.manual_seed(0)
    model = create_model("vit.small", num_classes=2, img_size=32, embed_dim=32, depth=2, num_heads=2).eval()
    batch = create_dataset("roi_large", n=4, batch_size=4, seed=123, size=32).all()
    bad = [batch.inputs[0], batch.inputs[:, :, :24, :24]]  # missing batch dim; wrong image size
    return FixtureCase(model=model, batch=batch, bad_inputs=bad,
                       params={"vit.rollout": {"discard_ratio": 0.2}, "vit.attention": {"head_fusion": "max"}})
