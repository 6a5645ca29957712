"""Instance-set and polygon metrics against hand-computed cases, including the edge cases of the
paper's appendix 7.2 (0 with no positive in the top 5%, 1 when all positives are in it or the
top 5% is all positive)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from xaibench import Attribution, Batch, create_metric
from xaibench.metrics.fcm_gradient_step import f1_score
from xaibench.metrics.fcm_polygon import points_in_polygon

TOP5 = create_metric("top_k_positive_fraction")


def _case(scores, labels, kind="event"):
    s = torch.as_tensor(scores, dtype=torch.float32)
    lab = torch.as_tensor(labels, dtype=torch.bool)
    n = lab.shape[-1]
    return Attribution(values=s, kind=kind, method="t"), Batch(inputs=torch.zeros(lab.shape[0], n, 2), instance_labels=lab)


def _ranked(n, positives_at):
    """Scores n-1 ... 0 (event 0 ranked first) and labels true at the given ranks."""
    lab = torch.zeros(1, n, dtype=torch.bool)
    lab[0, list(positives_at)] = True
    return torch.arange(n, 0, -1).float()[None], lab


def test_top5_edge_cases_of_the_appendix():
    n = 100  # top 5% = 5 events
    s, lab = _ranked(n, [50, 60, 70])
    assert float(TOP5(*_case(s, lab))) == 0.0  # no positive in the top 5%
    s, lab = _ranked(n, [0, 2, 4])
    assert float(TOP5(*_case(s, lab))) == 1.0  # all 3 positives in the top 5 (recall 1)
    s, lab = _ranked(n, list(range(0, 5)) + list(range(40, 60)))
    assert float(TOP5(*_case(s, lab))) == 1.0  # the top 5 are all positive (precision 1)


def test_top5_hand_computed():
    n = 200  # top 10 events
    s, lab = _ranked(n, [0, 3, 9, 10, 50])  # 3 of 5 positives in the top 10 -> 3 / min(10, 5)
    assert float(TOP5(*_case(s, lab))) == pytest.approx(3 / 5)
    s, lab = _ranked(n, [1, 2, 3, 4] + list(range(100, 120)))  # 4 positives in the top 10 of 24 -> 4 / 10
    assert float(TOP5(*_case(s, lab))) == pytest.approx(4 / 10)
    s, lab = _ranked(n, [0, 30])
    k20 = create_metric("top_k_positive_fraction", k=0.2)  # top 40 holds both
    assert float(k20(*_case(s, lab))) == 1.0


def test_top5_ties_count_at_chance_and_no_positive_is_nan():
    lab = torch.zeros(2, 100, dtype=torch.bool)
    lab[0, :20] = True  # positives first: a tie-broken-by-position metric would say 1.0
    res = TOP5.evaluate(*_case(torch.ones(2, 100), lab))
    assert float(res.scores[0]) == pytest.approx(5 * 0.2 / 5)  # expected positives 1 of min(5, 20)
    assert math.isnan(float(res.scores[1])) and res.reasons[1] == "no positive instances"


def test_top5_per_head_and_vector_norms():
    s, lab = _ranked(100, [0, 1, 2])
    heads = torch.stack([s[0], s[0].flip(0), s[0]])[None]  # head 1 ranks the positives last
    attr, batch = _case(heads, lab, kind="event_head")
    per = [float(create_metric("top_k_positive_fraction", head=h)(attr, batch)) for h in range(3)]
    assert per == [1.0, 0.0, 1.0]
    assert float(create_metric("top_k_positive_fraction", head="mean")(attr, batch)) == pytest.approx(2 / 3)
    assert float(create_metric("top_k_positive_fraction", head="max")(attr, batch)) == 1.0
    vec = torch.zeros(1, 100, 3)
    vec[0, :, 2] = -s[0]  # the norm ranks like s
    assert float(TOP5(*_case(vec, lab, kind="event_vector"))) == 1.0
    res = create_metric("top_k_positive_fraction", head=1).evaluate(*_case(vec, lab, kind="event_vector"))
    assert math.isnan(float(res.scores[0])) and "have none" in res.reasons[0]
    with pytest.raises(ValueError, match="head"):
        create_metric("top_k_positive_fraction", head=7)(attr, batch)


def _edge_distance(pts, verts):
    """(N,) distance of each point to the nearest polygon edge (float64)."""
    a, b = verts, np.roll(verts, -1, 0)  # (V, 2) segment ends
    ab = b - a
    t = np.clip(((pts[:, None] - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-300), 0, 1)  # (N, V)
    return np.linalg.norm(pts[:, None] - (a + t[..., None] * ab), axis=-1).min(1)


def test_points_in_polygon_matches_matplotlib_and_flowutils_exactly():
    # references: matplotlib's Path.contains_points and flowutils' points_in_polygon (winding
    # number); on simple polygons every rule agrees off the edges, so agreement must be exact
    from flowutils.gating import points_in_polygon as fu_points_in_polygon
    from matplotlib.path import Path

    g = torch.Generator().manual_seed(0)
    verts = torch.tensor([[[0.0, 0.0], [4.0, 0.5], [3.0, 3.0], [2.0, 1.5], [0.5, 3.5]],  # non-convex
                          [[1.0, 1.0], [3.5, 0.2], [4.2, 2.0], [4.2, 2.0], [1.5, 4.0]]])  # a repeated vertex
    pts = torch.rand(2, 3000, 2, generator=g) * 5 - 0.5
    pts[:, :40] = verts.repeat(1, 8, 1)  # the vertices themselves are on edges: excluded below
    ours = points_in_polygon(pts, verts).numpy()
    for i in range(2):
        p, v = pts[i].double().numpy(), verts[i].double().numpy()
        off_edge = _edge_distance(p, v) > 1e-4
        assert off_edge.sum() > 2900
        mpl = Path(v).contains_points(p)
        fu = np.asarray(fu_points_in_polygon(v, p), dtype=bool)
        assert np.array_equal(mpl[off_edge], fu[off_edge])  # the two references agree
        assert np.array_equal(ours[i][off_edge], mpl[off_edge])
        assert 300 < ours[i][off_edge].sum() < 2700  # both sides are exercised


def _poly_case():
    pts = torch.tensor([[[0.5, 0.5, 9.0], [0.2, 0.8, 9.0], [3.0, 3.0, 9.0], [0.6, 0.1, 9.0]]])
    square = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    return Batch(inputs=pts), square


def test_polygon_inside_share_and_alignment_hand_computed():
    batch, square = _poly_case()
    g = torch.tensor([[[-2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # norms 2, 1, 1, 0
    attr = Attribution(values=g, kind="event_vector", method="t",
                       extras={"polygon": square, "dims": (0, 1), "shift": (1.0, 0.0)})
    inside = create_metric("polygon_gradient_inside", top=3)(attr, batch, model=nn.Identity())
    assert float(inside) == pytest.approx(3 / 4)  # events 0 and 1 inside carry 2 + 1 of 4
    align = create_metric("polygon_gradient_alignment", top=3)(attr, batch, model=nn.Identity())
    assert float(align) == pytest.approx((1 + 0 + 1) / 3)  # -g: +x, -y, +x against the shift +x
    zero = attr.replace(values=torch.zeros_like(g))
    assert math.isnan(float(create_metric("polygon_gradient_inside")(zero, batch, model=nn.Identity())))


def test_polygon_metrics_fall_back_to_the_model_polygon():
    batch, square = _poly_case()

    class Gates(nn.Module):
        gate_dims = [(2, 2), (0, 1)]

        def forward(self, x):
            return torch.stack([square * 0, square], 1).expand(x.shape[0], -1, -1, -1)

    g = torch.zeros(1, 4, 3)
    g[0, 2, 0] = -5.0  # the only gradient sits outside the square
    attr = Attribution(values=g, kind="event_vector", method="baseline.random")
    assert float(create_metric("polygon_gradient_inside", gate=1)(attr, batch, model=Gates())) == 0.0
    with pytest.raises(ValueError, match="no polygon query"):
        create_metric("polygon_gradient_inside")(attr, batch, model=nn.Identity())


def test_f1_and_gradient_step_gain():
    pred = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    lab = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)
    assert float(f1_score(pred, lab)) == pytest.approx(0.5)
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [1.0]]))
        model.bias.zero_()
    x = torch.tensor([[[0.5], [-0.2], [-0.4], [-3.0]]])  # predicted positive iff x > 0
    lab = torch.tensor([[True, True, True, False]])  # two false negatives at -0.2, -0.4
    batch = Batch(inputs=x, instance_labels=lab)
    up = Attribution(values=torch.ones(1, 4, 1), kind="event_vector", method="t")
    gain = create_metric("gradient_step_f1_gain", step=0.5)
    before = 2 * 1 / (1 + 3)
    assert float(gain(up, batch, model=model)) == pytest.approx(1.0 - before)
    assert float(gain(up.replace(values=-up.values), batch, model=model)) == pytest.approx(0.0)
    no_fn = Batch(inputs=x, instance_labels=torch.tensor([[True, False, False, False]]))
    assert np.isnan(float(gain(up, no_fn, model=model)))
