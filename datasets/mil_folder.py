"""``mil_folder``: a user's own segmented slides (cells tables + metadata) as MIL bags.

Layout (as the cell-graph MIL toolkit's SHAP example: a metadata table with ``FULL_PATH``)::

    root/metadata.csv | metadata.xlsx     one row per slide: FULL_PATH (the slide folder, relative
                                          to root or absolute), the slide label (``label_column``),
                                          optionally ``split`` (train / val / test)
    root/<SLIDE>/cells.csv | cells.parquet  one row per cell: x, y (µm or px), feature columns,
                                          optionally a per-cell truth column (``cell_label_column``)
                                          and a ``cell_type`` column (names or integer codes)
    root/<SLIDE>/cells.geojson            optional: cell polygons (a FeatureCollection of Polygon
                                          features as QuPath or CellViT export), matched to the
                                          table's rows by nearest centroid

Bags of different sizes are padded to the largest bag of the batch with **NaN rows**:
``inputs`` (B, N_max, 2 + F), columns ("x", "y", *features), and ``meta["cell_mask"]`` (B, N_max)
bool marks the real cells. Every ``mil.*`` model treats all-NaN rows as padding (they get zero
attention), so the mask travels with the inputs through every model, explainer and metric.

Example::

    ds = xaibench.create_dataset("mil_folder", root="my_slides", label_column="MSI")
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree

from xaibench import SampleDataset, register_dataset

CELL_TABLES = ("cells.parquet", "cells.csv")


def read_table(path: Path) -> pd.DataFrame:
    """A CSV, parquet or Excel table (Excel needs openpyxl)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".xlsx", ".xls"):
        return pd.read_excel(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"mil_folder: unsupported table {path}; expected .csv, .parquet or .xlsx")


def read_geojson_polygons(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """(centroids (K, 2), polygons [(V_k, 2)]) of the Polygon / MultiPolygon features of a GeoJSON file
    (the exterior ring of each; a MultiPolygon contributes its largest part)."""
    data = json.loads(path.read_text())
    feats = data.get("features", data if isinstance(data, list) else [])
    polys = []
    for f in feats:
        geom = (f or {}).get("geometry") or {}
        if geom.get("type") == "Polygon":
            ring = np.asarray(geom["coordinates"][0], dtype=np.float64)
        elif geom.get("type") == "MultiPolygon":
            ring = max((np.asarray(p[0], dtype=np.float64) for p in geom["coordinates"]), key=len)
        else:
            continue
        if ring.ndim != 2 or ring.shape[0] < 3:
            raise ValueError(f"mil_folder: {path} has a polygon with fewer than 3 vertices")
        if np.allclose(ring[0], ring[-1]):
            ring = ring[:-1]
        polys.append(ring[:, :2])
    if not polys:
        raise ValueError(f"mil_folder: {path} holds no Polygon features")
    return np.stack([p.mean(0) for p in polys]), polys


@register_dataset("mil_folder")
class SlideFolder(SampleDataset):
    """A folder of a user's segmented slides: cells tables, optional GeoJSON polygons, a metadata table.

    Yields :class:`~xaibench.Batch`: ``inputs`` (B, N_max, 2 + F) float32 (NaN-padded),
    ``targets`` (B,) slide labels, ``instance_labels`` (B, N_max) when the tables have the
    per-cell truth column, ``meta``: ``cell_mask`` (B, N_max), ``cell_type`` (B, N_max) int64 (−1
    unknown / padding), ``cell_polygons`` (list of (N, V, 2) arrays or None per slide), and
    batch-level ``columns``, ``features``, ``cell_types``.
    """

    class Settings(SampleDataset.Settings):
        root: str = ""
        """The folder holding the metadata table and one folder per slide (required)."""
        metadata: str | None = None
        """The metadata table (CSV or Excel); default root/metadata.csv or root/metadata.xlsx."""
        path_column: str = "FULL_PATH"
        """Metadata column naming each slide's folder."""
        label_column: str = "label"
        """Metadata column with the slide label (integers, or names mapped to codes in sorted order)."""
        features: tuple[str, ...] | None = None
        """Feature columns to use, in order; default every numeric column but x, y and the truth column."""
        cell_label_column: str = "tumour"
        """Per-cell truth column of the cells tables (becomes ``instance_labels``; absent = no truth)."""
        x_column: str = "x"
        """Column of the cell centroid's x."""
        y_column: str = "y"
        """Column of the cell centroid's y."""

    def __init__(self, n: int | None = None, batch_size: int = 16, seed: int = 0, split: str = "test", **params: Any):
        super().__init__(n=1, batch_size=batch_size, seed=seed, split=split, **params)
        s = self.settings
        if not s.root:
            raise ValueError("mil_folder: root= is required (a folder with metadata.csv and one folder per slide)")
        self.root = Path(s.root).expanduser()
        meta_path = Path(s.metadata) if s.metadata else next(
            (self.root / f for f in ("metadata.csv", "metadata.xlsx") if (self.root / f).exists()), None)
        if meta_path is None or not meta_path.exists():
            raise ValueError(f"mil_folder: no metadata table at {meta_path or self.root / 'metadata.csv'}; "
                             "give metadata= or write root/metadata.csv with FULL_PATH and label columns")
        table = read_table(meta_path)
        for col in (s.path_column, s.label_column):
            if col not in table.columns:
                raise ValueError(f"mil_folder: metadata {meta_path} has no column {col!r} (columns: {list(table.columns)})")
        if "split" in table.columns and (table["split"] == split).any():
            table = table[table["split"] == split]
        labels = table[s.label_column]
        if not pd.api.types.is_integer_dtype(labels):
            self.classes = sorted(labels.astype(str).unique())
            labels = labels.astype(str).map({c: i for i, c in enumerate(self.classes)})
        else:
            self.classes = [str(c) for c in sorted(labels.unique())]
        self.slides = [self._folder(p) for p in table[s.path_column].astype(str)]
        self.labels = [int(v) for v in labels]
        total = len(self.slides)
        if total == 0:
            raise ValueError(f"mil_folder: metadata {meta_path} lists no slides")
        if n is not None and not 1 <= int(n) <= total:
            raise ValueError(f"mil_folder: n must lie in [1, {total}] ({total} slides in {meta_path}), got {n}")
        self.n = total if n is None else int(n)
        self._columns: tuple[str, ...] | None = None
        self.cell_types: list[str] = []

    def _folder(self, name: str) -> Path:
        p = Path(name)
        folder = p if p.is_absolute() else self.root / p
        if not folder.is_dir():
            raise ValueError(f"mil_folder: slide folder {folder} (FULL_PATH {name!r}) not found")
        if not any((folder / t).exists() for t in CELL_TABLES):
            raise ValueError(f"mil_folder: {folder} has no cells table ({' or '.join(CELL_TABLES)})")
        return folder

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        for folder in self.slides[:self.n]:
            for f in sorted(folder.iterdir()):
                h.update(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}".encode())
        return h.hexdigest()

    def feature_columns(self, cells: pd.DataFrame) -> tuple[str, ...]:
        s = self.settings
        if s.features is not None:
            missing = [c for c in s.features if c not in cells.columns]
            if missing:
                raise ValueError(f"mil_folder: feature columns {missing} missing from a cells table (has {list(cells.columns)})")
            return tuple(s.features)
        skip = {s.x_column, s.y_column, s.cell_label_column, "cell_type"}
        return tuple(c for c in cells.columns if c not in skip and pd.api.types.is_numeric_dtype(cells[c]))

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        s = self.settings
        folder = self.slides[index]
        cells = read_table(next(folder / t for t in CELL_TABLES if (folder / t).exists()))
        for col in (s.x_column, s.y_column):
            if col not in cells.columns:
                raise ValueError(f"mil_folder: {folder} cells table has no {col!r} column (columns: {list(cells.columns)})")
        feats = self.feature_columns(cells)
        if self._columns is None:
            self._columns = feats
        elif feats != self._columns:
            raise ValueError(f"mil_folder: {folder} has feature columns {feats}, other slides {self._columns}; "
                             "give features= to pick the same columns")
        xy = cells[[s.x_column, s.y_column]].to_numpy(np.float64)
        x = np.concatenate([xy, cells[list(feats)].to_numpy(np.float64)], 1).astype(np.float32)
        ctype = np.full(len(cells), -1, np.int64)
        if "cell_type" in cells.columns:
            col = cells["cell_type"]
            if pd.api.types.is_integer_dtype(col):
                ctype = col.to_numpy(np.int64)
            else:
                for name in col.astype(str).unique():
                    if name not in self.cell_types:
                        self.cell_types.append(name)
                ctype = col.astype(str).map({c: i for i, c in enumerate(self.cell_types)}).to_numpy(np.int64)
        polys = None
        gj = folder / "cells.geojson"
        if gj.exists():
            cent, rings = read_geojson_polygons(gj)
            _, nearest = cKDTree(cent).query(xy)
            polys = [rings[j] for j in nearest]
        out = {"inputs": x, "targets": self.labels[index], "ids": folder.name, "cell_type": ctype, "cell_polygons": polys}
        if s.cell_label_column in cells.columns:
            out["instance_labels"] = cells[s.cell_label_column].to_numpy().astype(bool)
        return out

    def collate(self, samples: list[dict[str, Any]]):
        from xaibench import Batch

        n_max = max(len(smp["inputs"]) for smp in samples)
        b, width = len(samples), samples[0]["inputs"].shape[1]
        inputs = torch.full((b, n_max, width), float("nan"))
        mask = torch.zeros(b, n_max, dtype=torch.bool)
        ctype = torch.full((b, n_max), -1, dtype=torch.long)
        has_truth = all("instance_labels" in smp for smp in samples)
        labels = torch.zeros(b, n_max, dtype=torch.bool) if has_truth else None
        for i, smp in enumerate(samples):
            k = len(smp["inputs"])
            inputs[i, :k] = torch.from_numpy(smp["inputs"])
            mask[i, :k] = True
            ctype[i, :k] = torch.as_tensor(np.array(smp["cell_type"], dtype=np.int64))
            if labels is not None:
                labels[i, :k] = torch.as_tensor(np.array(smp["instance_labels"], dtype=bool))
        meta = {"cell_mask": mask, "cell_type": ctype, "cell_polygons": [smp["cell_polygons"] for smp in samples],
                "columns": ("x", "y", *(self._columns or ())), "features": tuple(self._columns or ()),
                "cell_types": tuple(self.cell_types), "position_columns": 2}
        return Batch(inputs=inputs, targets=torch.tensor([smp["targets"] for smp in samples]),
                     instance_labels=labels, ids=[smp["ids"] for smp in samples], meta=meta)
