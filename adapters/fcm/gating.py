"""Export gate polygons (true or predicted) as Gating-ML 2.0, readable by FlowKit and cytometry software.

Vertices live in the transformed space of the gate's dimensions, so the model scale is
written as Gating-ML transforms: fluorescence arcsinh(x / cofactor) is ``fasinh`` with
T = 262144, A = 0 and M = asinh(T / cofactor) / ln 10 (then fasinh = arcsinh(x / cofactor) /
(M ln 10), so vertices are divided by M ln 10); scatter x / 2^15 is ``flin`` with T = 2^15.
Dimensions are named by detector ($PnN, e.g. ``PE-A`` for CD10), as Gating-ML requires.
The writer needs no FlowKit (the optional ``gating`` extra); tests read the file back with
FlowKit when it is installed.

Example:
    >>> polys = zoo.load("fcm_reluformer_polygon")(events)[0]      # (P, V, 2)
    >>> export_gatingml("gates.xml", polys, model.gate_dims, MARKERS, model.gate_names)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import quoteattr

import torch
from torch import Tensor

from xaibench.datasets.fcs import COFACTOR, DETECTORS, SCATTER_SCALE

NS = ('xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
      'xmlns:transforms="http://www.isac-net.org/std/Gating-ML/v2.0/transformations" '
      'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"')
T_MAX = 262144.0


def _is_scatter(marker: str) -> bool:
    return marker.upper().startswith(("FSC", "SSC"))


def fasinh_m(cofactor: float = COFACTOR, t: float = T_MAX) -> float:
    """The fasinh M that makes Gating-ML's fasinh equal arcsinh(x / cofactor) / (M ln 10)."""
    return math.asinh(t / cofactor) / math.log(10)


def gatingml(polygons: Tensor, dims: Sequence[Sequence[int]], markers: Sequence[str], names: Sequence[str],
             parents: Sequence[str | None] | None = None, *, cofactor: float = COFACTOR,
             scatter_scale: float = SCATTER_SCALE, detectors: dict[str, str] | None = None,
             compensation: str = "FCS") -> str:
    """Gating-ML 2.0 text of P polygon gates given on the model scale.

    Args:
        polygons: (P, V, 2) vertices, gate p in markers ``dims[p]`` (x, y).
        dims: marker indices of each gate; markers: the model's marker names.
        names: gate ids; parents: each gate's parent id or None (default: a chain, as
            the synthetic hierarchy singlets → lymphoid → CD19+ → blasts).
        compensation: ``"FCS"`` (the file's spillover, as :func:`read_fcs`) or ``"uncompensated"``.

    Raises:
        ValueError: shapes that do not match, or a gate on TIME.
    """
    p = torch.as_tensor(polygons, dtype=torch.float64)
    if p.ndim != 3 or p.shape[-1] != 2 or p.shape[0] != len(dims) or len(names) != len(dims):
        raise ValueError(f"gatingml: expected polygons (P, V, 2) with P = len(dims) = len(names), got {tuple(p.shape)}, "
                         f"{len(dims)} dims, {len(names)} names")
    parents = list(parents) if parents is not None else [None, *names[:-1]]
    det = {**DETECTORS, **(detectors or {})}
    m = fasinh_m(cofactor)
    used = sorted({markers[i] for d in dims for i in d})
    if "TIME" in used:
        raise ValueError("gatingml: gates on TIME are not supported")
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f"<gating:Gating-ML {NS}>",
             '  <transforms:transformation transforms:id="scatter_lin">',
             f'    <transforms:flin transforms:T="{scatter_scale:g}" transforms:A="0" />',
             "  </transforms:transformation>",
             f'  <transforms:transformation transforms:id="asinh_cofactor{cofactor:g}">',
             f'    <transforms:fasinh transforms:T="{T_MAX:g}" transforms:M="{m:.12g}" transforms:A="0" />',
             "  </transforms:transformation>"]
    for gi, (name, dim, parent) in enumerate(zip(names, dims, parents)):
        attrs = f"gating:id={quoteattr(str(name))}" + (f" gating:parent_id={quoteattr(str(parent))}" if parent else "")
        lines.append(f"  <gating:PolygonGate {attrs}>")
        scale = []
        for i in dim:
            mk = markers[i]
            xf = "scatter_lin" if _is_scatter(mk) else f"asinh_cofactor{cofactor:g}"
            scale.append(1.0 if _is_scatter(mk) else 1.0 / (m * math.log(10)))
            lines += [f'    <gating:dimension gating:compensation-ref="{compensation}" gating:transformation-ref="{xf}">',
                      f"      <data-type:fcs-dimension data-type:name={quoteattr(det.get(mk, mk))} />",
                      "    </gating:dimension>"]
        for x, y in p[gi].tolist():
            lines += ["    <gating:vertex>", f'      <gating:coordinate data-type:value="{x * scale[0]:.10g}" />',
                      f'      <gating:coordinate data-type:value="{y * scale[1]:.10g}" />', "    </gating:vertex>"]
        lines.append("  </gating:PolygonGate>")
    lines.append("</gating:Gating-ML>")
    return "\n".join(lines) + "\n"


def export_gatingml(path: str | Path, polygons: Tensor, dims: Sequence[Sequence[int]], markers: Sequence[str],
                    names: Sequence[str], parents: Sequence[str | None] | None = None, **kw) -> Path:
    """Write :func:`gatingml` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(gatingml(polygons, dims, markers, names, parents, **kw))
    return path
