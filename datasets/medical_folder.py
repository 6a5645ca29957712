"""``medical_folder``: DICOM series and NIfTI volumes with their annotations, as xaibench Batches.

Layout (``root`` is the folder you pass)::

    root/images/...            DICOM files (any depth; grouped into series by SeriesInstanceUID,
                               one file per slice or multi-frame) and/or .nii / .nii.gz volumes
                               (no images/ sub-folder: root itself is searched)
    root/labels/<stem>.nii.gz  optional NIfTI label maps, paired with the image of the same stem
                               (an nnU-Net channel suffix ``_0000`` on the image is ignored)
    root/label_names.csv       optional ``value,name`` side table naming the label values
    DICOM SEG objects          anywhere under root; paired with the series they reference
    DICOM overlays (60xx)      inside the image files; become the mask (outlines filled)
    root/boxes.csv             optional ``image,x_min,y_min,x_max,y_max,label`` box table (2-D)
    root/targets.csv           optional ``image,label`` classes (image = file stem, series UID,
                               or patient ID)

Example::

    ds = xaibench.create_dataset("medical_folder", root="ct_study", window="soft_tissue", size=64)
    for batch in ds:  # inputs (B, 1, D, H, W) for volumes, (B, 1, H, W) for 2-D images
        ...

Only headers are read up front; pixel data is read when a sample is asked for. Patient names
and IDs never reach ``ids`` or ``meta`` unless ``keep_phi=True``: they are replaced by a
stable hash (salted with ``phi_salt``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from xaibench import SampleDataset, register_dataset
from xaibench.data import files_fingerprint
from xaibench.errors import DataError

from . import dicom, nifti
from ._image_tools import box_of
from .box_table import boxes_to_mask, read_box_table

DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima")


@dataclass
class _Item:
    kind: str  # "nifti" | "dicom"
    key: str  # stem (nifti) or series UID (dicom)
    files: list[Path]
    shape: tuple[int, int, int]
    names: set[str] = field(default_factory=set)  # every name a table may use for it
    header: Any = None
    seg: list[Path] = field(default_factory=list)
    label_file: Path | None = None


def _strip_channel(stem: str) -> str:
    return stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem


def _read_csv(path: Path, cols: tuple[str, str]) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not set(cols) <= {c.strip() for c in rows[0]}:
        raise DataError(f"{path}: needs the columns {','.join(cols)}; got {list(rows[0]) if rows else 'no rows'}")
    return [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in rows]


@register_dataset("medical_folder")
class MedicalFolder(SampleDataset):
    """DICOM series / NIfTI volumes with label maps, SEG objects, overlays or box tables.

    Yields :class:`~xaibench.Batch` with ``inputs`` (B, 1, D, H, W) float (or (B, 1, H, W)
    when every image is a single slice), ``masks`` of the same spatial shape (bool) when the
    folder has any annotation, ``targets`` (B,) when ``targets.csv`` exists, ``ids``
    (pseudonymous for DICOM), ``boxes`` for 2-D images, and per-sample ``meta``: ``spacing``
    (mm, per axis), ``orientation`` (RAS codes the axes run towards), ``affine`` (voxel to RAS
    mm), ``units``, ``modality``, ``label_names``, ``source``.

    Raises:
        DataError: unreadable files (one line naming the file), label maps whose shape differs
            from their image, images of different shapes without ``size``.
    """

    class Settings(SampleDataset.Settings):
        root: str
        """The data folder (see the module docstring for the layout)."""
        images: str = "images"
        """Sub-folder of ``root`` holding the images (``root`` itself when it does not exist)."""
        labels: str = "labels"
        """Sub-folder of ``root`` holding NIfTI label maps named like their images."""
        mask_labels: tuple[int, ...] | None = None
        """Label values that form the ground-truth mask (default: every non-zero value)."""
        window: dicom.WindowName | tuple[float, float] = "none"
        """Intensity window mapped to [0, 1]: a preset (lung, soft_tissue, mediastinum, liver, brain,
        bone), ``"dicom"`` (the file's own), (centre, width) in real units, or ``"none"`` (real units)."""
        overlay: Literal["filled", "largest", "outline", "ignore"] = "filled"
        """How DICOM overlay planes become masks: outlines filled, only the largest filled region,
        the drawn pixels, or not used."""
        size: int | tuple[int, int] | tuple[int, int, int] | None = None
        """Resample every image (trilinear / bilinear) and mask (nearest) to this (D, H, W) or (H, W)
        shape; an int for every axis. None keeps the files' shapes (they must then agree)."""
        volume: int = 0
        """Which volume of a 4-D NIfTI file to read."""
        keep_phi: bool = False
        """Keep patient IDs, names and file paths in ids and meta (default: stable hashes)."""
        phi_salt: str = ""
        """Salt of the pseudonym hash (a secret salt stops re-identification by hashing known IDs)."""

    def __init__(self, n: int | None = None, batch_size: int = 4, seed: int = 0, split: str = "test", **params: Any):
        super().__init__(n=1, batch_size=batch_size, seed=seed, split=split, **params)
        s = self.settings
        root = Path(s.root).expanduser()
        if not root.is_dir():
            raise DataError(f"medical_folder: root {root} is not a folder")
        self.root = root
        self.images_dir = root / s.images if (root / s.images).is_dir() else root
        self.labels_dir = root / s.labels if (root / s.labels).is_dir() else None
        self.bounds = dicom.window_bounds(s.window if isinstance(s.window, str) else tuple(s.window),
                                          None, "medical_folder") if s.window != "dicom" else "dicom"
        self.items = self._index()
        if not self.items:
            raise DataError(f"medical_folder: no DICOM or NIfTI images under {self.images_dir}")
        self.label_names = self._label_names()
        self.box_table = read_box_table(root / "boxes.csv") if (root / "boxes.csv").exists() else None
        self.targets = self._targets()
        self.volumetric = any(it.shape[0] > 1 for it in self.items)
        self.has_masks = (self.labels_dir is not None or self.box_table is not None
                          or any(it.seg for it in self.items)
                          or (s.overlay != "ignore" and any(self._has_overlay(it) for it in self.items)))
        total = len(self.items)
        if n is not None and not 1 <= int(n) <= total:
            raise ValueError(f"medical_folder: n must lie in [1, {total}] ({total} images under {self.images_dir}), got {n}")
        self.n = total if n is None else int(n)

    # ------------------------------------------------------------------ index (headers only)
    def _index(self) -> list[_Item]:
        items: list[_Item] = []
        series: dict[str, _Item] = {}
        segs: list[tuple[Path, Any]] = []
        search = [self.images_dir] + ([self.labels_dir] if self.labels_dir else [])
        seen: set[Path] = set()
        for folder in search:
            for f in sorted(p for p in folder.rglob("*") if p.is_file()):
                if f in seen:
                    continue
                seen.add(f)
                in_labels = self.labels_dir is not None and self.labels_dir in f.parents
                if nifti.is_nifti(f):
                    if not in_labels:
                        h = nifti.read_header(f)
                        st = _strip_channel(nifti.stem(f))
                        items.append(_Item("nifti", st, [f], h["shape"], {st, nifti.stem(f), f.name}))
                    continue
                if f.suffix.lower() not in DICOM_SUFFIXES or f.name.startswith("."):
                    continue
                ds = dicom.read_header(f)
                modality = str(ds.get("Modality", ""))
                if modality == "SEG":
                    segs.append((f, ds))
                    continue
                if in_labels or modality in ("RTSTRUCT", "SR", "PR", "RTPLAN"):
                    continue
                uid = str(ds.get("SeriesInstanceUID", f))
                it = series.get(uid)
                frames = int(ds.get("NumberOfFrames", 1) or 1)
                if it is None:
                    it = series[uid] = _Item("dicom", uid, [], (0, int(ds.Rows), int(ds.Columns)), header=ds)
                    items.append(it)
                it.files.append(f)
                it.shape = (it.shape[0] + frames, it.shape[1], it.shape[2])
                it.names |= {f.name, f.stem, str(ds.get("SOPInstanceUID", "")), str(ds.get("PatientID", "")), uid}
        for f, ds in segs:
            refs = [str(r.SeriesInstanceUID) for r in ds.get("ReferencedSeriesSequence", [])]
            matched = [series[u] for u in refs if u in series]
            if not matched:
                raise DataError(f"{f}: DICOM SEG references series {refs}, none of which is under {self.images_dir}")
            for it in matched:
                it.seg.append(f)
        if self.labels_dir is not None:
            maps = {}
            for f in self.labels_dir.rglob("*"):
                if f.is_file() and nifti.is_nifti(f):
                    maps[_strip_channel(nifti.stem(f))] = f
            for it in items:
                if it.kind == "nifti" and it.key in maps:
                    it.label_file = maps[it.key]
        return items

    def _has_overlay(self, it: _Item) -> bool:
        return it.kind == "dicom" and bool(dicom.overlay_groups(it.header))

    def _label_names(self) -> dict[int, str]:
        path = self.root / "label_names.csv"
        if not path.exists():
            return {}
        rows = _read_csv(path, ("value", "name"))
        try:
            return {int(r["value"]): r["name"] for r in rows}
        except ValueError:
            raise DataError(f"{path}: the value column must hold integers") from None

    def _targets(self) -> list[int] | None:
        path = self.root / "targets.csv"
        if not path.exists():
            return None
        rows = _read_csv(path, ("image", "label"))
        table = {r["image"]: r["label"] for r in rows}
        names = sorted(set(table.values()), key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
        numeric = all(v.isdigit() for v in names)  # class indices as given, else names in sorted order
        self.classes = [str(i) for i in range(max(int(v) for v in names) + 1)] if numeric else names
        out = []
        for it in self.items:
            hit = [table[k] for k in sorted(it.names | {it.key}) if k in table]
            if not hit:
                who = it.key if it.kind == "nifti" or self.settings.keep_phi else dicom.phi_hash(it.key, self.settings.phi_salt)
                raise DataError(f"{path}: no row for image {who!r}; add one (image = file stem, series UID or patient ID)")
            out.append(self.classes.index(hit[0]) if not numeric else int(hit[0]))
        return out

    # ------------------------------------------------------------------ samples (pixel data read here)
    def _id(self, it: _Item, header: Any) -> tuple[str, str]:
        s = self.settings
        if it.kind == "nifti":
            rel = it.files[0].relative_to(self.root).as_posix()
            return it.key, rel
        ident = dicom.deidentified(header, s.keep_phi, s.phi_salt)
        src = it.files[0].parent.relative_to(self.root).as_posix()
        return f"{ident['patient']}/{ident['series']}", (src if s.keep_phi else dicom.phi_hash(src, s.phi_salt))

    def _mask_from_labels(self, lab: np.ndarray) -> np.ndarray:
        sel = self.settings.mask_labels
        return lab > 0 if sel is None else np.isin(lab, list(sel))

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        s = self.settings
        it = self.items[index]
        label_names = dict(self.label_names)
        mask = None
        boxes = None
        if it.kind == "nifti":
            arr, meta = nifti.read_volume(it.files[0], volume=s.volume)
            header = None
            if it.label_file is not None:
                lab, _ = nifti.read_volume(it.label_file, labels=True)
                if lab.shape != arr.shape:
                    raise DataError(f"{it.label_file}: label map shape {lab.shape} differs from image {it.files[0]} "
                                    f"shape {arr.shape} (both after reorientation to RAS)")
                mask = self._mask_from_labels(lab)
            if self.bounds == "dicom":
                raise DataError(f"{it.files[0]}: window='dicom' takes the window a DICOM file declares; this is NIfTI. "
                                "Use a preset (soft_tissue, lung, ...) or (centre, width)")
            bounds = self.bounds
        else:
            arr, meta, dsets = dicom.read_series(it.files)
            header = dsets[0]
            masks = []
            for seg in it.seg:
                lab, names = dicom.read_seg(seg, dsets)
                label_names.update({k: v for k, v in names.items() if k not in label_names})
                masks.append(self._mask_from_labels(lab))
            if s.overlay != "ignore" and any(dicom.overlay_groups(d) for d in dsets):
                masks.append(np.stack([dicom.overlay_masks(d, mode=s.overlay, path=getattr(d, "filename", f))
                                       if dicom.overlay_groups(d) else np.zeros(arr.shape[1:], bool)
                                       for d, f in zip(dsets, it.files)]))
            if self.box_table is not None and arr.shape[0] == 1:
                hit = [self.box_table[k] for k in sorted(it.names) if k in self.box_table]
                if hit:
                    boxes = hit[0][0]
                    masks.append(boxes_to_mask(boxes, arr.shape[1:])[None])
            if masks:
                mask = np.logical_or.reduce(masks)
            bounds = dicom.window_bounds(s.window, header, "medical_folder") if self.bounds == "dicom" else self.bounds
        x = dicom.apply_window(arr, bounds)
        if mask is None and self.has_masks:
            mask = np.zeros(arr.shape, bool)
        sid, source = self._id(it, header)
        x_t, mask_t, boxes = self._resize(torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                                          None if mask is None else torch.from_numpy(mask), boxes, meta)
        sample: dict[str, Any] = {"inputs": x_t[None] if self.volumetric else x_t[0][None], "ids": sid}
        if self.targets is not None:
            sample["targets"] = self.targets[index]
        if mask_t is not None:
            sample["masks"] = mask_t if self.volumetric else mask_t[0]
            if not self.volumetric:
                sample["boxes"] = (torch.from_numpy(boxes) if boxes is not None
                                   else torch.from_numpy(box_of(mask_t[0].numpy())))
        sample.update(spacing=tuple(float(v) for v in meta["spacing"]), orientation=meta["orientation"],
                      affine=np.asarray(meta["affine"], float), units=meta.get("units", "stored"),
                      modality=meta.get("modality", ""), label_names=label_names, source=source,
                      window=None if bounds is None else tuple(bounds))
        return sample

    def _resize(self, x: torch.Tensor, mask: torch.Tensor | None, boxes: np.ndarray | None,
                meta: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray | None]:
        size = self.settings.size
        if size is None:
            return x, mask, boxes
        if isinstance(size, int):
            target = (size, size, size) if self.volumetric else (1, size, size)
        elif len(size) == 2:
            target = (x.shape[0] if self.volumetric else 1, *size)
        else:
            target = tuple(size)
        if tuple(x.shape) == target:
            return x, mask, boxes
        scale = [o / t for o, t in zip(x.shape, target)]
        meta["spacing"] = tuple(float(sp) * sc for sp, sc in zip(meta["spacing"], scale))
        aff = np.array(meta["affine"], float)
        aff[:3, :3] = aff[:3, :3] * np.asarray(scale)[None]
        meta["affine"] = aff
        x = F.interpolate(x[None, None], size=target, mode="trilinear", align_corners=False)[0, 0]
        if mask is not None:
            mask = F.interpolate(mask[None, None].float(), size=target, mode="nearest")[0, 0] > 0.5
        if boxes is not None:
            sy, sx = 1 / scale[1], 1 / scale[2]
            boxes = boxes * np.array([sx, sy, sx, sy], np.float32)
        return x, mask, boxes

    def collate(self, samples: list[dict[str, Any]]):
        shapes = {tuple(s["inputs"].shape) for s in samples}
        if len(shapes) > 1:
            raise DataError(f"medical_folder: images of different shapes {sorted(shapes)} cannot be batched; pass size=")
        return super().collate(samples)

    def fingerprint(self) -> str:
        """A digest of every image, label map and SEG file read (names, sizes, modification times)."""
        return files_fingerprint(f for it in self.items for f in it.files + it.seg + ([it.label_file] if it.label_file else []))
