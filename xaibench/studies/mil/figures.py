"""Report figures of the MIL family, and SHAP of the attention module for any attention study.

- ``mil_attention_maps``: per MIL attention cell (baselines left out), the first slide: cells at
  their positions coloured by attention, true tumour cells circled, next to the truth.
- ``attention_shap``: per ``mil.attention_shap`` cell, the mean |SHAP| of every feature over the
  example slides (defining features in red, the confounder in orange); and per FCM study cell
  with ``fcm.attention`` on a zoo ReluFormer, the SHAP analysis of its layer-0 heads on the first
  example sample (which markers drive each head's attention), through the same code path as MIL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xaibench.report.figures import figure_path, load_examples, new_figure, register_figure, save


def _is_mil(ex: dict[str, Any]) -> bool:
    return str(ex.get("explainer_key", "")).startswith("mil.attention") and ex.get("kind") in ("event", "event_head")


@register_figure("mil_attention_maps")
def mil_attention_maps(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """The first slide of every MIL attention cell: attention over the cell positions vs the tumour cells."""
    out = []
    for ex in load_examples(run_dir):
        x = ex.get("inputs")
        if ex.get("is_baseline") or not _is_mil(ex) or not isinstance(x, torch.Tensor) or x.ndim != 3:
            continue
        vals = ex["values"][0].float()
        vals = vals.mean(0) if ex["kind"] == "event_head" else vals
        real = ~torch.isnan(x[0]).all(-1)
        xy, v = x[0, real, :2].numpy(), vals[real].numpy()
        labels = (ex.get("extras") or {}).get("labels")
        lab = labels[0][real].numpy().astype(bool) if isinstance(labels, torch.Tensor) else None
        fig = new_figure(9, 4.2)
        ax1, ax2 = fig.subplots(1, 2)
        order = np.argsort(v, kind="stable")
        sc = ax1.scatter(xy[order, 0], xy[order, 1], c=v[order], s=9, cmap="magma", rasterized=True)
        fig.colorbar(sc, ax=ax1, fraction=0.046, label="attention (raw)")
        if lab is not None and lab.any():
            ax1.scatter(xy[lab, 0], xy[lab, 1], s=30, facecolors="none", edgecolors="tab:cyan", lw=0.6, label="tumour")
            ax1.legend(fontsize=7, loc="lower right")
        ax2.scatter(xy[:, 0], xy[:, 1], c=np.where(lab, 1.0, 0.0) if lab is not None else "0.6", s=9, cmap="coolwarm",
                    rasterized=True)
        ax2.set_title("true tumour cells (red)", fontsize=8)
        for ax in (ax1, ax2):
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.tick_params(labelsize=6)
        ax1.set_title(f"{ex['explainer']}", fontsize=8)
        sid = ex["ids"][0] if ex.get("ids") else "slide 0"
        fig.suptitle(f"{ex['study']}: {ex['model']} on {ex['dataset']} / {sid}", fontsize=9)
        name = f"mil_{ex['study']}_{ex['dataset']}_{ex['model']}_{ex['explainer']}"
        out.append((f"MIL {ex['study']}: {ex['explainer']} ({ex['model']}, {ex['dataset']})", save(fig, figure_path(run_dir, name))))
    return out


def _bars(ax: Any, names: list[str], imp: np.ndarray, defining: set[str], confounder: str | None, top: int = 15) -> None:
    order = np.argsort(-imp, kind="stable")[:top][::-1]
    colors = ["tab:red" if names[i] in defining else "tab:orange" if names[i] == confounder else "0.6" for i in order]
    ax.barh(range(len(order)), imp[order], color=colors)
    ax.set_yticks(range(len(order)), [names[i] for i in order], fontsize=6)
    ax.tick_params(axis="x", labelsize=6)


def _fcm_heads(ex: dict[str, Any], run_dir: Path, done: set[tuple[str, str, str]]) -> tuple[str, Path] | None:
    from xaibench import zoo

    from xaibench.adapters.mil.shap_analysis import fcm_attention_module, run_analysis

    key = (ex["study"], ex["dataset"], ex["model"])
    x, labels = ex.get("inputs"), (ex.get("extras") or {}).get("labels")
    if key in done or ex["model"] not in zoo.list_zoo() or not isinstance(x, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return None
    if not labels[0].any():
        return None
    done.add(key)
    model = zoo.load(ex["model"])
    module = fcm_attention_module(model, x[0].float(), labels[0])
    markers = list((ex.get("extras") or {}).get("markers") or [f"m{i}" for i in range(x.shape[-1])])
    res = run_analysis(module, x[0].float(), markers, num_bins=5, samples_per_bin=300)
    heads = list(res.values)
    fig = new_figure(2.4 * len(heads), 2.8)
    axes = np.atleast_1d(fig.subplots(1, len(heads)))
    for ax, h in zip(axes, heads):
        _bars(ax, markers, res.importance[h].to_numpy(), set(), None, top=len(markers))
        ax.set_title(f"layer-0 {h}", fontsize=8)
    fig.suptitle(f"{ex['study']}: SHAP of the attention each event receives from the blasts "
                 f"({ex['model']}, {ex['dataset']}); mean |SHAP| per marker", fontsize=8)
    path = save(fig, figure_path(run_dir, f"attention_shap_fcm_{ex['study']}_{ex['dataset']}_{ex['model']}"))
    return (f"FCM {ex['study']}: which markers drive each head's attention (SHAP, {ex['model']})", path)


def _default_columns(width: int) -> list[str]:
    """The synthetic slides' columns when the example lost them (the runner keeps only short extras)."""
    from xaibench.datasets.mil_slides import COLUMNS
    return list(COLUMNS) if width == len(COLUMNS) else []


@register_figure("attention_shap")
def attention_shap(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """Feature importance of the attention module: MIL ``mil.attention_shap`` cells and FCM heads."""
    out: list[tuple[str, Path]] = []
    done: set[tuple[str, str, str]] = set()
    for ex in load_examples(run_dir):
        if ex.get("is_baseline"):
            continue
        if ex.get("explainer_key") == "fcm.attention":
            item = _fcm_heads(ex, run_dir, done)
            if item:
                out.append(item)
            continue
        if ex.get("explainer_key") != "mil.attention_shap" or not isinstance(ex.get("values"), torch.Tensor):
            continue
        extras = ex.get("extras") or {}
        v = ex["values"].float()
        cols = list(extras.get("columns") or _default_columns(v.shape[-1]))
        if len(cols) != v.shape[-1]:
            continue
        imp = v[..., 2:].abs().sum((0, 1)).numpy()
        imp = imp / max(float(imp.sum()), 1e-30)
        fig = new_figure(4.5, 4.0)
        ax = fig.subplots()
        _bars(ax, cols[2:], imp, set(extras.get("defining_features") or ()), extras.get("confounder"), top=15)
        ax.set_xlabel("share of mean |SHAP| (red: defining, orange: confounder)", fontsize=7)
        fig.suptitle(f"{ex['study']}: {ex['explainer']} ({ex['model']}, {ex['dataset']})", fontsize=8)
        name = f"attention_shap_{ex['study']}_{ex['dataset']}_{ex['model']}_{ex['explainer']}"
        out.append((f"MIL {ex['study']}: SHAP of the attention module ({ex['model']}, {ex['dataset']})",
                    save(fig, figure_path(run_dir, name))))
    return out
