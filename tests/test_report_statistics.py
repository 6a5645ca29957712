"""The cross-method statistics section of every report (xaibench.report.statistics): paired
Wilcoxon–Holm comparisons, average ranks with Friedman/Nemenyi, Kendall τ between metrics, map
agreement between methods, quality against seconds; the section and its figures in a real run.
References: scipy.stats (wilcoxon, friedmanchisquare, kendalltau, spearmanr) and Holm's procedure
written out; brute-force Pareto dominance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from xaibench.report import build_report, load_run
from xaibench.report.statistics import (
    cross_method_statistics,
    method_agreement,
    metric_agreement,
    pairwise_comparisons,
    pareto_table,
    rank_analysis,
    study_lines,
)
from xaibench.runner import parse_config, run_benchmark
from xaibench.stats import summarise

ss = pytest.importorskip("scipy.stats")

# three methods with known order on "loc" (higher better) and the reverse on "faith" (lower better)
SHIFT = {"good": 0.6, "mid": 0.3, "bad": 0.0}


def _results(cells=(("d", "m"),), n=20, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for dataset, model in cells:
        base = rng.random(n)
        for expl in ["good", "mid", "bad", "baseline.random"]:
            noise = rng.normal(0, 0.2, n)
            for metric, direction, category, sign in (("loc", "higher", "localisation", 1),
                                                      ("faith", "lower", "faithfulness", 1)):
                score = base + sign * SHIFT.get(expl, -0.1) + noise
                if metric == "faith":
                    score = -score  # lower is better: "good" lowest
                for i in range(n):
                    rows.append({"study": "s", "dataset": dataset, "model": model, "explainer": expl,
                                 "explainer_key": expl, "metric": metric, "metric_key": metric, "sample_index": i,
                                 "sample_id": f"{dataset}{i}", "score": score[i], "undefined_reason": None,
                                 "seconds": {"good": 0.5, "mid": 0.01, "bad": 0.02}.get(expl, 1e-4),
                                 "protocol": "{}", "explainer_params": "{}", "direction": direction,
                                 "category": category, "is_baseline": expl.startswith("baseline."), "seed": 0,
                                 "run": "r", "config_hash": "h"})
    return pd.DataFrame(rows)


def test_pairwise_is_wilcoxon_with_holm_per_family():
    res = _results()
    res.loc[(res["explainer"] == "mid") & (res["sample_index"] == 3), "score"] = np.nan  # a dropped pair
    pw = pairwise_comparisons(res)
    assert set(pw["metric"]) == {"loc", "faith"} and len(pw) == 2 * 3  # 3 pairs of real methods, no baselines
    for metric, g in pw.groupby("metric"):
        sign = 1 if metric == "loc" else -1
        ref_p = []
        for r in g.itertuples():
            a = res[(res["metric"] == metric) & (res["explainer"] == r.method_a)].set_index("sample_index")["score"]
            b = res[(res["metric"] == metric) & (res["explainer"] == r.method_b)].set_index("sample_index")["score"]
            ok = a.notna() & b.notna()
            ref = ss.wilcoxon(sign * a[ok], sign * b[ok])
            assert r.p_value == pytest.approx(float(ref.pvalue)) and r.n == int(ok.sum())
            ref_p.append(float(ref.pvalue))
        # Holm (1979) written out: the i-th smallest of m times (m - i), running maximum, capped at 1
        order, m, run, holm_ref = np.argsort(ref_p), len(ref_p), 0.0, np.empty(len(ref_p))
        for i, j in enumerate(order):
            run = max(run, min(1.0, (m - i) * ref_p[j]))
            holm_ref[j] = run
        np.testing.assert_allclose(g["p_holm"], holm_ref)
        gb = g[(g["method_a"] == "good") & (g["method_b"] == "bad")].iloc[0]
        assert gb["significant"] and gb["better"] == "good" and gb["rank_biserial"] > 0.5  # direction-aware sign


def test_rank_analysis_uses_cells_as_blocks_when_there_are_enough():
    cells = [(f"d{i}", "m") for i in range(6)]
    res = _results(cells, n=10)
    ranks = {r.metric: r for r in rank_analysis(res)}
    loc = ranks["loc"]
    assert loc.unit.startswith("6 (dataset, model) cells")
    means = res[res["metric"] == "loc"].groupby(["dataset", "explainer"])["score"].mean().unstack()[loc.methods]
    ref = ss.friedmanchisquare(*means.to_numpy().T)
    assert loc.test.statistic == pytest.approx(float(ref.statistic)) and loc.test.p_value == pytest.approx(float(ref.pvalue))
    np.testing.assert_allclose(loc.test.average_ranks, ss.rankdata(-means.to_numpy(), axis=1).mean(0))
    assert loc.best_method() == "good" and ranks["faith"].best_method() == "good"  # lower-is-better ranked too
    # one cell: the samples are the blocks
    one = {r.metric: r for r in rank_analysis(_results())}["loc"]
    assert one.unit == "20 samples" and one.test.n_blocks == 20


def test_metric_agreement_is_kendall_tau_of_the_rankings():
    res = _results([(f"d{i}", "m") for i in range(6)], n=10)
    extra = res[res["metric"] == "loc"].copy()
    extra["metric"] = "inverse"
    extra["direction"] = "lower"  # the same scores read the other way round: the reverse ranking
    ranks = rank_analysis(pd.concat([res, extra]))
    ma = metric_agreement(ranks).set_index(["metric_a", "metric_b"])
    r = {x.metric: x for x in ranks}
    methods = ["good", "mid", "bad"]
    ref = ss.kendalltau([r["loc"].ranks[m] for m in methods], [r["faith"].ranks[m] for m in methods]).statistic
    assert ma.loc[("loc", "faith"), "tau"] == pytest.approx(float(ref)) == 1.0
    assert ma.loc[("loc", "inverse"), "tau"] == pytest.approx(-1.0)


def test_method_agreement_on_example_maps():
    g = torch.Generator().manual_seed(0)
    a, c = torch.rand(3, 8, 8, generator=g), torch.rand(3, 8, 8, generator=g)

    def ex(name, v, base=False):
        return {"study": "s", "dataset": "d", "model": "m", "explainer": name, "is_baseline": base, "values": v,
                "ids": ["x", "y", "z"]}

    out = method_agreement([ex("a", a), ex("b", a * 3 + 1), ex("c", c), ex("baseline.random", a, True),
                            ex("tok", torch.rand(3, 4, generator=g))])
    pairs = {(r.method_a, r.method_b): r for r in out.itertuples()}
    assert set(pairs) == {("a", "b"), ("a", "c"), ("b", "c")}  # no baseline, no shape mismatch
    assert pairs[("a", "b")].spearman == pytest.approx(1.0) and pairs[("a", "b")].top_overlap == 1.0
    ref = np.mean([ss.spearmanr(a[i].flatten(), c[i].flatten()).statistic for i in range(3)])
    assert pairs[("a", "c")].spearman == pytest.approx(float(ref)) and pairs[("a", "c")].n_samples == 3
    top = [len(set(torch.argsort(-a[i].flatten())[:7].tolist()) & set(torch.argsort(-c[i].flatten())[:7].tolist())) / 7
           for i in range(3)]  # top 10% of 64 values = 7
    assert pairs[("a", "c")].top_overlap == pytest.approx(np.mean(top))


def test_pareto_front_and_plain_language_lines():
    res = _results()
    pt = pareto_table(summarise(res)).set_index(["metric", "method"])
    # good: best but slow; mid: fast, middling; bad: slower than mid and worse -> dominated
    assert pt.loc[("loc", "good"), "pareto"] and pt.loc[("loc", "mid"), "pareto"] and not pt.loc[("loc", "bad"), "pareto"]
    assert "baseline.random" not in pt.index.get_level_values("method")
    lines = study_lines(rank_analysis(res))
    assert set(lines) == {"s"}
    assert "on localisation (1 metric) `good` ranks best on 1" in lines["s"]
    assert "on faithfulness (1 metric) `good` ranks best on 1" in lines["s"]
    # no real difference: every method the same up to noise -> said so
    flat = res.copy()
    flat["score"] = np.random.default_rng(5).random(len(flat))
    assert "no significant difference" in study_lines(rank_analysis(flat))["s"]


CFG = {
    "name": "stats", "seed": 0,
    "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "rand"}],
        "explainers": ["cnn.gradcam", "cnn.saliency", {"name": "cnn.hirescam", "label": "hires3",
                                                       "params": {"layer": "layer3"}}],
        "metrics": ["pointing_game", "relevance_mass", "sparseness"],
        "n_samples": 8, "batch_size": 8, "baselines": ["random"],
    }],
}


def test_every_report_has_the_section_and_figures(tmp_path):
    out = tmp_path / "run"
    run_benchmark(parse_config(CFG), out, quiet=True, report=True)
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, html):
        assert "Cross-method statistics" in text and "In short:" in text
        assert "Friedman" in text and "Wilcoxon" in text and "Kendall" in text and "Pareto" in text
        assert "Agreement between methods" in text
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"cd_s.png", "pareto_s.png"} <= figs
    st = cross_method_statistics(load_run(out).results, load_run(out).summary, out)
    assert len(st.method_agreement) == 3 and (st.method_agreement["n_samples"] == 4).all()  # saved examples
    assert not math.isnan(st.ranks[0].test.cd)
    build_report(out)  # rebuilding from the database gives the same section
    assert (out / "report.md").read_text() == md


def test_category_agreement_pools_both_orders_of_a_pair():
    from xaibench.report.statistics_section import _category_tau

    ma = pd.DataFrame({"category_a": ["localisation", "faithfulness", "localisation", "localisation"],
                       "category_b": ["faithfulness", "localisation", "localisation", "complexity"],
                       "tau": [1.0, 0.0, 0.5, np.nan]})
    assert _category_tau(ma) == "faithfulness vs localisation: mean τ = +0.50 (2 metric pairs)"


def test_a_single_method_is_not_called_best():
    res = _results()
    one = res[res["explainer"].isin(["good", "baseline.random"])]
    line = study_lines(rank_analysis(one))["s"]
    assert "only `good` is scored; it ranks above the baselines on 1 of 1" in line and "ranks best" not in line
