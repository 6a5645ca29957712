"""DICOM reading and writing: pixels in real units, windowing, series, overlays and SEG objects.

Functions only (the registered loader is :mod:`~xaibench.datasets.medical_folder`). Pixel
data is decoded only when asked for; :func:`read_header` reads everything before it.

* :func:`pixels` — stored values to real units (``RescaleSlope``/``RescaleIntercept``, HU for
  CT), every frame of a multi-frame object, MONOCHROME1 inverted so that higher = brighter.
* :func:`apply_window` — a named window (:data:`WINDOWS`, or the file's own ``"dicom"``) or a
  ``(centre, width)`` pair, mapped to [0, 1].
* :func:`read_series` — the files of one series sorted along the slice normal into a (D, H, W)
  volume with spacing, orientation and the voxel-to-patient affine in the metadata.
* :func:`overlay_masks` — overlay planes (groups 60xx) as masks; closed outlines filled.
* :func:`read_seg` / :func:`write_seg` — DICOM SEG via highdicom, aligned to the source series.

Every reader raises :class:`~xaibench.errors.DataError` with one line naming the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xaibench.errors import DataError

#: Named intensity windows ``(centre, width)`` in HU (CT conventions).
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft_tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "liver": (60.0, 160.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}
WindowName = Literal["none", "dicom", "lung", "soft_tissue", "mediastinum", "liver", "brain", "bone"]

#: Header keywords that identify a person; :func:`deidentified` hashes or drops them.
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
                "AccessionNumber", "InstitutionName", "ReferringPhysicianName", "StudyID")


def need(module: str) -> Any:
    """Import an optional medical-imaging dependency, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is needed to read medical images; install it with "
                          f"`pip install 'xaibench[medical]'` (or `pip install {module.split('.')[0]}`)") from None


def phi_hash(value: Any, salt: str = "") -> str:
    """A stable 10-hex-digit pseudonym of an identifier (the same input always gives the same hash)."""
    return hashlib.blake2b(str(value).encode(), digest_size=5, key=salt.encode()[:64]).hexdigest()


def _fail(path: Any, what: str, exc: BaseException | None = None) -> DataError:
    why = f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}" if exc is not None else ""
    return DataError(f"{path}: {what}{why}")


def read_header(path: str | Path) -> Any:
    """The DICOM dataset of ``path`` without its pixel data (cheap; for indexing folders).

    Raises:
        DataError: not a DICOM file, or truncated before the pixel data.
    """
    pydicom = need("pydicom")
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; one clear line instead
        raise _fail(path, "not a readable DICOM file", exc) from None
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise _fail(path, "truncated DICOM file or not an image (no SOPClassUID, no Rows)")
    return ds


def read_full(path: str | Path) -> Any:
    """The complete DICOM dataset of ``path`` (pixel data read, not yet decoded)."""
    pydicom = need("pydicom")
    try:
        return pydicom.dcmread(str(path))
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, "not a readable DICOM file", exc) from None


def _frames(ds: Any, path: Any) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - truncated data, missing decoder, ...
        raise _fail(path, "DICOM pixel data cannot be decoded", exc) from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise _fail(path, f"DICOM with {spp} samples per pixel ({ds.get('PhotometricInterpretation')}); "
                          "only greyscale (MONOCHROME1/2) images are supported")
    return arr.reshape(n_frames, int(ds.Rows), int(ds.Columns))


def pixels(ds: Any, path: Any = "<dataset>") -> tuple[np.ndarray, dict[str, Any]]:
    """Pixel values in real units, (F, H, W) float32 (F = 1 for a single frame).

    Applies ``RescaleSlope``/``RescaleIntercept`` (and ``DoseGridScaling`` of RT dose) and
    inverts MONOCHROME1 (``lo + hi - value`` over the stored range in real units), so a
    higher value is always brighter.

    Returns:
        (values, info) with ``info["units"]`` (``"HU"`` for CT, else the file's
        ``RescaleType`` or ``"stored"``) and ``info["inverted"]``.
    """
    arr = _frames(ds, path).astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1) or 1) * float(ds.get("DoseGridScaling", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = arr * np.float32(slope) + np.float32(intercept)
    inverted = str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1"
    if inverted:
        bits = int(ds.get("BitsStored", 16) or 16)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        lo_s, hi_s = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        lo, hi = sorted((lo_s * slope + intercept, hi_s * slope + intercept))
        values = np.float32(lo + hi) - values
    units = "HU" if str(ds.get("Modality", "")) == "CT" else str(ds.get("RescaleType", "") or "stored")
    return values, {"units": units, "inverted": inverted}


def file_window(ds: Any) -> tuple[float, float] | None:
    """The first (centre, width) the file itself declares, if any."""
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        return None
    def first(v: Any) -> float:  # a multi-valued element (MultiValue) or a single number
        return float(v[0]) if hasattr(v, "__getitem__") and not isinstance(v, (str, bytes)) else float(v)
    return first(c), first(w)


def window_bounds(window: str | Sequence[float], ds: Any = None, who: str = "window") -> tuple[float, float] | None:
    """(low, high) of a window given as a preset name, ``"dicom"``, ``"none"`` or (centre, width)."""
    if isinstance(window, str):
        if window == "none":
            return None
        if window == "dicom":
            cw = file_window(ds) if ds is not None else None
            if cw is None:
                raise ValueError(f"{who}: window='dicom' but the file declares no WindowCenter/WindowWidth; "
                                 f"use a preset {sorted(WINDOWS)} or (centre, width)")
        elif window in WINDOWS:
            cw = WINDOWS[window]
        else:
            raise ValueError(f"{who}: unknown window {window!r}; expected 'none', 'dicom', one of {sorted(WINDOWS)} "
                             "or (centre, width)")
    else:
        cw = tuple(float(v) for v in window)  # type: ignore[assignment]
        if len(cw) != 2 or cw[1] <= 0:
            raise ValueError(f"{who}: a window is (centre, width) with width > 0, got {window!r}")
    c, w = cw
    return c - w / 2, c + w / 2


def apply_window(values: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    """Map real-unit values to [0, 1] through the window (low, high); None leaves them as they are."""
    if bounds is None:
        return values
    lo, hi = bounds
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- geometry

def _orientation(ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        shared = ds.get("SharedFunctionalGroupsSequence")
        try:
            iop = shared[0].PlaneOrientationSequence[0].ImageOrientationPatient
        except (AttributeError, IndexError, TypeError):
            iop = [1, 0, 0, 0, 1, 0]
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    return row, col, np.cross(row, col)


def _pixel_spacing(ds: Any) -> tuple[float, float]:
    ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if ps is None:
        shared = ds.get("SharedFunctionalGroupsSequence")
        try:
            ps = shared[0].PixelMeasuresSequence[0].PixelSpacing
        except (AttributeError, IndexError, TypeError):
            ps = [1.0, 1.0]
    return float(ps[0]), float(ps[1])


def axis_codes(affine: np.ndarray) -> str:
    """RAS axis codes (``"LPS"``...) of the array axes of a voxel-to-RAS affine (nibabel's rule)."""
    nib_or = need("nibabel.orientations")
    return "".join(nib_or.aff2axcodes(affine))


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def geometry(ds: Any, positions: Sequence[Sequence[float]] | None, n_slices: int) -> dict[str, Any]:
    """Spacing (D, H, W) in mm, voxel-to-RAS affine of (d, h, w) indices, and axis codes.

    DICOM patient space is LPS; the affine is converted to RAS (x, y negated) so NIfTI and
    DICOM metadata share one convention.
    """
    row, col, normal = _orientation(ds)
    dr, dc = _pixel_spacing(ds)
    if positions is not None and len(positions) > 1:
        p = np.asarray(positions, float)
        steps = np.diff(p @ normal)
        ds_ = float(np.median(np.abs(steps))) if len(steps) else 1.0
        origin = p[0]
    else:
        ds_ = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        gfov = ds.get("GridFrameOffsetVector")
        if gfov is not None and len(gfov) > 1:
            ds_ = float(abs(float(gfov[1]) - float(gfov[0])))
        origin = np.asarray(positions[0] if positions else ds.get("ImagePositionPatient", [0, 0, 0]), float)
    lps = np.eye(4)
    lps[:3, 0] = normal * ds_  # d
    lps[:3, 1] = col * dr  # h (rows advance along the column direction)
    lps[:3, 2] = row * dc  # w
    lps[:3, 3] = origin
    ras = lps_to_ras(lps)
    return {"spacing": (ds_, dr, dc), "affine": ras, "orientation": axis_codes(ras), "n_slices": n_slices}


# ----------------------------------------------------------------------------- series

def read_series(files: Sequence[str | Path], *, who: str = "dicom") -> tuple[np.ndarray, dict[str, Any], list[Any]]:
    """The files of one series as a (D, H, W) float32 volume in real units.

    Slices are sorted along the slice normal (``ImagePositionPatient`` projected on the
    cross product of ``ImageOrientationPatient``), falling back to ``InstanceNumber``. A
    single multi-frame file gives its frames in order.

    Returns:
        (volume, meta, datasets): meta has ``spacing`` (D, H, W) mm, ``affine`` (voxel to RAS
        mm), ``orientation`` (RAS codes of the d, h, w axes), ``units``, ``inverted``,
        ``modality``; ``datasets`` are the sorted per-slice datasets (for SEG alignment).

    Raises:
        DataError: a file is unreadable, or slices differ in size.
    """
    dsets = [(Path(f), read_full(f)) for f in files]
    if len(dsets) > 1:
        _, _, normal = _orientation(dsets[0][1])

        def key(item: tuple[Path, Any]) -> tuple[float, float]:
            ds = item[1]
            ipp = ds.get("ImagePositionPatient")
            return (float(np.dot(np.asarray(ipp, float), normal)) if ipp is not None else 0.0,
                    float(ds.get("InstanceNumber", 0) or 0))
        dsets.sort(key=key)
    arrays, infos = [], []
    for path, ds in dsets:
        values, info = pixels(ds, path)
        arrays.append(values)
        infos.append(info)
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        raise _fail(dsets[0][0].parent, f"{who}: slices of one series differ in size {sorted(shapes)}")
    vol = np.concatenate(arrays, 0)
    first = dsets[0][1]
    if len(dsets) > 1:
        positions = [ds.get("ImagePositionPatient", [0, 0, i]) for i, (_, ds) in enumerate(dsets)]
    else:
        positions = _frame_positions(first)
    meta = geometry(first, positions, vol.shape[0])
    meta.update(infos[0], modality=str(first.get("Modality", "")))
    return vol, meta, [ds for _, ds in dsets]


def _frame_positions(ds: Any) -> list[list[float]] | None:
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per:
        try:
            return [list(map(float, fg.PlanePositionSequence[0].ImagePositionPatient)) for fg in per]
        except (AttributeError, IndexError):
            return None
    ipp = ds.get("ImagePositionPatient")
    return [list(map(float, ipp))] if ipp is not None else None


# ----------------------------------------------------------------------------- annotations

def overlay_groups(ds: Any) -> list[int]:
    """Overlay plane groups (0x6000, 0x6002, ...) that carry overlay data."""
    return sorted({e.tag.group for e in ds if 0x6000 <= e.tag.group <= 0x601E and e.tag.group % 2 == 0
                   and e.tag.element == 0x3000})


def overlay_masks(ds: Any, *, mode: Literal["filled", "largest", "outline"] = "filled",
                  path: Any = "<dataset>") -> np.ndarray:
    """The union of the overlay planes as an (H, W) bool mask (origin and size applied).

    Overlays usually hold outlines drawn round a finding (graphics type ``G``), often next to
    text and markers. ``"outline"`` keeps the drawn pixels, ``"filled"`` also fills every
    closed outline, ``"largest"`` keeps only the largest filled connected region (the
    outlined finding, dropping labels and markers).

    Raises:
        DataError: the file has no overlay plane.
    """
    from scipy import ndimage

    groups = overlay_groups(ds)
    if not groups:
        raise _fail(path, "no DICOM overlay plane (group 60xx) in the file")
    rows, cols = int(ds.Rows), int(ds.Columns)
    mask = np.zeros((rows, cols), bool)
    for g in groups:
        try:
            ov = np.asarray(ds.overlay_array(g), bool)
        except Exception as exc:  # noqa: BLE001
            raise _fail(path, f"overlay group {g:#06x} cannot be decoded", exc) from None
        ov = ov.reshape(-1, *ov.shape[-2:]).any(0)
        oy, ox = (int(v) - 1 for v in ds[g, 0x0050].value) if (g, 0x0050) in ds else (0, 0)
        h, w = ov.shape
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + h, rows), min(ox + w, cols)
        if y1 > y0 and x1 > x0:
            mask[y0:y1, x0:x1] |= ov[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    if mode == "outline":
        return mask
    filled = ndimage.binary_fill_holes(mask)
    if mode == "filled":
        return filled
    if mode != "largest":
        raise ValueError(f"overlay: mode must be 'filled', 'largest' or 'outline', got {mode!r}")
    lab, n = ndimage.label(filled)
    if n == 0:
        return filled
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def read_seg(path: str | Path, source: Sequence[Any]) -> tuple[np.ndarray, dict[int, str]]:
    """A DICOM SEG object as a (D, H, W) int label map aligned to the ``source`` datasets.

    ``source`` are the series' datasets in volume order (from :func:`read_series`); frames are
    placed by their referenced SOP instance. Segment numbers become label values.

    Returns:
        (label map, {segment number: segment label}).

    Raises:
        DataError: unreadable SEG, or it references none of the source images.
    """
    hd = need("highdicom")
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, "not a readable DICOM SEG object", exc) from None
    names = {int(n): str(seg.get_segment_description(n).segment_label) for n in seg.segment_numbers}
    uids = [str(ds.SOPInstanceUID) for ds in source]
    try:
        arr = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, combine_segments=True, relabel=False,
            ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, "SEG frames cannot be aligned to the series it annotates", exc) from None
    return np.asarray(arr).astype(np.int32), names


def write_seg(label_map: np.ndarray, source: Sequence[Any], path: str | Path, names: dict[int, str],
              *, series_number: int = 99) -> None:
    """Write a (D, H, W) int label map over the ``source`` series as a binary DICOM SEG."""
    hd = need("highdicom")
    from pydicom.sr.codedict import codes

    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=int(k), segment_label=str(v),
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for k, v in sorted(names.items())]
    onehot = np.stack([(label_map == int(k)) for k in sorted(names)], -1).astype(bool)
    seg = hd.seg.Segmentation(
        source_images=list(source), pixel_array=onehot, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="xaibench",
        manufacturer_model_name="xaibench", software_versions="xaibench", device_serial_number="0")
    seg.save_as(str(path))


def write_series(volume: np.ndarray, folder: str | Path, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 patient_id: str = "SYNTH0001", modality: str = "CT", series_uid: str | None = None) -> list[Path]:
    """Write a (D, H, W) volume in real units (HU for CT) as one DICOM file per slice.

    Values are stored as int16 with ``RescaleSlope`` 1 and ``RescaleIntercept`` -1024 (CT) or
    0; slices are axial (orientation 1,0,0,0,1,0), slice k at z = k × spacing[0] mm.
    """
    pydicom = need("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    intercept = -1024.0 if modality == "CT" else 0.0
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    sop_class = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    out = []
    for k, sl in enumerate(np.asarray(volume, np.float32)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = modality, patient_id, f"Synthetic^{patient_id}"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "000000", "", "1"
        ds.ReferringPhysicianName, ds.Manufacturer = "", "xaibench"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[0])]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.PositionReferenceIndicator = ""
        ds.Rows, ds.Columns = sl.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.PixelData = np.round(sl - intercept).astype(np.int16).tobytes()
        p = folder / f"slice_{k:04d}.dcm"
        ds.save_as(str(p), enforce_file_format=True)
        out.append(p)
    return out


def deidentified(ds: Any, keep_phi: bool = False, salt: str = "") -> dict[str, Any]:
    """Identifying header values for ``meta``: hashed (``patient`` = pseudonym) unless ``keep_phi``."""
    pid = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
    out = {"patient": pid if keep_phi else phi_hash(pid, salt),
           "series": str(ds.get("SeriesInstanceUID", "")) if keep_phi else phi_hash(ds.get("SeriesInstanceUID", ""), salt)}
    if keep_phi:
        out["patient_name"] = str(ds.get("PatientName", ""))
    return out
