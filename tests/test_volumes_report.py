"""Reports of voxel maps: the three orthogonal planes through each map's maximum (figure
``voxel_planes``), from a real run of the zoo 3-D CNN."""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaibench.report.volume_figures import argmax3, planes_through


def test_planes_through_a_point_are_the_index_slices():
    # reference: numpy indexing written out per plane, and the maximum found by a Python scan
    rng = np.random.default_rng(0)
    v = rng.random((5, 6, 7))
    best = max(((d, h, w) for d in range(5) for h in range(6) for w in range(7)), key=lambda p: v[p])
    assert argmax3(v) == best
    ax, co, sa = planes_through(v, best)
    assert ax.shape == (6, 7) and co.shape == (5, 7) and sa.shape == (5, 6)
    d, h, w = best
    assert ax[h, w] == co[d, w] == sa[d, h] == v.max()
    assert all(ax[i, j] == v[d, i, j] for i in range(6) for j in range(7))


def test_a_volume_run_report_shows_three_planes_per_method(tmp_path):
    from xaibench.runner.run import run_benchmark

    toml = """
name = "vol_report"
seed = 0
[[study]]
name = "vol"
datasets = [{ name = "volume_lesions", params = { size = 16 } }]
models = [{ zoo = "volume_cnn3d", label = "cnn3d" }]
explainers = [{ name = "cnn.gradcam", params = { layer = "stage2" } }]
metrics = ["pointing_game"]
n_samples = 2
batch_size = 2
target = "label"
baselines = ["random", "centre"]
"""
    (tmp_path / "b.toml").write_text(toml)
    res = run_benchmark(tmp_path / "b.toml", out=tmp_path / "run", quiet=True)
    assert res.n_failed == 0
    pngs = sorted((tmp_path / "run" / "figures").glob("voxel_planes_*.png"))
    assert [p.name for p in pngs] == ["voxel_planes_vol_volume_lesions_cnn3d.png"]
    html = (tmp_path / "run" / "report.html").read_text()
    assert "voxel maps on volume_lesions / cnn3d (axial, coronal, sagittal)" in html
    s = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert {"baseline.random", "baseline.centre"} <= set(s["explainer"])  # the centre prior applies to voxels
