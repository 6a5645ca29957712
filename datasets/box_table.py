"""Bounding-box tables: CSV ``image,x_min,y_min,x_max,y_max,label`` (chest-X-ray box datasets).

One row per box; an image may have many rows, and a row with empty coordinates lists an
image without boxes (the way RSNA-style tables mark negatives). ``image`` is matched against a
file's name, its stem, or (for DICOM) its SOP instance UID or patient ID. Coordinates are in
pixels of the original image, ``x_max``/``y_max`` exclusive (as :class:`~xaibench.Batch` boxes).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from xaibench.errors import DataError

COLUMNS = ("image", "x_min", "y_min", "x_max", "y_max")


def read_box_table(path: str | Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``image -> ((k, 4) float32 boxes x0, y0, x1, y1, k labels)``.

    Raises:
        DataError: missing file or columns, a non-numeric coordinate, or x_max <= x_min (the
            message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: box table not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in COLUMNS if c not in cols]
        if missing:
            raise DataError(f"{path}: box table needs the columns {','.join(COLUMNS)}[,label]; missing {missing} "
                            f"(found {cols})")
        out: dict[str, tuple[list[list[float]], list[str]]] = {}
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            key = row["image"]
            boxes, labels = out.setdefault(key, ([], []))
            coords = [row[c] for c in COLUMNS[1:]]
            if all(c in ("", "nan", "NaN") for c in coords):
                continue  # an image listed without boxes
            try:
                x0, y0, x1, y1 = (float(c) for c in coords)
            except ValueError:
                raise DataError(f"{path}:{line}: coordinates must be numbers, got {coords}") from None
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
                raise DataError(f"{path}:{line}: a box needs x_min < x_max and y_min < y_max, got {coords}")
            boxes.append([x0, y0, x1, y1])
            labels.append(row.get("label", ""))
    return {k: (np.asarray(b, np.float32).reshape(-1, 4), lab) for k, (b, lab) in out.items()}


def boxes_to_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of the union of the boxes (pixels whose cell overlaps a box)."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in np.asarray(boxes, float).reshape(-1, 4):
        mask[max(0, int(np.floor(y0))):int(np.ceil(y1)), max(0, int(np.floor(x0))):int(np.ceil(x1))] = True
    return mask
