"""Synthetic B-ALL marrow and FCS IO: seeded samples, exact labels, biologically placed populations,
gates that hold their populations, FCS round trips, and the real St. Anna tube."""

import numpy as np
import pytest
import torch

import xaibench
from xaibench.datasets.fcm_synthetic import MARKERS, POPULATIONS, regime_of
from xaibench.datasets.fcs import canonical_marker, example_fcs_path, export_synthetic, read_fcs, write_fcs
from xaibench.metrics.fcm_polygon import points_in_polygon


@pytest.fixture(scope="module")
def batch():
    return xaibench.create_dataset("fcm_ball", n=4, batch_size=4, seed=7, n_events=6000, blast_fraction=(0.02, 0.5)).all()


def test_seeded_and_sample_wise():
    a = xaibench.create_dataset("fcm_ball", n=3, batch_size=3, seed=1, n_events=2000).all()
    b = xaibench.create_dataset("fcm_ball", n=3, batch_size=1, seed=1, n_events=2000)
    assert torch.equal(a.inputs[2], list(b)[2].inputs[0])
    c = xaibench.create_dataset("fcm_ball", n=3, batch_size=3, seed=2, n_events=2000).all()
    assert not torch.equal(a.inputs, c.inputs)


def test_shapes_labels_and_meta(batch):
    assert batch.inputs.shape == (4, 6000, 10) and batch.inputs.dtype == torch.float32
    assert batch.instance_labels.dtype == torch.bool and batch.targets.tolist() == [1] * 4
    assert batch.meta["markers"] == MARKERS
    pop = batch.meta["population"]
    assert torch.equal(batch.instance_labels, pop == POPULATIONS.index("blast"))
    for i, f in enumerate(batch.meta["blast_fraction"]):
        assert int(batch.instance_labels[i].sum()) == round(f * 6000)  # exact blast count
        assert batch.meta["regime"][i] == regime_of(f)
    sub = batch.select([2])  # markers stay batch-level
    assert sub.meta["markers"] == MARKERS and sub.meta["population"].shape == (1, 6000)
    t = xaibench.create_dataset("fcm_ball", n=1, n_events=100, include_time=True).all()
    assert t.inputs.shape[-1] == 11 and bool((t.inputs[0, 1:, -1] >= t.inputs[0, :-1, -1]).all())


def test_populations_sit_where_the_biology_puts_them(batch):
    x, pop = batch.inputs.reshape(-1, 10), batch.meta["population"].reshape(-1)
    med = {p: x[pop == i].median(0).values for i, p in enumerate(POPULATIONS) if (pop == i).any()}
    m = {k: i for i, k in enumerate(MARKERS)}
    assert med["blast"][m["CD10"]] > med["mature_b"][m["CD10"]] + 4  # CD10 bright
    assert med["blast"][m["CD45"]] < med["t_nk_lymphocyte"][m["CD45"]] - 0.5  # CD45 dim
    assert med["blast"][m["CD19"]] > 3.5 and med["t_nk_lymphocyte"][m["CD19"]] < 1.5
    assert med["erythroid"][m["CD45"]] < 2.5  # CD45 negative
    assert med["granulocyte"][m["SSC-A"]] > 6.5 and med["t_nk_lymphocyte"][m["SSC-A"]] < 2
    assert med["doublet"][m["FSC-W"]] > med["t_nk_lymphocyte"][m["FSC-W"]] + 0.3
    assert med["debris"][m["FSC-A"]] < 1.0


def test_true_gates_hold_their_populations(batch):
    pop = batch.meta["population"]
    for i in range(4):
        p = batch.polygons[i]
        assert p["vertices"].shape == (4, 8, 2) and p["names"] == ("singlets", "lymphoid", "cd19", "blasts")
        inside = [points_in_polygon(batch.inputs[i:i + 1][..., list(d)], p["vertices"][j:j + 1])[0]
                  for j, d in enumerate(p["dims"])]
        share = lambda gate, name: float(inside[gate][pop[i] == POPULATIONS.index(name)].float().mean())  # noqa: E731
        assert share(0, "t_nk_lymphocyte") > 0.9 and share(0, "doublet") < 0.4 and share(0, "debris") < 0.3
        assert share(1, "t_nk_lymphocyte") > 0.85 and share(1, "granulocyte") < 0.05 and share(1, "erythroid") < 0.1
        assert share(2, "mature_b") > 0.8 and share(2, "t_nk_lymphocyte") < 0.05
        assert share(3, "blast") > 0.85 and share(3, "mature_b") < 0.05


def test_fcs_round_trip_and_folder_dataset(tmp_path):
    paths = export_synthetic(tmp_path, n=3, seed=5, n_events=1500)
    ds = xaibench.create_dataset("fcm_ball", n=3, seed=5, n_events=1500)
    s = read_fcs(paths[1], markers=MARKERS)
    np.testing.assert_allclose(s.events, ds.sample(1)["inputs"], atol=1e-4)
    assert (s.labels == ds.sample(1)["instance_labels"]).all()
    assert s.channels[4] == "PE-A" and s.markers[4] == "CD10"
    b = xaibench.create_dataset("fcs_folder", path=str(tmp_path), n=10, batch_size=2, n_events=1000).all()
    assert b.inputs.shape == (3, 1000, 10) and b.instance_labels.shape == (3, 1000)
    (tmp_path / "odd").mkdir()
    write_fcs(tmp_path / "odd" / "a.fcs", np.zeros((10, 10)), MARKERS)
    write_fcs(tmp_path / "odd" / "b.fcs", np.zeros((12, 10)), MARKERS)
    with pytest.raises(ValueError, match="different event counts"):
        xaibench.create_dataset("fcs_folder", path=str(tmp_path / "odd")).all()
    with pytest.raises(ValueError, match="no channel for markers"):
        read_fcs(paths[0], markers=["CD3"])


def test_marker_names():
    assert canonical_marker("PacificBlue-A", "Syto 41") == "SY41"
    assert canonical_marker("APC-Cy7-A", "") == "APC-CY7-A"
    assert canonical_marker("PE-A", "CD10") == "CD10" and canonical_marker("Time") == "TIME"


@pytest.mark.skipif(example_fcs_path() is None,
                    reason="the real St. Anna B-ALL tube ships in fcsparser 0.2.8: "
                           "`.venv/bin/pip install --no-deps fcsparser==0.2.8` (it pins numpy<2, hence --no-deps)")
def test_real_st_anna_tube_reads_onto_the_synthetic_scale():
    s = read_fcs(example_fcs_path(), markers=MARKERS)
    assert s.events.shape == (83411, 10) and s.meta["compensated"]
    m = {k: i for i, k in enumerate(MARKERS)}
    x = s.events
    sat = np.mean(x[:, m["SSC-A"]] >= 262143 / 32768 - 1e-3)
    assert 0.15 < sat < 0.3  # ~22% of events saturate SSC-A (granulocytes)
    blasts = (x[:, m["CD10"]] > 5.8) & (x[:, m["CD19"]] > 3.5)  # CD19+ CD10-bright: this tube is a B-ALL
    assert blasts.mean() > 0.2
    assert 4.6 < np.median(x[blasts, m["CD45"]]) < 5.6  # CD45 dim, as the synthetic blasts
    syn = xaibench.create_dataset("fcm_ball", n=1, n_events=20000, blast_fraction=0.3).all().inputs[0].numpy()
    lymph = lambda e: (e[:, m["CD45"]] > 5.8) & (e[:, m["SSC-A"]] < 2) & (e[:, m["CD19"]] < 2)  # noqa: E731
    for marker in ("FSC-A", "SSC-A", "CD45", "SY41"):
        assert abs(np.median(x[lymph(x), m[marker]]) - np.median(syn[lymph(syn), m[marker]])) < 0.6
