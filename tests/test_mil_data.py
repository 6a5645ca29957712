"""MIL data: synthetic slides (exact morphology / topology, clustered tumour cells, only the defining
features shift, the confounded regime) and the user-folder loader (CSV / parquet / GeoJSON /
metadata with FULL_PATH, NaN padding)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial import ConvexHull, cKDTree

import xaibench
from xaibench.datasets.mil_slides import (
    COLUMNS, CONFOUNDER, CONTEXT_FEATURES, DEFINING_FEATURES, FEATURES, regime_of,
)

C = {c: i for i, c in enumerate(COLUMNS)}


@pytest.fixture(scope="module")
def slides():
    return xaibench.create_dataset("mil_slides", n=12, batch_size=12, seed=5, n_cells=300, positive_rate=1.0,
                                   tumour_fraction=(0.05, 0.3)).all()


def test_shapes_and_determinism(slides):
    assert slides.inputs.shape == (12, 300, 2 + len(FEATURES)) and slides.instance_labels.shape == (12, 300)
    again = xaibench.create_dataset("mil_slides", n=3, batch_size=2, seed=5, n_cells=300, positive_rate=1.0,
                                    tumour_fraction=(0.05, 0.3))
    parts = list(again)
    assert torch.equal(torch.cat([b.inputs for b in parts]), slides.inputs[:3])  # batch size does not matter
    assert slides.targets.tolist() == [1] * 12
    frac = slides.instance_labels.float().mean(1)
    assert torch.allclose(frac, torch.tensor(slides.meta["tumour_fraction"]), atol=1e-6)


def test_morphology_is_exact_from_the_polygons(slides):
    # independent references: scipy's convex hull, the shoelace formula, isoperimetric ratio
    from skimage.draw import polygon as raster
    from skimage.measure import regionprops

    x, polys = slides.inputs[0].double().numpy(), slides.meta["cell_polygons"][0].double().numpy()
    for i in range(0, 300, 37):
        p = polys[i]
        area = 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(np.roll(p[:, 0], -1), p[:, 1]))
        assert np.isclose(x[i, C["area"]], area, rtol=1e-5)
        assert np.isclose(x[i, C["solidity"]], area / ConvexHull(p).volume, rtol=1e-5)
        perim = np.linalg.norm(np.roll(p, -1, 0) - p, axis=1).sum()
        assert np.isclose(x[i, C["circularity"]], 4 * np.pi * area / perim ** 2, rtol=1e-5)
    # eccentricity and axis lengths as skimage regionprops of the rasterised polygon (x20 µm scale)
    p = polys[3] * 20
    p = p - p.min(0) + 5
    img = np.zeros((int(p[:, 1].max()) + 10, int(p[:, 0].max()) + 10), int)
    rr, cc = raster(p[:, 1], p[:, 0], img.shape)
    img[rr, cc] = 1
    r = regionprops(img)[0]
    assert abs(r.eccentricity - x[3, C["eccentricity"]]) < 0.01
    assert abs(r.axis_major_length / 20 - x[3, C["major_axis_length"]]) < 0.02 * x[3, C["major_axis_length"]]


def test_topology_is_exact(slides):
    x = slides.inputs[1].double().numpy()
    xy = x[:, :2]
    side = np.ceil(np.sqrt(300)) * 14.0
    d = np.abs(xy[:, None] - xy[None])
    d = np.minimum(d, side - d)  # the slide wraps around (periodic)
    dist = np.sqrt((d ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    assert np.array_equal(x[:, C["neighbour_count"]], (dist <= 30).sum(1))
    assert np.allclose(x[:, C["mean_neighbour_distance"]], np.sort(dist, 1)[:, :6].mean(1), rtol=1e-5)


def test_tumour_cells_are_clustered(slides):
    for i in range(4):
        xy, lab = slides.inputs[i, :, :2].numpy(), slides.instance_labels[i].numpy()
        k = int(lab.sum())
        # the tumour cells' mean distance to their nearest tumour neighbour is far below a random set's
        t = cKDTree(xy[lab]).query(xy[lab], k=2)[0][:, 1].mean()
        rnd = np.random.default_rng(i).choice(300, k, replace=False)
        r = cKDTree(xy[rnd]).query(xy[rnd], k=2)[0][:, 1].mean()
        assert t < 0.7 * r


def test_only_the_defining_features_shift():
    b = xaibench.create_dataset("mil_slides", n=40, batch_size=40, seed=1, n_cells=256, positive_rate=1.0,
                                tumour_fraction=0.3).all()
    lab = b.instance_labels
    for f in FEATURES:
        v = b.inputs[..., C[f]].double()
        d = float((v[lab].mean() - v[~lab].mean()) / v[~lab].std())
        if f in ("area", "eccentricity", "intensity_mean", "glcm_contrast"):
            assert abs(d) > 0.8, (f, d)
        elif f not in DEFINING_FEATURES:
            assert abs(d) < 0.12, (f, d)  # no other feature moves with the tumour label
    assert set(CONTEXT_FEATURES) <= set(FEATURES) and not set(CONTEXT_FEATURES) & set(DEFINING_FEATURES)


def test_confounded_regime():
    b = xaibench.create_dataset("mil_slides", n=16, batch_size=16, seed=2, n_cells=200, confounded=True).all()
    conf = b.meta["confounder_cells"]
    pos = b.targets.bool()
    assert conf[~pos].sum() == 0 and (conf[pos].float().mean(1) > 0.1).all()
    assert not (conf & b.instance_labels).any()  # the confounder cells are not tumour cells
    v = b.inputs[..., C[CONFOUNDER]]
    assert v[conf].mean() < v[~conf].mean() - 0.1
    assert b.meta["confounder"] == CONFOUNDER and CONFOUNDER not in DEFINING_FEATURES


def test_regimes_and_bad_settings():
    assert [regime_of(f) for f in (0, 0.005, 0.02, 0.1, 0.5)] == ["negative", "<1%", "1-5%", "5-20%", ">=20%"]
    with pytest.raises(ValueError, match="tumour_fraction"):
        xaibench.create_dataset("mil_slides", n=2, tumour_fraction=1.5).all()
    with pytest.raises(ValueError, match="n_cells"):
        xaibench.create_dataset("mil_slides", n=2, n_cells=3).all()


# ----------------------------------------------------------------------------- mil_folder

def _write_slide(folder, rng, n, fmt):
    folder.mkdir(parents=True)
    xy = rng.uniform(0, 200, (n, 2))
    cells = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "area": rng.uniform(20, 60, n),
                          "intensity_mean": rng.uniform(0, 1, n), "tumour": rng.random(n) < 0.2,
                          "cell_type": rng.choice(["neoplastic", "inflammatory"], n)})
    if fmt == "parquet":
        cells.to_parquet(folder / "cells.parquet")
    else:
        cells.to_csv(folder / "cells.csv", index=False)
    feats = []
    for j, (cx, cy) in enumerate(xy[::-1]):  # reversed order: matching must use the centroids
        ring = [[cx + 3 * np.cos(a), cy + 3 * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 7)[:-1]]
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]},
                      "properties": {"objectType": "detection"}})
    (folder / "cells.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return cells


def test_folder_loader_reads_tables_polygons_and_pads(tmp_path):
    rng = np.random.default_rng(0)
    tables = {name: _write_slide(tmp_path / name, rng, n, fmt)
              for name, n, fmt in (("SLIDE_1", 30, "csv"), ("SLIDE_2", 45, "parquet"), ("SLIDE_3", 12, "csv"))}
    pd.DataFrame({"FULL_PATH": list(tables), "label": ["MSI", "MSS", "MSI"]}).to_csv(tmp_path / "metadata.csv", index=False)
    ds = xaibench.create_dataset("mil_folder", root=str(tmp_path), batch_size=3)
    b = next(iter(ds))
    assert b.inputs.shape == (3, 45, 4) and b.meta["columns"] == ("x", "y", "area", "intensity_mean")
    assert b.targets.tolist() == [0, 1, 0]  # names -> codes in sorted order (MSI, MSS)
    assert b.meta["cell_mask"].sum(1).tolist() == [30, 45, 12]
    assert torch.isnan(b.inputs[0, 30:]).all() and not torch.isnan(b.inputs[0, :30]).any()
    t = tables["SLIDE_1"]
    assert np.allclose(b.inputs[0, :30, 2].numpy(), t["area"].to_numpy(), rtol=1e-6)
    assert b.instance_labels[0, :30].tolist() == t["tumour"].tolist() and not b.instance_labels[0, 30:].any()
    poly = b.meta["cell_polygons"][0][4]
    assert np.allclose(poly.mean(0), t[["x", "y"]].to_numpy()[4], atol=1e-6)  # matched by centroid
    # a MIL model runs on the padded batch and gives the padding no attention
    model = xaibench.create_model("mil.abmil", n_features=2, hidden=8, d_att=4).eval()
    attr = xaibench.create_explainer("mil.attention", model).explain(b.inputs)
    assert attr.values[0, 30:].abs().max() == 0 and torch.allclose(attr.values.sum(1), torch.ones(3), atol=1e-5)


def test_folder_loader_excel_metadata_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    _write_slide(tmp_path / "A", rng, 10, "csv")
    pytest.importorskip("openpyxl")
    pd.DataFrame({"FULL_PATH": ["A"], "grade": [2]}).to_excel(tmp_path / "metadata.xlsx", index=False)
    b = xaibench.create_dataset("mil_folder", root=str(tmp_path), label_column="grade").all()
    assert b.targets.tolist() == [2]
    with pytest.raises(ValueError, match="no column 'label'"):
        xaibench.create_dataset("mil_folder", root=str(tmp_path))
    pd.DataFrame({"FULL_PATH": ["missing"], "label": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="not found"):
        xaibench.create_dataset("mil_folder", root=str(tmp_path), metadata=str(tmp_path / "bad.csv"))
    with pytest.raises(ValueError, match="root= is required"):
        xaibench.create_dataset("mil_folder")
