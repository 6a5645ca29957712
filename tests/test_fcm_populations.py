"""Per-population head metric, relative F1 gain, multi-centre data and their figures, against
references written out here (an explicit sort and count; F1 from the predictions by hand)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from xaibench.datasets.fcm_synthetic import POPULATIONS
from xaibench.metrics.fcm_polygon import points_in_polygon

import xaibench
from xaibench import Attribution, Batch, create_metric
from xaibench.studies.fcm.figures import fcm_f1_gain_curve, fcm_head_populations, head_reading

SHARE = create_metric("top_k_population_share", population="erythroid", head=1)


@pytest.fixture(scope="module")
def batch():
    return xaibench.create_dataset("fcm_ball", n=2, batch_size=2, seed=3, n_events=2000, blast_fraction=(0.05, 0.3)).all()


def test_population_share_equals_an_explicit_sort_and_count(batch):
    g = torch.Generator().manual_seed(0)
    vals = torch.rand(2, 3, 2000, generator=g)  # (B, heads, N), no ties
    attr = Attribution(values=vals, kind="event_head", method="t")
    code = POPULATIONS.index("erythroid")
    n_top = math.ceil(0.05 * 2000)
    for head in (0, 1, 2):
        ours = create_metric("top_k_population_share", population="erythroid", head=head)(attr, batch)
        for i in range(2):
            top = np.argsort(-vals[i, head].numpy())[:n_top]
            ref = float((batch.meta["population"][i].numpy()[top] == code).mean())
            assert float(ours[i]) == pytest.approx(ref, abs=1e-6)
    mean = create_metric("top_k_population_share", population="erythroid")(attr, batch)
    per_head = torch.stack([create_metric("top_k_population_share", population="erythroid", head=h)(attr, batch)
                            for h in range(3)])
    torch.testing.assert_close(mean, per_head.mean(0))


def test_population_share_constant_map_is_the_sample_share_and_absent_is_nan(batch):
    flat = Attribution(values=torch.ones(2, 2, 2000), kind="event_head", method="t")
    share = (batch.meta["population"] == POPULATIONS.index("erythroid")).float().mean(-1)
    torch.testing.assert_close(SHARE(flat, batch), share, rtol=1e-5, atol=1e-6)
    codes = batch.meta["population"].clone()
    codes[0][codes[0] == POPULATIONS.index("erythroid")] = 0
    gone = Batch(inputs=batch.inputs, meta={**batch.meta, "population": codes})
    res = xaibench.create_metric("top_k_population_share", population="erythroid").evaluate(flat, gone)
    assert math.isnan(float(res.scores[0])) and not math.isnan(float(res.scores[1])) and "absent" in res.reasons[0]
    with pytest.raises(KeyError, match="erythroid"):
        create_metric("top_k_population_share", population="erythroyd")(flat, batch)


def test_relative_f1_gain_by_hand():
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [1.0]]))
        model.bias.zero_()
    x = torch.tensor([[[0.5], [-0.2], [-0.4], [-3.0]], [[0.5], [1.0], [-3.0], [-3.0]]])  # positive iff x > 0
    lab = torch.tensor([[True, True, True, False], [True, True, False, False]])
    up = Attribution(values=torch.ones(2, 4, 1), kind="event_vector", method="t")
    rel = create_metric("gradient_step_f1_relative_gain", step=0.5)
    res = rel.evaluate(up, Batch(inputs=x, instance_labels=lab), model=model)
    before = 2 * 1 / (1 + 3)  # one TP of three positives, one predicted
    assert float(res.scores[0]) == pytest.approx((1.0 - before) / before)  # both FNs cross 0: F1 = 1
    assert math.isnan(float(res.scores[1])) and res.reasons[1] == "no false negatives"
    one = create_metric("gradient_step_f1_relative_gain", step=0.5, top=1)  # only the larger-gradient FN moves
    grads = torch.tensor([[[1.0], [2.0], [1.0], [1.0]]]).expand(1, 4, 1).clone()
    moved_one = one(up.replace(values=grads), Batch(inputs=x[:1], instance_labels=lab[:1]), model=model)
    assert float(moved_one) == pytest.approx((2 * 2 / (2 + 3) - before) / before)
    zero = Batch(inputs=torch.tensor([[[-1.0], [-2.0]]]), instance_labels=torch.tensor([[True, False]]))
    res = rel.evaluate(up.select([0]).replace(values=torch.ones(1, 2, 1)), zero, model=model)
    assert math.isnan(float(res.scores[0])) and "F1 before" in res.reasons[0]


def test_default_data_unchanged_and_populations_shift_on_their_own():
    base = {"n": 2, "batch_size": 2, "seed": 5, "n_events": 3000}
    a = xaibench.create_dataset("fcm_ball", **base).all()
    b = xaibench.create_dataset("fcm_ball", **base, population_shift_sd=0.0, population_gain_sd=0.0).all()
    assert torch.equal(a.inputs, b.inputs)  # zero per-population effects draw nothing: the same stream
    mc = dict(base, shift_sd=0.0, gain_sd=0.0, population_shift_sd=0.3, population_gain_sd=0.07)
    c = xaibench.create_dataset("fcm_ball", **mc).all()
    # relative positions of two populations move between samples only with per-population shifts
    cd45 = 5

    def gap(x, pop):
        med = lambda name: x[0][pop[0] == POPULATIONS.index(name), cd45].median()
        return float(med("t_nk_lymphocyte") - med("granulocyte"))

    gaps = [gap(xaibench.create_dataset("fcm_ball", **dict(mc, seed=s)).all().inputs,
                xaibench.create_dataset("fcm_ball", **dict(mc, seed=s)).all().meta["population"]) for s in range(4)]
    assert np.std(gaps) > 0.15
    # the true gates still hold the populations they are anchored on
    for i in range(2):
        p = c.polygons[i]
        lymph = points_in_polygon(c.inputs[i:i + 1][..., list(p["dims"][1])], p["vertices"][1:2])[0]
        tnk = c.meta["population"][i] == POPULATIONS.index("t_nk_lymphocyte")
        assert float(lymph[tnk].float().mean()) > 0.95


def test_head_population_figure_and_reading(tmp_path):
    rows = []
    for h in range(2):
        for pop, base in (("erythroid", 0.1), ("mature_b", 0.05)):
            hit = (h == 0 and pop == "erythroid") or (h == 1 and pop == "mature_b")
            rows.append({"study": "s", "dataset": "d", "model": "m", "explainer": "attention@L0", "is_baseline": False,
                         "metric_key": "top_k_population_share", "mean": 0.6 if hit else base,
                         "ci_low": 0.5 if hit else base - 0.02, "ci_high": 0.7 if hit else base + 0.02,
                         "protocol": json.dumps({"population": pop, "head": h, "k": 0.05})})
            rows.append({"study": "s", "dataset": "d", "model": "m", "explainer": "baseline.random", "is_baseline": True,
                         "metric_key": "top_k_population_share", "mean": base, "ci_low": base, "ci_high": base,
                         "protocol": json.dumps({"population": pop, "head": h, "k": 0.05})})
    summary = pd.DataFrame(rows)
    reading = head_reading(summary)
    assert dict(zip(reading["head"], reading["population"])) == {0: "erythroid", 1: "mature_b"}
    figs = fcm_head_populations(tmp_path, pd.DataFrame(), summary)
    assert len(figs) == 1 and figs[0][1].exists()


def test_f1_gain_curve_figure(tmp_path):
    rows = [{"study": "s", "dataset": "d", "model": "m", "explainer": e, "is_baseline": e.startswith("baseline"),
             "metric_key": "gradient_step_f1_relative_gain", "mean": m * st, "ci_low": m * st - 0.1,
             "ci_high": m * st + 0.1, "n": 5, "protocol": json.dumps({"step": st, "positive": 1, "top": None})}
            for st in (0.1, 0.5, 2.0) for e, m in (("gradient@FN", 0.5), ("baseline.random", 0.0))]
    figs = fcm_f1_gain_curve(tmp_path, pd.DataFrame(), pd.DataFrame(rows))
    assert len(figs) == 1 and figs[0][1].exists()
