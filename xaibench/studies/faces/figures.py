"""Report figures of the facial-CNN studies: syndrome-wise maps on composite faces, one
patient per syndrome with every method's map, and the class-imbalance curves.

They are registered report figures: ``xaibench run face_study`` (or ``xaibench report``)
draws them for every study that explains a face zoo model on the ``faces`` data set. The
class-level maps are recomputed from the run's configuration on a small, seeded, balanced
set (``PER_CLASS`` faces per syndrome) — the run's tables stay the reference numbers. Each
method explains that set once (:func:`_explain_once`); the class-level and the patient-wise
figures both read those maps.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xaibench.report.figures import figure_path, new_figure, register_figure, save
from xaibench.report.mosaic import grid_figure, panel
from xaibench.store import load_run

from .analyses import class_maps, normalise_maps, similarity_maps

PER_CLASS = 6
MAX_METHODS = 14


def _face_studies(run_dir: Path) -> list[dict[str, Any]]:

    cfg = load_run(run_dir).meta.get("config") or {}
    out = []
    for st in cfg.get("studies", []):
        data = [d for d in st.get("datasets", []) if d.get("name") == "faces"]
        models = [m for m in st.get("models", []) if m.get("source") == "zoo" and str(m.get("name", "")).startswith("face_")]
        if data and models:
            embedders = [m for m in models if m["name"] == "face_embedder"]
            out.append({"study": st, "dataset": data[0], "model": models[0],
                        "embedder": embedders[0] if embedders else None})
    return out


def _image(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


@contextlib.contextmanager
def _one_thread() -> Any:
    """Run with one torch thread, restoring the count afterwards. The figures explain ~30 small
    (64²) faces: many small kernels, where a second thread only adds fork/join waits, and on
    a busy machine those waits dominate (incremental occlusion of the default set, load 17 on
    2 cores: 0.26 s per face on one thread, 8.3 s on two)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _explain_once(model: Any, batch: Any, methods: list[dict[str, Any]]) -> list[torch.Tensor]:
    """Each method's (B, H, W) pixel maps of the whole balanced set, for its true classes: the
    one explanation that the class-level and the patient-wise figures share."""
    from xaibench import create_explainer

    return [create_explainer(m["name"], model, **(m.get("params") or {})).explain_batch(batch, batch.targets)
            .pixel_map() for m in methods]


def _methods(study: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in study.get("explainers", []) if str(e.get("name", "")).startswith("cnn.")][:MAX_METHODS]


def _balanced(dataset: dict[str, Any], seed: int) -> tuple[Any, list[str]]:
    from xaibench import create_dataset

    params = {k: v for k, v in (dataset.get("params") or {}).items() if k not in ("class_counts",)}
    probe = create_dataset("faces", n=1, **params)
    classes = list(probe.params["classes"])
    ds = create_dataset("faces", n=PER_CLASS * len(classes), batch_size=PER_CLASS * len(classes), seed=seed,
                        split="test", class_counts=[PER_CLASS] * len(classes), **params)
    return ds, classes


@register_figure("faces_class_maps")
def faces_class_maps(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """Per face study: rows = syndromes; the composite face (aligned mean of the correctly
    classified faces) and each method's syndrome-wise map (mean of max-abs normalised maps)
    over it, with the mean ground-truth region outlined."""
    from xaibench import zoo

    out = []
    for item in _face_studies(run_dir):
        st, methods = item["study"], _methods(item["study"])
        if not methods:
            continue
        model = zoo.load(item["model"]["name"])
        ds, classes = _balanced(item["dataset"], int(st.get("seed", 0)))
        batch = ds.all()
        k = len(classes)
        with _one_thread():
            explained = _explain_once(model, batch, methods)
            maps = [class_maps(model, [batch], m["name"], m.get("params") or {}, num_classes=k, classes=classes,
                               maps=[full]) for m, full in zip(methods, explained)]
        gt = torch.stack([batch.masks[batch.targets == c].float().mean(0) for c in range(k)])
        tiles, labels = [], []
        for c in range(k):
            face = maps[0].faces[c]
            img = _image(face) if torch.isfinite(face).all() else np.zeros((*gt.shape[-2:], 3))
            region = (gt[c] > 0.5).numpy()
            labels.append(f"{classes[c]}\n(n={int(maps[0].counts[c])})")
            tiles.append([panel(img, None, region)] + [panel(img, cm.maps[c].numpy(), region) if cm.counts[c] > 0
                                                       else panel(img, None, region) for cm in maps])
        fig = grid_figure(tiles, ["composite face", *(m.get("label", m["name"]) for m in methods)], labels,
                          f"{st['name']}: syndrome-wise maps on composite faces ({item['model']['label']}, "
                          f"{PER_CLASS} test faces per class, correct ones only)")
        out.append((f"{st['name']}: syndrome-wise maps and composite faces",
                    save(fig, figure_path(run_dir, f"faces_class_maps_{st['name']}"))))
        out += _patients(run_dir, st, methods, explained, batch, classes)
        if item["embedder"] is not None:
            with _one_thread():
                out += _similarity(run_dir, st, zoo.load("face_embedder"), batch, classes)
    return out


def _similarity(run_dir: Path, st: dict[str, Any], model: Any, batch: Any, classes: list[str]) -> list[tuple[str, Path]]:
    """Per syndrome, two of its faces and the regions that make them similar to each other
    (GradCAM of the cosine similarity of their embeddings, unfiltered)."""

    pairs = [torch.nonzero(batch.targets == c).flatten()[:2] for c in range(len(classes))]
    pairs = [p for p in pairs if len(p) == 2]
    a, b = batch.inputs[[int(p[0]) for p in pairs]], batch.inputs[[int(p[1]) for p in pairs]]
    ma, mb = similarity_maps(model, a, b)
    tiles = []
    for r, p in enumerate(pairs):
        row = []
        for img, m, idx in ((a[r], ma[r], p[0]), (b[r], mb[r], p[1])):
            row += [panel(_image(img), None, batch.masks[int(idx)].numpy()),
                    panel(_image(img), normalise_maps(m[None])[0].numpy(), cmap="RdBu_r", alpha=0.75, vrange=(-1, 1),
                          dim=True)]
        tiles.append(row)
    fig = grid_figure(tiles, ["face A", "similarity map A", "face B", "similarity map B"],
                      [classes[int(batch.targets[int(p[0])])] for p in pairs],
                      f"{st['name']}: face_embedder similarity maps (what makes two faces of a syndrome similar)")
    return [(f"{st['name']}: similarity maps of the embedding model",
             save(fig, figure_path(run_dir, f"faces_similarity_{st['name']}")))]


def _patients(run_dir: Path, st: dict[str, Any], methods: list[dict[str, Any]], explained: list[torch.Tensor],
              batch: Any, classes: list[str]) -> list[tuple[str, Path]]:
    """One patient per syndrome (the first of its class), each method's map (signed, max-abs),
    taken from ``explained`` (each method's (B, H, W) maps of ``batch``, :func:`_explain_once`)."""

    idx = [int(torch.nonzero(batch.targets == c)[0]) for c in range(len(classes)) if (batch.targets == c).any()]
    sub = batch.select(idx)
    attrs = [full[idx] for full in explained]
    tiles = []
    for r in range(len(idx)):
        img, region = _image(sub.inputs[r]), sub.masks[r].numpy()
        tiles.append([panel(img)] + [panel(img, normalise_maps(at[r:r + 1])[0].numpy(), region, cmap="RdBu_r",
                                           alpha=0.75, vrange=(-1, 1), dim=True, outline=(0.0, 0.0, 0.0))
                                     for at in attrs])
    fig = grid_figure(tiles, ["face", *(m.get("label", m["name"]) for m in methods)],
                      [classes[int(sub.targets[r])] for r in range(len(idx))],
                      f"{st['name']}: patient-wise maps (red positive, blue negative evidence; max-abs scaled)")
    return [(f"{st['name']}: patient-wise maps, one face per syndrome",
             save(fig, figure_path(run_dir, f"faces_patients_{st['name']}")))]


@register_figure("faces_imbalance")
def faces_imbalance(run_dir: Path, results: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, Path]]:
    """Localisation of the minority class against its number of training faces, per method
    and metric, for models whose label ends in ``imb<count>`` (the imbalance study)."""
    s = summary[~summary["is_baseline"]].copy()
    s["count"] = s["model"].map(lambda m: (re.search(r"imb(\d+)$", str(m)) or [None, None])[1])
    s = s.dropna(subset=["count"])
    out = []
    for study, g in s.groupby("study", sort=False):
        g = g.assign(count=g["count"].astype(int))
        metrics = list(dict.fromkeys(g["metric"]))
        fig = new_figure(3.6 * len(metrics), 3.0)
        axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)).ravel()
        for ax, metric in zip(axes, metrics):
            for meth, gm in g[g["metric"] == metric].groupby("explainer", sort=False):
                gm = gm.sort_values("count")
                ax.errorbar(gm["count"], gm["mean"], yerr=[gm["mean"] - gm["ci_low"], gm["ci_high"] - gm["mean"]],
                            marker="o", capsize=2, label=meth)
            ax.set_xscale("log")
            ax.set_xlabel("minority-class training faces")
            ax.set_title(metric, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=6)
        fig.suptitle(f"{study}: class imbalance vs localisation of the minority class (95% CI)", fontsize=9)
        out.append((f"{study}: class imbalance study", save(fig, figure_path(run_dir, f"faces_imbalance_{study}"))))
    return out
