"""Cross-method statistics of a run: which differences between methods are real.

Everything here is computed from the results table (and, for map agreement, the saved
example maps), so every report of every study gets it:

- **paired comparisons** — per (study, dataset, model, metric), every pair of methods on the
  samples both scored: Wilcoxon signed-rank test, Holm-adjusted within that family of pairs,
  matched-pairs rank-biserial effect size (:func:`pairwise_comparisons`);
- **average ranks** — per (study, metric), Friedman test and Nemenyi critical difference over
  blocks (Demšar 2006). Blocks are the study's (dataset, model) cells when it has at least
  :data:`MIN_CELL_BLOCKS` of them (each method's mean score per cell), else the samples of its
  cells (:func:`rank_analysis`); baselines are ranked too;
- **agreement between metrics** — Kendall's τ-b between the method rankings (average ranks)
  that two metrics produce (:func:`metric_agreement`);
- **agreement between methods** — Spearman rank correlation and top-10% overlap of two methods'
  maps of the same samples, on the example maps the run saved (the first few samples of every
  cell; the store keeps no other maps) (:func:`method_agreement`);
- **quality against cost** — each method's mean score against its seconds per sample and the
  Pareto front (:func:`pareto_table`);
- a plain-language line per study (:func:`study_lines`).

    from xaibench.report.statistics import cross_method_statistics
    st = cross_method_statistics(results, summary, run_dir)
    st.pairwise, st.ranks, st.metric_agreement, st.method_agreement, st.pareto, st.lines
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..stats import FriedmanResult, friedman, holm, kendall_tau, pareto_front, spearman, top_k_overlap, wilcoxon

#: Significance level of every test and of the critical difference.
ALPHA = 0.05
#: A study needs this many (dataset, model) cells for cells to be the blocks of its rank tests.
MIN_CELL_BLOCKS = 5
#: Top fraction compared by the map-agreement overlap.
TOP_FRACTION = 0.1

_KEYS = ["study", "dataset", "model", "metric"]


# ----------------------------------------------------------------------------- paired comparisons

def pairwise_comparisons(results: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Every pair of (non-baseline) methods per (study, dataset, model, metric), paired by sample.

    Returns:
        columns ``study, dataset, model, metric, category, direction, method_a, method_b, n, n_differing,
        mean_a, mean_b, statistic, p_value, p_holm, rank_biserial, significant, better`` (``n`` pairs
        scored by both, ``n_differing`` of them with different scores: the test's sample size). ``rank_biserial`` is
        signed so that positive = ``method_a`` is better in the metric's direction; ``better`` names
        the significantly better method (Holm-adjusted p < ``alpha``) or is empty.
    """
    cols = ["study", "dataset", "model", "metric", "category", "direction", "method_a", "method_b", "n", "n_differing",
            "mean_a", "mean_b", "statistic", "p_value", "p_holm", "rank_biserial", "significant", "better"]
    if results.empty:
        return pd.DataFrame(columns=cols)
    res = results[~results["is_baseline"].astype(bool)]
    rows = []
    for key, g in res.groupby(_KEYS, sort=False):
        sign = 1.0 if g["direction"].iloc[0] == "higher" else -1.0
        wide = g.pivot_table(index="sample_index", columns="explainer", values="score", aggfunc="first", sort=False,
                             dropna=False)
        methods = list(dict.fromkeys(g["explainer"]))
        group = []
        for a, b in itertools.combinations(methods, 2):
            x, y = wide[a].to_numpy(float), wide[b].to_numpy(float)
            r = wilcoxon(sign * x, sign * y)
            both = ~(np.isnan(x) | np.isnan(y))
            group.append({**dict(zip(_KEYS, key)), "category": g["category"].iloc[0],
                          "direction": g["direction"].iloc[0], "method_a": a, "method_b": b, "n": int(both.sum()), "n_differing": r.n,
                          "mean_a": float(x[both].mean()) if both.any() else np.nan,
                          "mean_b": float(y[both].mean()) if both.any() else np.nan, "statistic": r.statistic,
                          "p_value": r.p_value, "rank_biserial": r.rank_biserial})
        adj = holm([r["p_value"] for r in group])
        for r, p in zip(group, adj):
            sig = bool(np.isfinite(p) and p < alpha)
            r.update(p_holm=float(p), significant=sig,
                     better=(r["method_a"] if r["rank_biserial"] > 0 else r["method_b"]) if sig else "")
        rows += group
    return pd.DataFrame(rows, columns=cols)


def best_vs_rest(pairwise: pd.DataFrame) -> pd.DataFrame:
    """Per (study, dataset, model, metric): the method with the best mean, the methods not
    significantly different from it (Holm), and its effect size against the runner-up."""
    cols = ["study", "dataset", "model", "metric", "best", "not significantly different", "runner-up",
            "rank_biserial vs runner-up", "p_holm vs runner-up", "pairs differing"]
    rows = []
    for key, g in pairwise.groupby(_KEYS, sort=False):
        higher = g["direction"].iloc[0] == "higher"
        means: dict[str, float] = {}
        for r in g.itertuples(index=False):
            means.setdefault(r.method_a, r.mean_a if np.isfinite(r.mean_a) else np.nan)
            means.setdefault(r.method_b, r.mean_b if np.isfinite(r.mean_b) else np.nan)
        # means on the pairs' common samples differ slightly per pair; rank by the first seen
        finite = {m: v for m, v in means.items() if np.isfinite(v)}
        if not finite:
            continue
        order = sorted(finite, key=lambda m: -finite[m] if higher else finite[m])
        best = order[0]
        ties, runner, rb, p, nd = [], "", np.nan, np.nan, ""
        for other in order[1:]:
            r = g[((g["method_a"] == best) & (g["method_b"] == other)) | ((g["method_a"] == other)
                                                                           & (g["method_b"] == best))].iloc[0]
            if not r["significant"]:
                ties.append(other)
            if not runner:
                runner, p, nd = other, r["p_holm"], f"{r['n_differing']} of {r['n']}"
                rb = r["rank_biserial"] if r["method_a"] == best else -r["rank_biserial"]
        rows.append({**dict(zip(_KEYS, key)), "best": best, "not significantly different": ", ".join(ties) or "—",
                     "runner-up": runner, "rank_biserial vs runner-up": rb, "p_holm vs runner-up": p,
                     "pairs differing": nd})
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- average ranks

@dataclass
class RankResult:
    """Average ranks of one (study, metric): the Friedman test, its blocks and the cliques of
    methods whose average ranks lie within the critical difference."""

    study: str
    metric: str
    category: str
    direction: str
    methods: list[str]
    baselines: list[str]
    unit: str
    test: FriedmanResult
    dropped_methods: list[str] = field(default_factory=list)

    @property
    def ranks(self) -> dict[str, float]:
        return dict(zip(self.methods, self.test.average_ranks.tolist()))

    def order(self) -> list[str]:
        return sorted(self.methods, key=lambda m: self.ranks[m])

    def best_method(self) -> str | None:
        real = [m for m in self.order() if m not in self.baselines]
        return real[0] if real else None

    def tied_with(self, method: str) -> list[str]:
        """Methods whose average rank is within the critical difference of ``method``'s."""
        r = self.ranks
        cd = self.test.cd
        return [m for m in self.order() if m != method and np.isfinite(cd) and abs(r[m] - r[method]) <= cd]

    def cliques(self) -> list[tuple[int, int]]:
        """Maximal runs (i, j) of the rank-ordered methods spanning at most the CD (i < j)."""
        r = [self.ranks[m] for m in self.order()]
        cd, out = self.test.cd, []
        for i in range(len(r)):
            j = i
            while j + 1 < len(r) and r[j + 1] - r[i] <= cd:
                j += 1
            if j > i and not any(a <= i and j <= b for a, b in out):
                out.append((i, j))
        return out

    @property
    def significant(self) -> bool:
        return bool(np.isfinite(self.test.p_value) and self.test.p_value < self.test.alpha)


def _blocks(g: pd.DataFrame, methods: list[str], by_cell: bool) -> pd.DataFrame:
    if by_cell:
        return g.groupby(["dataset", "model", "explainer"], sort=False)["score"].mean().unstack("explainer")[methods]
    return g.pivot_table(index=["dataset", "model", "sample_index"], columns="explainer", values="score",
                         aggfunc="first", sort=False, dropna=False)[methods]


def rank_analysis(results: pd.DataFrame, alpha: float = ALPHA) -> list[RankResult]:
    """Per (study, metric): average ranks (1 = best), Friedman test and Nemenyi CD over blocks
    (see the module docstring), baselines included. Methods missing from more than half of the
    blocks are dropped (named in ``dropped_methods``), then blocks with any NaN."""
    out = []
    if results.empty:
        return out
    for (study, metric), g in results.groupby(["study", "metric"], sort=False):
        methods = list(dict.fromkeys(g["explainer"]))
        baselines = list(dict.fromkeys(g.loc[g["is_baseline"].astype(bool), "explainer"]))
        n_cells = g[["dataset", "model"]].drop_duplicates().shape[0]
        by_cell = n_cells >= MIN_CELL_BLOCKS
        table = _blocks(g, methods, by_cell)
        keep = [m for m in methods if table[m].notna().mean() > 0.5]
        table = table[keep].dropna()
        if len(keep) < 2 or len(table) < 2:
            continue
        direction = g["direction"].iloc[0]
        unit = (f"{len(table)} (dataset, model) cells" if by_cell
                else f"{len(table)} samples" + (f" of {n_cells} (dataset, model) cells" if n_cells > 1 else ""))
        out.append(RankResult(str(study), str(metric), str(g["category"].iloc[0]), direction, keep,
                              [b for b in baselines if b in keep], unit,
                              friedman(table.to_numpy(float), direction, alpha),
                              [m for m in methods if m not in keep]))
    return out


def ranks_table(ranks: list[RankResult]) -> pd.DataFrame:
    """One row per (study, metric): blocks, Friedman p, CD and every method's average rank."""
    rows = []
    for r in ranks:
        rows.append({"study": r.study, "metric": r.metric, "blocks": r.unit, "Friedman p": r.test.p_value,
                     "CD": r.test.cd, **{m: r.ranks[m] for m in r.order()}})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- agreement

def metric_agreement(ranks: list[RankResult]) -> pd.DataFrame:
    """Kendall τ-b between the rankings of the (non-baseline) methods that each pair of metrics of a
    study produces (their average ranks), on the methods both rank.

    Returns:
        columns ``study, metric_a, category_a, metric_b, category_b, tau, n_methods``.
    """
    rows = []
    by_study: dict[str, list[RankResult]] = {}
    for r in ranks:
        by_study.setdefault(r.study, []).append(r)
    for study, rs in by_study.items():
        for a, b in itertools.combinations(rs, 2):
            common = [m for m in a.methods if m in b.methods and m not in a.baselines and m not in b.baselines]
            tau = kendall_tau([a.ranks[m] for m in common], [b.ranks[m] for m in common]) if len(common) >= 3 else np.nan
            rows.append({"study": study, "metric_a": a.metric, "category_a": a.category, "metric_b": b.metric,
                         "category_b": b.category, "tau": tau, "n_methods": len(common)})
    return pd.DataFrame(rows, columns=["study", "metric_a", "category_a", "metric_b", "category_b", "tau", "n_methods"])


def _flat_maps(ex: dict[str, Any]) -> np.ndarray | None:
    v = ex.get("values")
    if v is None or not hasattr(v, "shape") or v.ndim < 2:
        return None
    return v.float().reshape(v.shape[0], -1).numpy().astype(np.float64)


def method_agreement(examples: list[dict[str, Any]], fraction: float = TOP_FRACTION) -> pd.DataFrame:
    """Spearman rank correlation and top-``fraction`` overlap of two methods' maps of the same
    samples, per (study, dataset, model), on the saved example maps (baselines excluded; pairs
    whose maps differ in shape, or whose samples differ, are skipped). Scores are means over the
    samples (NaN for a constant map is left out).

    Returns:
        columns ``study, dataset, model, method_a, method_b, n_samples, spearman, top_overlap``.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for ex in examples:
        if not ex.get("is_baseline"):
            groups.setdefault((ex["study"], ex["dataset"], ex["model"]), []).append(ex)
    rows = []
    for key, exs in groups.items():
        for a, b in itertools.combinations(exs, 2):
            fa, fb = _flat_maps(a), _flat_maps(b)
            if fa is None or fb is None or fa.shape != fb.shape or (a.get("ids") and b.get("ids") and a["ids"] != b["ids"]):
                continue
            rho = spearman(fa, fb)
            rows.append({"study": key[0], "dataset": key[1], "model": key[2], "method_a": a["explainer"],
                         "method_b": b["explainer"], "n_samples": fa.shape[0],
                         "spearman": float(np.nanmean(rho)) if np.isfinite(rho).any() else np.nan,
                         "top_overlap": float(top_k_overlap(fa, fb, fraction).mean())})
    return pd.DataFrame(rows, columns=["study", "dataset", "model", "method_a", "method_b", "n_samples", "spearman",
                                       "top_overlap"])


# ----------------------------------------------------------------------------- quality vs cost

def pareto_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (study, metric): each method's mean score (mean over its (dataset, model) cells) against
    its seconds per sample (likewise), and whether it is on the Pareto front (no other method is
    both at least as good and at least as fast, and better in one). Baselines excluded."""
    cols = ["study", "metric", "direction", "method", "score", "seconds_per_sample", "pareto"]
    if summary.empty:
        return pd.DataFrame(columns=cols)
    s = summary[~summary["is_baseline"].astype(bool)]
    rows = []
    for (study, metric), g in s.groupby(["study", "metric"], sort=False):
        m = g.groupby("explainer", sort=False).agg(score=("mean", "mean"), sec=("seconds_per_sample", "mean"))
        front = pareto_front(m["score"].to_numpy(float), m["sec"].to_numpy(float), g["direction"].iloc[0])
        for (meth, r), f in zip(m.iterrows(), front):
            rows.append({"study": study, "metric": metric, "direction": g["direction"].iloc[0], "method": meth,
                         "score": float(r["score"]), "seconds_per_sample": float(r["sec"]), "pareto": bool(f)})
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- plain language

def _names(xs: list[str]) -> str:
    xs = [f"`{x}`" for x in xs]
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


def study_lines(ranks: list[RankResult]) -> dict[str, str]:
    """One plain-language line per study: per metric category (the question), which method ranks
    best on how many of its metrics, and on which metrics the best is not significantly ahead."""
    out: dict[str, str] = {}
    by_study: dict[str, dict[str, list[RankResult]]] = {}
    for r in ranks:
        by_study.setdefault(r.study, {}).setdefault(r.category, []).append(r)
    for study, cats in by_study.items():
        parts = []
        for cat, rs in cats.items():
            wins: dict[str, int] = {}
            for r in rs:
                b = r.best_method()
                if b:
                    wins[b] = wins.get(b, 0) + 1
            if not wins:
                continue
            order = sorted(wins, key=lambda m: -wins[m])
            head = f"on {cat.replace('_', ' ')} ({len(rs)} metric{'s' if len(rs) > 1 else ''}) "
            if all(len([m for m in r.methods if m not in r.baselines]) == 1 for r in rs):  # nothing to compare with
                beats = sum(r.order()[0] not in r.baselines for r in rs)
                text = head + f"only `{order[0]}` is scored; it ranks above the baselines on {beats} of {len(rs)}"
            else:
                text = head + f"`{order[0]}` ranks best on {wins[order[0]]}"
                text += "".join(f", `{m}` on {wins[m]}" for m in order[1:])
            nosig = [r for r in rs if not r.significant]
            ties = [r for r in rs if r.significant and r.best_method()
                    and [m for m in r.tied_with(r.best_method()) if m not in r.baselines]]
            above = [r for r in rs if r.best_method() and r.order()[0] in r.baselines]
            notes = []
            if nosig:
                notes.append(f"no significant difference at all on {_names([r.metric for r in nosig])}")
            if ties:
                notes.append("the best is not significantly ahead of "
                             + "; ".join(f"{_names([m for m in r.tied_with(r.best_method()) if m not in r.baselines])}"
                                         f" on `{r.metric}`" for r in ties))
            if above:
                notes.append(f"a baseline ranks above every method on {_names([r.metric for r in above])}")
            parts.append(text + (" (" + "; ".join(notes) + ")" if notes else ""))
        if parts:
            out[study] = "; ".join(parts) + "."
    return out


# ----------------------------------------------------------------------------- everything at once

@dataclass
class CrossMethodStatistics:
    """The cross-method statistics of a run (see the module docstring)."""

    pairwise: pd.DataFrame
    best: pd.DataFrame
    ranks: list[RankResult]
    metric_agreement: pd.DataFrame
    method_agreement: pd.DataFrame
    pareto: pd.DataFrame
    lines: dict[str, str]


_CACHE: list[tuple[pd.DataFrame, pd.DataFrame, Path | None, CrossMethodStatistics]] = []


def cross_method_statistics(results: pd.DataFrame, summary: pd.DataFrame,
                            run_dir: str | Path | None = None) -> CrossMethodStatistics:
    """All of it, for a results table, its summary and (for map agreement) the run folder.

    The last result is cached by the identity of ``results`` and ``summary``, so the report's
    figures and both renderers share one computation."""
    rd = Path(run_dir) if run_dir is not None else None
    for r, s, d, st in _CACHE:
        if r is results and s is summary and d == rd:
            return st
    from ..store import load_examples

    ranks = rank_analysis(results)
    pw = pairwise_comparisons(results)
    st = CrossMethodStatistics(pw, best_vs_rest(pw), ranks, metric_agreement(ranks),
                               method_agreement(load_examples(rd)) if rd is not None else method_agreement([]),
                               pareto_table(summary), study_lines(ranks))
    _CACHE[:] = [(results, summary, rd, st)]
    return st
