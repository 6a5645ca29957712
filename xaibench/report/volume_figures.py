"""Report figure of ``voxel`` maps: the three orthogonal planes through each map's maximum.

For every (study, dataset, model) whose saved examples hold voxel attributions (B, D, H, W) of
volume inputs (B, C, D, H, W): the first samples, one row per plane (axial = a D slice,
coronal = an H slice, sagittal = a W slice), the input with the mask outline in the first
column (planes through the mask's centre, or the volume's centre without a mask), then every
method's map over the input in the planes through *that map's* maximum (a cross marks it).
Maps are min-max scaled per panel for display only; the scores never see that scaling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..store import load_examples
from .figures import figure_path, register_figure, save
from .mosaic import grid_figure, panel

PLANES = ("axial", "coronal", "sagittal")


def planes_through(volume: np.ndarray, point: tuple[int, int, int]) -> list[np.ndarray]:
    """The axial (H, W), coronal (D, W) and sagittal (D, H) planes of a (D, H, W) array through ``point``."""
    d, h, w = point
    return [volume[d], volume[:, h, :], volume[:, :, w]]


def argmax3(volume: np.ndarray) -> tuple[int, int, int]:
    """(d, h, w) of the maximum of a (D, H, W) array (the first in raster order when tied)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(volume)), volume.shape))  # type: ignore[return-value]


def _centre(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if mask is not None and mask.any():
        return tuple(round(float(c.mean())) for c in np.nonzero(mask))  # type: ignore[return-value]
    return tuple(s // 2 for s in shape)  # type: ignore[return-value]


def _display(x: torch.Tensor) -> np.ndarray:
    a = x[0].float().numpy()  # the first channel of (C, D, H, W)
    return (a - a.min()) / (a.max() - a.min() + 1e-12)


def _is_voxel(ex: dict[str, Any]) -> bool:
    v, x = ex.get("values"), ex.get("inputs")
    return (ex.get("kind") == "voxel" and isinstance(v, torch.Tensor) and v.ndim == 4
            and isinstance(x, torch.Tensor) and x.ndim == 5 and tuple(x.shape[2:]) == tuple(v.shape[1:]))


@register_figure("voxel_planes")
def voxel_planes(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame, n: int = 2) -> list[tuple[str, Path]]:
    """Per (study, dataset, model) with voxel maps: axial, coronal and sagittal planes through each map's maximum."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for ex in load_examples(run_dir):
        if _is_voxel(ex):
            groups.setdefault((ex["study"], ex["dataset"], ex["model"]), []).append(ex)
    order = list(dict.fromkeys(zip(summary["study"], summary["dataset"], summary["model"])))
    method_order = {m: i for i, m in enumerate(dict.fromkeys(summary["explainer"]))}
    out = []
    for key in [k for k in order if k in groups]:
        exs = sorted(groups[key], key=lambda e: (e.get("is_baseline", False), method_order.get(e["explainer"], 1e9)))
        k = min(n, exs[0]["inputs"].shape[0])
        tiles, labels = [], []
        for i in range(k):
            vol = _display(exs[0]["inputs"][i])
            masks = exs[0].get("masks")
            mask = masks[i].numpy().astype(bool) if isinstance(masks, torch.Tensor) and masks.ndim == 4 else None
            centre = _centre(mask, vol.shape)
            sid = (exs[0].get("ids") or [str(i)] * k)[i].split("/")[-1]
            rows = [[panel(img, None, m)] for img, m in zip(planes_through(vol, centre), planes_through(mask, centre)
                                                             if mask is not None else [None] * 3)]
            for ex in exs:
                if i >= ex["values"].shape[0]:
                    for row in rows:
                        row.append(None)
                    continue
                heat = ex["values"][i].float().numpy()
                peak = argmax3(heat)
                marks = [(peak[1], peak[2]), (peak[0], peak[2]), (peak[0], peak[1])]
                for p, (img, hm, m) in enumerate(zip(planes_through(vol, peak), planes_through(heat, peak),
                                                     planes_through(mask, peak) if mask is not None else [None] * 3)):
                    rows[p].append(panel(img, hm, m, marker=marks[p]))
            tiles += rows
            labels += [f"{sid}\n{PLANES[0]}", PLANES[1], PLANES[2]]
        cols = ["input (mask outline)", *(ex["explainer"] for ex in exs)]
        fig = grid_figure(tiles, cols, labels, f"{key[0]}: {key[1]} / {key[2]}: planes through each map's maximum "
                                               "(+); maps min-max scaled for display only")
        out.append((f"{key[0]}: voxel maps on {key[1]} / {key[2]} (axial, coronal, sagittal)",
                    save(fig, figure_path(run_dir, f"voxel_planes_{key[0]}_{key[1]}_{key[2]}"))))
    return out
