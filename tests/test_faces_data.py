"""Synthetic faces and the face-folder loader: seeded, exact masks, imbalance and shortcut knobs,
and a smoke test on the real faces that ship with scikit-image."""

import json

import numpy as np
import pytest
import torch

import xaibench
from xaibench.datasets.faces import DEFAULT_CLASSES, SYNDROMES, Faces


def faces(**kw):
    return xaibench.create_dataset("faces", **kw)


def test_seeded_and_independent_of_batching():
    a = faces(n=6, batch_size=4, seed=3).all()
    b = faces(n=10, batch_size=3, seed=3)
    b = xaibench.Batch.concat(list(b)).select(list(range(6)))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.masks, b.masks)
    assert torch.equal(a.meta["landmarks"], b.meta["landmarks"])
    c = faces(n=6, seed=4).all()
    assert not torch.equal(a.inputs, c.inputs)


def test_masks_are_the_defining_regions():
    batch = faces(n=40, seed=1, classes=tuple(SYNDROMES)).all()
    regions = dict(zip(Faces.REGIONS, batch.meta["region_masks"].unbind(1)))
    for i, name in enumerate(batch.meta["syndrome"]):
        expect = torch.zeros_like(batch.masks[i])
        for r in SYNDROMES[name]:
            expect |= regions[r][i]
        assert torch.equal(batch.masks[i], expect)
        assert batch.masks[i].any() == (name != "control")
    # the eye landmarks lie inside the eye region
    lm = batch.meta["landmarks"]
    for i in range(len(batch)):
        for k in (0, 1):
            x, y = lm[i, k].floor().long().tolist()
            assert regions["eyes"][i, y, x]
    assert batch.inputs.min() >= 0 and batch.inputs.max() <= 1


def test_mask_holds_every_change_from_the_control_twin():
    """A syndrome face differs from its control twin (same person, no syndrome) only inside its mask."""
    ds = faces(n=24, seed=6, classes=tuple(SYNDROMES), shortcut="mark")
    batch = ds.all()
    for i in range(len(batch)):
        diff = (batch.inputs[i] - ds.control_twin(i)).abs().amax(0) > 1e-6
        assert diff.any() == bool(batch.masks[i].any())
        assert not (diff & ~batch.masks[i]).any(), f"{batch.meta['syndrome'][i]}: change outside the mask"


def test_class_changes_only_its_region():
    """Hypertelorism moves the eyes apart: the eye landmarks of that class are further apart."""
    batch = faces(n=60, seed=2, pose=0.0).all()
    sep = (batch.meta["landmarks"][:, 1, 0] - batch.meta["landmarks"][:, 0, 0])
    hyper = batch.targets == DEFAULT_CLASSES.index("hypertelorism")
    assert sep[hyper].min() > sep[~hyper].max()


def test_class_counts_exact_and_single_class():
    counts = [5, 2, 0, 3, 1]
    b = faces(n=22, batch_size=11, seed=0, class_counts=counts).all()
    first = torch.bincount(b.targets[:11], minlength=5).tolist()
    assert first == counts and torch.bincount(b.targets[11:], minlength=5).tolist() == counts
    only = faces(n=8, class_counts=[0, 4, 0, 0, 0]).all()
    assert (only.targets == 1).all()
    with pytest.raises(ValueError, match="class_counts"):
        faces(class_counts=[1, 2])
    with pytest.raises(ValueError, match=r"classes\.1: .*'cleft'"):
        faces(classes=("control", "cleft"))
    with pytest.raises(ValueError, match="shortcut"):
        faces(shortcut="sticker")


def test_shortcut_correlated_in_train_random_in_test():
    tr = faces(n=60, split="train", shortcut="mark", shortcut_p=1.0).all()
    te = faces(n=60, split="test", shortcut="mark", shortcut_p=1.0).all()
    assert torch.equal(tr.meta["cue_class"], tr.targets)
    assert (te.meta["cue_class"] == te.targets).float().mean() < 0.5
    assert tr.meta["shortcut_mask"].flatten(1).any(1).all()
    assert not (tr.meta["shortcut_mask"] & tr.masks).any()
    # the faces are the same with and without the cue, outside the cue
    plain = faces(n=60, split="train").all()
    outside = ~tr.meta["shortcut_mask"][:, None].expand_as(tr.inputs)
    assert torch.equal(tr.inputs[outside], plain.inputs[outside])
    border = faces(n=2, shortcut="border").all()
    assert border.meta["shortcut_mask"][:, 0].all()


@pytest.fixture(scope="module")
def real_faces(tmp_path_factory):
    """scikit-image's LFW subset (faces / non-faces, 25 px) and the astronaut's face, as a folder."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("faces")
    lfw = data.lfw_subset()
    for cls, imgs in (("face", lfw[:4]), ("nonface", lfw[100:104])):
        (root / "images" / cls).mkdir(parents=True)
        (root / "landmarks" / cls).mkdir(parents=True)
        for i, im in enumerate(imgs):
            Image.fromarray((im * 255).astype(np.uint8)).save(root / "images" / cls / f"{i}.png")
            (root / "landmarks" / cls / f"{i}.json").write_text(json.dumps([[8, 10], [17, 10], [12.5, 19]]))
    face = data.astronaut()[40:160, 160:280]  # the cascade finds the face at r=70, c=175, 93 px
    Image.fromarray(face).save(root / "images" / "face" / "astronaut.png")
    (root / "landmarks" / "face" / "astronaut.txt").write_text("48 50\n80 48\n64 96\n")
    return root


def test_face_folder_real_faces_smoke(real_faces):
    ds = xaibench.create_dataset("face_folder", root=str(real_faces), size=48, landmark_radius=5, batch_size=9)
    batch = ds.all()
    assert batch.inputs.shape == (9, 3, 48, 48) and batch.targets.tolist() == [0] * 5 + [1] * 4
    assert batch.meta["landmarks"].shape == (9, 3, 2)
    astro = batch.ids.index("face/astronaut.png")
    assert torch.allclose(batch.meta["landmarks"][astro, 0], torch.tensor([48, 50]) * 48 / 120)
    assert batch.masks.flatten(1).any(1).all()
    torch.manual_seed(0)
    model = xaibench.create_model("cnn.small_resnet", num_classes=2).eval()
    for method in ("cnn.gradcam", "cnn.occlusion", "cnn.saliency"):
        attr = xaibench.explain(model, batch.inputs, method, target=batch.targets)
        assert attr.values.shape == (9, 48, 48) and torch.isfinite(attr.values).all()
    scores = xaibench.create_metric("relevance_mass")(attr, batch)
    assert scores.shape == (9,)


def test_face_folder_errors(real_faces, tmp_path):
    with pytest.raises(ValueError, match="landmark"):
        xaibench.create_dataset("face_folder", root=str(real_faces), landmarks=str(tmp_path / "none"))
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "x.png").write_bytes((real_faces / "images" / "face" / "0.png").read_bytes())
    with pytest.raises(ValueError, match="landmark_radius"):
        xaibench.create_dataset("face_folder", root=str(tmp_path), landmark_radius=3)
