"""DICOM / NIfTI readers and the medical_folder loader, on files that registry packages ship
(pydicom's CT_small, MR_small, examples_overlay, rtdose; nibabel's test volumes) and on
round trips of our own written NIfTI, DICOM series and DICOM SEG."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from nibabel.testing import data_path as _nib_data
from pydicom.data import get_testdata_file
from xaibench.datasets import dicom, nifti

import xaibench
from xaibench.errors import DataError

NIB_DATA = Path(_nib_data)


def raw(name: str) -> np.ndarray:
    return pydicom.dcmread(get_testdata_file(name)).pixel_array.astype(np.float64)


# ----------------------------------------------------------------------------- DICOM files


def test_ct_small_in_hounsfield_units_with_geometry():
    vol, meta, _ = dicom.read_series([get_testdata_file("CT_small.dcm")])
    # reference: the header's RescaleSlope 1 and RescaleIntercept -1024 applied by hand
    assert vol.shape == (1, 128, 128)
    np.testing.assert_array_equal(vol[0], raw("CT_small.dcm") - 1024)
    assert meta["units"] == "HU" and meta["modality"] == "CT"
    # PixelSpacing 0.661468 mm, SliceThickness 5 mm; rows run towards P, columns towards L
    assert meta["spacing"] == pytest.approx((5.0, 0.661468, 0.661468))
    assert meta["orientation"] == "SPL"
    # the RAS affine puts voxel (0, 0, 0) at ImagePositionPatient with x, y negated
    assert meta["affine"][:3, 3] == pytest.approx([158.135803, 179.035797, -75.699997])


def test_windowing_presets_map_hu_to_unit_range():
    vol, _, _ = dicom.read_series([get_testdata_file("CT_small.dcm")])
    lo, hi = dicom.window_bounds("soft_tissue")
    assert (lo, hi) == (-160.0, 240.0)  # centre 40, width 400 HU
    w = dicom.apply_window(vol, (lo, hi))
    assert w.min() >= 0 and w.max() <= 1
    # hand-computed: share of pixels clipped to 0 / 1 equals the share outside [-160, 240] HU
    assert (w == 0).mean() == pytest.approx((vol <= -160).mean())
    assert (w == 1).mean() == pytest.approx((vol >= 240).mean())
    inside = (vol > -160) & (vol < 240)
    np.testing.assert_allclose(w[inside], (vol[inside] + 160) / 400, atol=1e-6)
    with pytest.raises(ValueError, match="unknown window"):
        dicom.window_bounds("lungs")


def test_mr_small_stored_units_and_the_files_own_window():
    ds = dicom.read_full(get_testdata_file("MR_small.dcm"))
    values, info = dicom.pixels(ds)
    np.testing.assert_array_equal(values[0], raw("MR_small.dcm"))  # no rescale in the header
    assert info == {"units": "stored", "inverted": False}
    assert dicom.window_bounds("dicom", ds) == (600 - 800, 600 + 800)  # WindowCenter 600, WindowWidth 1600


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    p = tmp_path / "mono1.dcm"
    ds.save_as(p)
    values, info = dicom.pixels(dicom.read_full(p))
    assert info["inverted"]
    # 16-bit signed storage: range [-32768, 32767], so inverted = -1 - stored
    np.testing.assert_array_equal(values[0], -1.0 - raw("MR_small.dcm"))


def test_multiframe_rtdose_frames_scaling_and_spacing():
    vol, meta, _ = dicom.read_series([get_testdata_file("rtdose.dcm")])
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    assert vol.shape == (15, 10, 10)  # NumberOfFrames 15, 10 x 10
    np.testing.assert_allclose(vol, ds.pixel_array * 1e-6, rtol=1e-6)  # DoseGridScaling 1e-6
    assert meta["spacing"][0] == pytest.approx(5.0)  # GridFrameOffsetVector steps of 5 mm


def test_overlay_outline_becomes_the_lesion_mask():
    ds = dicom.read_full(get_testdata_file("examples_overlay.dcm"))
    outline = dicom.overlay_masks(ds, mode="outline")
    assert outline.sum() == 222  # the drawn pixels: lesion outline, the text "Tra", a marker
    lesion = dicom.overlay_masks(ds, mode="largest")
    ys, xs = np.nonzero(lesion)
    # location read off the rendered slice: the outline circles a liver lesion at rows
    # 139-173, columns 46-80 of the 300 x 484 image (the patient's right liver lobe)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (139, 173, 46, 80)
    # area: within 10% of the ellipse inscribed in that 35 x 35 box (pi / 4 * 35 * 35 = 962)
    assert lesion.sum() == pytest.approx(np.pi / 4 * 35 * 35, rel=0.1)
    assert (lesion & outline).sum() == (outline[130:180, 40:90]).sum()  # the whole outline is kept
    filled = dicom.overlay_masks(ds, mode="filled")
    assert filled.sum() > lesion.sum() and (filled >= lesion).all()


def test_medical_folder_reads_the_overlay_as_mask_and_hides_phi(tmp_path):
    shutil.copy(get_testdata_file("examples_overlay.dcm"), tmp_path / "mr.dcm")
    ds = xaibench.create_dataset("medical_folder", root=str(tmp_path), overlay="largest")
    b = ds.all()
    assert b.inputs.shape == (1, 1, 300, 484) and b.masks.shape == (1, 300, 484)
    assert int(b.masks.sum()) == int(dicom.overlay_masks(dicom.read_full(tmp_path / "mr.dcm"), mode="largest").sum())
    assert b.boxes[0].tolist() == [[46.0, 139.0, 81.0, 174.0]]
    text = repr(b.ids) + repr(b.meta)
    header = pydicom.dcmread(tmp_path / "mr.dcm", stop_before_pixels=True)
    for secret in (str(header.PatientID), str(header.PatientName), str(header.SeriesInstanceUID)):
        assert secret not in text
    kept = xaibench.create_dataset("medical_folder", root=str(tmp_path), keep_phi=True).all()
    assert kept.ids[0].startswith(str(header.PatientID) + "/")
    # stable pseudonyms: the same file gives the same id in a new loader
    assert xaibench.create_dataset("medical_folder", root=str(tmp_path)).all().ids == b.ids


def test_box_table_on_2d_dicom(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    (tmp_path / "boxes.csv").write_text("image,x_min,y_min,x_max,y_max,label\nct,10,20,30,50,nodule\n")
    b = xaibench.create_dataset("medical_folder", root=str(tmp_path), window="lung").all()
    assert b.boxes[0].tolist() == [[10.0, 20.0, 30.0, 50.0]]
    assert int(b.masks.sum()) == 20 * 30 and bool(b.masks[0, 20:50, 10:30].all())
    (tmp_path / "boxes.csv").write_text("image,x_min,y_min,x_max,y_max\nct,30,20,10,50\n")
    with pytest.raises(DataError, match=r"boxes.csv:2: a box needs x_min < x_max"):
        xaibench.create_dataset("medical_folder", root=str(tmp_path))


# ----------------------------------------------------------------------------- NIfTI files


def test_nibabel_anatomical_is_reoriented_to_ras():
    arr, meta = nifti.read_volume(NIB_DATA / "anatomical.nii")
    data = np.asarray(nib.load(NIB_DATA / "anatomical.nii").dataobj, dtype=np.float32)
    assert meta["orientation_original"] == "LAS" and data.shape == (33, 41, 25)
    # hand-derived: LAS -> RAS flips the first (x) axis; (D, H, W) = (k, j, i)
    expected = data[::-1].transpose(2, 1, 0)
    np.testing.assert_array_equal(arr, expected)
    assert meta["spacing"] == (2.0, 2.0, 2.0)
    # the affine maps a voxel to the same world point as the file's own affine did
    img = nib.load(NIB_DATA / "anatomical.nii")
    d, h, w = 3, 7, 11
    world_ours = meta["affine"] @ [d, h, w, 1]
    world_file = img.affine @ [32 - w, h, d, 1]
    np.testing.assert_allclose(world_ours, world_file)


def test_nibabel_4d_and_anisotropic_volumes():
    arr, meta = nifti.read_volume(NIB_DATA / "example4d.nii.gz", volume=1)
    assert arr.shape == (24, 96, 128) and meta["n_volumes"] == 2
    assert meta["spacing"] == pytest.approx((2.2, 2.0, 2.0), abs=1e-5)
    _, std = nifti.read_volume(NIB_DATA / "standard.nii.gz")
    assert std["spacing"] == (2.0, 3.0, 1.0)  # zooms (1, 3, 2) of (x, y, z) -> (z, y, x)
    with pytest.raises(DataError, match="volume 2 requested but the file holds 2"):
        nifti.read_volume(NIB_DATA / "example4d.nii.gz", volume=2)


# ----------------------------------------------------------------------------- round trips


def synthetic(n: int = 2):
    return xaibench.create_dataset("volume_lesions", n=n, batch_size=n, seed=5, size=16, window="none").all()


def test_nifti_round_trip_with_label_maps(tmp_path):
    b = synthetic()
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    spacing = (2.5, 0.8, 0.7)
    for i in range(len(b)):
        nifti.write_volume(b.inputs[i, 0].numpy(), tmp_path / "images" / f"case{i}_0000.nii.gz", spacing=spacing)
        lab = b.masks[i].numpy().astype(np.int16) * (i + 1)  # label values 1 and 2
        nifti.write_volume(lab, tmp_path / "labels" / f"case{i}.nii.gz", spacing=spacing, labels=True)
    (tmp_path / "label_names.csv").write_text("value,name\n1,tumour\n2,cyst\n")
    (tmp_path / "targets.csv").write_text(f"image,label\ncase0,{int(b.targets[0])}\ncase1,{int(b.targets[1])}\n")
    hdr = nib.load(tmp_path / "images" / "case0_0000.nii.gz").header
    assert tuple(float(z) for z in hdr.get_zooms()) == pytest.approx((0.7, 0.8, 2.5))  # x, y, z
    ds = xaibench.create_dataset("medical_folder", root=str(tmp_path))
    out = ds.all()
    assert out.inputs.shape == (2, 1, 16, 16, 16)
    torch.testing.assert_close(out.inputs, b.inputs)
    assert torch.equal(out.masks, b.masks) and torch.equal(out.targets, b.targets)
    assert out.ids == ["case0", "case1"]
    assert out.meta["spacing"][0] == pytest.approx(spacing)
    assert out.meta["orientation"][0] == "SAR" and out.meta["label_names"][0] == {1: "tumour", 2: "cyst"}
    only2 = xaibench.create_dataset("medical_folder", root=str(tmp_path), mask_labels=(2,)).all()
    assert not only2.masks[0].any() and torch.equal(only2.masks[1], b.masks[1])
    win = xaibench.create_dataset("medical_folder", root=str(tmp_path), window="soft_tissue").all()
    torch.testing.assert_close(win.inputs, ((b.inputs + 160) / 400).clamp(0, 1))


def test_dicom_series_and_seg_round_trip(tmp_path):
    pytest.importorskip("highdicom")
    b = synthetic(1)
    hu = torch.round(b.inputs[0, 0]).numpy()
    files = dicom.write_series(hu, tmp_path / "images" / "series1", spacing=(3.0, 0.9, 0.9), patient_id="PAT-42")
    _, _, dsets = dicom.read_series(files)
    lab = b.masks[0].numpy().astype(np.int32)
    dicom.write_seg(lab, dsets, tmp_path / "images" / "seg.dcm", {1: "lesion"})
    seg = pydicom.dcmread(tmp_path / "images" / "seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "lesion"
    ds = xaibench.create_dataset("medical_folder", root=str(tmp_path))
    assert len(ds.items) == 1  # the SEG object is an annotation, not an image
    out = ds.all()
    assert out.inputs.shape == (1, 1, 16, 16, 16)
    np.testing.assert_array_equal(out.inputs[0, 0].numpy(), hu)
    assert torch.equal(out.masks[0], b.masks[0])
    assert out.meta["spacing"][0] == pytest.approx((3.0, 0.9, 0.9))
    assert out.meta["orientation"][0] == "SPL" and out.meta["units"][0] == "HU"
    assert out.meta["label_names"][0] == {1: "lesion"}
    assert "PAT-42" not in repr(out.ids) + repr(out.meta)
    assert out.ids[0].split("/")[0] == dicom.phi_hash("PAT-42")


def test_loader_reads_only_headers_until_a_sample_is_asked_for(tmp_path, monkeypatch):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    shutil.copy(NIB_DATA / "anatomical.nii", tmp_path / "anat.nii")

    def forbidden(*a, **k):
        raise AssertionError("pixel data read while indexing")
    monkeypatch.setattr(dicom, "read_full", forbidden)
    monkeypatch.setattr(nifti, "read_volume", forbidden)
    ds = xaibench.create_dataset("medical_folder", root=str(tmp_path), size=16)
    assert ds.n == 2 and ds.volumetric
    with pytest.raises(AssertionError, match="pixel data read"):
        ds.sample(0)


# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("name,content", [
    ("garbage.dcm", b"this is not dicom" * 20),
    ("garbage.nii", b"this is not nifti" * 40),
])
def test_garbage_files_give_one_line_naming_the_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as e:
        xaibench.create_dataset("medical_folder", root=str(tmp_path)).all()
    msg = str(e.value)
    assert str(tmp_path / name) in msg and "\n" not in msg


@pytest.mark.parametrize("source", ["CT_small.dcm", "anatomical.nii"])
def test_truncated_files_give_one_line_naming_the_file(tmp_path, source):
    src = Path(get_testdata_file(source)) if source.endswith(".dcm") else NIB_DATA / source
    data = src.read_bytes()
    bad = tmp_path / source
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError) as e:
        xaibench.create_dataset("medical_folder", root=str(tmp_path)).all()
    msg = str(e.value)
    assert str(bad) in msg and "\n" not in msg
    assert "truncated" in msg or "cannot be decoded" in msg


def test_dicom_window_on_nifti_is_refused_naming_the_file(tmp_path):
    shutil.copy(NIB_DATA / "anatomical.nii", tmp_path / "anat.nii")
    with pytest.raises(DataError, match=r"anat.nii: window='dicom' takes the window a DICOM file declares"):
        xaibench.create_dataset("medical_folder", root=str(tmp_path), window="dicom").all()
