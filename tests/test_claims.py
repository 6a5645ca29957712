"""Claims: parse-time checks, paired statistics, Holm adjustment, verdicts, and a study run end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from xaibench.claims import ClaimEntry, evaluate_claims, holm, paired_effect
from xaibench.errors import ConfigError
from xaibench.runner import parse_config, run_benchmark


def results(cells: dict[tuple[str, str, str, str], np.ndarray], metric: str = "m", direction: str = "higher",
            baselines: tuple[str, ...] = ()) -> pd.DataFrame:
    """A long results table: cells (study, dataset, model, explainer) -> per-sample scores."""
    rows = []
    for (st, ds, mo, ex), scores in cells.items():
        for i, s in enumerate(scores):
            rows.append({"study": st, "dataset": ds, "model": mo, "explainer": ex, "explainer_key": ex,
                         "metric": metric, "metric_key": metric, "sample_index": i, "score": float(s),
                         "direction": direction, "is_baseline": ex in baselines})
    return pd.DataFrame(rows)


def claim(**kw) -> dict:
    return ClaimEntry.model_validate({"claim": kw.pop("claim", "c"), **kw}).record()


def verdict(cells, c, **kw) -> str:
    return evaluate_claims([c], results(cells, **kw))[0].verdict


RNG = np.random.default_rng(0)
BASE = RNG.uniform(0.2, 0.6, 60)


# ----------------------------------------------------------------------------- statistics

def test_holm_equals_a_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(holm([0.2, np.nan])[1]) and holm([0.2, np.nan])[0] == pytest.approx(0.2)  # NaN not counted


@pytest.mark.parametrize("seed", range(5))
def test_holm_rejects_what_the_step_down_procedure_rejects(seed):
    # independent reference: Holm's sequential procedure as written in Holm (1979), applied at alpha
    p = np.random.default_rng(seed).uniform(0, 0.08, 7)
    alpha = 0.05
    reject = np.zeros(p.size, bool)
    for i, j in enumerate(np.argsort(p)):
        if p[j] > alpha / (p.size - i):
            break
        reject[j] = True
    assert ((holm(p) <= alpha) == reject).all()
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        return
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def test_paired_effect_is_the_mean_difference_with_a_ci_and_a_symmetric_p():
    d = np.random.default_rng(1).normal(0.3, 0.2, 40)
    t = paired_effect(d, seed=0)
    assert t.effect == pytest.approx(d.mean()) and t.ci_low < d.mean() < t.ci_high and t.p_value < 1e-5
    assert paired_effect(-d, seed=0).p_value == pytest.approx(t.p_value)
    assert paired_effect(np.zeros(10), seed=0).p_value == 1.0


# ----------------------------------------------------------------------------- verdicts

def test_large_true_effect_holds_reversed_is_refuted():
    cells = {("s", "d", "m", "good"): BASE + 0.2, ("s", "d", "m", "bad"): BASE + RNG.normal(0, 0.02, 60)}
    assert verdict(cells, claim(metric="m", a="good", b="bad")) == "holds"
    assert verdict(cells, claim(metric="m", a="bad", b="good")) == "refuted"


def test_direction_of_the_metric_is_respected():
    cells = {("s", "d", "m", "low"): BASE, ("s", "d", "m", "high"): BASE + 0.2}
    assert verdict(cells, claim(metric="m", a="low", b="high"), direction="lower") == "holds"


def test_noise_only_is_inconclusive_at_about_the_nominal_rate():
    n_decided = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        cells = {("s", "d", "m", "a"): BASE + rng.normal(0, 0.1, 60), ("s", "d", "m", "b"): BASE + rng.normal(0, 0.1, 60)}
        n_decided += verdict(cells, claim(metric="m", a="a", b="b")) != "inconclusive"
    assert n_decided <= 6  # 5% of 40 = 2 expected; far below 40


def test_pairing_sees_a_small_consistent_effect_that_unpaired_noise_hides():
    # per-sample variation is large, the paired difference tiny and consistent: paired -> holds
    big = np.random.default_rng(2).uniform(0, 1, 50)
    cells = {("s", "d", "m", "a"): big + 0.01, ("s", "d", "m", "b"): big}
    f = evaluate_claims([claim(metric="m", a="a", b="b")], results(cells))[0]
    assert f.verdict == "holds" and f.test == "Wilcoxon signed-rank" and f.effect == pytest.approx(0.01)


def test_threshold_claims():
    cells = {("s", "d", "m", "a"): np.clip(RNG.normal(0.9, 0.03, 50), 0, 1)}
    assert verdict(cells, claim(metric="m", a="a", value=0.8)) == "holds"
    assert verdict(cells, claim(metric="m", a="a", value=0.95)) == "refuted"
    assert verdict(cells, claim(metric="m", a="a", value=0.95, op="<=")) == "holds"


def test_best_baseline_worst_other_and_most_rows():
    cells = {}
    for ds in ("d1", "d2", "d3"):
        cells[("s", ds, "m", "chefer")] = BASE + 0.3
        cells[("s", ds, "m", "attention")] = BASE + 0.15
        cells[("s", ds, "m", "gradcam")] = BASE + RNG.normal(0, 0.01, 60)
        cells[("s", ds, "m", "baseline.random")] = BASE - 0.1
    bl = ("baseline.random",)
    assert verdict(cells, claim(metric="m", a="*", b="best_baseline", rows="all"), baselines=bl) == "holds"
    assert verdict(cells, claim(metric="m", a="chefer", b="baseline.random"), baselines=bl) == "holds"
    assert verdict(cells, claim(metric="m", a="chefer", b="best_other", rows="most"), baselines=bl) == "holds"
    assert verdict(cells, claim(metric="m", a="worst_other", b="gradcam", rows="all"), baselines=bl) == "holds"
    f = evaluate_claims([claim(metric="m", a="gradcam", b="best_other", rows="most")], results(cells, baselines=bl))[0]
    assert f.verdict == "refuted" and f.rows_refuted == 3 and f.rows_total == 3 and f.rows_needed == 2
    # 2 of 3 rows hold: "most" holds, "all" does not
    cells[("s", "d3", "m", "chefer")] = BASE + 0.15
    assert verdict(cells, claim(metric="m", a="chefer", b="attention", rows="most"), baselines=bl) == "holds"
    assert verdict(cells, claim(metric="m", a="chefer", b="attention", rows="all"), baselines=bl) != "holds"


def test_contrast_paired_across_models_unpaired_across_datasets():
    cells = {("s", "d", "pre", "x"): BASE + 0.1, ("s", "d", "rand", "x"): BASE,
             ("s2", "small", "pre", "x"): RNG.uniform(0, 0.1, 40)}
    f = evaluate_claims([claim(metric="m", a="x", where={"model": "pre", "study": "s"}, versus={"model": "rand"})],
                        results(cells))[0]
    assert f.verdict == "holds" and f.test == "Wilcoxon signed-rank"
    f = evaluate_claims([claim(metric="m", a="x", where={"study": "s", "model": "pre"},
                               versus={"study": "s2", "dataset": "small"})], results(cells))[0]
    assert f.verdict == "holds" and f.test == "Mann-Whitney U"


def test_spread_across_metrics_chosen_on_half_tested_on_the_other():
    n = 40
    rows = []
    for h, mu in enumerate([0.9, 0.2, 0.5]):
        for i, s in enumerate(np.clip(RNG.normal(mu, 0.05, n), 0, 1)):
            rows.append({"study": "s", "dataset": "d", "model": "m", "explainer": "att", "explainer_key": "att",
                         "metric": f"H{h}", "metric_key": "top", "sample_index": i, "score": s,
                         "direction": "higher", "is_baseline": False})
    df = pd.DataFrame(rows)
    f = evaluate_claims([claim(metric="H*", a="att", value=0.3)], df)[0]
    assert f.kind == "spread" and f.verdict == "holds" and f.n == n // 2 and "H0 − H1" in f.measured
    assert evaluate_claims([claim(metric=["H0", "H2"], a="att", value=0.6)], df)[0].verdict == "refuted"


def test_holm_across_claims_is_stated_and_applied():
    cells = {("s", "d", "m", "a"): BASE + 0.2, ("s", "d", "m", "b"): BASE}
    fs = evaluate_claims([claim(claim=f"c{i}", metric="m", a="a", b="b") for i in range(3)], results(cells))
    p = [f.p_value for f in fs]
    assert [f.p_adjusted for f in fs] == pytest.approx(holm(p).tolist())


def test_missing_rows_are_not_tested():
    f = evaluate_claims([claim(metric="m", a="a", b="zzz")], results({("s", "d", "m", "a"): BASE}))[0]
    assert f.verdict == "not tested" and "no results" in f.note


# ----------------------------------------------------------------------------- parse-time checks

TINY = {
    "name": "tiny", "seed": 0,
    "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "rand"}],
        "explainers": ["cnn.gradcam", {"name": "cnn.saliency", "label": "sal"}],
        "metrics": ["pointing_game", "relevance_mass"],
        "n_samples": 8, "batch_size": 8, "target": "label", "baselines": ["random"],
    }],
}


def with_claims(*claims, study_claims=()) -> dict:
    cfg = json.loads(json.dumps(TINY))
    cfg["claim"] = list(claims)
    if study_claims:
        cfg["study"][0]["claims"] = list(study_claims)
    return cfg


def test_claim_names_are_checked_at_parse_time_with_close_matches():
    with pytest.raises(ConfigError) as ei:
        parse_config(with_claims({"claim": "x", "metric": "relevance_mas", "a": "cnn.gradcan", "b": "sall",
                                  "where": {"dataset": "lesion"}}))
    msg = str(ei.value)
    assert "claim[0].metric" in msg and "'relevance_mass'" in msg
    assert "claim[0].a" in msg and "'cnn.gradcam'" in msg and "claim[0].b" in msg and "'sal'" in msg
    assert "claim[0].where.dataset" in msg and "'lesions'" in msg
    with pytest.raises(ConfigError, match="unknown key 'metrc'"):
        parse_config(with_claims({"claim": "x", "metrc": "iou", "a": "sal", "b": "cnn.gradcam"}))
    with pytest.raises(ConfigError, match="needs 'b'"):
        parse_config(with_claims({"claim": "x", "metric": "relevance_mass", "kind": "beats", "a": "sal"}))


def test_claims_enter_the_record_only_when_given():
    plain = parse_config(json.loads(json.dumps(TINY)))
    assert "claims" not in plain.record()
    cfg = parse_config(with_claims({"claim": "y", "metric": "relevance_mass", "a": "sal", "b": "baseline.random"},
                                   study_claims=[{"claim": "x", "metric": "relevance_mass", "a": "sal",
                                                  "b": "best_baseline"}]))
    assert cfg.claims[1]["where"] == {"study": "s"} and cfg.hash != plain.hash


def test_a_small_study_with_claims_runs_end_to_end(tmp_path):
    raw = with_claims({"claim": "saliency scores a relevance mass of at least 0", "source": "toy",
                       "metric": "relevance_mass", "a": "sal", "value": 0.0},
                      {"claim": "gradcam beats the best baseline", "metric": "pointing_game", "a": "cnn.gradcam",
                       "b": "best_baseline"})
    res = run_benchmark(parse_config(raw), tmp_path / "run", quiet=True)
    md = (tmp_path / "run" / "report.md").read_text()
    assert md.index("## Findings") < md.index("## Study")
    assert "saliency scores a relevance mass" in md and "Holm" in md
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Findings" in html and "gradcam beats the best baseline" in html
    table = pd.read_csv(res.report["findings.csv"])
    assert list(table["claim"]) == ["saliency scores a relevance mass of at least 0", "gradcam beats the best baseline"]
    assert set(table["verdict"]) <= {"holds", "refuted", "inconclusive", "not tested"}
    assert table["verdict"].iloc[0] == "holds"  # relevance mass of a non-negative saliency map is > 0
