"""image_folder: class folders with mask PNGs, a flat folder with a labels CSV and COCO boxes, and errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import xaibench


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def nested(tmp_path):
    for i, cls in enumerate(["benign", "benign", "malignant"]):
        _png(tmp_path / "images" / cls / f"img{i}.png", _image(40, 60, i))
        m = np.zeros((40, 60), np.uint8)
        m[10:20, 30:50] = 255
        _png(tmp_path / "masks" / cls / f"img{i}.png", m)
    return tmp_path


def test_class_folders_with_masks(nested):
    ds = xaibench.create_dataset("image_folder", root=str(nested), batch_size=2)
    assert ds.n == 3 and len(ds) == 2 and ds.classes == ["benign", "malignant"]
    b = ds.all()
    assert b.inputs.shape == (3, 3, 40, 60) and b.inputs.dtype == torch.float32
    assert 0 <= float(b.inputs.min()) and float(b.inputs.max()) <= 1
    assert b.targets.tolist() == [0, 0, 1]
    assert b.masks.shape == (3, 40, 60) and int(b.masks[0].sum()) == 200
    assert b.boxes[0].tolist() == [[30, 10, 50, 20]]
    assert b.ids == ["benign/img0.png", "benign/img1.png", "malignant/img2.png"]
    # pixel values read back exactly
    raw = np.asarray(Image.open(nested / "images" / "benign" / "img1.png"), dtype=np.float32) / 255
    torch.testing.assert_close(b.inputs[1], torch.from_numpy(raw).permute(2, 0, 1))


def test_resize_keeps_masks_binary_and_scales_boxes(nested):
    b = xaibench.create_dataset("image_folder", root=str(nested), size=(20, 30), channels=1).all()
    assert b.inputs.shape == (3, 1, 20, 30) and b.masks.dtype == torch.bool
    assert b.boxes[0].tolist() == [[15, 5, 25, 10]] and int(b.masks[0].sum()) == 50


def test_flat_folder_with_csv_and_coco_boxes(tmp_path):
    for i in range(3):
        _png(tmp_path / "images" / f"case{i}.png", _image(32, 32, i))
    (tmp_path / "labels.csv").write_text("image,label\ncase0.png,1\ncase1,0\ncase2.png,1\n")
    coco = {"images": [{"id": 7, "file_name": "case0.png"}, {"id": 8, "file_name": "case2.png"}],
            "annotations": [{"image_id": 7, "bbox": [2, 4, 10, 6]}, {"image_id": 7, "bbox": [20, 20, 4, 4]},
                            {"image_id": 8, "bbox": [0, 0, 8, 8]}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    b = xaibench.create_dataset("image_folder", root=str(tmp_path), size=64).all()
    assert b.targets.tolist() == [1, 0, 1]
    assert b.boxes[0].tolist() == [[4, 8, 24, 20], [40, 40, 48, 48]] and b.boxes[1].shape == (0, 4)
    assert int(b.masks[0].sum()) == 20 * 12 + 8 * 8 and int(b.masks[1].sum()) == 0
    # a token attribution is scored by the localisation metrics on these masks
    attr = xaibench.Attribution(values=b.masks.float(), kind="pixel", method="perfect")
    scores = xaibench.create_metric("pointing_game")(attr, b)
    assert scores[0] == 1 and torch.isnan(scores[1])


def test_split_subfolder_and_n(nested, tmp_path):
    (tmp_path / "val").mkdir()
    (nested / "images").rename(tmp_path / "val" / "images")
    ds = xaibench.create_dataset("image_folder", root=str(tmp_path), split="val", n=2)
    assert ds.n == 2 and ds.all().inputs.shape[0] == 2 and ds.all().masks is None


@pytest.mark.parametrize("breakage,match", [
    ("no_root", "images"), ("no_mask", "no mask for"), ("mask_size", "must have their image's size"),
    ("no_csv", "labels CSV"), ("coco_unknown", "not under"), ("sizes", "different sizes"), ("n", "n must lie"),
])
def test_clear_errors(nested, tmp_path, breakage, match):
    params = {"root": str(nested)}
    if breakage == "no_root":
        params["root"] = str(tmp_path / "nowhere")
    elif breakage == "no_mask":
        (nested / "masks" / "benign" / "img0.png").unlink()
    elif breakage == "mask_size":
        _png(nested / "masks" / "benign" / "img0.png", np.zeros((10, 10), np.uint8))
    elif breakage == "no_csv":
        _png(nested / "images" / "loose.png", _image(40, 60, 9))
    elif breakage == "coco_unknown":
        (nested / "annotations.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png"}], "annotations": []}))
    elif breakage == "sizes":
        _png(nested / "images" / "benign" / "img0.png", _image(30, 30, 0))
        _png(nested / "masks" / "benign" / "img0.png", np.zeros((30, 30), np.uint8))
    elif breakage == "n":
        params["n"] = 9
    with pytest.raises(ValueError, match=match):
        xaibench.create_dataset("image_folder", **params).all()


def test_missing_masks_empty_gives_nan_scores(nested):
    (nested / "masks" / "benign" / "img0.png").unlink()
    b = xaibench.create_dataset("image_folder", root=str(nested), missing_masks="empty").all()
    assert int(b.masks[0].sum()) == 0
