"""Statistics across methods (xaibench.stats): each test checked against an independent
reference — scipy.stats (wilcoxon, friedmanchisquare, kendalltau, spearmanr, studentized_range),
Demšar's published table of Nemenyi q_α values, and Holm's step-down definition written out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xaibench.stats import (
    NEMENYI_Q,
    _studentized_q,
    friedman,
    holm,
    kendall_tau,
    nemenyi_cd,
    nemenyi_q,
    pareto_front,
    rank_average,
    spearman,
    top_k_overlap,
    wilcoxon,
)

ss = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("n", [4, 9, 13, 20, 35, 50, 80])
@pytest.mark.parametrize("ties", [False, True])
def test_wilcoxon_equals_scipy(n, ties):
    # reference: scipy.stats.wilcoxon with its defaults (method="auto", zero_method="wilcox", no correction)
    rng = np.random.default_rng(n + 100 * ties)
    for _ in range(1 if ties and n == 13 else 5):  # scipy's permutation test at n = 13 takes seconds
        a = rng.normal(size=n)
        b = a + rng.normal(rng.uniform(-0.5, 0.5), 1, size=n)
        if ties:  # ties and zero differences
            a, b = np.round(a * 2) / 2, np.round(b * 2) / 2
        ours, ref = wilcoxon(a, b), ss.wilcoxon(a, b)
        assert ours.statistic == pytest.approx(float(ref.statistic))
        assert ours.p_value == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-12)


def test_wilcoxon_method_choice_nan_pairs_and_effect_size():
    a = np.arange(1.0, 11.0)
    r = wilcoxon(a, np.zeros(10))
    assert r.method == "exact" and r.w_plus == 55 and r.rank_biserial == 1.0  # every pair favours a
    assert wilcoxon(np.zeros(10), a).rank_biserial == -1.0
    # matched-pairs rank-biserial (Kerby 2014) = (W+ - W-) / (W+ + W-), W+ from scipy's one-sided statistic
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(0.3, 1, size=30)
    w_plus = float(ss.wilcoxon(x, y, alternative="greater").statistic)
    total = 30 * 31 / 2
    assert wilcoxon(x, y).rank_biserial == pytest.approx((2 * w_plus - total) / total)
    # NaN drops the pair; every difference zero -> no evidence; nothing -> NaN
    xn = x.copy()
    xn[:4] = np.nan
    assert wilcoxon(xn, y).n == 26 and wilcoxon(xn, y).p_value == pytest.approx(float(ss.wilcoxon(x[4:], y[4:]).pvalue))
    assert wilcoxon(a, a).p_value == 1.0 and wilcoxon(a, a).rank_biserial == 0.0
    assert math.isnan(wilcoxon([np.nan], [1.0]).p_value)
    with pytest.raises(ValueError, match="aligned"):
        wilcoxon(a, a[:3])


def test_holm_equals_its_step_down_definition():
    # reference: Holm (1979) step-down procedure written out as a loop
    rng = np.random.default_rng(1)
    for m in (1, 2, 5, 12):
        p = rng.uniform(0, 0.2, m)
        order = np.argsort(p)
        ref, running = np.empty(m), 0.0
        for i, j in enumerate(order):
            running = max(running, min(1.0, (m - i) * p[j]))
            ref[j] = running
        np.testing.assert_allclose(holm(p), ref)
    out = holm([0.01, np.nan, 0.04])
    assert math.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)


def test_rank_average_equals_scipy_rankdata():
    x = np.random.default_rng(2).integers(0, 5, size=(6, 9)).astype(float)
    np.testing.assert_allclose(rank_average(x, axis=1), ss.rankdata(x, axis=1))
    np.testing.assert_allclose(rank_average(x, axis=0), ss.rankdata(x, axis=0))


@pytest.mark.parametrize("shape", [(5, 3), (12, 4), (30, 7)])
def test_friedman_equals_scipy_and_ranks_best_first(shape):
    rng = np.random.default_rng(shape[0])
    s = rng.random(shape)
    s[0, :2] = 0.5  # a tie
    ours = friedman(s, "higher")
    ref = ss.friedmanchisquare(*s.T)
    assert ours.statistic == pytest.approx(float(ref.statistic)) and ours.p_value == pytest.approx(float(ref.pvalue))
    # average ranks: 1 = best in the metric's direction
    np.testing.assert_allclose(ours.average_ranks, ss.rankdata(-s, axis=1).mean(0))
    np.testing.assert_allclose(friedman(s, "lower").average_ranks, ss.rankdata(s, axis=1).mean(0))
    assert friedman(s, "lower").statistic == pytest.approx(ours.statistic)  # direction only flips ranks
    with pytest.raises(ValueError, match="NaN"):
        friedman(np.where(s > 0.9, np.nan, s))


def test_nemenyi_cd_uses_demsar_table():
    # reference: Demšar (2006) Table 5a, q_0.05 and q_0.10 for k = 2..10, and CD = q √(k(k+1)/(6N))
    table_05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    table_10 = [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920]
    for k in range(2, 11):
        for n in (5, 14, 30):
            assert nemenyi_cd(k, n) == pytest.approx(table_05[k - 2] * math.sqrt(k * (k + 1) / (6 * n)))
            assert nemenyi_cd(k, n, 0.10) == pytest.approx(table_10[k - 2] * math.sqrt(k * (k + 1) / (6 * n)))
    # Demšar's worked example: 4 classifiers on 14 data sets, CD = 1.25 (α = 0.05)
    assert nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)
    assert friedman(np.random.default_rng(0).random((14, 4))).cd == pytest.approx(nemenyi_cd(4, 14))


def test_nemenyi_q_beyond_the_table_is_the_studentized_range_quantile():
    # reference: scipy's studentized range distribution at infinite degrees of freedom; our table
    # values agree with the integral too (Demšar's rounding: within 1e-3)
    for k in range(2, 11):
        for alpha in (0.05, 0.10):
            assert _studentized_q(k, alpha) == pytest.approx(NEMENYI_Q[alpha][k - 2], abs=1.5e-3)
    for k in (11, 15, 20):
        ref = float(ss.studentized_range.ppf(0.95, k, np.inf)) / math.sqrt(2)
        assert nemenyi_q(k) == pytest.approx(ref, abs=2e-4)
    for k in (3, 7):
        assert nemenyi_q(k, 0.01) == pytest.approx(float(ss.studentized_range.ppf(0.99, k, np.inf)) / math.sqrt(2),
                                                   abs=2e-4)
    assert set(NEMENYI_Q) == {0.05, 0.10}


def test_kendall_tau_equals_scipy_with_ties():
    rng = np.random.default_rng(3)
    for n in (3, 6, 15):
        x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, n).astype(float)
        ref = float(ss.kendalltau(x, y).statistic)
        assert kendall_tau(x, y) == pytest.approx(ref) if not math.isnan(ref) else math.isnan(kendall_tau(x, y))
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0 and math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_spearman_and_top_k_overlap():
    rng = np.random.default_rng(4)
    a, b = rng.random((3, 50)), rng.random((3, 50))
    b[0] = a[0] * 2 + 1
    for i in range(3):  # reference: scipy.stats.spearmanr per row
        assert spearman(a, b)[i] == pytest.approx(float(ss.spearmanr(a[i], b[i]).statistic))
    assert math.isnan(spearman(np.ones((1, 5)), a[:1, :5])[0])
    ov = top_k_overlap(a, b, 0.1)
    assert ov[0] == 1.0
    # reference: set intersection of the 5 largest indices
    for i in (1, 2):
        assert ov[i] == len(set(np.argsort(-a[i])[:5]) & set(np.argsort(-b[i])[:5])) / 5


def test_pareto_front():
    q = np.array([0.9, 0.8, 0.95, 0.5, np.nan])
    c = np.array([1.0, 0.1, 5.0, 0.2, 0.01])
    # brute force: i is on the front iff no j is at least as good and as cheap, and better in one
    ref = [not any((q[j] >= q[i]) and (c[j] <= c[i]) and ((q[j] > q[i]) or (c[j] < c[i]))
                   for j in range(4) if j != i) for i in range(4)] + [False]
    assert pareto_front(q, c).tolist() == ref == [True, True, True, False, False]
    assert pareto_front(-q, c, "lower").tolist() == ref
