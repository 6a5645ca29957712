"""Outputs of one slide's attention explanation: GeoJSON for pathology viewers, an offline
interactive graph, and the weights / statistics as JSON (the cell-MIL toolkit's output set).

:func:`write_explanation` writes, for sample ``index`` of an ``event`` attribution and its batch:

- ``<id>.geojson`` (``visualization_mode`` ``geojson`` or ``all``): a GeoJSON FeatureCollection,
  one Polygon Feature per cell (closed exterior ring; cell polygons from
  ``batch.meta["cell_polygons"]``, or an 8-gon of radius ``cell_radius`` around the centroid when
  a slide has none), with properties ``objectType: "detection"``, ``attention_weight`` (raw),
  ``attention_normalized``, ``color`` [r, g, b] on the ``color_scheme`` gradient,
  ``classification`` {name, color} (the cell type; QuPath reads it), ``measurements`` (QuPath's
  numeric table), ``cell_index`` and ``tumour`` (truth, when known). Imports into QuPath with
  File > Import objects.
- ``<id>_graph.html`` (``graph`` or ``all``): a self-contained plotly page (plotly.js inline, opens
  offline): nodes at the cell positions coloured by the normalised attention, edges of the
  ``k``-nearest-neighbour graph with opacity falling with distance (exp(−d / median d)), hover
  details; with ``visualize_cell_types`` a second, switchable trace set coloured by cell type.
- ``attention_weights.json``: raw and normalised weight of every cell (id, index, x, y, type).
- ``attention_metadata.json``: :func:`~xaibench.adapters.mil.explainers.attention_stats` of the
  raw weights (mean, std, entropy, normalised entropy, sparsity) and the explainer's settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from xaibench import Attribution, Batch
from xaibench.report.explain import register_explain_writer
from xaibench.util import atomic_write_text

from .explainers import attention_stats, normalize

VisualizationMode = Literal["geojson", "graph", "all"]
DEFAULT_COLORS: tuple[tuple[int, int, int], tuple[int, int, int]] = ((49, 54, 149), (215, 48, 39))


def _unit(norm: np.ndarray) -> np.ndarray:
    """Map normalised weights to [0, 1] for colouring (min-max unless they already lie in it)."""
    if norm.size and (norm.min() < 0 or norm.max() > 1):
        lo, hi = norm.min(), norm.max()
        return (norm - lo) / (hi - lo) if hi > lo else np.zeros_like(norm)
    return norm


def gradient_colors(t: np.ndarray, scheme: Sequence[Sequence[int]]) -> np.ndarray:
    """(n, 3) uint8 colours linearly between ``scheme[0]`` (t = 0) and ``scheme[1]`` (t = 1)."""
    if len(scheme) != 2 or any(len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in scheme):
        raise ValueError(f"color_scheme: expected (start RGB, end RGB) with values in 0..255, got {scheme!r}")
    a, b = np.asarray(scheme[0], float), np.asarray(scheme[1], float)
    return np.rint(a + np.clip(t, 0, 1)[:, None] * (b - a)).astype(np.uint8)


def _polygons(batch: Batch, index: int, xy: np.ndarray, radius: float) -> list[np.ndarray]:
    polys = batch.meta.get("cell_polygons")
    p = polys[index] if polys is not None else None
    if p is not None:
        return [np.asarray(q, dtype=float) for q in (p.numpy() if isinstance(p, torch.Tensor) else p)]
    ang = np.arange(8) * np.pi / 4
    ring = np.stack([np.cos(ang), np.sin(ang)], 1) * radius
    return [c + ring for c in xy]


def _slide(attr: Attribution, batch: Batch, index: int) -> dict[str, Any]:
    if attr.kind != "event":
        raise ValueError(f"write_explanation: expected an 'event' attribution (mil.attention), got {attr.kind!r}")
    if not 0 <= index < len(batch):
        raise ValueError(f"write_explanation: index {index} out of range for a batch of {len(batch)}")
    x = batch.inputs[index]
    mask = ~torch.isnan(x).all(-1)
    n = int(mask.sum())
    raw = attr.values[index][mask].double().numpy()
    norm = attr.extras.get("normalized")
    norm = norm[index][mask].double().numpy() if isinstance(norm, torch.Tensor) else \
        normalize(attr.values[index][mask][None], attr.params.get("normalization", "min_max"))[0].double().numpy()
    types = batch.meta.get("cell_type")
    codes = types[index][mask].tolist() if isinstance(types, torch.Tensor) else [-1] * n
    names = list(batch.meta.get("cell_types") or ())
    labels = batch.instance_labels[index][mask].tolist() if batch.instance_labels is not None else None
    return {"xy": x[mask, :2].double().numpy(), "raw": raw, "norm": norm, "mask": mask,
            "types": [names[c] if 0 <= c < len(names) else "unknown" for c in codes], "labels": labels,
            "id": (batch.ids[index] if batch.ids else f"slide_{index}")}


def to_geojson(attr: Attribution, batch: Batch, index: int = 0, *,
               color_scheme: Sequence[Sequence[int]] = DEFAULT_COLORS, cell_radius: float = 4.0) -> dict[str, Any]:
    """The GeoJSON FeatureCollection of one slide (see the module docstring)."""
    s = _slide(attr, batch, index)
    polys = _polygons(batch, index, s["xy"], cell_radius)
    keep = s["mask"].nonzero().flatten().tolist()
    if len(polys) == len(s["mask"]):
        polys = [polys[i] for i in keep]
    colors = gradient_colors(_unit(s["norm"]), color_scheme)
    type_colors = {t: [int(v) for v in gradient_colors(np.array([i / max(1, len(set(s['types'])) - 1)]), ((31, 119, 180), (44, 160, 44)))[0]]
                   for i, t in enumerate(sorted(set(s["types"])))}
    feats = []
    for j, (poly, i) in enumerate(zip(polys, keep)):
        ring = [[float(a), float(b)] for a, b in poly]
        ring.append(ring[0])
        props: dict[str, Any] = {
            "objectType": "detection", "cell_index": i, "attention_weight": float(s["raw"][j]),
            "attention_normalized": float(s["norm"][j]), "color": [int(c) for c in colors[j]],
            "classification": {"name": s["types"][j], "color": type_colors[s["types"][j]]},
            "measurements": {"attention_weight": float(s["raw"][j]), "attention_normalized": float(s["norm"][j])},
        }
        if s["labels"] is not None:
            props["tumour"] = bool(s["labels"][j])
        feats.append({"type": "Feature", "id": str(i), "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": props})
    return {"type": "FeatureCollection", "features": feats,
            "properties": {"slide": s["id"], "method": attr.method, "normalization": attr.params.get("normalization")}}


def graph_figure(attr: Attribution, batch: Batch, index: int = 0, *, k: int = 6,
                 color_scheme: Sequence[Sequence[int]] = DEFAULT_COLORS, visualize_cell_types: bool = False) -> Any:
    """The plotly Figure of one slide's cell graph coloured by attention (see the module docstring)."""
    import plotly.graph_objects as go
    from scipy.spatial import cKDTree

    s = _slide(attr, batch, index)
    xy = s["xy"]
    fig = go.Figure()
    if len(xy) > 1:
        kk = min(k + 1, len(xy))
        d, nb = cKDTree(xy).query(xy, k=kk)
        d, nb = d[:, 1:], nb[:, 1:]
        scale = float(np.median(d)) or 1.0
        opacity = np.exp(-d / scale)
        bins = np.linspace(0, 1, 6)
        for lo, hi in zip(bins[:-1], bins[1:]):
            sel = (opacity > lo) & (opacity <= hi)
            if not sel.any():
                continue
            src, dst = np.nonzero(sel)
            ex = np.stack([xy[src, 0], xy[nb[src, dst], 0], np.full(len(src), np.nan)], 1).ravel()
            ey = np.stack([xy[src, 1], xy[nb[src, dst], 1], np.full(len(src), np.nan)], 1).ravel()
            fig.add_trace(go.Scattergl(x=ex, y=ey, mode="lines", line={"width": 1, "color": "rgb(120,120,120)"},
                                       opacity=float((lo + hi) / 2), hoverinfo="skip", showlegend=False,
                                       name=f"edges {lo:.1f}-{hi:.1f}"))
    c0, c1 = (f"rgb({a},{b},{c})" for a, b, c in color_scheme)
    hover = [f"cell {i}<br>attention {r:.4g}<br>normalised {v:.3g}<br>type {t}" +
             (f"<br>tumour {bool(l)}" if s["labels"] is not None else "")
             for i, (r, v, t, l) in enumerate(zip(s["raw"], s["norm"], s["types"], s["labels"] or [None] * len(xy)))]
    fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", name="attention", text=hover, hoverinfo="text",
                               marker={"size": 7, "color": s["norm"], "colorscale": [[0, c0], [1, c1]],
                                       "colorbar": {"title": "attention"}, "line": {"width": 0}}))
    if visualize_cell_types:
        for t in sorted(set(s["types"])):
            sel = np.array([u == t for u in s["types"]])
            fig.add_trace(go.Scattergl(x=xy[sel, 0], y=xy[sel, 1], mode="markers", name=f"type: {t}",
                                       visible="legendonly", marker={"size": 7}))
    fig.update_layout(title=f"{s['id']}: {attr.method} ({attr.params.get('normalization')})",
                      yaxis={"scaleanchor": "x", "autorange": "reversed"}, template="plotly_white",
                      width=900, height=800)
    return fig


def write_html(fig: Any, path: Path) -> Path:
    """Write a plotly Figure as one self-contained HTML file (plotly.js inline, no CDN, no MathJax)."""
    html = fig.to_html(include_plotlyjs=True, include_mathjax=False, full_html=True)
    atomic_write_text(path, html)
    return path


def write_explanation(attr: Attribution, batch: Batch, out_dir: str | Path, index: int = 0, *,
                      visualization_mode: VisualizationMode = "geojson",
                      color_scheme: Sequence[Sequence[int]] = DEFAULT_COLORS,
                      visualize_cell_types: bool = False, k: int = 6, cell_radius: float = 4.0) -> dict[str, Path]:
    """Write the outputs of sample ``index`` (see the module docstring); returns name -> path.

    Args:
        attr: an ``event`` attribution of ``mil.attention`` for ``batch``.
        out_dir: the output folder (created).
        visualization_mode: ``geojson``, ``graph`` or ``all``.
        color_scheme: (start RGB, end RGB) of the attention gradient.
        visualize_cell_types: add per-cell-type traces to the graph.
        k: neighbours per cell in the graph's edges.
        cell_radius: radius of the stand-in polygons when a slide has no cell polygons.

    Raises:
        ValueError: wrong kind, index, mode or colour scheme.
    """
    if visualization_mode not in ("geojson", "graph", "all"):
        raise ValueError(f"write_explanation: visualization_mode must be 'geojson', 'graph' or 'all', got {visualization_mode!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = _slide(attr, batch, index)
    stem = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in str(s["id"]))
    paths: dict[str, Path] = {}
    if visualization_mode in ("geojson", "all"):
        gj = to_geojson(attr, batch, index, color_scheme=color_scheme, cell_radius=cell_radius)
        paths["geojson"] = out / f"{stem}.geojson"
        atomic_write_text(paths["geojson"], json.dumps(gj))
    if visualization_mode in ("graph", "all"):
        fig = graph_figure(attr, batch, index, k=k, color_scheme=color_scheme, visualize_cell_types=visualize_cell_types)
        paths["graph"] = write_html(fig, out / f"{stem}_graph.html")
    idx = s["mask"].nonzero().flatten().tolist()
    weights = {"slide": s["id"], "method": attr.method, "normalization": attr.params.get("normalization"),
               "cells": [{"index": i, "x": float(p[0]), "y": float(p[1]), "type": t, "attention_weight": float(r),
                          "attention_normalized": float(v)}
                         for i, p, t, r, v in zip(idx, s["xy"], s["types"], s["raw"], s["norm"])]}
    stats = {k2: v[0] for k2, v in attention_stats(torch.from_numpy(s["raw"])[None]).items()}
    meta = {"slide": s["id"], "method": attr.method, "params": attr.params, "n_cells": len(idx), **stats,
            "definitions": {"entropy": "-sum p log p (nats), p = w / sum w",
                            "normalized_entropy": "entropy / log N", "sparsity": "1 - exp(entropy) / N"}}
    paths["weights"] = out / "attention_weights.json"
    paths["metadata"] = out / "attention_metadata.json"
    atomic_write_text(paths["weights"], json.dumps(weights, indent=1))
    atomic_write_text(paths["metadata"], json.dumps(meta, indent=1, default=str))
    return paths


@register_explain_writer("mil")
def explain_writer(model: str, net: torch.nn.Module, method: str, batch: Batch, attr: Attribution,
                   out: str | Path | None, *, visualization_mode: VisualizationMode = "all",
                   color_scheme: Sequence[Sequence[int]] = DEFAULT_COLORS, visualize_cell_types: bool = False,
                   k: int = 6, cell_radius: float = 4.0) -> tuple[Path, str]:
    """``xaibench explain`` for MIL zoo models: :func:`write_explanation` of slide 0 of ``batch``
    (default: every output) to ``out`` (default ``explain_<model>_<method>_<slide>/``)."""
    if attr.kind != "event":
        raise ValueError(f"explain: {method} gives {attr.kind!r} attributions; the slide outputs need one weight per "
                         "cell: use mil.attention (attention_head=H for one head, class_index=C for one class)")
    sid = str(batch.ids[0]) if batch.ids else "slide_0"
    stem = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in f"explain_{model}_{method}_{sid}")
    folder = Path(out) if out is not None else Path(stem)
    paths = write_explanation(attr, batch, folder, 0, visualization_mode=visualization_mode, color_scheme=color_scheme,
                              visualize_cell_types=visualize_cell_types, k=k, cell_radius=cell_radius)
    with torch.no_grad():
        probs = net(batch.inputs).softmax(-1)[0]
    pred = int(probs.argmax())
    label = f", label {int(batch.targets[0])}" if batch.targets is not None else ""
    n = int((~torch.isnan(batch.inputs[0]).all(-1)).sum())
    return folder, (f"{model} predicted class {pred} (p = {float(probs[pred]):.3f}){label}; {method} "
                    f"({attr.params.get('normalization')}) over {n} cells -> {', '.join(p.name for p in paths.values())}")
