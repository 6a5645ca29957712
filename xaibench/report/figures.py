"""Report figures and the figure registry families extend.

A figure function takes the run folder and the results and summary tables, writes PNGs
(normally under ``run_dir / "figures"``) and returns ``[(title, path), ...]``;
``report.html`` embeds every figure of every registered function, ``report.md`` links
them. Register one from a family package (it is found after ``xaibench.load_plugins()``)::

    from xaibench.report.figures import register_figure, load_examples, figure_path

    @register_figure("fcm_projections")
    def fcm_projections(run_dir, results, summary):
        shown = [ex for ex in load_examples(run_dir) if ex["kind"] == "event_vector"]
        if not shown:
            return []                      # nothing to draw: adds nothing to the report
        fig = new_figure(6, 4)
        ...                                # draw with matplotlib's object API
        return [("FCM: gradient vectors", save(fig, figure_path(run_dir, "fcm_projections")))]

A function that raises does not stop the report: the error appears in report.html as a
warning box and is raised as a ``warnings.warn``.

Example maps: the runner saves the first few samples of every cell to
``run_dir/examples/<cell>.safetensors`` + ``.json`` (data only, never pickles), a dict with ``study, dataset, model, explainer,
explainer_key, is_baseline, kind, values`` (first-k attribution values), ``extras``
(small per-sample tensors such as ``pixel``, and ``grid``), ``inputs``, ``masks``,
``targets`` (or None) and ``ids``. :func:`load_examples` reads them all.
"""

from __future__ import annotations

import math
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..registry import Registry, load_plugins
from ..store import load_examples
from .mosaic import grid_figure, panel

FigureFn = Callable[[Path, pd.DataFrame, pd.DataFrame], "list[tuple[str, Path]]"]
#: Report figure functions ``fn(run_dir, results, summary) -> [(title, png_path), ...]``.
FIGURES: Registry[FigureFn] = Registry("figure", settings=False)
#: Built-in figures come first in the report, in this order; the others follow by name.
BUILTIN_ORDER = ("ci_plot", "overlays")


#: ``@register_figure(name)``: decorator registering a report figure function (a taken name raises).
register_figure = FIGURES.register


def list_figures() -> list[str]:
    names = FIGURES.names()
    return [n for n in BUILTIN_ORDER if n in names] + [n for n in names if n not in BUILTIN_ORDER]


def figure_path(run_dir: str | Path, name: str) -> Path:
    """``run_dir/figures/<name>.png`` (the folder is created)."""
    folder = Path(run_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "._@-" else "_" for ch in name)
    return folder / f"{safe}.png"


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure not tied to pyplot (no global state, no display backend)."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Save a figure as PNG without software metadata; returns the path."""
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    return path


def _call_figure(name: str, run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame
                 ) -> tuple[list[tuple[str, str, Path]], tuple[str, str] | None]:
    """One figure function: its (name, title, path) figures, or the error (name, message) it raised."""
    try:
        return [(name, str(title), Path(path)) for title, path in
                FIGURES.get(name)(Path(run_dir), results, summary) or []], None
    except Exception as exc:
        return [], (name, f"{type(exc).__name__}: {exc}" + "\n" + traceback.format_exc(limit=3))


#: what a forked figure process reads (set just before the fork, so it is inherited, never sent)
_FORK_ARGS: tuple[Path, pd.DataFrame, pd.DataFrame] | None = None


def _forked_init() -> None:
    # one torch thread in the child: an OpenMP pool forked from the parent must never be entered
    torch.set_num_threads(1)


def _forked_figure(name: str) -> str:
    """Run in a forked process: the figure function's outcome as JSON text (plain data back to the parent)."""
    import json

    assert _FORK_ARGS is not None
    figs, error = _call_figure(name, *_FORK_ARGS)
    return json.dumps({"figures": [[n, t, str(p)] for n, t, p in figs], "error": error})


def figure_workers() -> int:
    """Processes the report's figures are drawn in: ``XAIBENCH_FIGURE_WORKERS``, else the CPUs (at most 4);
    1 where processes cannot be forked (then everything runs in this process)."""
    import multiprocessing
    import os

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    env = os.environ.get("XAIBENCH_FIGURE_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _in_processes(names: list[str], workers: int, on_figure: Callable[[str], None] | None
                  ) -> dict[str, tuple[list[tuple[str, str, Path]], tuple[str, str] | None]]:
    """Run the figure functions in forked processes. A function whose process dies (a crash in a
    native library) breaks the pool: every function that did not finish then runs again alone in a
    fresh process, so only the culprit is reported as failed."""
    outcome, lost = _pool_run(names, workers, on_figure)
    for name in lost:
        again, died = _pool_run([name], 1, on_figure)
        outcome.update(again)
        if died:
            outcome[name] = ([], (name, "the process drawing this figure died (a crash in native code)"))
            if on_figure is not None:
                on_figure(name)
    return outcome


def _pool_run(names: list[str], workers: int, on_figure: Callable[[str], None] | None
              ) -> tuple[dict[str, tuple[list[tuple[str, str, Path]], tuple[str, str] | None]], list[str]]:
    """One fork pool over ``names``: the outcomes of those that finished, and (in ``names`` order) those
    lost to a dead process."""
    import json
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    outcome: dict[str, tuple[list[tuple[str, str, Path]], tuple[str, str] | None]] = {}
    with ProcessPoolExecutor(min(workers, len(names)), mp_context=multiprocessing.get_context("fork"),
                             initializer=_forked_init) as pool:
        futures = {pool.submit(_forked_figure, name): name for name in names}
        for fut in as_completed(futures):
            name = futures[fut]
            try:
                d = json.loads(fut.result())
            except BrokenProcessPool:
                continue
            outcome[name] = ([(n, t, Path(p)) for n, t, p in d["figures"]],
                             (d["error"][0], d["error"][1]) if d["error"] else None)
            if on_figure is not None:
                on_figure(name)
    return outcome, [n for n in names if n not in outcome]


def run_figures(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame,
                on_figure: Callable[[str], None] | None = None, workers: int | None = None
                ) -> tuple[list[tuple[str, str, Path]], list[tuple[str, str]]]:
    """Call every registered figure function (``on_figure(name)`` after each, for progress).

    With ``workers`` > 1 (default :func:`figure_workers`) the functions run in that many forked
    processes, which inherit the tables and every registered function from this one (nothing is
    pickled to them) and send back only names, titles and paths as JSON; the figures are the same
    files as drawn here, and the report lists them in registry order either way.

    Returns:
        ``figures`` as (function name, title, png path) and ``errors`` as (function name,
        message) for the functions that raised (each also warned about).
    """
    global _FORK_ARGS
    load_plugins()
    names = list_figures()
    workers = figure_workers() if workers is None else max(1, int(workers))
    outcome: dict[str, tuple[list[tuple[str, str, Path]], tuple[str, str] | None]] = {}
    if workers > 1 and len(names) > 1:
        _FORK_ARGS = (Path(run_dir), results, summary)
        try:
            outcome = _in_processes(names, workers, on_figure)
        finally:
            _FORK_ARGS = None
    else:
        for name in names:
            outcome[name] = _call_figure(name, Path(run_dir), results, summary)
            if on_figure is not None:
                on_figure(name)
    figs, errors = [], []
    for name in names:
        got, error = outcome[name]
        figs += got
        if error is not None:
            warnings.warn(f"report figure {name!r} failed: {error[1].splitlines()[0]}", stacklevel=2)
            errors.append(error)
    return figs, errors


# ----------------------------------------------------------------------------- built-ins

@register_figure("ci_plot")
def ci_plot(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """Per study: mean and 95% CI of every method per metric (one panel per metric)."""
    out = []
    for study, s in summary.groupby("study", sort=False):
        metrics = list(dict.fromkeys(s["metric"]))
        methods = list(dict.fromkeys(s.loc[~s["is_baseline"], "explainer"])) + \
            list(dict.fromkeys(s.loc[s["is_baseline"], "explainer"]))
        rows = list(dict.fromkeys(zip(s["dataset"], s["model"])))
        ncol = min(3, len(metrics))
        nrow = math.ceil(len(metrics) / ncol)
        fig = new_figure(4.2 * ncol, 0.35 * len(methods) * max(1, len(rows)) ** 0.5 * nrow + 1.4 * nrow)
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
        colors = [f"C{i % 10}" for i in range(len(rows))]
        for ax, metric in zip(axes, metrics):
            g = s[s["metric"] == metric]
            for ri, row in enumerate(rows):
                off = (ri - (len(rows) - 1) / 2) * 0.6 / max(len(rows), 1)
                for mi, meth in enumerate(methods):
                    v = g[(g["dataset"] == row[0]) & (g["model"] == row[1]) & (g["explainer"] == meth)]
                    if v.empty or not np.isfinite(v["mean"].iloc[0]):
                        continue
                    m, lo, hi = (float(v[c].iloc[0]) for c in ("mean", "ci_low", "ci_high"))
                    base = bool(v["is_baseline"].iloc[0])
                    ax.errorbar([m], [mi + off], xerr=[[m - lo], [hi - m]], fmt="s" if base else "o",
                                color="grey" if base and len(rows) == 1 else colors[ri], mfc="white" if base else None,
                                capsize=2, label=f"{row[0]} / {row[1]}" if mi == 0 else None)
            ax.set_yticks(range(len(methods)), methods, fontsize=8)
            ax.invert_yaxis()
            arrow = "→ better" if g["direction"].iloc[0] == "higher" else "← better"
            ax.set_title(f"{metric} ({arrow})", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
        if len(rows) > 1:
            axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(f"{study}: mean and 95% bootstrap CI (open squares: baselines)", fontsize=10)
        out.append((f"{study}: scores with 95% CIs", save(fig, figure_path(run_dir, f"ci_{study}"))))
    return out


def _image(x: torch.Tensor) -> np.ndarray | None:
    """(C, H, W) input -> displayable (H, W[, 3]) in [0, 1] (display scaling only), or None."""
    if x is None or x.ndim != 3 or x.shape[0] not in (1, 3):
        return None
    a = x.float().numpy()
    a = (a - a.min()) / (a.max() - a.min() + 1e-12)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def _pixel(ex: dict[str, Any]) -> torch.Tensor | None:
    if ex.get("kind") == "pixel" and ex.get("values") is not None:
        return ex["values"]
    px = (ex.get("extras") or {}).get("pixel")
    return px if isinstance(px, torch.Tensor) and px.ndim == 3 else None


def overlay(ax: Any, image: np.ndarray, heat: np.ndarray | None, mask: np.ndarray | None = None) -> None:
    """Draw an image, a map over it (min-max scaled for display only) and the mask outline."""
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    if heat is not None:
        h = heat.astype(np.float64)
        h = (h - h.min()) / (h.max() - h.min() + 1e-12)
        ax.imshow(h, cmap="jet", alpha=0.45, interpolation="bilinear",
                  extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


@register_figure("overlays")
def overlays(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame, n: int = 4) -> list[tuple[str, Path]]:
    """Per (study, dataset, model): the first samples with each method's map overlaid.

    Inputs that are not images (event sets, bags) and attributions without a pixel map
    are skipped."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for ex in load_examples(run_dir):
        groups.setdefault((ex["study"], ex["dataset"], ex["model"]), []).append(ex)
    order = list(dict.fromkeys(zip(summary["study"], summary["dataset"], summary["model"])))
    method_order = {m: i for i, m in enumerate(dict.fromkeys(summary["explainer"]))}
    out = []
    for key in [k for k in order if k in groups]:
        exs = [e for e in groups[key] if _pixel(e) is not None and e.get("inputs") is not None
               and _image(e["inputs"][0]) is not None]
        exs.sort(key=lambda e: (e.get("is_baseline", False), method_order.get(e["explainer"], 1e9)))
        if not exs:
            continue
        k = min(n, exs[0]["inputs"].shape[0])
        masks = exs[0].get("masks")
        ids = exs[0].get("ids") or [str(i) for i in range(k)]
        tiles = []
        for i in range(k):
            img = _image(exs[0]["inputs"][i])
            mask = masks[i].numpy() if isinstance(masks, torch.Tensor) and masks.ndim == 3 else None
            tiles.append([panel(img, None, mask)] + [
                panel(img, px[i].float().numpy(), mask) if i < px.shape[0] else None
                for px in (_pixel(ex) for ex in exs)])
        fig = grid_figure(tiles, ["input (mask outline)", *(ex["explainer"] for ex in exs)],
                          [str(ids[i]).split("/")[-1] for i in range(k)],
                          f"{key[0]}: {key[1]} / {key[2]} (maps min-max scaled for display only)")
        out.append((f"{key[0]}: example maps on {key[1]} / {key[2]}",
                    save(fig, figure_path(run_dir, f"overlays_{key[0]}_{key[1]}_{key[2]}"))))
    return out

