"""Report figures of the FCM family (Kowarsch et al. 2023, figures 3–5).

- ``fcm_projections``: per FCM cell, the first sample on 2D projections (CD45/SSC-A,
  CD19/CD10, CD45/CD10, and the gate's own for polygon queries): class membership, the top
  500 attended events of every head, the top 100 gradient vectors as arrows, the predicted
  and query polygons.
- ``fcm_head_fractions``: per attention explainer, the top-5% cancer fraction of every head
  with its 95% bootstrap CI and the random baseline (figure 5); needs one metric entry per
  head (``top_k_positive_fraction`` with ``head=0, 1, ...``).
- ``fcm_head_populations``: per attention explainer, the share of every population among every
  head's top-5% attended events (``top_k_population_share``, one metric entry per head and
  population) with 95% CIs, coloured by enrichment over the random baseline (the population's
  share of the sample); the paper's figure-4 reading of which head attends which population.
- ``fcm_f1_gain_curve``: the false-negative gradient-step experiment (appendix 7.3) as relative F1
  gain against step size (``gradient_step_f1_relative_gain`` at several ``step`` values), per
  explainer with 95% CIs and the random baseline, beside the paper's ">60%".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xaibench.report.figures import figure_path, load_examples, new_figure, register_figure, save

PROJECTIONS = (("CD45", "SSC-A"), ("CD19", "CD10"), ("CD45", "CD10"))
EVENT_KINDS = ("event", "event_head", "event_vector")
N_BACKGROUND = 15000


def _dims(markers: tuple[str, ...], extras: dict[str, Any], m: int) -> list[tuple[int, int]]:
    """(x, y) marker indices of the projections to draw; the gate's own first for polygon queries."""
    out = [tuple(extras["dims"])] if "dims" in extras else []
    for x, y in PROJECTIONS:
        if x in markers and y in markers and (markers.index(x), markers.index(y)) not in out:
            out.append((markers.index(x), markers.index(y)))
    return out or [(0, 1 % m)]


def _background(ax: Any, ev: np.ndarray, labels: np.ndarray | None, dx: int, dy: int, rng: np.random.Generator) -> None:
    idx = rng.permutation(len(ev))[:N_BACKGROUND]
    ax.scatter(ev[idx, dx], ev[idx, dy], s=0.3, c="0.8", rasterized=True)
    if labels is not None and labels.any():
        pos = np.flatnonzero(labels)
        ax.scatter(ev[pos, dx], ev[pos, dy], s=0.6, c="tab:red", rasterized=True)


def _polygons(ax: Any, extras: dict[str, Any], dx: int, dy: int) -> None:
    if tuple(extras.get("dims", ())) != (dx, dy):
        return
    for key, color in (("polygon", "tab:blue"), ("query", "tab:orange")):
        p = extras.get(key)
        if isinstance(p, torch.Tensor):
            v = p[0].numpy()
            ax.fill(v[:, 0], v[:, 1], fill=False, ec=color, lw=1.2, label=key)


def _panel_columns(ex: dict[str, Any]) -> list[tuple[str, Any]]:
    """(title, what) columns of one example: membership, then one per head or the arrows."""
    vals = ex["values"][0].float()
    cols: list[tuple[str, Any]] = [("class membership (red: blasts)", None)]
    if isinstance((ex.get("extras") or {}).get("predicted"), torch.Tensor):
        cols.append(("predicted blasts (red)", "predicted"))
    if ex["kind"] == "event_head":
        cols += [(f"head {h}: top 500 attended", vals[h]) for h in range(vals.shape[0])]
    elif ex["kind"] == "event":
        cols.append(("top 500 events", vals))
    else:
        sign = -1.0 if "query" in (ex.get("extras") or {}) else 1.0
        cols.append(("top 100 gradients" + (" (−∂‖R−Q‖/∂E)" if sign < 0 else ""), sign * vals))
    return cols


def _draw(ax: Any, ev: np.ndarray, what: Any, dx: int, dy: int) -> None:
    if what is None or isinstance(what, str):
        return
    w = what.numpy()
    if w.ndim == 1:  # scores: the top 500 events, coloured by score
        top = np.argsort(-w, kind="stable")[:500]
        ax.scatter(ev[top, dx], ev[top, dy], s=2, c=w[top], cmap="viridis", rasterized=True)
        return
    top = np.argsort(-np.linalg.norm(w, axis=1), kind="stable")[:100]  # vectors: the top 100 as arrows
    u, v = w[top, dx], w[top, dy]
    span = max(np.ptp(ev[:, dx]), np.ptp(ev[:, dy]), 1e-6)
    scale = 0.08 * span / max(float(np.hypot(u, v).max()), 1e-30)
    ax.quiver(ev[top, dx], ev[top, dy], u * scale, v * scale, angles="xy", scale_units="xy", scale=1,
              color="k", width=0.004)


@register_figure("fcm_projections")
def fcm_projections(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """Per FCM cell (baselines left out): the first sample's projections with attention / gradients."""
    out = []
    for ex in load_examples(run_dir):
        x = ex.get("inputs")
        if ex.get("is_baseline") or ex.get("kind") not in EVENT_KINDS or not isinstance(x, torch.Tensor) or x.ndim != 3:
            continue
        if not str(ex.get("explainer_key", "")).startswith("fcm."):  # MIL cells are event sets too
            continue
        extras = ex.get("extras") or {}
        ev = x[0].float().numpy()
        markers = tuple(extras.get("markers") or (f"m{i}" for i in range(ev.shape[1])))
        labels = extras.get("labels")
        labels = labels[0].numpy().astype(bool) if isinstance(labels, torch.Tensor) else None
        predicted = extras.get("predicted")
        predicted = predicted[0].numpy().astype(bool) if isinstance(predicted, torch.Tensor) else None
        rows, cols = _dims(markers, extras, ev.shape[1]), _panel_columns(ex)
        fig = new_figure(2.6 * len(cols), 2.4 * len(rows))
        axes = np.atleast_2d(fig.subplots(len(rows), len(cols), squeeze=False))
        for r, (dx, dy) in enumerate(rows):
            rng = np.random.default_rng(0)
            for c, (title, what) in enumerate(cols):
                ax = axes[r, c]
                marked = labels if what is None else (predicted if isinstance(what, str) else None)
                _background(ax, ev, marked, dx, dy, rng)
                _draw(ax, ev, what, dx, dy)
                _polygons(ax, extras, dx, dy)
                ax.set_xlabel(markers[dx], fontsize=7)
                ax.set_ylabel(markers[dy], fontsize=7)
                ax.tick_params(labelsize=6)
                if r == 0:
                    ax.set_title(title, fontsize=8)
        name = f"fcm_{ex['study']}_{ex['dataset']}_{ex['model']}_{ex['explainer']}"
        sid = ex["ids"][0] if ex.get("ids") else "sample 0"
        fig.suptitle(f"{ex['explainer']} on {ex['model']} / {sid}", fontsize=9)
        out.append((f"FCM {ex['study']}: {ex['explainer']} ({ex['model']}, {ex['dataset']})",
                    save(fig, figure_path(run_dir, name))))
    return out


def _head(protocol: Any) -> int | None:
    try:
        h = json.loads(protocol).get("head") if isinstance(protocol, str) else None
    except (ValueError, AttributeError):
        return None
    return h if isinstance(h, int) else None


@register_figure("fcm_head_fractions")
def fcm_head_fractions(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """Top-5% cancer fraction per head with 95% CIs (paper figure 5), one panel per attention explainer."""
    if summary.empty or "metric_key" not in summary:
        return []
    s = summary[summary["metric_key"] == "top_k_positive_fraction"].copy()
    s["head"] = [_head(p) for p in s["protocol"]]
    s = s[s["head"].notna()]
    out = []
    for (study, dataset, model), g in s.groupby(["study", "dataset", "model"], sort=False):
        methods = list(dict.fromkeys(g.loc[~g["is_baseline"] & (g["explainer_key"] == "fcm.attention"), "explainer"]))
        if not methods:
            continue
        fig = new_figure(3.2 * len(methods), 2.8)
        axes = np.atleast_1d(fig.subplots(1, len(methods), squeeze=False)).ravel()
        for ax, meth in zip(axes, methods):
            m = g[g["explainer"] == meth].sort_values("head")
            heads = m["head"].astype(int).to_numpy()
            mean, lo, hi = (m[c].to_numpy(dtype=float) for c in ("mean", "ci_low", "ci_high"))
            ax.bar(heads, mean, color=[f"C{h % 10}" for h in heads], alpha=0.85)
            ax.errorbar(heads, mean, yerr=[mean - lo, hi - mean], fmt="none", ecolor="k", capsize=3)
            base = g[g["is_baseline"] & g["explainer"].str.contains("random")].groupby("head")["mean"].mean()
            if not base.empty:
                ax.axhline(float(base.mean()), color="grey", ls="--", lw=1, label="random")
                ax.legend(fontsize=7)
            ax.set_xticks(heads, [f"H{h}" for h in heads])
            ax.set_ylim(0, 1)
            ax.set_title(meth, fontsize=9)
            ax.set_ylabel("n_cancer@top5% / min(n@top5%, n_cancer)", fontsize=7)
        fig.suptitle(f"{study}: top-5% cancer fraction per head ({model}, {dataset}), 95% CI", fontsize=9)
        out.append((f"FCM {study}: top-5% cancer fraction per head ({model})",
                    save(fig, figure_path(run_dir, f"fcm_heads_{study}_{dataset}_{model}"))))
    return out


def _param(protocol: Any, key: str) -> Any:
    try:
        return json.loads(protocol).get(key) if isinstance(protocol, str) else None
    except (ValueError, AttributeError):
        return None


def population_table(summary: pd.DataFrame) -> pd.DataFrame:
    """``top_k_population_share`` rows of a summary with their ``head`` (int) and ``population`` columns."""
    if summary.empty or "metric_key" not in summary:
        return pd.DataFrame()
    s = summary[summary["metric_key"] == "top_k_population_share"].copy()
    s["head"] = [_head(p) for p in s["protocol"]]
    s["population"] = [_param(p, "population") for p in s["protocol"]]
    return s[s["head"].notna() & s["population"].notna()]


def head_reading(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (study, dataset, model, explainer, head): the population a head enriches most (share over
    the random baseline's share, where the CI's lower end is above the baseline), its share and CI."""
    s = population_table(summary)
    if s.empty:
        return pd.DataFrame()
    rows = []
    for (study, dataset, model), g in s.groupby(["study", "dataset", "model"], sort=False):
        base = g[g["is_baseline"] & g["explainer"].str.contains("random")].groupby("population")["mean"].mean()
        for (meth, head), h in g[~g["is_baseline"]].groupby(["explainer", "head"], sort=False):
            h = h.assign(base=h["population"].map(base)).dropna(subset=["base", "mean"])
            h = h[(h["base"] > 0) & (h["ci_low"] > h["base"])]
            if h.empty:
                continue
            top = h.loc[(h["mean"] / h["base"]).idxmax()]
            rows.append({"study": study, "dataset": dataset, "model": model, "explainer": meth, "head": int(head),
                         "population": top["population"], "share": top["mean"], "ci_low": top["ci_low"],
                         "ci_high": top["ci_high"], "random_share": top["base"],
                         "enrichment": top["mean"] / top["base"]})
    return pd.DataFrame(rows)


@register_figure("fcm_head_populations")
def fcm_head_populations(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """Share of every population among each head's top-5% attended events, 95% CIs, per attention explainer."""
    s = population_table(summary)
    out: list[tuple[str, Path]] = []
    if s.empty:
        return out
    reading = head_reading(summary)
    for (study, dataset, model), g in s.groupby(["study", "dataset", "model"], sort=False):
        methods = list(dict.fromkeys(g.loc[~g["is_baseline"], "explainer"]))
        pops = list(dict.fromkeys(g["population"]))
        base = g[g["is_baseline"] & g["explainer"].str.contains("random")].groupby("population")["mean"].mean()
        if not methods:
            continue
        fig = new_figure(max(6.0, 0.75 * len(pops) + 1.5) , 2.6 * len(methods))
        axes = np.atleast_1d(fig.subplots(len(methods), 1, squeeze=False)).ravel()
        for ax, meth in zip(axes, methods):
            m = g[g["explainer"] == meth]
            heads = sorted(int(h) for h in m["head"].unique())
            width = 0.8 / max(len(heads), 1)
            for j, h in enumerate(heads):
                r = m[m["head"] == h].set_index("population").reindex(pops)
                mean, lo, hi = (r[c].to_numpy(dtype=float) for c in ("mean", "ci_low", "ci_high"))
                xs = np.arange(len(pops)) - 0.4 + width * (j + 0.5)
                ax.bar(xs, mean, width, color=f"C{h % 10}", alpha=0.85, label=f"H{h}")
                ax.errorbar(xs, mean, yerr=[np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)], fmt="none",
                            ecolor="k", capsize=2, lw=0.8)
            if not base.empty:
                b = base.reindex(pops).to_numpy(dtype=float)
                ax.scatter(np.arange(len(pops)), b, marker="_", s=300, c="k", zorder=5, label="random (sample share)")
            ax.set_xticks(np.arange(len(pops)), [p.replace("_", " ") for p in pops], fontsize=7, rotation=20)
            ax.set_ylim(0, 1)
            ax.set_ylabel("share of top-5% attended", fontsize=7)
            read = reading[(reading["explainer"] == meth) & (reading["study"] == study)] if not reading.empty else reading
            note = "; ".join(f"H{int(r.head)}: {r.population} ×{r.enrichment:.1f}" for r in read.itertuples()) \
                if not read.empty else "no head enriches a population above its CI"
            ax.set_title(f"{meth} — most enriched per head: {note}", fontsize=8)
            ax.legend(fontsize=6, ncol=len(heads) + 1, loc="upper right")
        fig.suptitle(f"{study}: populations among each head's top-5% attended events ({model}, {dataset}), 95% CI",
                     fontsize=9)
        out.append((f"FCM {study}: populations each head attends to ({model})",
                    save(fig, figure_path(run_dir, f"fcm_head_populations_{study}_{dataset}_{model}"))))
    return out


@register_figure("fcm_f1_gain_curve")
def fcm_f1_gain_curve(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """Relative F1 gain of the false negatives' gradient step against the step size, 95% CIs."""
    if summary.empty or "metric_key" not in summary:
        return []
    s = summary[summary["metric_key"] == "gradient_step_f1_relative_gain"].copy()
    s["step"] = [_param(p, "step") for p in s["protocol"]]
    s = s[s["step"].notna()]
    out: list[tuple[str, Path]] = []
    for (study, dataset, model), g in s.groupby(["study", "dataset", "model"], sort=False):
        if g["step"].nunique() < 2:
            continue
        fig = new_figure(5.0, 3.4)
        ax = fig.subplots()
        for i, (meth, m) in enumerate(g.groupby("explainer", sort=False)):
            m = m.sort_values("step")
            x = m["step"].to_numpy(dtype=float)
            mean, lo, hi = (100 * m[c].to_numpy(dtype=float) for c in ("mean", "ci_low", "ci_high"))
            style = {"ls": "--", "color": "grey"} if bool(m["is_baseline"].iloc[0]) else {"color": f"C{i % 10}"}
            ax.plot(x, mean, marker="o", ms=3, label=meth, **style)
            ax.fill_between(x, lo, hi, alpha=0.15, color=style["color"])
        ax.axhline(60, color="tab:red", lw=0.8, ls=":", label="paper: >60% (one AML sample)")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("step along the unit gradient (marker units)", fontsize=8)
        ax.set_ylabel("relative F1 gain of the sample, %", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
        n = int(g["n"].max()) if "n" in g else 0
        fig.suptitle(f"{study}: moving the false negatives along their gradients\n({model}, {dataset}; "
                     f"samples with false negatives, n ≤ {n}; 95% CI)", fontsize=8)
        out.append((f"FCM {study}: relative F1 gain against step size ({model})",
                    save(fig, figure_path(run_dir, f"fcm_f1_gain_curve_{study}_{dataset}_{model}"))))
    return out
