"""ROI-regime datasets: seeded, exact masks and boxes, labels tied to the region, the regimes' sizes."""

import numpy as np
import pytest
import torch

import xaibench

NAMES = ["roi_large", "roi_faint", "roi_thin", "roi_multi", "shape_classes"]


@pytest.mark.parametrize("name", NAMES)
def test_seeded_and_batch_independent(name):
    a = xaibench.create_dataset(name, n=6, batch_size=4, seed=5).all()
    b = xaibench.create_dataset(name, n=3, batch_size=1, seed=5)
    b = xaibench.Batch.concat(list(b))
    torch.testing.assert_close(a.inputs[:3], b.inputs)
    assert torch.equal(a.masks[:3], b.masks) and a.targets[:3].tolist() == b.targets.tolist()
    c = xaibench.create_dataset(name, n=3, seed=6).all()
    assert not torch.equal(a.inputs[:3], c.inputs)
    d = xaibench.create_dataset(name, n=3, seed=5, split="train").all()
    assert not torch.equal(a.inputs[:3], d.inputs)


@pytest.mark.parametrize("name", NAMES)
def test_masks_and_boxes_are_exact(name):
    b = xaibench.create_dataset(name, n=8, seed=1).all()
    assert b.inputs.shape == (8, 3, 64, 64) and b.masks.dtype == torch.bool
    assert bool((b.masks.flatten(1).sum(1) > 0).all())
    for m, boxes in zip(b.masks, b.boxes):
        union = torch.zeros_like(m)
        for x0, y0, x1, y1 in boxes.long().tolist():
            union[y0:y1, x0:x1] = True
        assert bool((m <= union).all())  # every mask pixel lies in a box
        assert boxes.shape[1] == 4 and bool((boxes[:, 2] > boxes[:, 0]).all())
    if name == "roi_multi":
        assert [len(x) for x in b.boxes] == b.meta["n_instances"] and min(b.meta["n_instances"]) >= 2


def test_regimes_differ_in_roi_size():
    frac = {n: np.mean(xaibench.create_dataset(n, n=24, seed=0).all().meta["roi_fraction"])
            for n in ["roi_large", "roi_faint", "roi_thin", "roi_multi"]}
    assert frac["roi_large"] > 0.1 > frac["roi_multi"] > frac["roi_faint"]
    assert frac["roi_thin"] < 0.05 and frac["roi_faint"] < 0.02


def _region_stat(b):
    """Mean intensity inside the region minus a 3 px ring around it, per sample."""
    g = b.inputs.mean(1)
    m = b.masks.float()
    ring = torch.nn.functional.max_pool2d(m[:, None], 7, 1, 3)[:, 0] - m
    mean = lambda w: (g * w).flatten(1).sum(1) / w.flatten(1).sum(1)  # noqa: E731
    return mean(m) - mean(ring)


@pytest.mark.parametrize("name", ["roi_large", "roi_faint", "roi_multi"])
def test_label_is_the_regions_polarity(name):
    b = xaibench.create_dataset(name, n=32, seed=2).all()
    stat = _region_stat(b)
    assert bool(((stat > 0) == (b.targets == 0)).all())


def test_thin_label_is_the_cracks_orientation():
    b = xaibench.create_dataset("roi_thin", n=16, seed=3).all()
    for m, t in zip(b.masks, b.targets.tolist()):
        ys, xs = torch.nonzero(m, as_tuple=True)
        spread_x, spread_y = float(xs.float().std()), float(ys.float().std())
        assert (spread_y > spread_x) == (t == 1)


def test_real_texture_background_and_bad_background():
    b = xaibench.create_dataset("roi_faint", n=2, background="retina").all()
    assert b.inputs.shape == (2, 3, 64, 64) and bool(torch.isfinite(b.inputs).all())
    with pytest.raises(ValueError, match="background"):
        xaibench.create_dataset("roi_faint", n=1, background="nope").all()


def test_shape_classes_settings_polarity_contrast_and_background():
    """The pre-training regime's knobs do what they say; the defaults draw the same images as before
    they existed (random polarity, background as drawn)."""
    plain = xaibench.create_dataset("shape_classes", n=12, seed=2).all()
    same = xaibench.create_dataset("shape_classes", n=12, seed=2, background_contrast=1.0, polarity="random").all()
    assert torch.equal(plain.inputs, same.inputs)
    signs = []
    for pol in ("bright", "dark", "random"):
        b = xaibench.create_dataset("shape_classes", n=12, seed=2, polarity=pol, contrast=(0.3, 0.4)).all()
        g = b.inputs.mean(1)  # grey levels
        diff = torch.stack([g[i][b.masks[i]].mean() - g[i][~b.masks[i]].mean() for i in range(len(g))])
        signs.append(set(torch.sign(diff).tolist()))
    assert signs[0] == {1.0} and signs[1] == {-1.0} and signs[2] == {-1.0, 1.0}
    flat = xaibench.create_dataset("shape_classes", n=4, seed=2, background_contrast=0.0).all()
    for x, m in zip(flat.inputs, flat.masks):
        outside = x[:, ~m]
        assert float((outside - outside[:, :1]).abs().max()) < 1e-6  # one tinted grey off the shape
    with pytest.raises(ValueError, match="background_contrast"):
        xaibench.create_dataset("shape_classes", n=2, background_contrast=-1)
