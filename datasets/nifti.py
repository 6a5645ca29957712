"""NIfTI reading and writing (nibabel): volumes and label maps in one canonical layout.

Every volume is reoriented to RAS (nibabel's ``as_closest_canonical``: array axes i, j, k run
towards Right, Anterior, Superior) and returned as a (D, H, W) = (k, j, i) array, so D runs
inferior→superior, H posterior→anterior and W left→right. The original axis codes (``"LAS"``,
...), the canonical affine of the (d, h, w) indices and the spacing are kept in the metadata.
Only the header is read by :func:`read_header`; :func:`read_volume` decodes the voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xaibench.errors import DataError

from .dicom import need

EXTENSIONS = (".nii", ".nii.gz")

#: (d, h, w) -> (k, j, i): the permutation of nibabel's canonical (i, j, k) array.
_PERM = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def stem(path: str | Path) -> str:
    """The file name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _load(path: str | Path) -> Any:
    nib = need("nibabel")
    try:
        img = nib.load(str(path))
        _ = img.shape, img.affine
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types; one clear line instead
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: not a readable NIfTI file: {type(exc).__name__}: {msg}") from None
    if img.affine is None:
        raise DataError(f"{path}: NIfTI without an affine; cannot orient it")
    return img


def read_header(path: str | Path) -> dict[str, Any]:
    """Shape (D, H, W) after canonicalisation, spacing, original orientation; no voxels read."""
    nib = need("nibabel")
    orients = need("nibabel.orientations")
    img = _load(path)
    if len(img.shape) < 2:
        raise DataError(f"{path}: NIfTI with shape {img.shape}; expected a 2-D image or a 3-D volume")
    shape3 = tuple(int(s) for s in img.shape[:3]) + (1,) * (3 - min(3, len(img.shape)))
    ornt = orients.io_orientation(img.affine)  # axis i of the file goes to canonical axis ornt[i, 0]
    can_affine = img.affine @ orients.inv_ornt_aff(ornt, shape3)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (1.0,) * (3 - min(3, len(img.shape)))
    can_shape, can_zooms = [0, 0, 0], [0.0, 0.0, 0.0]
    for i in range(3):
        can_shape[int(ornt[i, 0])], can_zooms[int(ornt[i, 0])] = shape3[i], zooms[i]
    return {"shape": (can_shape[2], can_shape[1], can_shape[0]), "spacing": (can_zooms[2], can_zooms[1], can_zooms[0]),
            "orientation_original": "".join(nib.aff2axcodes(img.affine)), "orientation": "SAR",
            "affine": can_affine @ _PERM, "n_volumes": int(np.prod(img.shape[3:])) if len(img.shape) > 3 else 1}


def read_volume(path: str | Path, *, volume: int = 0, labels: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """The voxels of ``path`` as a canonical (D, H, W) array and its metadata.

    Args:
        volume: which volume of a 4-D file (time point / channel); 0 by default.
        labels: read as an integer label map (no scaling, int32) instead of float32 values.

    Returns:
        (array, meta) with ``spacing`` (D, H, W) mm, ``affine`` (d, h, w indices to RAS mm),
        ``orientation`` (``"SAR"``: the directions the d, h, w axes run towards) and
        ``orientation_original`` (the file's own RAS codes, e.g. ``"LAS"``).

    Raises:
        DataError: unreadable or truncated file, or ``volume`` out of range.
    """
    nib = need("nibabel")
    meta = read_header(path)
    img = _load(path)
    if volume >= meta["n_volumes"] or volume < 0:
        raise DataError(f"{path}: volume {volume} requested but the file holds {meta['n_volumes']}")
    if len(img.shape) > 3:
        img = img.slicer[..., volume] if len(img.shape) == 4 else img.slicer[..., volume, ...]
    try:  # reorienting a non-canonical file already reads its voxels
        can = nib.as_closest_canonical(img)
        data = np.asanyarray(can.dataobj) if labels else can.get_fdata(dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - truncated data, bad compression
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: NIfTI voxel data cannot be read (truncated?): {type(exc).__name__}: {msg}") from None
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[:, :, None]
    arr = np.ascontiguousarray(data.transpose(2, 1, 0))
    arr = np.rint(arr).astype(np.int32) if labels else arr.astype(np.float32)
    return arr, meta


def write_volume(array: np.ndarray, path: str | Path, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 affine: np.ndarray | None = None, labels: bool = False) -> Path:
    """Write a canonical (D, H, W) array as NIfTI-1 (float32, or int16 for label maps).

    ``affine`` maps (d, h, w) indices to RAS mm (as :func:`read_volume` returns); by default a
    RAS-aligned grid with the given (D, H, W) spacing at the origin.
    """
    nib = need("nibabel")
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"write_volume: expected a (D, H, W) array, got shape {arr.shape}")
    if affine is None:  # d runs towards S, h towards A, w towards R
        affine = np.eye(4)
        affine[:3, :3] = [[0, 0, float(spacing[2])], [0, float(spacing[1]), 0], [float(spacing[0]), 0, 0]]
    ijk_affine = np.asarray(affine, float) @ _PERM  # (i, j, k) indices -> RAS
    data = arr.transpose(2, 1, 0)
    img = nib.Nifti1Image(data.astype(np.int16 if labels else np.float32), ijk_affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(ijk_affine, code=1)
    img.set_sform(ijk_affine, code=1)
    path = Path(path)
    nib.save(img, str(path))
    return path
