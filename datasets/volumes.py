"""Synthetic CT-like volumes with exact 3-D ground truth (``volume_lesions``).

Each sample is a size³ volume in Hounsfield units: air (-1000 HU) around an ellipsoidal body
of soft tissue (~40 HU, smooth texture and grain), with fat pockets (-100 HU) and a few small
calcifications (+400 HU) as distractors, and one lesion. The class is the lesion type:
0 = hyperdense (enhancing, +40…+90 HU over tissue) and round; 1 = hypodense (-40…-90 HU) with
a lobulated border. The mask is exactly the lesion's voxels. The lesion's contrast is small
next to the air/bone range, so the intensity window matters: under ``soft_tissue`` it spans
a tenth of [0, 1], over the full HU range about a hundredth.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaibench import SampleDataset, register_dataset

from .dicom import WindowName, apply_window, window_bounds


def smooth_noise_3d(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random cells³ grid upsampled trilinearly to size³."""
    low = torch.from_numpy(rng.uniform(-1, 1, (1, 1, cells, cells, cells))).float()
    return F.interpolate(low, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()


@functools.lru_cache(maxsize=4)
def _body(s: int) -> np.ndarray:
    zz, yy, xx = np.mgrid[0:s, 0:s, 0:s].astype(np.float32) + np.float32(0.5)
    c = s / 2
    body = ((zz - c) / (0.62 * s)) ** 2 + ((yy - c) / (0.44 * s)) ** 2 + ((xx - c) / (0.48 * s)) ** 2 <= 1.0
    body.setflags(write=False)
    return body


def _around(p: np.ndarray, extent: float, s: int) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Slices of the cube around ``p`` (half side ``extent``) and voxel-centre offsets from ``p``."""
    lo = [max(0, int(np.floor(q - extent))) for q in p]
    hi = [min(s, int(np.ceil(q + extent)) + 1) for q in p]
    dz, dy, dx = np.meshgrid(*[np.arange(a, b, dtype=np.float32) + np.float32(0.5 - q) for a, b, q in zip(lo, hi, p)],
                             indexing="ij")
    return tuple(slice(a, b) for a, b in zip(lo, hi)), dz, dy, dx


def hu_volume(rng: np.random.Generator, size: int, cls: int, radius: tuple[float, float],
              contrast: tuple[float, float], distractors: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(size³ HU volume float32, size³ bool lesion mask, lesion parameters)."""
    s = size
    c = s / 2
    body = _body(s)
    grain = rng.standard_normal((s, s, s), dtype=np.float32)
    tissue = 40 + 18 * smooth_noise_3d(rng, s, 4) + 8 * smooth_noise_3d(rng, s, 9) + 6 * grain
    vol = np.where(body, tissue, -1000 + 5 * grain).astype(np.float32)
    # distractors: fat pockets and calcifications, too small or too extreme to be lesions
    for _ in range(int(rng.integers(distractors[0], distractors[1] + 1))):
        r = rng.uniform(0.03, 0.06) * s
        p = c + rng.uniform(-0.3, 0.3, 3) * s
        sl, dz, dy, dx = _around(p, r, s)
        d2 = dz**2 + dy**2 + dx**2
        if rng.random() < 0.5:
            vol[sl] = np.where((d2 <= r * r) & body[sl], -100 + 10 * grain[sl], vol[sl])
        else:
            vol[sl] = np.where((d2 <= 0.25 * r * r) & body[sl], np.float32(400.0), vol[sl])
    r = rng.uniform(*radius) * s
    dhu = rng.uniform(*contrast)
    p = c + rng.uniform(-0.22, 0.22, 3) * s
    sl, dz, dy, dx = _around(p, 1.5 * r, s)
    dist = np.sqrt(dz**2 + dy**2 + dx**2)
    mask = np.zeros((s, s, s), bool)
    if cls == 0:
        axes = rng.uniform(0.85, 1.15, 3)
        dist_e = np.sqrt((dz / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dx / axes[2]) ** 2)
        m = (dist_e <= r) & body[sl]
        vol[sl] += dhu * m * np.clip(1.3 - (dist_e / r) ** 2, 0, 1)
    else:
        theta = np.arctan2(dy, dx)
        phi = np.arccos(np.clip(dz / np.maximum(dist, 1e-6), -1, 1))
        k = int(rng.integers(3, 6))
        rad = r * (1 + 0.25 * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) * np.sin(phi)
                   + 0.12 * np.cos((k - 1) * phi + rng.uniform(0, 2 * np.pi)))
        m = (dist <= rad) & body[sl]
        vol[sl] -= dhu * m * (0.85 + 0.15 * rng.random(m.shape, dtype=np.float32))
    mask[sl] = m
    return vol, mask, {"lesion_radius": float(r), "contrast_hu": float(dhu)}


@register_dataset("volume_lesions")
class VolumeLesions(SampleDataset):
    """Lesion-type classification on CT-like volumes, inputs (1, size, size, size).

    Yields :class:`~xaibench.Batch` with ``inputs`` (B, 1, D, H, W) (windowed to [0, 1], or HU
    under ``window="none"``), ``targets`` (B,), ``masks`` (B, D, H, W) bool (exactly the
    lesion), ``ids`` and ``meta`` with ``spacing`` (1 mm isotropic), ``lesion_radius`` and
    ``contrast_hu``.
    """

    class Settings(SampleDataset.Settings):
        size: int = 32
        """Side of the cubic volume in voxels."""
        window: WindowName | tuple[float, float] = "soft_tissue"
        """Intensity window mapped to [0, 1] (a preset or (centre, width) in HU); ``"none"`` keeps HU."""
        radius: tuple[float, float] = (0.09, 0.16)
        """(min, max) lesion radius as a fraction of the side."""
        contrast: tuple[float, float] = (40.0, 90.0)
        """(min, max) lesion contrast against the tissue in HU."""
        distractors: tuple[int, int] = (2, 5)
        """(min, max) number of fat pockets and calcifications."""

    def __init__(self, n: int = 64, batch_size: int = 16, seed: int = 0, split: str = "test", **params: Any):
        super().__init__(n=n, batch_size=batch_size, seed=seed, split=split, **params)
        s = self.settings
        if s.size < 8:
            raise ValueError(f"volume_lesions: size must be >= 8, got {s.size}")
        if s.window == "dicom":
            raise ValueError("volume_lesions: window='dicom' needs a DICOM file; use a preset or (centre, width)")
        self.bounds = window_bounds(s.window if isinstance(s.window, str) else tuple(s.window), None, "volume_lesions")

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        s = self.settings
        cls = int(rng.integers(2))
        vol, mask, info = hu_volume(rng, s.size, cls, s.radius, s.contrast, s.distractors)
        return {"inputs": apply_window(vol, self.bounds)[None], "targets": cls, "masks": mask,
                "ids": f"volume_lesions/{self.split}/{self.seed}/{index}", "spacing": (1.0, 1.0, 1.0), **info}
