"""Shared drawing helpers for synthetic image datasets (numpy, per sample)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random ``cells``×``cells`` grid upsampled bicubically."""
    low = torch.from_numpy(rng.uniform(-1, 1, (1, 1, cells, cells))).float()
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[0, 0].clamp(-1, 1).numpy()


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A tissue-like background in [0, 1]: octaves of smooth noise plus fine grain."""
    img = 0.5 + 0.12 * smooth_noise(rng, size, 4) + 0.06 * smooth_noise(rng, size, 9) + 0.03 * smooth_noise(rng, size, 21)
    img += 0.015 * rng.standard_normal((size, size))
    return img


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return yy, xx


def box_of(mask: np.ndarray) -> np.ndarray:
    """(1, 4) box x0, y0, x1, y1 (exclusive end) of a mask; (0, 4) when empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float32)


def to_rgb(gray: np.ndarray, tint: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (3, H, W) float32 with a per-image colour tint."""
    return np.clip(gray[None] * tint[:, None, None], 0, 1).astype(np.float32)
