"""Synthetic whole-slide bags of cells with exact per-cell ground truth (the ``mil`` family's data).

Each slide is a bag of N segmented cells, as a cell-graph MIL pipeline sees it after
segmentation (CellViT / HoVer-Net) and feature extraction: (x, y) centroid in µm, a cell
polygon (what a GeoJSON export holds), a cell type, and a features table in the usual
vocabulary (:data:`FEATURES`):

- morphology, computed exactly from the cell polygon: ``area`` (µm², shoelace),
  ``perimeter``, ``eccentricity`` and ``major/minor_axis_length`` (of the ellipse with the
  polygon's second moments, as ``skimage.measure.regionprops``), ``solidity`` (area / convex
  hull area), ``circularity`` (4πA/P²);
- intensity statistics of the nucleus (hematoxylin optical density): mean, std, min, max;
- GLCM texture (scikit-image's definitions: contrast, homogeneity, energy, correlation),
  drawn per cell from type-specific distributions (the generator does not render pixels);
- topology from the spatial graph of all centroids, exact: ``neighbour_count`` (cells within
  30 µm), ``mean_neighbour_distance`` (to the 6 nearest), ``local_density`` (cells per
  10,000 µm² within 50 µm);
- the cell type as one-hot columns ``type_<name>`` (:data:`CELL_TYPES`).

Ground truth. Positive slides hold tumour cells, a spatially clustered share (1–3 clusters:
the cells nearest to each cluster centre) whose features are shifted in exactly the
:data:`DEFINING_FEATURES`: area ×1.4 through a longer polygon of the same width (so
``perimeter``, ``major_axis_length``, ``eccentricity`` and ``circularity`` follow, the minor axis
does not), a darker ``intensity_mean`` (``intensity_min`` / ``intensity_max`` follow) and a higher
``glcm_contrast``, the last two by ``shift`` = 2 SD.
Tumour status is independent of cell type and position density (no other feature moves).
The slide label is 1 when it holds tumour cells. ``instance_labels`` marks every tumour cell.

Regimes: ``tumour_fraction`` fixed or drawn log-uniformly from (low, high) per positive
slide (<1% up to >20%). ``confounded=True`` adds a shortcut: in positive slides a share
``confounder_fraction`` of the *non-tumour* cells carry a strong shift of a non-defining
feature (:data:`CONFOUNDER`, glcm_homogeneity −3 SD: a stain/scanner artefact that came with
the positive cohort), so a model may learn it instead of the tumour cells; those cells are
listed in ``meta["confounder_cells"]`` and stay label 0.

Batch layout: ``inputs`` (B, N, 2 + F) float32, columns :data:`COLUMNS` = ("x", "y",
*FEATURES): positions first (models read them for graphs, never as features), then raw
features in physical units (models standardise them with their fitted feature transform).
Every slide has the same N, so a batch needs no padding (the folder loader pads; see
:mod:`xaibench.datasets.mil_folder`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from xaibench import SampleDataset, register_dataset

CELL_TYPES: tuple[str, ...] = ("epithelial", "inflammatory", "connective", "dead")
MORPHOLOGY = ("area", "perimeter", "eccentricity", "solidity", "major_axis_length", "minor_axis_length", "circularity")
INTENSITY = ("intensity_mean", "intensity_std", "intensity_min", "intensity_max")
TEXTURE = ("glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation")
TOPOLOGY = ("neighbour_count", "mean_neighbour_distance", "local_density")
#: every feature column after (x, y), in order
FEATURES: tuple[str, ...] = (*MORPHOLOGY, *INTENSITY, *TEXTURE, *TOPOLOGY, *(f"type_{t}" for t in CELL_TYPES))
#: the input columns: positions (µm) then FEATURES
COLUMNS: tuple[str, ...] = ("x", "y", *FEATURES)
POSITION_COLUMNS = 2
#: the features tumour cells shift directly (the generator's knobs)
SHIFTED_FEATURES: tuple[str, ...] = ("area", "eccentricity", "intensity_mean", "glcm_contrast")
#: every feature whose distribution differs between tumour and normal cells by construction: the
#: shifted ones and those computed from the same (larger, more elongated) polygon
DEFINING_FEATURES: tuple[str, ...] = ("area", "perimeter", "eccentricity", "major_axis_length", "circularity",
                                      "intensity_mean", "intensity_min", "intensity_max", "glcm_contrast")
#: features that condition the others rather than measure the cell (the segmentation model's class):
#: normal morphology differs by type, so attention may use them to read the defining features
CONTEXT_FEATURES: tuple[str, ...] = tuple(f"type_{t}" for t in CELL_TYPES)
#: the non-defining feature of the confounded regime
CONFOUNDER = "glcm_homogeneity"
N_VERTICES = 12
SPACING = 14.0  # µm between neighbouring cell centres

# per cell type: (nucleus radius µm, axis ratio minor/major, type share)
_TYPE_SHAPE = {"epithelial": (4.2, 0.72, 0.40), "inflammatory": (3.0, 0.90, 0.25),
               "connective": (3.6, 0.45, 0.25), "dead": (2.6, 0.80, 0.10)}
# intensity / texture: mean and SD per feature for normal cells (type offsets below)
_STATS = {"intensity_mean": (0.45, 0.06), "intensity_std": (0.08, 0.015), "glcm_contrast": (12.0, 3.0),
          "glcm_homogeneity": (0.45, 0.05), "glcm_energy": (0.20, 0.04), "glcm_correlation": (0.70, 0.08)}
_TYPE_OFFSET = {"inflammatory": {"intensity_mean": 0.08, "glcm_energy": 0.03},
                "dead": {"intensity_mean": 0.12, "glcm_homogeneity": 0.05}}
TUMOUR_SHIFT_SD = 2.0


def regime_of(fraction: float) -> str:
    """The tumour-share regime of a slide: ``negative``, ``<1%``, ``1-5%``, ``5-20%``, ``>=20%``."""
    if fraction <= 0:
        return "negative"
    for hi, name in ((0.01, "<1%"), (0.05, "1-5%"), (0.2, "5-20%")):
        if fraction < hi:
            return name
    return ">=20%"


def _polygon_props(poly: np.ndarray) -> dict[str, np.ndarray]:
    """Exact morphology of (N, V, 2) star-shaped polygons (vertices in angular order)."""
    x, y = poly[..., 0], poly[..., 1]
    xn, yn = np.roll(x, -1, 1), np.roll(y, -1, 1)
    cross = x * yn - xn * y
    area = 0.5 * cross.sum(1)
    perim = np.hypot(xn - x, yn - y).sum(1)
    cx = ((x + xn) * cross).sum(1) / (6 * area)
    cy = ((y + yn) * cross).sum(1) / (6 * area)
    # second moments of the polygon about its centroid (Green's theorem)
    u, v, un, vn = x - cx[:, None], y - cy[:, None], xn - cx[:, None], yn - cy[:, None]
    c = u * vn - un * v
    mxx = ((u * u + u * un + un * un) * c).sum(1) / (12 * area)
    myy = ((v * v + v * vn + vn * vn) * c).sum(1) / (12 * area)
    mxy = ((u * vn + 2 * u * v + 2 * un * vn + un * v) * c).sum(1) / (24 * area)
    common = np.sqrt(((mxx - myy) / 2) ** 2 + mxy ** 2)
    l1, l2 = (mxx + myy) / 2 + common, np.maximum((mxx + myy) / 2 - common, 1e-12)
    hull = _hull_area(poly)
    return {"area": area, "perimeter": perim, "eccentricity": np.sqrt(1 - l2 / l1),
            "major_axis_length": 4 * np.sqrt(l1), "minor_axis_length": 4 * np.sqrt(l2),
            "solidity": area / hull, "circularity": 4 * np.pi * area / perim ** 2}


def _hull_area(poly: np.ndarray) -> np.ndarray:
    """Convex-hull area of (N, V, 2) star-shaped polygons (vertices in angular order around an
    interior point c, here the vertex mean). A vertex is off the hull iff it lies strictly inside
    a triangle (c, p_a, p_b) of two other vertices (the ray from c through it leaves the hull
    through an edge); the hull vertices keep their angular order, so the hull is the shoelace
    over them."""
    n, v, _ = poly.shape
    pairs = np.array(list(itertools.combinations(range(v), 2)))  # (P, 2)
    c = poly.mean(1, keepdims=True)[:, :, None, :]  # (N, 1, 1, 2)
    a, b = poly[:, None, pairs[:, 0]], poly[:, None, pairs[:, 1]]  # (N, 1, P, 2)
    p = poly[:, :, None, :]  # (N, V, 1, 2)

    def side(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
        return (p1[..., 0] - p0[..., 0]) * (p[..., 1] - p0[..., 1]) - (p1[..., 1] - p0[..., 1]) * (p[..., 0] - p0[..., 0])

    s1, s2, s3 = side(c, a), side(a, b), side(b, c)
    eps = 1e-12
    inside = ((s1 > eps) & (s2 > eps) & (s3 > eps)) | ((s1 < -eps) & (s2 < -eps) & (s3 < -eps))
    member = (pairs[None, :, :] == np.arange(v)[:, None, None]).any(-1)  # (V, P): vertex is a corner
    off = (inside & ~member[None]).any(-1)  # (N, V)
    on = ~off
    # shoelace over the hull vertices in order: pair each with the next hull vertex (cyclic)
    idx = np.where(on, np.arange(v)[None], v * 2)
    big = np.concatenate([idx, idx + v], 1)
    rmin = np.minimum.accumulate(big[:, ::-1], 1)[:, ::-1]  # next hull index at or after j
    nxt = rmin[:, np.arange(v) + 1] % v
    q, qn = poly, np.take_along_axis(poly, nxt[..., None].repeat(2, -1), 1)
    cross = (q[..., 0] * qn[..., 1] - qn[..., 0] * q[..., 1]) * on
    return 0.5 * cross.sum(1)


def topology(xy: np.ndarray, box: float | None = None) -> dict[str, np.ndarray]:
    """Exact spatial-graph features of (N, 2) centroids in µm: ``neighbour_count`` (others within
    30 µm), ``mean_neighbour_distance`` (to the 6 nearest others), ``local_density`` (cells per
    10,000 µm² within 50 µm, the cell included). ``box``: side of a periodic square (the
    synthetic slides wrap around, so border cells have no fewer neighbours); None = plain."""
    tree = cKDTree(xy, boxsize=box)
    k = min(7, len(xy))
    d, _ = tree.query(xy, k=k)
    d = np.atleast_2d(d)[:, 1:] if k > 1 else np.zeros((len(xy), 1))
    count = np.array([len(r) - 1 for r in tree.query_ball_point(xy, 30.0)], dtype=np.float64)
    dens = np.array([len(r) for r in tree.query_ball_point(xy, 50.0)], dtype=np.float64) / (np.pi * 50.0 ** 2) * 1e4
    return {"neighbour_count": count, "mean_neighbour_distance": d.mean(1) if d.size else np.zeros(len(xy)),
            "local_density": dens}


@register_dataset("mil_slides")
class SyntheticSlides(SampleDataset):
    """Synthetic whole slides as bags of cells with exact tumour-cell labels (MIL ground truth).

    Yields :class:`~xaibench.Batch`: ``inputs`` (B, N, 2 + F) float32 (columns
    :data:`COLUMNS`: x, y in µm, then raw features), ``targets`` (B,) slide label (1 = holds
    tumour cells), ``instance_labels`` (B, N) bool (tumour cell), ``meta``: ``cell_polygons``
    (B, N, 12, 2) µm, ``cell_type`` (B, N) int64 codes of ``meta["cell_types"]``,
    ``confounder_cells`` (B, N) bool, per-slide ``tumour_fraction`` and ``regime``, and
    batch-level ``columns``, ``features``, ``defining_features``, ``confounder``.

    Example:
        >>> ds = xaibench.create_dataset("mil_slides", n=4, batch_size=2, n_cells=256)
        >>> next(iter(ds)).inputs.shape
        torch.Size([2, 256, 25])
    """

    class Settings(SampleDataset.Settings):
        n_cells: int = 512
        """Cells per slide (N); every slide of the dataset has the same N."""
        tumour_fraction: float | tuple[float, float] = (0.005, 0.3)
        """Share of tumour cells in a positive slide: a float, or (low, high) drawn log-uniformly per slide."""
        positive_rate: float = 0.5
        """Probability that a slide is positive (holds tumour cells)."""
        n_clusters: tuple[int, int] = (1, 3)
        """(low, high) number of tumour clusters per positive slide (drawn uniformly, inclusive)."""
        shift: float = TUMOUR_SHIFT_SD
        """Tumour shift of intensity_mean and glcm_contrast in normal-cell SDs; the nucleus grows ×(1 + 0.2·shift) in area along its major axis."""
        confounded: bool = False
        """Add the confounder: a share of non-tumour cells of positive slides gets CONFOUNDER shifted."""
        confounder_fraction: float = 0.15
        """Share of non-tumour cells carrying the confounder in a positive, confounded slide."""
        confounder_shift: float = -3.0
        """Shift of the confounder feature in normal-cell SDs."""

    def _fraction(self, rng: np.random.Generator) -> float:
        f = self.settings.tumour_fraction
        if isinstance(f, (int, float)):
            if not 0 < f < 1:
                raise ValueError(f"mil_slides: tumour_fraction must lie in (0, 1), got {f}; e.g. 0.05 or (0.005, 0.3)")
            return float(f)
        lo, hi = f
        if not 0 < lo <= hi < 1:
            raise ValueError(f"mil_slides: tumour_fraction (low, high) must satisfy 0 < low <= high < 1, got {f}")
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        s = self.settings
        n = int(s.n_cells)
        if n < 8:
            raise ValueError(f"mil_slides: n_cells must be >= 8, got {n}")
        positive = bool(rng.random() < s.positive_rate)
        frac = self._fraction(rng) if positive else 0.0
        n_tum = max(1, int(round(frac * n))) if positive else 0
        # positions: a jittered grid on a square, shuffled
        side = int(math.ceil(math.sqrt(n)))
        gx, gy = np.meshgrid(np.arange(side), np.arange(side))
        grid = np.stack([gx.ravel(), gy.ravel()], 1)[rng.permutation(side * side)[:n]].astype(np.float64)
        xy = (grid + 0.5 + rng.uniform(-0.3, 0.3, (n, 2))) * SPACING
        labels = np.zeros(n, bool)
        if n_tum:
            k = int(rng.integers(s.n_clusters[0], s.n_clusters[1] + 1))
            centres = rng.uniform(0.15, 0.85, (k, 2)) * side * SPACING
            share = np.diff(np.round(np.linspace(0, n_tum, k + 1)).astype(int))
            d = np.linalg.norm(xy[:, None] - centres[None], axis=-1)  # (n, k)
            for j in range(k):
                free = np.where(labels, np.inf, d[:, j])
                labels[np.argsort(free, kind="stable")[:share[j]]] = True
        ctype = rng.choice(len(CELL_TYPES), n, p=[_TYPE_SHAPE[t][2] for t in CELL_TYPES])
        # polygons: ellipse with radial noise, rotated, tumour nuclei larger and more elongated
        r0 = np.array([_TYPE_SHAPE[CELL_TYPES[t]][0] for t in ctype]) * rng.lognormal(0, 0.12, n)
        ratio = np.array([_TYPE_SHAPE[CELL_TYPES[t]][1] for t in ctype]) * rng.uniform(0.85, 1.15, n)
        # tumour nuclei: area x(1 + 0.2 shift) by a longer major axis at the same width (minor axis unchanged)
        grow = 1 + 0.2 * s.shift
        ratio = np.where(labels, ratio / grow, ratio)
        r0 = np.where(labels, r0 * math.sqrt(grow), r0)
        phi = np.arange(N_VERTICES) * 2 * np.pi / N_VERTICES
        wobble = 1 + 0.06 * rng.standard_normal((n, N_VERTICES))
        a_ax, b_ax = r0 / np.sqrt(ratio), r0 * np.sqrt(ratio)
        px, py = a_ax[:, None] * np.cos(phi) * wobble, b_ax[:, None] * np.sin(phi) * wobble
        th = rng.uniform(0, np.pi, n)[:, None]
        poly = np.stack([px * np.cos(th) - py * np.sin(th), px * np.sin(th) + py * np.cos(th)], -1) + xy[:, None]
        feats: dict[str, np.ndarray] = _polygon_props(poly)
        for name, (mu, sd) in _STATS.items():
            off = np.array([_TYPE_OFFSET.get(CELL_TYPES[t], {}).get(name, 0.0) for t in ctype])
            feats[name] = mu + off + sd * rng.standard_normal(n)
        # a darker (hyperchromatic) nucleus darkens its whole intensity distribution: min and max follow the mean
        feats["intensity_mean"] = feats["intensity_mean"] - labels * s.shift * _STATS["intensity_mean"][1]
        feats["glcm_contrast"] = feats["glcm_contrast"] + labels * s.shift * _STATS["glcm_contrast"][1]
        feats["intensity_min"] = (feats["intensity_mean"] - feats["intensity_std"] * rng.uniform(2.0, 3.0, n)).clip(0, None)
        feats["intensity_max"] = feats["intensity_mean"] + feats["intensity_std"] * rng.uniform(2.0, 3.0, n)
        conf = np.zeros(n, bool)
        if s.confounded and positive:
            normal = np.flatnonzero(~labels)
            m = int(round(s.confounder_fraction * len(normal)))
            conf[rng.choice(normal, m, replace=False)] = True
            feats[CONFOUNDER] = feats[CONFOUNDER] + conf * s.confounder_shift * _STATS[CONFOUNDER][1]
        feats.update(topology(xy, box=side * SPACING))
        for i, t in enumerate(CELL_TYPES):
            feats[f"type_{t}"] = (ctype == i).astype(np.float64)
        x = np.concatenate([xy, np.stack([feats[f] for f in FEATURES], 1)], 1).astype(np.float32)
        return {
            "inputs": x, "instance_labels": labels, "targets": int(positive),
            "ids": f"mil_slides/{self.split}/{self.seed}/{index}",
            "cell_polygons": torch.from_numpy(poly.astype(np.float32)), "cell_type": torch.from_numpy(ctype.astype(np.int64)),
            "confounder_cells": torch.from_numpy(conf), "tumour_fraction": n_tum / n, "regime": regime_of(n_tum / n),
        }

    def collate(self, samples: list[dict[str, Any]]):
        batch = super().collate(samples)
        for key in ("cell_polygons", "cell_type", "confounder_cells"):
            batch.meta[key] = torch.stack(batch.meta[key])
        batch.meta.update(slide_meta(confounded=self.settings.confounded))
        return batch


def slide_meta(confounded: bool = False) -> dict[str, Any]:
    """The batch-level meta of synthetic slides (tuples: never split per sample)."""
    return {"columns": COLUMNS, "features": FEATURES, "cell_types": CELL_TYPES,
            "defining_features": DEFINING_FEATURES, "context_features": CONTEXT_FEATURES,
            "confounder": CONFOUNDER if confounded else None,
            "position_columns": POSITION_COLUMNS}
