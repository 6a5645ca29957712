"""Analyses of the facial-CNN family: normalisation, alignment, class-level maps, composite
faces and similarity maps of an embedding model."""

import math

import pytest
import torch

import xaibench
from xaibench.studies.faces.analyses import (
    align, class_maps, normalise_maps, patient_maps, similarity_maps, similarity_transforms,
)


@pytest.fixture(scope="module")
def batch():
    return xaibench.create_dataset("faces", n=10, batch_size=10, seed=5, class_counts=[2, 2, 2, 2, 2]).all()


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return xaibench.create_model("cnn.face_embedder", num_classes=5).eval()


def test_normalise_maps():
    m = torch.tensor([[[-2.0, 1.0], [0.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert torch.equal(normalise_maps(m, "max_abs")[0], m[0] / 4)
    mm = normalise_maps(m, "minmax")
    assert mm[0].min() == 0 and mm[0].max() == 1 and (mm[1] == 0).all()
    assert math.isclose(float(normalise_maps(m, "sum")[0].abs().sum()), 1.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="how"):
        normalise_maps(m, "zscore")


def test_similarity_transform_recovers_a_known_one():
    tpl = torch.tensor([[20.0, 25.0], [44.0, 25.0], [32.0, 45.0]])
    ang, sc, sh = 0.2, 1.1, torch.tensor([3.0, -2.0])
    rot = torch.tensor([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    src = (tpl @ rot.T) * sc + sh
    a = similarity_transforms(src[None], tpl)[0]
    back = src @ a[:, :2].T + a[:, 2]
    assert torch.allclose(back, tpl, atol=1e-3)


def test_alignment_brings_the_eyes_together():
    b = xaibench.create_dataset("faces", n=12, seed=9, pose=2.0).all()
    eyes = b.meta["region_masks"][:, :1].float()  # (B, 1, H, W) eye regions
    aligned, tpl = align(eyes, b.meta["landmarks"])

    def spread(m):  # mean distance of each eye mask to the mean mask
        return float((m - m.mean(0, keepdim=True)).abs().mean())

    assert spread(aligned) < 0.7 * spread(eyes)
    assert tpl.shape == (3, 2)


def test_class_maps_average_per_class(batch, embedder):
    cm = class_maps(embedder, [batch.select(range(5)), batch.select(range(5, 10))], "cnn.gradcam",
                    {"relu": False}, num_classes=6, only_correct=False)
    assert cm.counts.tolist() == [2, 2, 2, 2, 2, 0]
    assert cm.maps.shape == (6, 64, 64) and cm.faces.shape == (6, 3, 64, 64)
    assert torch.isfinite(cm.maps[:5]).all() and torch.isnan(cm.maps[5]).all()
    assert cm.maps[:5].abs().max() <= 1 + 1e-6 and cm.aligned
    # without alignment, a class's composite face is the plain mean of its images
    plain = class_maps(embedder, [batch], "cnn.saliency", num_classes=5, only_correct=False, align_faces=False)
    assert torch.allclose(plain.faces[1], batch.inputs[batch.targets == 1].mean(0), atol=1e-6)


def test_patient_maps_labels(batch, embedder):
    maps = patient_maps(embedder, batch.select([0, 1]), {"cnn.gradcam": {}, "cnn.gradcam@raw": {"relu": False}})
    assert set(maps) == {"cnn.gradcam", "cnn.gradcam@raw"}
    assert (maps["cnn.gradcam"].values >= 0).all() and maps["cnn.gradcam@raw"].params["relu"] is False


def test_similarity_maps(batch, embedder):
    a, b = batch.inputs[:4], batch.inputs[4:8]
    ma, mb = similarity_maps(embedder, a, b)
    assert ma.shape == (4, 64, 64) and mb.shape == (4, 64, 64)
    rb, ra = similarity_maps(embedder, b, a)  # symmetric in the pair
    assert torch.allclose(ra, ma, atol=1e-5) and torch.allclose(rb, mb, atol=1e-5)
    one_a, _ = similarity_maps(embedder, a[2:3], b[2:3])  # a pair's maps do not depend on the others
    assert torch.allclose(one_a[0], ma[2], atol=1e-5)
    assert (ma < 0).any()
    pos, _ = similarity_maps(embedder, a, b, relu=True, rule="hirescam")
    assert (pos >= 0).all()
    with pytest.raises(ValueError, match="same shape"):
        similarity_maps(embedder, a, b[:2])
