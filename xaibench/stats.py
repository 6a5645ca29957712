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
from dataclasses import dataclass
from typing import Any, Sequence

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
