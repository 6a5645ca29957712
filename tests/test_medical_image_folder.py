"""``image_folder`` with medical files: 2-D DICOMs are read by extension (pydicom's bundled
CT_small / MR_small), volumes (NIfTI, multi-frame DICOM) are refused with a pointer to
``medical_folder``."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import xaibench


def _raw_real(name: str) -> tuple[np.ndarray, pydicom.Dataset]:
    # independent reference: pydicom's own pixel_array with the rescale written out
    ds = pydicom.dcmread(get_testdata_file(name))
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0)), ds


@pytest.fixture()
def folder(tmp_path):
    for cls, name in [("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")]:
        (tmp_path / "images" / cls).mkdir(parents=True)
        shutil.copy(get_testdata_file(name), tmp_path / "images" / cls / name.lower())
    return tmp_path


def test_2d_dicoms_are_read_by_extension_in_real_units_and_windowed(folder):
    ct, mr1 = xaibench.create_dataset("image_folder", root=folder, channels=1, window="soft_tissue", batch_size=1)
    assert (ct.ids, mr1.ids) == (["ct/ct_small.dcm"], ["mr/mr_small.dcm"]) and ct.inputs.shape == (1, 1, 128, 128)
    assert (int(ct.targets[0]), int(mr1.targets[0])) == (0, 1)
    hu, _ = _raw_real("CT_small.dcm")
    lo, hi = 40 - 200, 40 + 200  # soft tissue: centre 40 HU, width 400 HU
    np.testing.assert_allclose(ct.inputs[0, 0].numpy(), np.clip((hu - lo) / (hi - lo), 0, 1), atol=1e-6)
    # auto: MR_small declares its own window; resized and grey repeated to 3 channels
    auto = xaibench.create_dataset("image_folder", root=folder, size=32, batch_size=2).all()
    assert auto.inputs.shape == (2, 3, 32, 32) and (auto.inputs[:, 0] == auto.inputs[:, 2]).all()
    mr, mrds = _raw_real("MR_small.dcm")
    c, w = float(np.ravel(mrds.WindowCenter)[0]), float(np.ravel(mrds.WindowWidth)[0])
    full = list(xaibench.create_dataset("image_folder", root=folder, channels=1, batch_size=1))[1]
    np.testing.assert_allclose(full.inputs[0, 0].numpy(), np.clip((mr - (c - w / 2)) / w, 0, 1), atol=1e-6)
    mm = next(iter(xaibench.create_dataset("image_folder", root=folder, channels=1, window="minmax", batch_size=1)))
    np.testing.assert_allclose(mm.inputs[0, 0].numpy(), (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)


def test_volumes_are_refused_with_a_pointer_to_medical_folder(tmp_path):
    from nibabel.testing import data_path

    (tmp_path / "images").mkdir()
    shutil.copy(f"{data_path}/anatomical.nii", tmp_path / "images" / "brain.nii")
    with pytest.raises(ValueError, match=r"1 NIfTI volume\(s\) .*brain.nii.*use medical_folder"):
        xaibench.create_dataset("image_folder", root=tmp_path)
    (tmp_path / "images" / "brain.nii").unlink()
    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / "images" / "dose.dcm")  # 15 frames
    (tmp_path / "labels.csv").write_text("image,label\ndose.dcm,0\n")
    ds = xaibench.create_dataset("image_folder", root=tmp_path)
    with pytest.raises(ValueError, match=r"dose.dcm is a multi-frame DICOM \(15 frames\).*medical_folder"):
        ds.all()
