"""Zoo entries of the MIL family, their training, and k-fold model storage.

Every zoo model is trained on ``mil_slides`` (256 cells per slide; the models are size-agnostic)
from its seed in seconds on one CPU core; its card holds the held-out slide accuracy (``val``
split, never seen in training), the stated ``accuracy_floor`` the committed weights must meet,
and the cell-level AUROC of its attention against the true tumour cells.

k-fold storage (the layout of the cell-MIL toolkit's ``ModelStorage``)::

    out_dir/experiment_metadata.json          zoo entry, folds, seeds, per-fold accuracy
    out_dir/fold_<k>/model.safetensors        weights of the model trained without fold k
    out_dir/fold_<k>/transforms/transforms.json   its feature standardisation (mean, std per feature)
    out_dir/final_model/model.safetensors     trained on every fold
    out_dir/final_model/transforms/transforms.json

:func:`train_kfold` writes it, :func:`load_fold` reads one fold (``fold_idx``) or the final model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench import Batch, create_dataset
from xaibench.data import create_model
from xaibench.zoo import ZooEntry, get_entry, register_zoo

from .model import CLAM, MILModel

WEIGHTS = Path(__file__).parent / "weights"
N_CELLS = 256


def slides(entry: ZooEntry, split: str, n: int, seed: int) -> Batch:
    """All ``n`` slides of a split in one batch (the entry's dataset settings, 256 cells each)."""
    params = {"n_cells": N_CELLS, **entry.extra.get("dataset_params", {})}
    return create_dataset("mil_slides", n=n, batch_size=n, seed=seed, split=split, **params).all()


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Mann-Whitney AUROC of scores (n,) against bool labels (n,), ties counted half; NaN if one class is empty."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = torch.cat([pos, neg])
    ranks = _avg_ranks(order.double())
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _avg_ranks(x: Tensor) -> Tensor:
    """1-based ranks with ties averaged."""
    sorted_x, idx = x.sort()
    ranks = torch.empty_like(x)
    _, inv, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[idx] = avg[inv]
    return ranks


def fit_model(model: MILModel, train: Batch, *, epochs: int, lr: float, batch_size: int, seed: int,
              instance_weight: float = 0.3) -> float:
    """Train in place with Adam on bag cross-entropy (+ CLAM's instance loss); returns the last epoch's loss."""
    model.fit_transform(train.inputs[..., 2:])
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    last = float("nan")
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=g)
        tot = 0.0
        for a in range(0, len(perm), batch_size):
            idx = perm[a:a + batch_size]
            x, y = train.inputs[idx], train.targets[idx]
            out = model.attention(x)
            loss = F.cross_entropy(out["logits"], y)
            if isinstance(model, CLAM) and instance_weight:
                loss = loss + instance_weight * model.instance_loss(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        last = tot / len(perm)
    model.eval()
    return last


@torch.no_grad()
def evaluate(model: MILModel, val: Batch) -> dict[str, float]:
    """Held-out slide accuracy and the cell-level AUROC of the (row-mean) attention vs tumour cells."""
    out = model.attention(val.inputs)
    acc = float((out["logits"].argmax(-1) == val.targets).float().mean())
    w = out["weights"].mean(1)
    pos = val.targets.bool()
    aucs = [auroc(w[i], val.instance_labels[i]) for i in range(len(val)) if pos[i]]
    return {"val_accuracy": round(acc, 4), "attention_auroc": round(float(torch.tensor(aucs).nanmean()), 4)}


def train_entry(entry: ZooEntry, model: nn.Module, seed: int) -> dict[str, Any]:
    """Train a MIL zoo model; card: held-out accuracy, the floor, attention AUROC, training settings."""
    ex = entry.extra
    train = slides(entry, "train", ex["n_train"], seed)
    loss = fit_model(model, train, epochs=ex["epochs"], lr=ex["lr"], batch_size=ex["batch_size"], seed=seed)
    val = slides(entry, "val", ex["n_val"], seed)
    res = evaluate(model, val)
    if res["val_accuracy"] < ex["accuracy_floor"]:
        raise RuntimeError(f"zoo model {entry.name!r}: held-out accuracy {res['val_accuracy']} is below its floor "
                           f"{ex['accuracy_floor']}; the training settings no longer work")
    return {**res, "accuracy_floor": ex["accuracy_floor"], "final_loss": round(loss, 5), "n_train": ex["n_train"],
            "n_val": ex["n_val"], "n_cells": N_CELLS, "epochs": ex["epochs"], "lr": ex["lr"],
            "dataset_params": ex.get("dataset_params", {})}


# ----------------------------------------------------------------------------- k-fold storage

def _save(model: MILModel, folder: Path) -> None:
    from safetensors.torch import save_file

    (folder / "transforms").mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    transforms = {"standardise": {"mean": model.feat_mean.tolist(), "std": model.feat_std.tolist()}}
    (folder / "transforms" / "transforms.json").write_text(json.dumps(transforms, indent=1) + "\n")


def train_kfold(name: str, out_dir: str | Path, *, k: int = 5, seed: int | None = None,
                epochs: int | None = None, n_train: int | None = None) -> dict[str, Any]:
    """k-fold cross-validation of a MIL zoo entry on its training slides, plus a final model on all
    of them, written in the layout of the module docstring. Returns the experiment metadata.

    Args:
        name: the zoo entry (its model, dataset settings and training settings).
        out_dir: the experiment folder.
        k: folds (slide i is in fold i mod k).
        seed, epochs, n_train: override the entry's.
    """
    entry = get_entry(name)
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"train_kfold: k must be an int >= 2, got {k!r}")
    seed = entry.seed if seed is None else int(seed)
    ex = entry.extra
    epochs = ex["epochs"] if epochs is None else int(epochs)
    data = slides(entry, "train", ex["n_train"] if n_train is None else int(n_train), seed)
    folds = torch.arange(len(data)) % k
    out = Path(out_dir)
    meta: dict[str, Any] = {"zoo": name, "model": entry.model, "model_params": entry.model_params, "k": k,
                            "seed": seed, "epochs": epochs, "n_train": len(data), "folds": {}}
    for f in list(range(k)) + ["final"]:
        torch.manual_seed(seed)
        model = create_model(entry.model, **entry.model_params)
        train_idx = torch.nonzero(folds != f).flatten() if f != "final" else torch.arange(len(data))
        fit_model(model, data.select(train_idx), epochs=epochs, lr=ex["lr"], batch_size=ex["batch_size"], seed=seed)
        if f == "final":
            _save(model, out / "final_model")
            meta["final_model"] = evaluate(model, slides(entry, "val", ex["n_val"], seed))
        else:
            _save(model, out / f"fold_{f}")
            meta["folds"][f"fold_{f}"] = evaluate(model, data.select(torch.nonzero(folds == f).flatten()))
    (out / "experiment_metadata.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return meta


def list_folds(out_dir: str | Path) -> list[int]:
    """The fold indices stored under ``out_dir``."""
    return sorted(int(p.name.split("_")[1]) for p in Path(out_dir).glob("fold_*") if (p / "model.safetensors").exists())


def load_fold(out_dir: str | Path, fold_idx: int | None = None) -> MILModel:
    """The model of fold ``fold_idx`` (None: the final model) from a k-fold folder, in eval mode.

    Raises:
        ValueError: no such fold / no final model (the message lists what exists).
    """
    from safetensors.torch import load_file

    out = Path(out_dir)
    meta_path = out / "experiment_metadata.json"
    if not meta_path.exists():
        raise ValueError(f"load_fold: {out} has no experiment_metadata.json; write it with train_kfold()")
    meta = json.loads(meta_path.read_text())
    folder = out / ("final_model" if fold_idx is None else f"fold_{int(fold_idx)}")
    if not (folder / "model.safetensors").exists():
        raise ValueError(f"load_fold: no {folder.name} under {out}; stored folds: {list_folds(out)}"
                         f"{', final_model' if (out / 'final_model').exists() else ''}")
    model = create_model(meta["model"], **meta["model_params"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    t = json.loads((folder / "transforms" / "transforms.json").read_text())["standardise"]
    if not torch.allclose(model.feat_mean, torch.tensor(t["mean"])):
        raise ValueError(f"load_fold: {folder} weights and transforms.json disagree on the feature standardisation")
    return model.eval()


# ----------------------------------------------------------------------------- the zoo

_TRAIN = {"n_train": 480, "n_val": 160, "epochs": 20, "lr": 3e-3, "batch_size": 16, "accuracy_floor": 0.85}
_TYPE_COLS = [18, 19, 20, 21]

for _name, _model, _params, _extra, _desc in (
    ("mil_abmil", "mil.abmil", {"n_heads": 1, "gated": True}, {}, "gated ABMIL (one head)"),
    ("mil_abmil_mh", "mil.abmil", {"n_heads": 4, "gated": True}, {}, "gated ABMIL with 4 attention heads"),
    ("mil_clam_sb", "mil.clam", {"multi_branch": False}, {}, "CLAM-SB: one attention branch + instance clustering"),
    ("mil_clam_mb", "mil.clam", {"multi_branch": True}, {}, "CLAM-MB: per-class attention branches + instance clustering"),
    ("mil_type_aware", "mil.type_aware", {"type_columns": _TYPE_COLS}, {}, "cell-type-aware attention (one head per cell type)"),
    ("mil_graphmil", "mil.graphmil", {"n_layers": 2, "k": 8}, {"n_train": 320, "epochs": 12}, "GraphMIL: 2 GAT layers over the 8-NN cell graph + attention pooling"),
    ("mil_abmil_confounded", "mil.abmil", {"n_heads": 1, "gated": True},
     {"dataset_params": {"confounded": True}}, "gated ABMIL trained on the confounded regime (a shortcut feature)"),
):
    register_zoo(ZooEntry(name=_name, model=_model, model_params={"n_features": 22, "n_classes": 2, "hidden": 32,
                                                                   "d_att": 16, **_params},
                          train=train_entry, weights_dir=WEIGHTS, seed=0, dataset="mil_slides",
                          description=_desc + " on synthetic slides", extra={**_TRAIN, **_extra}))
