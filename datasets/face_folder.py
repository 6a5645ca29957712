"""``face_folder``: a user's own face images (``images/<class>/*.png``) with optional region
masks and landmark files, as xaibench Batches.

It is :class:`~xaibench.datasets.image_folder.ImageFolder` (same layouts, masks, boxes,
resizing) plus landmarks::

    root/images/<class>/<stem>.png
    root/masks/<class>/<stem>.png          optional: the regions that define the class
    root/landmarks/<class>/<stem>.json     optional: [[x, y], ...] in the image's own pixels
    root/landmarks/<class>/<stem>.txt      (or .csv): one "x y" / "x,y" pair per line

Landmarks are rescaled with the image and returned in ``meta["landmarks"]`` (B, K, 2), so
:func:`xaibench.adapters.cnn.analyses.align` can build composite faces (give the eyes and
mouth indices as ``points``). When an image has no mask file, ``landmark_radius`` > 0 makes
its mask from disks of that radius (resized pixels) around its landmarks, e.g. when the
landmarks mark the dysmorphic features.

Example::

    ds = xaibench.create_dataset("face_folder", root="my_faces", size=64, landmark_radius=6)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from xaibench import Batch, register_dataset

from .image_folder import ImageFolder

LANDMARK_EXTENSIONS = (".json", ".txt", ".csv")


def read_landmarks(path: Path) -> np.ndarray:
    """(K, 2) float32 x, y from a JSON list of pairs or a text file of "x y" / "x,y" lines."""
    if path.suffix == ".json":
        pts = json.loads(path.read_text())
        if isinstance(pts, dict):
            pts = list(pts.values())
    else:
        pts = [line.replace(",", " ").split() for line in path.read_text().splitlines() if line.strip()]
    arr = np.asarray(pts, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"face_folder: {path} must hold (x, y) pairs, one per landmark; got shape {arr.shape}")
    return arr


@register_dataset("face_folder")
class FaceFolder(ImageFolder):
    """Face images with class folders, optional masks and optional landmarks.

    Yields what ``image_folder`` yields, plus ``meta["landmarks"]`` (B, K, 2) in resized
    pixels when landmark files exist (every image needs one, all with the same K).
    """

    class Settings(ImageFolder.Settings):
        landmarks: str | Path | None = None
        """Folder of landmark files; None = ``root/landmarks`` when it exists."""
        landmark_radius: Annotated[float, Field(ge=0)] = 0.0
        """Radius in pixels of the disks that make a mask from the landmarks when an image has
        no mask file (0 = off)."""

    def __init__(self, n: int | None = None, batch_size: int = 16, seed: int = 0, split: str = "test", **params: Any):
        super().__init__(n=n, batch_size=batch_size, seed=seed, split=split, **params)
        radius = self.settings.landmark_radius
        lm = self.settings.landmarks
        folder = Path(lm) if lm else self.root / "landmarks"
        self.landmarks_dir = folder if folder.is_dir() else None
        if lm and self.landmarks_dir is None:
            raise ValueError(f"face_folder: landmarks folder {folder} not found")
        if radius > 0 and self.landmarks_dir is None:
            raise ValueError("face_folder: landmark_radius > 0 needs landmark files (root/landmarks/<class>/<stem>.json)")
        self.radius = radius

    def _landmark_file(self, image: Path) -> Path:
        rel = Path(self._rel(image))
        for ext in LANDMARK_EXTENSIONS:
            cand = self.landmarks_dir / rel.with_suffix(ext)  # type: ignore[operator]
            if cand.exists():
                return cand
        raise ValueError(f"face_folder: no landmark file for {rel} under {self.landmarks_dir} "
                         f"(expected the same relative path with one of {LANDMARK_EXTENSIONS})")

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        sample = super().make_sample(rng, index)
        if self.landmarks_dir is None:
            return sample
        h0, w0 = sample["orig_size"]
        h, w = sample["inputs"].shape[-2:]
        pts = read_landmarks(self._landmark_file(self.files[index])) * np.array([w / w0, h / h0], dtype=np.float32)
        sample["landmarks"] = torch.from_numpy(pts)
        if self.radius > 0 and self._mask_file_or_none(self.files[index]) is None:
            yy, xx = np.mgrid[0:h, 0:w] + 0.5
            d2 = (xx[None] - pts[:, 0, None, None]) ** 2 + (yy[None] - pts[:, 1, None, None]) ** 2
            sample["masks"] = torch.from_numpy((d2 < self.radius**2).any(0))
        return sample

    def _mask_file_or_none(self, image: Path) -> Path | None:
        return self._mask_file(image) if self.masks_dir is not None else None

    def _mask(self, f: Path, rel: str, orig: tuple[int, int], size: tuple[int, int], boxes: Any) -> Any:
        if self.radius > 0 and (self.masks_dir is None or self._mask_file(f) is None) and boxes is None:
            return None  # made from the landmarks in make_sample
        return super()._mask(f, rel, orig, size, boxes)

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        batch = super().collate(samples)
        if "landmarks" in batch.meta:
            shapes = {tuple(v.shape) for v in batch.meta["landmarks"]}
            if len(shapes) > 1:
                raise ValueError(f"face_folder: landmark files hold different numbers of points {sorted(shapes)}")
            batch.meta["landmarks"] = torch.stack(batch.meta["landmarks"])
        return batch
