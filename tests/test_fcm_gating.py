"""Gating-ML export of gate polygons: structure, transform maths, and (with FlowKit) the same events gated."""

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

import xaibench
from xaibench.adapters.fcm.gating import export_gatingml, fasinh_m, gatingml
from xaibench.datasets.fcm_synthetic import MARKERS
from xaibench.metrics.fcm_polygon import points_in_polygon

G = "{http://www.isac-net.org/std/Gating-ML/v2.0/gating}"
D = "{http://www.isac-net.org/std/Gating-ML/v2.0/datatypes}"


@pytest.fixture(scope="module")
def sample():
    b = xaibench.create_dataset("fcm_ball", n=1, seed=3, n_events=3000, blast_fraction=0.2).all()
    return b.inputs[0], b.polygons[0]


def test_structure_parents_detectors_and_vertex_scale(sample):
    _, p = sample
    root = ET.fromstring(gatingml(p["vertices"], p["dims"], MARKERS, p["names"], p["parents"]))
    gates = root.findall(f"{G}PolygonGate")
    assert [g.get(f"{G}id") for g in gates] == list(p["names"])
    assert [g.get(f"{G}parent_id") for g in gates] == list(p["parents"])
    blast = gates[3]
    assert [d.find(f"{D}fcs-dimension").get(f"{D}name") for d in blast.findall(f"{G}dimension")] == ["PerCP-A", "PE-A"]
    v = [[float(c.get(f"{D}value")) for c in vx.findall(f"{G}coordinate")] for vx in blast.findall(f"{G}vertex")]
    np.testing.assert_allclose(np.array(v) * fasinh_m() * math.log(10), p["vertices"][3].numpy(), rtol=1e-6)
    singlets = [[float(c.get(f"{D}value")) for c in vx.findall(f"{G}coordinate")] for vx in gates[0].findall(f"{G}vertex")]
    np.testing.assert_allclose(singlets, p["vertices"][0].numpy(), rtol=1e-6)  # scatter: flin with T = 2^15


def test_fasinh_parameters_reproduce_the_model_scale():
    m, t = fasinh_m(150.0), 262144.0
    x = np.array([-500.0, 0.0, 150.0, 5000.0, 200000.0])
    fasinh = np.arcsinh(x * np.sinh(m * np.log(10)) / t) / (m * np.log(10))  # Gating-ML 2.0 fasinh, A = 0
    np.testing.assert_allclose(fasinh * m * np.log(10), np.arcsinh(x / 150.0), rtol=1e-9, atol=1e-12)


def _edge_distance(pts, verts):
    """(N,) distance of each point to the nearest polygon edge (float64)."""
    a, b = verts, np.roll(verts, -1, 0)
    ab = b - a
    t = np.clip(((pts[:, None] - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-300), 0, 1)
    return np.linalg.norm(pts[:, None] - (a + t[..., None] * ab), axis=-1).min(1)


def test_flowkit_gates_the_same_events(sample, tmp_path):
    fk = pytest.importorskip("flowkit", reason="FlowKit is the optional 'gating' extra (pip install 'xaibench[gating]')")
    from xaibench.datasets.fcs import write_fcs

    events, p = sample
    fcs = write_fcs(tmp_path / "s.fcs", events, MARKERS)
    xml = export_gatingml(tmp_path / "g.xml", p["vertices"], p["dims"], MARKERS, p["names"], p["parents"],
                          compensation="uncompensated")
    strategy = fk.parse_gating_xml(str(xml))
    res = strategy.gate_sample(fk.Sample(str(fcs)))
    # reference: FlowKit's own gating of the exported file; exact for every event farther than
    # 1e-3 (model scale) from a gate edge on its path (float32 FCS values and the fasinh round
    # trip move events by ~1e-6)
    ours = torch.ones(events.shape[0], dtype=torch.bool)
    near = np.zeros(events.shape[0], dtype=bool)
    for j, name in enumerate(p["names"]):
        xy = events[None][..., list(p["dims"][j])]
        ours &= points_in_polygon(xy, p["vertices"][j:j + 1])[0]
        near |= _edge_distance(xy[0].double().numpy(), p["vertices"][j].double().numpy()) < 1e-3
        theirs = np.asarray(res.get_gate_membership(name), dtype=bool)
        assert near.mean() < 0.01
        assert np.array_equal(theirs[~near], ours.numpy()[~near]), name
