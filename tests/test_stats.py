"""Statistics: seeded percentile bootstrap, paired tests, the summary table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xaibench.stats import bootstrap_ci, bootstrap_means, paired_test, rank_best, summarise


def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = np.random.default_rng(0).normal(0.5, 0.2, 40)
    a, b = bootstrap_ci(x, seed=7), bootstrap_ci(x, seed=7)
    assert a == b and a != bootstrap_ci(x, seed=8)
    m, lo, hi = a
    assert m == pytest.approx(x.mean()) and lo < m < hi


def test_bootstrap_matches_scipy_percentile_interval():
    scipy_stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(1).exponential(1.0, 60)
    _, lo, hi = bootstrap_ci(x, n_resamples=4000, seed=0)
    ref = scipy_stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=0).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.03) and hi == pytest.approx(ref.high, abs=0.03)


def test_bootstrap_coverage_is_near_nominal():
    rng = np.random.default_rng(2)
    hits = 0
    for i in range(200):
        _, lo, hi = bootstrap_ci(rng.normal(1.0, 1.0, 30), n_resamples=500, seed=i)
        hits += lo <= 1.0 <= hi
    assert 0.87 <= hits / 200 <= 0.99


def test_nan_is_ignored_and_all_nan_is_undefined():
    assert bootstrap_ci([1.0, np.nan, 1.0]) == (1.0, 1.0, 1.0)
    assert all(np.isnan(bootstrap_ci([np.nan, np.nan])))
    assert bootstrap_means([1, 2, 3], n_resamples=10, seed=0).shape == (10,)


def test_bootstrap_chunks_large_inputs_like_small_ones():
    x = np.random.default_rng(3).random(50_000)
    m = bootstrap_means(x, n_resamples=200, seed=0)
    assert m.shape == (200,) and abs(m.mean() - x.mean()) < 0.01 and m.std() < 0.01


def test_paired_test():
    rng = np.random.default_rng(4)
    a = rng.random(50)
    same = paired_test(a, a)
    assert same.mean_diff == 0 and same.p_value == 1.0
    better = paired_test(a + 0.2 + rng.normal(0, 0.05, 50), a, seed=1)
    assert better.mean_diff == pytest.approx(0.2, abs=0.03) and better.ci_low > 0 and better.p_value < 0.01
    b = a.copy()
    b[:5] = np.nan
    assert paired_test(a, b).n == 45
    with pytest.raises(ValueError, match="aligned"):
        paired_test(a, a[:3])


def results(groups: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for expl, scores in groups.items():
        for i, s in enumerate(scores):
            rows.append({"study": "s", "dataset": "d", "model": "m", "explainer": expl, "explainer_key": expl,
                         "metric": "pg", "metric_key": "pointing_game", "sample_index": i, "score": s,
                         "undefined_reason": "empty mask" if np.isnan(s) else None, "seconds": 0.01 * (i + 1),
                         "protocol": "{}", "direction": "higher", "category": "localisation",
                         "is_baseline": expl.startswith("baseline."), "seed": 0})
    return pd.DataFrame(rows)


def test_summary_rows_counts_reasons_and_order():
    df = results({"z": [1, 0, np.nan, 1, np.nan], "a": [0, 0, 1, 1, 1], "baseline.random": [0, 1, 0, 0, 0]})
    s = summarise(df)
    assert s["explainer"].tolist() == ["z", "a", "baseline.random"]  # order of appearance
    z = s.iloc[0]
    assert z["n"] == 3 and z["n_undefined"] == 2 and z["undefined_reasons"] == "empty mask: 2"
    assert z["mean"] == pytest.approx(2 / 3) and z["ci_low"] <= z["mean"] <= z["ci_high"]
    assert z["seconds_per_sample"] == pytest.approx(0.03)
    assert s["is_baseline"].tolist() == [False, False, True]


def test_a_groups_interval_does_not_depend_on_the_other_groups():
    one = summarise(results({"a": list(np.linspace(0, 1, 20))}))
    two = summarise(results({"b": [0.5] * 20, "a": list(np.linspace(0, 1, 20))}))
    pd.testing.assert_series_equal(one.iloc[0][["mean", "ci_low", "ci_high"]],
                                   two.iloc[1][["mean", "ci_low", "ci_high"]], check_names=False)


def test_rank_best():
    assert rank_best([0.1, 0.5, np.nan], "higher") == 1
    assert rank_best([0.1, 0.5, np.nan], "lower") == 0
    assert rank_best([np.nan], "higher") is None
