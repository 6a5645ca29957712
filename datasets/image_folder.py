"""``image_folder``: a user's own labelled images with masks or boxes, as xaibench Batches.

Layouts (``root`` is the folder you pass; if ``root/<split>/images`` exists, that split is used):

    root/images/<class>/<stem>.png          class from the sub-folder name, or
    root/images/<stem>.png + root/labels.csv   flat, with a CSV ``image,label`` (label = class
                                               name or index; ``image`` = file name or stem)
    root/masks/<class>/<stem>.png           optional per-image masks (any non-zero pixel = region;
    root/masks/<stem>.png                    same layout as images, any image extension)
    root/annotations.json                   optional COCO-style boxes (``images[].file_name``
                                               relative to ``images/``, ``annotations[].bbox`` =
                                               [x, y, w, h] in pixels); boxes become masks too
                                               when an image has no mask file

2-D DICOM files (``.dcm``, ``.dicom``: radiographs, single CT/MR slices) are images too: pixels
in real units (rescale slope/intercept, MONOCHROME1 inverted), mapped to [0, 1] through
``window`` (the file's own window, a preset such as ``lung``, or min-max), grey repeated to
``channels``. NIfTI files and multi-frame DICOMs are volumes: they raise an error pointing to
``medical_folder``, which reads volumes, series and their label maps.

Example::

    ds = xaibench.create_dataset("image_folder", root="my_data", size=224, batch_size=8)
    for batch in ds:  # Batch(inputs (B, 3, 224, 224), targets, masks, boxes, ids)
        ...

In a benchmark TOML: ``datasets = [{name="image_folder", params={root="my_data", size=224}}]``.
Images are read one at a time when a sample is asked for; only the file list is built up front.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from xaibench import SampleDataset, register_dataset
from xaibench.data import files_fingerprint

from ._image_tools import box_of

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: 2-D DICOM images, read with pydicom (volumes go to ``medical_folder``).
DICOM_EXTENSIONS = (".dcm", ".dicom")
#: Volumes image_folder refuses with a pointer to ``medical_folder``.
VOLUME_EXTENSIONS = (".nii", ".nii.gz")


_Side = Annotated[int, Field(gt=0)]


def _images_under(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(extensions))


def _to_medical_folder(what: str, root: Path) -> str:
    return (f"{what}; image_folder reads 2-D images (PNG/JPEG/TIFF/BMP and single-frame DICOM). For volumes use "
            f"medical_folder, which also pairs them with label maps: "
            f"create_dataset(\"medical_folder\", root=\"{root.parent if root.name == 'images' else root}\")")


@register_dataset("image_folder")
class ImageFolder(SampleDataset):
    """Images from a folder with class labels and optional ground-truth masks / COCO boxes.

    Args:
        n: number of images (default: all of them, in sorted path order).

    Yields :class:`~xaibench.Batch` with ``inputs`` (B, C, h, w) float, ``targets`` (B,),
    ``masks`` (B, h, w) bool when masks or boxes exist, ``boxes`` (a (k, 4) tensor
    ``x0, y0, x1, y1`` per sample, in resized pixels), ``ids`` (paths relative to
    ``images/``), ``meta["path"]`` and ``meta["orig_size"]``.

    Raises:
        ValueError: missing folder, no images, unlabelled images, unknown class names,
            masks that are missing or of a different size than their image, boxes for
            unknown images.
    """

    class Settings(SampleDataset.Settings):
        root: str | Path | None = None
        """The data folder (see the module docstring for the layouts). Required."""
        size: _Side | tuple[_Side, _Side] | None = None
        """Resize every image (and mask, nearest) to ``size`` (int or (h, w)); None keeps the
        files' sizes (they must then all be equal to be batched)."""
        channels: Literal[1, 3] = 3
        """3 (RGB) or 1 (grey)."""
        classes: tuple[str, ...] | None = None
        """Class names in label order; None = the sorted sub-folder / CSV names."""
        labels: str | Path | None = None
        """CSV path for the flat layout; None = ``root/labels.csv``."""
        boxes: str | Path | None = None
        """COCO JSON path; None = ``root/annotations.json`` when it exists."""
        mean: float | tuple[float, ...] | None = None
        """Per-channel mean subtracted after scaling to [0, 1] (one value or one per channel); None = no normalisation."""
        std: float | tuple[float, ...] | None = None
        """Per-channel std the images are divided by after subtracting ``mean``; None = 1."""
        missing_masks: Literal["error", "empty"] = "error"
        """When a masks folder exists but an image has no mask and no box: ``"error"``, or
        ``"empty"`` (an all-False mask; metrics then score NaN)."""
        window: Literal["auto", "minmax", "dicom", "lung", "soft_tissue", "mediastinum", "liver", "brain", "bone"] | \
            tuple[float, float] = "auto"
        """DICOM images only: values (real units) to [0, 1]. ``auto`` = the file's own window when it
        declares one, else min-max of the image; ``minmax``; ``dicom`` = the file's window (an error
        when it has none); a preset (HU); or (centre, width)."""

    def __init__(self, n: int | None = None, batch_size: int = 16, seed: int = 0, split: str = "test", **params: Any):
        super().__init__(n=1, batch_size=batch_size, seed=seed, split=split, **params)
        p = self.settings
        if p.root is None:
            raise ValueError("image_folder: root= is required (a folder holding images/ and optionally masks/)")
        root = Path(p.root).expanduser()
        if (root / split / "images").is_dir():
            root = root / split
        self.root, self.images_dir = root, root / "images"
        if not self.images_dir.is_dir():
            raise ValueError(f"image_folder: expected a folder {self.images_dir} with images (or <class>/ sub-folders); not found")
        volumes = _images_under(self.images_dir, VOLUME_EXTENSIONS)
        if volumes:
            raise ValueError(_to_medical_folder(f"image_folder: {len(volumes)} NIfTI volume(s) under {self.images_dir} "
                                                f"(e.g. {volumes[0].name})", self.images_dir))
        self.files = _images_under(self.images_dir, EXTENSIONS + DICOM_EXTENSIONS)
        if not self.files:
            raise ValueError(f"image_folder: no images ({', '.join(EXTENSIONS + DICOM_EXTENSIONS)}) under {self.images_dir}")
        self.classes, self.labels = self._read_labels()
        self.boxes = self._read_boxes()
        self.masks_dir = root / "masks" if (root / "masks").is_dir() else None
        total = len(self.files)
        if n is not None and not 1 <= int(n) <= total:
            raise ValueError(f"image_folder: n must lie in [1, {total}] ({total} images under {self.images_dir}), got {n}")
        self.n = total if n is None else int(n)

    def fingerprint(self) -> str:
        """Names, sizes and mtimes of every file read: images, masks, the labels CSV, the boxes JSON."""
        extra = [p for p in (self.root / "labels.csv", self.root / "annotations.json",
                             Path(self.settings.labels) if self.settings.labels else None,
                             Path(self.settings.boxes) if self.settings.boxes else None) if p is not None]
        masks = sorted(self.masks_dir.rglob("*")) if self.masks_dir is not None else []
        return files_fingerprint([*self.files[: self.n], *masks, *extra])

    # ------------------------------------------------------------------ indexing
    def _rel(self, path: Path) -> str:
        return path.relative_to(self.images_dir).as_posix()

    def _read_labels(self) -> tuple[list[str], list[int]]:
        p = self.settings
        nested = all(len(Path(self._rel(f)).parts) > 1 for f in self.files)
        if nested:
            names = [Path(self._rel(f)).parts[0] for f in self.files]
        else:
            csv_path = Path(p.labels) if p.labels else self.root / "labels.csv"
            if not csv_path.exists():
                raise ValueError(f"image_folder: images lie directly in {self.images_dir} but there is no labels CSV "
                                 f"({csv_path}); add one with columns image,label or use images/<class>/ folders")
            with open(csv_path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            if not rows or not {"image", "label"} <= set(rows[0]):
                raise ValueError(f"image_folder: {csv_path} needs the columns image,label; got {list(rows[0]) if rows else 'no rows'}")
            table = {}
            for r in rows:
                table[r["image"]] = table[Path(r["image"]).stem] = r["label"].strip()
            missing = [self._rel(f) for f in self.files if self._rel(f) not in table and f.stem not in table]
            if missing:
                raise ValueError(f"image_folder: {len(missing)} image(s) have no row in {csv_path}, e.g. {missing[:3]}")
            names = [table.get(self._rel(f), table.get(f.stem)) for f in self.files]
        classes = list(p.classes) if p.classes else sorted(set(names), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
        index = {c: i for i, c in enumerate(classes)}
        bad = sorted({s for s in names if s not in index and not (s.isdigit() and int(s) < len(classes))})
        if bad:
            raise ValueError(f"image_folder: labels {bad} are not among classes {classes}")
        return classes, [index[s] if s in index else int(s) for s in names]

    def _read_boxes(self) -> dict[str, np.ndarray] | None:
        path = Path(self.settings.boxes) if self.settings.boxes else self.root / "annotations.json"
        if not path.exists():
            if self.settings.boxes:
                raise ValueError(f"image_folder: boxes file {path} not found")
            return None
        coco = json.loads(path.read_text())
        if not {"images", "annotations"} <= set(coco):
            raise ValueError(f"image_folder: {path} is not COCO-style (needs 'images' and 'annotations')")
        known = {self._rel(f) for f in self.files} | {f.name for f in self.files}
        by_id = {}
        for im in coco["images"]:
            if im["file_name"] not in known:
                raise ValueError(f"image_folder: {path} lists image {im['file_name']!r}, which is not under {self.images_dir}")
            by_id[im["id"]] = im["file_name"]
        out: dict[str, list] = {}
        for a in coco["annotations"]:
            if a["image_id"] not in by_id:
                raise ValueError(f"image_folder: {path}: annotation for unknown image_id {a['image_id']!r}")
            x, y, w, h = (float(v) for v in a["bbox"])
            out.setdefault(by_id[a["image_id"]], []).append([x, y, x + w, y + h])
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def _mask_file(self, image: Path) -> Path | None:
        rel = Path(self._rel(image))
        for ext in EXTENSIONS:
            cand = self.masks_dir / rel.with_suffix(ext)  # type: ignore[operator]
            if cand.exists():
                return cand
        return None

    # ------------------------------------------------------------------ samples
    def _size(self, orig: tuple[int, int]) -> tuple[int, int]:
        s = self.settings.size
        if s is None:
            return orig
        return (s, s) if isinstance(s, int) else (s[0], s[1])

    def _read_dicom(self, f: Path) -> np.ndarray:
        """A single-frame DICOM image as (H, W) float32 in [0, 1] (see ``window``)."""
        from . import dicom

        ds = dicom.read_full(f)
        values, _ = dicom.pixels(ds, f)
        if values.shape[0] != 1:
            raise ValueError(_to_medical_folder(f"image_folder: {f} is a multi-frame DICOM ({values.shape[0]} frames)",
                                                self.images_dir))
        img = values[0]
        win = self.settings.window
        if win == "auto":
            win = "dicom" if dicom.file_window(ds) is not None else "minmax"
        if win == "minmax":
            lo, hi = float(img.min()), float(img.max())
            return ((img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)).astype(np.float32)
        return dicom.apply_window(img, dicom.window_bounds(win, ds, f"image_folder: {f}"))

    def _read_image(self, f: Path) -> tuple[torch.Tensor, tuple[int, int]]:
        """(C, h, w) float32 in [0, 1] resized to ``size`` (PIL bilinear), and the file's (H, W)."""
        from PIL import Image

        if f.name.lower().endswith(DICOM_EXTENSIONS):
            grey = self._read_dicom(f)
            h0, w0 = grey.shape
            h, w = self._size((h0, w0))
            if (h, w) != (h0, w0):
                grey = np.array(Image.fromarray(grey).resize((w, h), Image.BILINEAR), dtype=np.float32)
            return torch.from_numpy(grey)[None].repeat(self.settings.channels, 1, 1), (h0, w0)
        with Image.open(f) as im:
            img = im.convert("RGB" if self.settings.channels == 3 else "L")
        w0, h0 = img.size
        h, w = self._size((h0, w0))
        arr = np.asarray(img.resize((w, h), Image.BILINEAR) if (h, w) != (h0, w0) else img, dtype=np.float32) / 255.0
        return torch.from_numpy(arr.reshape(h, w, -1)).permute(2, 0, 1).contiguous(), (h0, w0)

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        f = self.files[index]
        rel = self._rel(f)
        x, (h0, w0) = self._read_image(f)
        h, w = x.shape[1:]
        if self.settings.mean is not None:
            mean = torch.tensor(self.settings.mean, dtype=torch.float32).reshape(-1, 1, 1)
            std = torch.tensor(self.settings.std or 1.0, dtype=torch.float32).reshape(-1, 1, 1)
            x = (x - mean) / std
        sy, sx = h / h0, w / w0
        boxes = None
        if self.boxes is not None:
            b = self.boxes.get(rel, self.boxes.get(f.name, np.zeros((0, 4), np.float32)))
            boxes = torch.from_numpy(b * np.array([sx, sy, sx, sy], dtype=np.float32))
        mask = self._mask(f, rel, (h0, w0), (h, w), boxes)
        sample = {"inputs": x, "targets": self.labels[index], "ids": rel, "path": str(f), "orig_size": (h0, w0)}
        if mask is not None:
            sample["masks"] = mask
        if boxes is not None or mask is not None:
            sample["boxes"] = boxes if boxes is not None else torch.from_numpy(box_of(mask.numpy()))
        return sample

    def _mask(self, f: Path, rel: str, orig: tuple[int, int], size: tuple[int, int], boxes: torch.Tensor | None) -> torch.Tensor | None:
        from PIL import Image

        mf = self._mask_file(f) if self.masks_dir is not None else None
        if mf is not None:
            with Image.open(mf) as m:
                if (m.size[1], m.size[0]) != orig:
                    raise ValueError(f"image_folder: mask {mf} is {m.size[1]}x{m.size[0]} but image {f} is "
                                     f"{orig[0]}x{orig[1]}; masks must have their image's size")
                m = m.convert("L")
                if size != orig:
                    m = m.resize((size[1], size[0]), Image.NEAREST)
                return torch.from_numpy(np.asarray(m) > 0)
        if boxes is not None:
            mask = torch.zeros(size, dtype=torch.bool)
            for x0, y0, x1, y1 in boxes.tolist():
                mask[max(0, int(np.floor(y0))):int(np.ceil(y1)), max(0, int(np.floor(x0))):int(np.ceil(x1))] = True
            return mask
        if self.masks_dir is not None:
            if self.settings.missing_masks == "error":
                raise ValueError(f"image_folder: no mask for {rel} under {self.masks_dir} (expected the same relative "
                                 "path with an image extension); add it, or pass missing_masks='empty'")
            return torch.zeros(size, dtype=torch.bool)
        return None

    def collate(self, samples: list[dict[str, Any]]):
        shapes = {tuple(s["inputs"].shape) for s in samples}
        if len(shapes) > 1:
            raise ValueError(f"image_folder: images of different sizes {sorted(shapes)} cannot be batched; pass size=")
        return super().collate(samples)

