"""The cross-method statistics section of a report (markdown and HTML) and its figures.

Computed by :mod:`.statistics`; drawn by :mod:`.statistics_figures` (imported here, which
registers the critical-difference and Pareto figures). The renderers pass their own table and
escaping helpers, so this module imports neither renderer.
"""

from __future__ import annotations

import html as _html
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from .statistics import ALPHA, TOP_FRACTION, CrossMethodStatistics, cross_method_statistics, ranks_table
from .statistics_figures import critical_difference, pareto  # noqa: F401  (registers the two figures)


def _p(x: float) -> str:
    """A p-value as text: 3 significant digits, ``< 1e-6`` below that."""
    if x is None or not np.isfinite(x):
        return "–"
    return "< 1e-6" if x < 1e-6 else f"{x:.3g}"


def _tau_matrix(ma: pd.DataFrame) -> pd.DataFrame:
    """The metric-agreement rows as an upper-triangular matrix of τ (rows: metric_a, columns: metric_b)."""
    metrics = list(dict.fromkeys(ma["metric_a"].tolist() + ma["metric_b"].tolist()))
    m = pd.DataFrame("", index=metrics[:-1], columns=metrics[1:])
    for r in ma.itertuples(index=False):
        m.loc[r.metric_a, r.metric_b] = "–" if not np.isfinite(r.tau) else f"{r.tau:+.2f}"
    return m.rename_axis("τ").reset_index()


def _category_tau(ma: pd.DataFrame) -> str:
    """``faithfulness vs localisation: mean τ = +0.33 (6 pairs)`` for every pair of categories."""
    ok = ma[np.isfinite(ma["tau"].astype(float))]
    pairs = [tuple(sorted(p)) for p in zip(ok["category_a"], ok["category_b"])]  # (a, b) and (b, a) together
    taus: dict[tuple[str, str], list[float]] = {}
    for p, t in zip(pairs, ok["tau"]):
        if p[0] != p[1]:
            taus.setdefault(p, []).append(float(t))
    return "; ".join(f"{a} vs {b}: mean τ = {np.mean(t):+.2f} ({len(t)} metric pairs)" for (a, b), t in taus.items())


def _study_tables(st: CrossMethodStatistics, study: str) -> list[tuple[str, str, pd.DataFrame]]:
    """(heading, explanation, table) of one study's statistics section."""
    out = []
    rt = ranks_table([r for r in st.ranks if r.study == study])
    if not rt.empty:
        rt["Friedman p"] = [_p(x) for x in rt["Friedman p"]]
        out.append(("Average ranks (1 = best) with the Friedman test and the Nemenyi critical difference",
                    (f"Methods whose average ranks differ by less than CD are not significantly different "
                     f"(α = {ALPHA}); see the critical-difference figure."), rt.drop(columns=["study"])))
    b = st.best[st.best["study"] == study].copy()
    if not b.empty:
        b["p_holm vs runner-up"] = [_p(x) for x in b["p_holm vs runner-up"]]
        out.append(("Paired comparisons on the same samples (Wilcoxon signed-rank, Holm-corrected per row)",
                    ("Per (dataset, model, metric): the best method by mean, the methods not significantly "
                     "different from it, and the matched-pairs rank-biserial effect size against the runner-up "
                     "(+1 = better on every sample whose scores differ; 'pairs differing' is the test's sample "
                     "size). Every pair: xaibench.report.statistics.pairwise_comparisons."),
                    b.drop(columns=["study"])))
    ma = st.metric_agreement[st.metric_agreement["study"] == study]
    if ma["tau"].notna().any():
        cats = _category_tau(ma)
        out.append(("Agreement between metrics (Kendall τ-b of their method rankings)",
                    ("τ = +1: the two metrics rank the methods identically; −1: in reverse; ~0: unrelated; – : "
                     "fewer than 3 methods in common." + (f" Across categories: {cats}." if cats else "")),
                    _tau_matrix(ma)))
    mg = st.method_agreement[st.method_agreement["study"] == study]
    if not mg.empty:
        n = int(mg["n_samples"].max())
        agg = mg.groupby(["method_a", "method_b"], sort=False).agg(
            cells=("dataset", "size"), spearman=("spearman", "mean"), top_overlap=("top_overlap", "mean"))
        out.append(("Agreement between methods (their maps of the same samples)",
                    (f"Spearman rank correlation and top-{TOP_FRACTION:.0%} overlap of two methods' maps of the same "
                     f"samples, mean over the (dataset, model) cells, on the {n} example samples per cell the run "
                     "saved (the store keeps no other maps)."), agg.reset_index()))
    pt = st.pareto[st.pareto["study"] == study]
    if not pt.empty:
        wide = pt.assign(cell=[f"{'★ ' if p else ''}{s:.3f}" for p, s in zip(pt["pareto"], pt["score"])]).pivot_table(
            index="method", columns="metric", values="cell", aggfunc="first", sort=False)
        sec = pt.drop_duplicates("method").set_index("method")["seconds_per_sample"] * 1000
        wide.insert(0, "ms/sample", sec.reindex(wide.index).round(2))
        out.append(("Quality against seconds per sample",
                    ("Mean score per metric (mean over the (dataset, model) cells); ★ = on the Pareto front (no "
                     "other method is both at least as good and at least as fast). See the Pareto figure."),
                    wide.reset_index()))
    return out


def studies(st: CrossMethodStatistics) -> list[str]:
    return list(dict.fromkeys([r.study for r in st.ranks] + st.best["study"].tolist() + st.pareto["study"].tolist()))


def statistics_md(report: Any, frame: Callable[..., list[str]], md: Callable[[Any], str]) -> list[str]:
    """Markdown lines of the cross-method statistics section (empty for an empty run); ``frame`` and
    ``md`` are the markdown renderer's table and escaping helpers."""
    d = report.data
    st = cross_method_statistics(d.results, d.summary, d.run_dir)
    names = studies(st)
    if not names:
        return []
    lines = ["", "## Cross-method statistics", ""]
    for study in names:
        lines += [f"### Study {md(study)}", ""]
        if study in st.lines:
            lines += [f"**In short:** {md(st.lines[study])}", ""]
        for head, expl, table in _study_tables(st, study):
            lines += [f"#### {md(head)}", "", md(expl), ""] + frame(table, 3) + [""]
    return lines


def statistics_html(report: Any, frame_html: Callable[..., str]) -> list[str]:
    """HTML parts of the cross-method statistics section (empty for an empty run); ``frame_html`` is
    the HTML renderer's table helper."""
    d = report.data
    st = cross_method_statistics(d.results, d.summary, d.run_dir)
    names = studies(st)
    if not names:
        return []
    e = _html.escape
    parts = ["<h2>Cross-method statistics</h2>"]
    for study in names:
        parts.append(f"<h3>Study <code>{e(study)}</code></h3>")
        if study in st.lines:
            line = e(st.lines[study])
            chunks = line.split("`")
            line = "".join(c if i % 2 == 0 else f"<code>{c}</code>" for i, c in enumerate(chunks))
            parts.append(f"<p><b>In short:</b> {line}</p>")
        for head, expl, table in _study_tables(st, study):
            parts += [f"<details open><summary><b>{e(head)}</b></summary>",
                      f"<p class='legend'>{e(expl)}</p>", frame_html(table, 3), "</details>"]
    return parts


