"""MIL explanation outputs: GeoJSON FeatureCollection (closed polygons, attention_weight, round trip),
self-contained plotly HTML (library inline, no external reference), the JSON files."""

import json
import math
import re

import numpy as np
import pytest
import torch

import xaibench
from xaibench.adapters.mil.fixture import fixture_batch
from xaibench.adapters.mil.outputs import gradient_colors, write_explanation


@pytest.fixture(scope="module")
def explained():
    batch = fixture_batch(n=2, n_cells=60)
    torch.manual_seed(0)
    model = xaibench.create_model("mil.abmil", n_features=22, hidden=8, d_att=4)
    model.fit_transform(batch.inputs[..., 2:])
    attr = xaibench.create_explainer("mil.attention", model.eval()).explain_batch(batch)
    return attr, batch


def test_geojson_is_a_valid_feature_collection_and_round_trips(explained, tmp_path):
    attr, batch = explained
    paths = write_explanation(attr, batch, tmp_path, index=1, visualization_mode="geojson")
    gj = json.loads(paths["geojson"].read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 60
    polys = batch.meta["cell_polygons"][1]
    for f in gj["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        ring = f["geometry"]["coordinates"][0]
        assert len(ring) >= 4 and ring[0] == ring[-1]  # closed linear ring
        i = f["properties"]["cell_index"]
        # round trip: the polygon and the raw weight of the cell come back exactly (float32 -> JSON)
        assert np.allclose(np.array(ring[:-1]), polys[i].numpy(), atol=1e-5)
        assert math.isclose(f["properties"]["attention_weight"], float(attr.values[1, i]), rel_tol=1e-6)
        assert f["properties"]["tumour"] == bool(batch.instance_labels[1, i])
        assert len(f["properties"]["color"]) == 3
    # the colour follows the normalised weight: the most attended cell is the end colour
    top = max(gj["features"], key=lambda f: f["properties"]["attention_weight"])
    assert top["properties"]["color"] == [215, 48, 39]
    # shapely-free area check: shoelace of the ring equals the polygon area feature of the cell
    f0 = gj["features"][0]
    ring = np.array(f0["geometry"]["coordinates"][0])
    area = 0.5 * abs(np.dot(ring[:-1, 0], ring[1:, 1]) - np.dot(ring[1:, 0], ring[:-1, 1]))
    assert math.isclose(area, float(batch.inputs[1, 0, 2]), rel_tol=1e-4)


def test_geojson_round_trips_through_the_folder_loader(explained, tmp_path):
    from xaibench.datasets.mil_folder import read_geojson_polygons

    attr, batch = explained
    paths = write_explanation(attr, batch, tmp_path, index=0)
    cent, rings = read_geojson_polygons(paths["geojson"])
    assert len(rings) == 60 and np.allclose(rings[5], batch.meta["cell_polygons"][0, 5].numpy(), atol=1e-5)


def _outside_plotly_bundle(html: str) -> str:
    """The page with the inline plotly.js library removed (the part we generate)."""
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, flags=re.S)
    bundle = max(scripts, key=len)
    assert "plotly.js" in bundle[:2000] and len(bundle) > 1_000_000  # the library itself is inline
    return html.replace(bundle, "")


def test_graph_html_is_self_contained(explained, tmp_path):
    attr, batch = explained
    paths = write_explanation(attr, batch, tmp_path, visualization_mode="all", visualize_cell_types=True)
    html = paths["graph"].read_text()
    assert not re.search(r"<script[^>]*\ssrc=|<link[^>]*\shref=", html)  # no script or stylesheet is fetched
    rest = _outside_plotly_bundle(html)
    assert not re.search(r"(src|href)\s*=", rest)
    assert "http" not in rest  # no reference at all outside the library's own code
    assert "type: epithelial" in rest and "attention" in rest


def test_weights_and_metadata_json(explained, tmp_path):
    attr, batch = explained
    paths = write_explanation(attr, batch, tmp_path)
    w = json.loads(paths["weights"].read_text())
    raw = np.array([c["attention_weight"] for c in w["cells"]])
    assert np.allclose(raw, attr.values[0].numpy(), atol=1e-7) and math.isclose(raw.sum(), 1.0, rel_tol=1e-5)
    meta = json.loads(paths["metadata"].read_text())
    p = raw / raw.sum()
    ent = float(-(p * np.log(p)).sum())
    assert math.isclose(meta["entropy"], ent, rel_tol=1e-6)
    assert math.isclose(meta["sparsity"], 1 - math.exp(ent) / 60, rel_tol=1e-6)
    assert math.isclose(meta["mean"], 1 / 60, rel_tol=1e-5) and meta["params"]["normalization"] == "min_max"


def test_bad_options_raise(explained, tmp_path):
    attr, batch = explained
    with pytest.raises(ValueError, match="visualization_mode"):
        write_explanation(attr, batch, tmp_path, visualization_mode="png")
    with pytest.raises(ValueError, match="color_scheme"):
        gradient_colors(np.zeros(2), ((0, 0, 0),))
    with pytest.raises(ValueError, match="index"):
        write_explanation(attr, batch, tmp_path, index=5)
