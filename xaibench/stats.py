"""Statistics of benchmark results: seeded bootstrap CIs, paired tests, the summary table.

Every random draw is seeded from the run seed and the group's key, so a group's interval
never depends on which other groups are in the table, and the same results give the
same summary.

    mean, lo, hi = bootstrap_ci(scores, seed=0)          # 95% percentile bootstrap
    summary = summarise(results)                         # per (study, dataset, model, explainer, metric)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

#: The keys of a summary row (a method's score distribution on one metric).
GROUP_KEYS: tuple[str, ...] = ("study", "dataset", "model", "explainer", "metric")
N_RESAMPLES = 1000
CONFIDENCE = 0.95
_CHUNK = 4_000_000  # resample indices drawn per chunk (bounds memory for large n)


def key_seed(seed: int, *key: Any) -> int:
    """A 64-bit seed from the run seed and a group key."""
    h = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def _clean(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[~np.isnan(v)]


def bootstrap_means(values: Any, *, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Means of ``n_resamples`` resamples (with replacement) of the non-NaN ``values``; (R,).

    Vectorised: one (chunk, n) index draw per chunk, no Python loop per resample.
    """
    v = _clean(values)
    n = v.size
    if n == 0:
        return np.full(n_resamples, np.nan)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    out = np.empty(n_resamples)
    for s in range(0, n_resamples, rows):
        r = min(rows, n_resamples - s)
        out[s:s + r] = v[rng.integers(0, n, size=(r, n))].mean(1)
    return out


def bootstrap_ci(values: Any, *, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of the non-NaN ``values``.

    Args:
        values: scores (NaN = undefined, ignored).
        n_resamples: bootstrap resamples.
        confidence: interval coverage (0.95 = 2.5th..97.5th percentile).
        seed: seed of the resampling.

    Returns:
        ``(mean, ci_low, ci_high)``; all NaN when no value is defined.

    Example:
        >>> m, lo, hi = bootstrap_ci([0, 1, 1, 1], seed=0)
        >>> lo <= m <= hi
        True
    """
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_ci: confidence must lie in (0, 1), got {confidence}")
    v = _clean(values)
    if v.size == 0:
        return (np.nan, np.nan, np.nan)
    means = bootstrap_means(v, n_resamples=n_resamples, seed=seed)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return (float(v.mean()), float(lo), float(hi))


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of two methods on the same samples (a − b).

    ``mean_diff`` and its bootstrap CI; ``p_value`` of a two-sided sign-flip permutation test
    of "mean difference = 0"; ``n`` samples where both scores are defined.
    """

    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


def paired_test(a: Any, b: Any, *, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                seed: int = 0) -> PairedResult:
    """Compare two methods' scores on the same samples (NaN in either drops the pair).

    Raises:
        ValueError: ``a`` and ``b`` differ in length (they must be aligned by sample).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_test: a and b must be aligned per sample, got {a.size} and {b.size} values")
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if d.size == 0:
        return PairedResult(np.nan, np.nan, np.nan, np.nan, 0)
    mean, lo, hi = bootstrap_ci(d, n_resamples=n_resamples, confidence=confidence, seed=seed)
    rng = np.random.default_rng(seed + 1)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, d.size))
    null = np.abs((signs * d).mean(1))
    p = (1 + int(np.sum(null >= abs(mean) - 1e-12))) / (n_resamples + 1)
    return PairedResult(mean, lo, hi, float(min(p, 1.0)), int(d.size))


def _reasons(r: pd.Series) -> str:
    counts = r.dropna().value_counts()
    return "; ".join(f"{k}: {v}" for k, v in counts.items())


def summarise(results: pd.DataFrame, *, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
              seed: int | None = None) -> pd.DataFrame:
    """Per (study, dataset, model, explainer, metric): mean, bootstrap CI, n, undefined, seconds.

    Args:
        results: the long results table (see :data:`xaibench.runner.RESULT_COLUMNS`).
        seed: bootstrap seed (default: the run seed stored in the rows, else 0).

    Returns:
        one row per group in the order of first appearance, with columns ``study, dataset,
        model, explainer, explainer_key, metric, metric_key, mean, ci_low, ci_high, n,
        n_undefined, undefined_reasons, seconds_per_sample, direction, category, protocol,
        is_baseline``.
    """
    cols = ["study", "dataset", "model", "explainer", "explainer_key", "metric", "metric_key", "mean", "ci_low",
            "ci_high", "n", "n_undefined", "undefined_reasons", "seconds_per_sample", "direction", "category",
            "protocol", "is_baseline"]
    if results.empty:
        return pd.DataFrame(columns=cols)
    if seed is None:
        seed = int(results["seed"].iloc[0]) if "seed" in results and pd.notna(results["seed"].iloc[0]) else 0
    out = []
    for key, g in results.groupby(list(GROUP_KEYS), sort=False):
        scores = g["score"].to_numpy(dtype=np.float64)
        mean, lo, hi = bootstrap_ci(scores, n_resamples=n_resamples, confidence=confidence,
                                    seed=key_seed(seed, *key))
        protocols = list(dict.fromkeys(g["protocol"]))
        first = g.iloc[0]
        out.append({
            **dict(zip(GROUP_KEYS, key)), "explainer_key": first["explainer_key"], "metric_key": first["metric_key"],
            "mean": mean, "ci_low": lo, "ci_high": hi, "n": int((~np.isnan(scores)).sum()),
            "n_undefined": int(np.isnan(scores).sum()), "undefined_reasons": _reasons(g["undefined_reason"]),
            "seconds_per_sample": float(g["seconds"].mean()), "direction": first["direction"],
            "category": first["category"], "protocol": protocols[0] if len(protocols) == 1 else json.dumps(protocols),
            "is_baseline": bool(first["is_baseline"]),
        })
    return pd.DataFrame(out, columns=cols)


def paired_vs_best_baseline(results: pd.DataFrame, summary: pd.DataFrame, *, seed: int = 0,
                            n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Each method against the best baseline of its (study, dataset, model, metric), paired by sample.

    Returns:
        columns ``study, dataset, model, metric, explainer, baseline, diff, ci_low, ci_high,
        p_value, n``; ``diff`` is signed so that positive = the method is better.
    """
    rows = []
    for key, g in summary.groupby(["study", "dataset", "model", "metric"], sort=False):
        base = g[g["is_baseline"] & g["mean"].notna()]
        if base.empty:
            continue
        higher = g["direction"].iloc[0] == "higher"
        best = base.loc[base["mean"].idxmax() if higher else base["mean"].idxmin()]
        sel = results[(results["study"] == key[0]) & (results["dataset"] == key[1])
                      & (results["model"] == key[2]) & (results["metric"] == key[3])]
        ref = sel[sel["explainer"] == best["explainer"]].set_index("sample_index")["score"]
        for _, m in g[~g["is_baseline"]].iterrows():
            s = sel[sel["explainer"] == m["explainer"]].set_index("sample_index")["score"]
            a, b = s.align(ref, join="inner")
            sign = 1.0 if higher else -1.0
            r = paired_test(sign * a.to_numpy(float), sign * b.to_numpy(float), n_resamples=n_resamples,
                            seed=key_seed(seed, *key, m["explainer"]) % 2**63)
            rows.append({"study": key[0], "dataset": key[1], "model": key[2], "metric": key[3],
                         "explainer": m["explainer"], "baseline": best["explainer"], "diff": r.mean_diff,
                         "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value, "n": r.n})
    return pd.DataFrame(rows, columns=["study", "dataset", "model", "metric", "explainer", "baseline", "diff",
                                       "ci_low", "ci_high", "p_value", "n"])


def rank_best(values: Sequence[float], direction: str) -> int | None:
    """Index of the best finite value in the given direction (None if none is finite)."""
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).any():
        return None
    arr = np.where(np.isfinite(arr), arr, -np.inf if direction == "higher" else np.inf)
    return int(np.argmax(arr) if direction == "higher" else np.argmin(arr))


# ----------------------------------------------------------------------------- comparisons between methods
# Rank tests for comparing several methods (Demšar, Statistical comparisons of classifiers over
# multiple data sets, JMLR 2006): paired Wilcoxon signed-rank tests with Holm's correction and a
# matched-pairs rank-biserial effect size; the Friedman test over blocks with average ranks and the
# Nemenyi critical difference; Kendall's tau between rankings; rank correlation and top-k overlap
# between maps; the Pareto front of quality against cost. numpy (and torch's special functions)
# only: the tests check them against scipy.

_SQRT2 = math.sqrt(2.0)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / _SQRT2)


def _chi2_sf(x: float, df: int) -> float:
    import torch
    if not np.isfinite(x):
        return float("nan")
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(max(x, 0.0) / 2, dtype=torch.float64)))


def rank_average(values: Any, axis: int = -1) -> np.ndarray:
    """Ranks 1..n along ``axis``, ties sharing their average rank (``scipy.stats.rankdata``).

    Vectorised: one stable sort per row; each run of equal values gets (first + last) / 2 + 1."""
    v = np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)
    flat = v.reshape(-1, v.shape[-1]) if v.ndim else v.reshape(1, 1)
    m, n = flat.shape
    out = np.empty_like(flat)
    if n:
        order = np.argsort(flat, axis=1, kind="stable")
        srt = np.take_along_axis(flat, order, 1)
        pos = np.broadcast_to(np.arange(n), (m, n))
        starts = np.ones((m, n), dtype=bool)
        starts[:, 1:] = srt[:, 1:] != srt[:, :-1]
        ends = np.ones((m, n), dtype=bool)
        ends[:, :-1] = starts[:, 1:]
        first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
        last = np.minimum.accumulate(np.where(ends, pos, n)[:, ::-1], axis=1)[:, ::-1]
        np.put_along_axis(out, order, (first + last) / 2 + 1, 1)
    return np.moveaxis(out.reshape(v.shape), -1, axis)


@lru_cache(maxsize=64)
def _signed_rank_counts(n: int) -> np.ndarray:
    """Number of subsets of {1..n} with each sum 0..n(n+1)/2 (the null distribution of W+)."""
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=np.float64)  # exact up to 2**53 > 2**50
    counts[0] = 1
    for i in range(1, n + 1):
        counts[i:] = counts[i:] + counts[:-i].copy()
    return counts


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon signed-rank test of paired differences ``a − b``.

    ``statistic`` = min(W+, W−) (as ``scipy.stats.wilcoxon``); ``w_plus`` the rank sum of the
    positive differences; ``p_value`` two-sided; ``n`` pairs with a non-zero difference;
    ``rank_biserial`` the matched-pairs rank-biserial correlation (W+ − W−) / (W+ + W−) in
    [-1, 1], positive when ``a`` tends to be larger; ``method`` ``exact``, ``permutation`` or
    ``asymptotic``."""

    statistic: float
    w_plus: float
    p_value: float
    n: int
    rank_biserial: float
    method: str


def wilcoxon(a: Any, b: Any | None = None) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of paired samples (NaN in either drops the pair).

    Zero differences are dropped (Wilcoxon's method). The p-value follows ``scipy.stats.wilcoxon``
    with its defaults (``method="auto"``, no continuity correction): the exact null distribution
    when there are at most 50 pairs and no ties or zeros; with ties or zeros and at most 13 pairs
    the exact sign-flip permutation distribution (all 2^n flips); otherwise the normal
    approximation with the tie correction of the variance.

    Args:
        a: scores of one method per sample (or the differences when ``b`` is None).
        b: scores of the other method on the same samples.

    Returns:
        a :class:`WilcoxonResult`; with no pair, every number NaN; when every difference is 0,
        ``p_value = 1`` and ``rank_biserial = 0`` (no evidence of a difference).

    Raises:
        ValueError: ``a`` and ``b`` differ in length.

    References:
        Wilcoxon 1945; Kerby, The simple difference formula, 2014 (rank-biserial).

    Example:
        >>> wilcoxon([3, 4, 5, 6, 7], [1, 1, 1, 1, 1]).p_value
        0.0625
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    if b is not None:
        b = np.asarray(b, dtype=np.float64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"wilcoxon: a and b must be aligned per sample, got {a.size} and {b.size} values")
        a = a - b
    d = a[~np.isnan(a)]
    n_total = d.size
    if n_total == 0:
        return WilcoxonResult(*(float("nan"),) * 3, 0, float("nan"), "none")
    n_zero = int((d == 0).sum())
    d = d[d != 0]
    n = d.size
    if n == 0:
        return WilcoxonResult(0.0, 0.0, 1.0, 0, 0.0, "none")
    r = rank_average(np.abs(d))
    w_plus, w_minus = float(r[d > 0].sum()), float(r[d < 0].sum())
    _, tie_counts = np.unique(np.abs(d), return_counts=True)
    ties = bool((tie_counts > 1).any())
    if n_total <= 50 and not ties and n_zero == 0:
        counts = _signed_rank_counts(n)
        total = 2.0**n
        cdf = counts[: math.ceil(w_plus) + 1].sum() / total
        sf = counts[math.floor(w_plus):].sum() / total
        p, method = min(1.0, 2 * min(sf, cdf)), "exact"
    elif n_total <= 13:
        flips = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)  # (2^n, n): positive?
        null = (flips * r[None, :]).sum(1)
        gamma = abs(np.finfo(np.float64).eps * 100 * w_plus)
        less, greater = np.mean(null <= w_plus + gamma), np.mean(null >= w_plus - gamma)
        p, method = float(min(1.0, 2 * min(less, greater))), "permutation"
    else:
        se = math.sqrt((n * (n + 1) * (2 * n + 1) - float((tie_counts**3 - tie_counts).sum()) / 2) / 24)
        z = (w_plus - n * (n + 1) / 4) / se
        p, method = min(1.0, 2 * _normal_sf(abs(z))), "asymptotic"
    return WilcoxonResult(min(w_plus, w_minus), w_plus, float(p), n, (w_plus - w_minus) / (w_plus + w_minus), method)


def holm(p_values: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control); NaN stays NaN and is not
    counted in the family.

    The i-th smallest of m p-values becomes max over j ≤ i of min(1, (m − j + 1) p_(j)).

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test over N blocks × k methods, with the average ranks (1 = best) and the
    Nemenyi critical difference at ``alpha`` (two average ranks further apart than ``cd`` differ
    significantly)."""

    statistic: float
    p_value: float
    average_ranks: np.ndarray
    n_blocks: int
    k: int
    cd: float
    alpha: float


def friedman(scores: Any, direction: str = "higher", alpha: float = 0.05) -> FriedmanResult:
    """Friedman test of k methods over N blocks (rows = blocks: data sets, models or samples).

    Args:
        scores: (N, k) scores without NaN (drop incomplete blocks first).
        direction: ``"higher"`` or ``"lower"`` is better; rank 1 goes to the best method.
        alpha: level of the Nemenyi critical difference.

    Returns:
        a :class:`FriedmanResult`; the statistic as ``scipy.stats.friedmanchisquare`` (ties share
        average ranks, with its tie correction), its p-value from the χ² distribution with k − 1
        degrees of freedom; NaN statistic and p-value for k < 2 or N < 2.

    Raises:
        ValueError: not a 2-D table, NaN in it, or an unknown direction.

    References: Friedman 1937; Demšar, JMLR 7 (2006) 1–30.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or np.isnan(s).any():
        raise ValueError(f"friedman: expected an (N, k) table without NaN, got shape {s.shape}"
                         + (" with NaN" if np.isnan(s).any() else ""))
    if direction not in ("higher", "lower"):
        raise ValueError(f"friedman: direction must be 'higher' or 'lower', got {direction!r}")
    n, k = s.shape
    ranks = rank_average(-s if direction == "higher" else s, axis=1)
    avg = ranks.mean(0) if n else np.full(k, np.nan)
    cd = nemenyi_cd(k, n, alpha) if k >= 2 and n >= 1 else float("nan")
    if k < 2 or n < 2:
        return FriedmanResult(float("nan"), float("nan"), avg, n, k, cd, alpha)
    ties = 0.0
    for row in s:
        _, t = np.unique(row, return_counts=True)
        ties += float((t * (t * t - 1)).sum())
    c = 1 - ties / (k * (k * k - 1) * n)
    if c <= 0:  # every block ties every method
        return FriedmanResult(0.0, 1.0, avg, n, k, cd, alpha)
    stat = (12.0 / (k * n * (k + 1)) * float((ranks.sum(0) ** 2).sum()) - 3 * n * (k + 1)) / c
    return FriedmanResult(float(stat), _chi2_sf(stat, k - 1), avg, n, k, cd, alpha)


#: Critical values q_α of the two-tailed Nemenyi test for k = 2..10 methods (Demšar 2006, Table 5a):
#: the studentized range statistic at infinite degrees of freedom divided by √2.
NEMENYI_Q = {
    0.05: (1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164),
    0.10: (1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920),
}


def _range_cdf(q: float, k: int) -> float:
    """P(range of k iid N(0, 1) ≤ q) = k ∫ φ(z) (Φ(z + q) − Φ(z))^(k−1) dz."""
    import torch
    z = torch.linspace(-9.0, 9.0, 6001, dtype=torch.float64)
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    f = k * phi * (torch.special.ndtr(z + q) - torch.special.ndtr(z)) ** (k - 1)
    return float(torch.trapezoid(f, z))


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """q_α for k methods: Demšar's table for k ≤ 10 (α = 0.05 or 0.10), else the studentized
    range quantile at infinite degrees of freedom divided by √2 (numerical integration)."""
    if k < 2:
        raise ValueError(f"nemenyi_q: needs at least 2 methods, got {k}")
    if alpha in NEMENYI_Q and k <= 10:
        return NEMENYI_Q[alpha][k - 2]
    return _studentized_q(k, alpha)


def _studentized_q(k: int, alpha: float) -> float:
    lo, hi = 0.0, 20.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _range_cdf(mid, k) < 1 - alpha else (lo, mid)
    return (lo + hi) / 2 / _SQRT2


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks: CD = q_α √(k (k + 1) / (6 N)) (Demšar 2006)."""
    if n < 1:
        raise ValueError(f"nemenyi_cd: needs at least one block, got {n}")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


def kendall_tau(x: Any, y: Any) -> float:
    """Kendall's τ-b of two rankings (ties corrected, as ``scipy.stats.kendalltau``); NaN when
    either is constant or fewer than 2 pairs are defined (NaN in either drops the item)."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if x.size < 2:
        return float("nan")
    iu = np.triu_indices(x.size, 1)
    sx, sy = np.sign(x[:, None] - x[None, :])[iu], np.sign(y[:, None] - y[None, :])[iu]
    n0 = sx.size
    n1, n2 = float((sx == 0).sum()), float((sy == 0).sum())
    den = math.sqrt((n0 - n1) * (n0 - n2))
    return float((sx * sy).sum() / den) if den > 0 else float("nan")


def spearman(a: Any, b: Any) -> np.ndarray:
    """Spearman rank correlation of each pair of rows (ties share ranks); (B,) for (B, n) inputs,
    NaN where either row is constant."""
    ra, rb = rank_average(np.atleast_2d(np.asarray(a, np.float64))), rank_average(np.atleast_2d(np.asarray(b, np.float64)))
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    den = np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def top_k_overlap(a: Any, b: Any, fraction: float = 0.1) -> np.ndarray:
    """|top-k(a) ∩ top-k(b)| / k per row, k = ceil(fraction · n) highest values (ties in index
    order); (B,) for (B, n) inputs."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    k = max(1, math.ceil(fraction * a.shape[1] - 1e-9))
    ta = np.argsort(-a, axis=1, kind="stable")[:, :k]
    tb = np.argsort(-b, axis=1, kind="stable")[:, :k]
    return np.array([np.intersect1d(x, y).size / k for x, y in zip(ta, tb)])


def pareto_front(quality: Any, cost: Any, direction: str = "higher") -> np.ndarray:
    """Which points no other point beats: no other is at least as good in quality and at most as
    costly, and strictly better in one. (n,) bool; NaN points are never on the front."""
    q = np.asarray(quality, np.float64) * (1.0 if direction == "higher" else -1.0)
    c = np.asarray(cost, np.float64)
    ok = ~(np.isnan(q) | np.isnan(c))
    front = np.zeros(q.size, dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (np.arange(q.size) != i)
        dominated = others & (q >= q[i]) & (c <= c[i]) & ((q > q[i]) | (c < c[i]))
        front[i] = not dominated.any()
    return front
