"""Image grids drawn as one picture: each panel composed in numpy, the grid shown by a single axes.

A grid of k samples × m methods drawn with one matplotlib axes per panel costs a layout pass and a
draw per axes (ticks, spines, a contour per outline): ~0.1 s per panel. Here every panel is an RGB
array (the image, the map blended over it with a colormap, the mask outline as boundary pixels), the
panels are tiled into one array with gaps, and a figure with a single image and a few text labels
draws it — the same picture in a few milliseconds per panel, and a smaller PNG.

    tiles = [[panel(img, None, mask)] + [panel(img, heat, mask) for heat in maps] for img, mask, maps in rows]
    fig = grid_figure(tiles, col_titles=["input", *methods], row_labels=ids, title="...")
    save(fig, figure_path(run_dir, "overlays_..."))
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: panel edge in pixels the images are scaled towards (integer factors only: no resampling blur)
PANEL_PX = 120
GAP_PX = 4
DPI = 100
#: matplotlib's font at 7 pt and 100 dpi: ~10 px per line, ~5 px per character
LINE_PX, CHAR_PX = 11, 5.2


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, 3) in [0, 1] -> (H, W, 3) float32."""
    a = np.asarray(image, dtype=np.float32)
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a[..., :3]


def _fit(a: np.ndarray, size: tuple[int, int], bilinear: bool) -> np.ndarray:
    """Resize a (H, W) map to ``size`` (a map coarser than its image, e.g. ViT tokens)."""
    if a.shape == size:
        return a
    t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)[None, None]
    mode = {"mode": "bilinear", "align_corners": False} if bilinear else {"mode": "nearest"}
    return F.interpolate(t, size=size, **mode)[0, 0].numpy()


def _factor(h: int, w: int, px: int) -> tuple[int, int]:
    """(up, down): integer up-scaling towards ``px``, or integer striding for images larger than 2 ``px``."""
    big = max(h, w)
    if big > 2 * px:
        return 1, math.ceil(big / px)
    return max(1, round(px / big)), 1


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (inside, with an outside 4-neighbour)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def panel(image: np.ndarray, heat: np.ndarray | None = None, mask: np.ndarray | None = None, *,
          cmap: str = "jet", alpha: float = 0.45, vrange: tuple[float, float] | None = None, dim: bool = False,
          outline: Sequence[float] = (1.0, 1.0, 1.0), marker: tuple[float, float] | None = None,
          px: int = PANEL_PX) -> np.ndarray:
    """One panel as an (h, w, 3) float32 array.

    Args:
        image: (H, W) or (H, W, 3) in [0, 1].
        heat: a map over it (any size: resized bilinearly to the image); min-max scaled for display
            unless ``vrange`` fixes the colour range (e.g. (-1, 1) for signed, max-abs scaled maps).
        mask: ground-truth region, drawn as its boundary pixels in ``outline`` colour.
        dim: show the image at half contrast under the map (signed maps).
        marker: (row, col) in image pixels, drawn as a small white cross.
        px: the panel edge the image is scaled towards by an integer factor.
    """
    img = _rgb(image)
    h, w = img.shape[:2]
    if dim:
        img = img * 0.5 + 0.25
    if heat is not None:
        from matplotlib import colormaps

        hm = _fit(np.asarray(heat, dtype=np.float64), (h, w), bilinear=True)
        lo, hi = vrange if vrange is not None else (float(hm.min()), float(hm.max()))
        hm = np.clip((hm - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(hm)
        img = (1 - alpha) * img + alpha * colormaps[cmap](hm)[..., :3].astype(np.float32)
    up, down = _factor(h, w, px)
    m = None if mask is None else _fit(np.asarray(mask, dtype=np.float32), (h, w), bilinear=False) > 0.5
    if down > 1:
        img = img[::down, ::down]
        m = None if m is None else m[::down, ::down]
    if up > 1:
        img = img.repeat(up, 0).repeat(up, 1)
        m = None if m is None else m.repeat(up, 0).repeat(up, 1)
    if m is not None and m.any():
        img = img.copy()
        img[_outline(m)] = outline
    if marker is not None:
        r, c = (int(round((v + 0.5) * up / down - 0.5)) for v in marker)
        arm = max(2, up * 2)
        img = img.copy()
        img[max(r - arm, 0):r + arm + 1, min(max(c, 0), img.shape[1] - 1)] = 1.0
        img[min(max(r, 0), img.shape[0] - 1), max(c - arm, 0):c + arm + 1] = 1.0
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _wrap(text: str, px: float, fontsize: float = 7) -> list[str]:
    """Greedy lines of at most ``px`` pixels, breaking after spaces, dots and underscores (a name such
    as ``cnn.guided_backprop`` breaks between its parts), and inside a part only when it must."""
    width = max(4, int(px / (CHAR_PX * fontsize / 7)))
    lines, line = [], ""
    for tok in re.findall(r"[^\s._]*[._]|[^\s._]+|\s+", str(text)):
        if tok.isspace():
            tok = " " if line else ""
        while len(tok) > width:  # a part longer than a line
            if line:
                lines.append(line.rstrip())
                line = ""
            lines.append(tok[:width])
            tok = tok[width:]
        if len(line) + len(tok.rstrip()) > width and line:
            lines.append(line.rstrip())
            line = tok.lstrip()
        else:
            line += tok
    if line.strip():
        lines.append(line.rstrip())
    return lines or [""]


def grid_figure(tiles: Sequence[Sequence[np.ndarray | None]], col_titles: Sequence[str] = (),
                row_labels: Sequence[str] = (), title: str = "", fontsize: float = 7) -> Any:
    """A figure showing ``tiles`` (rows of panels; None leaves a blank) as one image, with column
    titles above the first row, row labels on the left and a title on top. Save it with
    :func:`xaibench.report.figures.save` (its size is in pixels at 100 dpi)."""
    from matplotlib.figure import Figure

    nrow = len(tiles)
    ncol = max((len(r) for r in tiles), default=0)
    present = [t for r in tiles for t in r if t is not None]
    th = max((t.shape[0] for t in present), default=PANEL_PX)
    tw = max((t.shape[1] for t in present), default=PANEL_PX)
    cols = [_wrap(t, tw, fontsize)[:3] for t in col_titles]
    rows = [str(t).split("\n") for t in row_labels]
    left = 6 + (int(max((len(x) for r in rows for x in r), default=0) * CHAR_PX * fontsize / 7) + 6 if rows else 0)
    head_lines = _wrap(title, left + ncol * (tw + GAP_PX) - 12, fontsize + 2) if title else []
    top = 6 + LINE_PX * 1.3 * len(head_lines) + LINE_PX * fontsize / 7 * max((len(c) for c in cols), default=0) + 4
    top = int(math.ceil(top))
    width = left + ncol * tw + (ncol - 1) * GAP_PX + 6
    height = top + nrow * th + (nrow - 1) * GAP_PX + 6
    canvas = np.ones((height, width, 3), dtype=np.float32)
    for i, r in enumerate(tiles):
        for j, t in enumerate(r):
            if t is None:
                continue
            y = top + i * (th + GAP_PX) + (th - t.shape[0]) // 2
            x = left + j * (tw + GAP_PX) + (tw - t.shape[1]) // 2
            canvas[y:y + t.shape[0], x:x + t.shape[1]] = t
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest", extent=(0, width, height, 0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    y = 6.0
    for line in head_lines:
        ax.text(width / 2, y, line, ha="center", va="top", fontsize=fontsize + 2)
        y += LINE_PX * 1.3
    for j, c in enumerate(cols):
        ax.text(left + j * (tw + GAP_PX) + tw / 2, top - 3, "\n".join(c), ha="center", va="bottom", fontsize=fontsize)
    for i, r in enumerate(rows[:nrow]):
        ax.text(left - 6, top + i * (th + GAP_PX) + th / 2, "\n".join(r), ha="right", va="center", fontsize=fontsize)
    return fig


__all__ = ["grid_figure", "panel"]
