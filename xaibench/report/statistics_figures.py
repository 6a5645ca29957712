"""Report figures of the cross-method statistics: critical-difference diagrams (Demšar 2006)
and quality against seconds per sample (Pareto fronts). Registered with the report figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from .figures import figure_path, new_figure, register_figure, save
from .statistics import cross_method_statistics


def _cd_panel(ax, r) -> None:
    """One critical-difference diagram: the rank axis, each method at its average rank with an
    elbow line to its label (best half left, rest right), bars joining the methods whose ranks lie
    within the critical difference, and the CD itself above the axis."""
    order = r.order()
    ranks = r.ranks
    k = len(r.test.average_ranks)
    ax.set_xlim(0.5, k + 0.5)
    n = len(order)
    half = math.ceil(n / 2)
    ax.set_ylim(-(half + 1.2), 1.6)
    ax.hlines(0, 1, k, color="black", lw=1)
    for t in range(1, k + 1):
        ax.vlines(t, 0, 0.15, color="black", lw=0.8)
        ax.text(t, 0.25, str(t), ha="center", va="bottom", fontsize=7)
    cd = r.test.cd
    if np.isfinite(cd):
        ax.hlines(1.1, 1, 1 + cd, color="black", lw=1.5)
        ax.text(1 + cd / 2, 1.2, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=7)
    for i, m in enumerate(order):
        x = ranks[m]
        left = i < half
        y = -(i + 1) * 0.9 if left else -(n - i) * 0.9
        xe = 0.5 if left else k + 0.5
        style = {"color": "grey" if m in r.baselines else "black", "lw": 0.8}
        ax.plot([x, x, xe], [0, y, y], **style)
        ax.text(xe, y + 0.08, f"{m} ({x:.2f})", ha="left" if left else "right", va="bottom", fontsize=7,
                color=style["color"])
    for j, (a, b) in enumerate(r.cliques()):
        lo, hi = ranks[order[a]], ranks[order[b]]
        y = -0.35 - 0.18 * j
        ax.hlines(y, lo - 0.03, hi + 0.03, color="tab:red", lw=2.5)
    ax.axis("off")
    p = r.test.p_value
    ax.set_title(f"{r.metric} ({r.category}); Friedman p = {p:.3g}; blocks: {r.unit}", fontsize=8)


@register_figure("critical_difference")
def critical_difference(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """Per study: a critical-difference diagram per metric (average ranks, 1 = best; red bars join
    methods not significantly different by the Nemenyi test; grey = baselines)."""
    st = cross_method_statistics(results, summary, run_dir)
    out = []
    for study in dict.fromkeys(r.study for r in st.ranks):
        rs = [r for r in st.ranks if r.study == study]
        ncol = min(2, len(rs))
        nrow = math.ceil(len(rs) / ncol)
        height = max(len(r.methods) for r in rs) * 0.22 + 1.3
        fig = new_figure(6.0 * ncol, height * nrow)
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
        for ax, r in zip(axes, rs):
            _cd_panel(ax, r)
        for ax in axes[len(rs):]:
            ax.set_visible(False)
        fig.suptitle(f"{study}: average ranks and Nemenyi critical difference (α = {rs[0].test.alpha})", fontsize=10)
        out.append((f"{study}: critical-difference diagrams", save(fig, figure_path(run_dir, f"cd_{study}"))))
    return out


@register_figure("pareto")
def pareto(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """Per study: each method's mean score against its seconds per sample (log axis), one panel per
    metric; the Pareto front (filled markers, joined) is what no other method beats on both."""
    st = cross_method_statistics(results, summary, run_dir)
    out = []
    for study, s in st.pareto.groupby("study", sort=False):
        metrics = list(dict.fromkeys(s["metric"]))
        ncol = min(3, len(metrics))
        nrow = math.ceil(len(metrics) / ncol)
        fig = new_figure(4.0 * ncol, 3.0 * nrow)
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
        for ax, metric in zip(axes, metrics):
            g = s[(s["metric"] == metric) & np.isfinite(s["score"]) & (s["seconds_per_sample"] > 0)]
            for i, r in enumerate(g.itertuples(index=False)):
                ax.scatter([r.seconds_per_sample], [r.score], color=f"C{i % 10}", s=30,
                           facecolors=None if r.pareto else "white", zorder=3)
                ax.annotate(r.method, (r.seconds_per_sample, r.score), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            f = g[g["pareto"]].sort_values("seconds_per_sample")
            if len(f) > 1:
                ax.step(f["seconds_per_sample"], f["score"], where="post", color="grey", lw=0.8, zorder=2)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("seconds per sample", fontsize=7)
            arrow = "↑ better" if (g["direction"].iloc[0] if len(g) else "higher") == "higher" else "↓ better"
            ax.set_title(f"{metric} ({arrow})", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
        fig.suptitle(f"{study}: quality against seconds per sample (filled: Pareto front)", fontsize=10)
        out.append((f"{study}: quality against seconds per sample", save(fig, figure_path(run_dir, f"pareto_{study}"))))
    return out
