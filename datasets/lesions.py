"""Synthetic medical-style lesion images with exact masks and boxes (a localisation sanity benchmark).

Each image is a textured tissue-like background with one lesion and a few small
distractor spots. The class is the lesion type: 0 = bright, round, smooth-edged;
1 = dark, irregular (lobulated) border. Lesion size, contrast and position vary, and the
distractors are too small to be lesions, so a classifier must look at the lesion. The
mask is exactly the lesion's pixels and the box its bounding box.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from xaibench import SampleDataset, register_dataset

from ._image_tools import box_of, grid, texture, to_rgb


@register_dataset("lesions")
class Lesions(SampleDataset):
    """Lesion-type classification (2 classes: bright round vs dark irregular), 3×size×size images in [0, 1].

    Yields :class:`~xaibench.Batch` with ``inputs`` (B, 3, size, size), ``targets`` (B,),
    ``masks`` (B, size, size) bool, ``boxes`` (a (1, 4) tensor per sample), ``ids``.
    """

    class Settings(SampleDataset.Settings):
        size: Annotated[int, Field(gt=0)] = 64
        """Image side in pixels."""
        radius: tuple[float, float] = (0.07, 0.16)
        """(min, max) lesion radius as a fraction of the side."""
        contrast: tuple[float, float] = (0.12, 0.3)
        """(min, max) lesion contrast against the background."""
        distractors: tuple[int, int] = (2, 6)
        """(min, max) number of small distractor spots."""

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        p = self.settings
        s = p.size
        img = texture(rng, s)
        yy, xx = grid(s)
        # distractors: small round spots of either polarity
        for _ in range(int(rng.integers(p.distractors[0], p.distractors[1] + 1))):
            r = rng.uniform(0.015, 0.03) * s
            cy, cx = rng.uniform(r, s - r, 2)
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            img += rng.choice([-1, 1]) * rng.uniform(0.08, 0.2) * np.clip(1.5 - d / r, 0, 1)
        cls = int(rng.integers(2))
        r = rng.uniform(*p.radius) * s
        contrast = rng.uniform(*p.contrast)
        margin = r * 1.3 + 1
        cy, cx = rng.uniform(margin, s - margin, 2)
        theta = np.arctan2(yy - cy, xx - cx)
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        if cls == 0:
            stretch = rng.uniform(0.8, 1.2)
            rad = r * (1 + (stretch - 1) * np.cos(2 * (theta - rng.uniform(0, np.pi))))
            mask = dist <= rad
            profile = np.clip(1.2 - (dist / rad) ** 2, 0, 1)  # smooth dome
            img += contrast * profile * mask
        else:
            k = int(rng.integers(3, 7))
            rad = r * (1 + 0.28 * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
                       + 0.1 * np.sin((k + 2) * theta + rng.uniform(0, 2 * np.pi)))
            mask = dist <= rad
            img -= contrast * mask * (0.8 + 0.2 * rng.random((s, s)))
        tint = rng.uniform(0.85, 1.15, 3)
        return {
            "inputs": to_rgb(img, tint), "targets": cls, "masks": mask,
            "boxes": torch.from_numpy(box_of(mask)),
            "ids": f"lesions/{self.split}/{self.seed}/{index}",
            "lesion_radius": float(r), "contrast": float(contrast),
        }
