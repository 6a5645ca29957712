"""Lesion images: seeded, sample-wise deterministic, exact ground truth."""

import torch

import xaibench
from xaibench.errors import SettingsError


def test_same_seed_same_samples_whatever_the_batching():
    a = xaibench.create_dataset("lesions", n=10, batch_size=3, seed=4).all()
    batches = list(xaibench.create_dataset("lesions", n=10, batch_size=4, seed=4))
    b = xaibench.Batch.concat(batches)
    assert [len(x) for x in batches] == [4, 4, 2]
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.masks, b.masks) and a.ids == b.ids
    c = xaibench.create_dataset("lesions", n=10, seed=5).all()
    assert not torch.equal(a.inputs, c.inputs)
    d = xaibench.create_dataset("lesions", n=10, seed=4, split="train").all()
    assert not torch.equal(a.inputs, d.inputs)


def test_ground_truth_is_exact():
    b = xaibench.create_dataset("lesions", n=32, batch_size=32, seed=0).all()
    assert b.inputs.shape == (32, 3, 64, 64) and b.masks.dtype == torch.bool
    assert b.inputs.min() >= 0 and b.inputs.max() <= 1
    assert 4 < int(b.targets.sum()) < 28  # both classes present
    for m, box in zip(b.masks, b.boxes):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert box.tolist() == [[float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]]
    # the lesion changes the image inside the mask: bright for class 0, dark for class 1
    gray = b.inputs.mean(1)
    for i in range(32):
        ring = torch.nn.functional.max_pool2d(b.masks[i][None, None].float(), 9, 1, 4)[0, 0].bool() & ~b.masks[i]
        inside, around = gray[i][b.masks[i]].mean(), gray[i][ring].mean()
        assert (inside > around) if b.targets[i] == 0 else (inside < around)


def test_settings_are_validated_and_recorded():
    ds = xaibench.create_dataset("lesions", n=4, size=48, radius=(0.1, 0.12))
    assert ds.get_params()["size"] == 48 and next(iter(ds)).inputs.shape[-1] == 48
    import pytest
    with pytest.raises(SettingsError, match="accepted"):
        xaibench.create_dataset("lesions", sise=48)
    with pytest.raises(ValueError, match="n and batch_size"):
        xaibench.create_dataset("lesions", n=0)
