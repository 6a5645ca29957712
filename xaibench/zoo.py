"""The model zoo: small reference models trained reproducibly from a seed and saved as safetensors.

A family registers a :class:`ZooEntry` naming its model builder, how to train it and where
its weights live (package data next to the family, so a wheel carries them)::

    register_zoo(ZooEntry(name="lesion_cnn", model="cnn.timm", model_params={...},
                          train=train_lesion_cnn, weights_dir=Path(__file__).parent / "weights"))

``xaibench zoo train lesion_cnn`` retrains it (same seed, same weights) and writes a card
(JSON: accuracy, seed, settings, versions); ``xaibench.zoo.load("lesion_cnn")`` loads it.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .data import create_model
from .errors import DataError
from .progress import progress_bar
from .registry import Registry

TrainFn = Callable[["ZooEntry", nn.Module, int], dict[str, Any]]


@dataclass(frozen=True)
class ZooEntry:
    """A reference model of the zoo.

    Args:
        name: zoo key (``lesion_cnn``).
        model: registry name of the model builder.
        model_params: keyword settings for the builder.
        train: ``train(entry, model, seed) -> card metrics`` trains ``model`` in place.
        weights_dir: folder holding ``<name>.safetensors`` and ``<name>.json``.
        seed: the seed the committed weights were trained with.
        dataset: the dataset it is trained on (for reports).
        description: one line for ``xaibench zoo list``.
    """

    name: str
    model: str
    model_params: dict[str, Any]
    train: TrainFn
    weights_dir: Path
    seed: int = 0
    dataset: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return Path(self.weights_dir) / f"{self.name}.safetensors"

    @property
    def card_path(self) -> Path:
        return Path(self.weights_dir) / f"{self.name}.json"

    def card(self) -> dict[str, Any]:
        return json.loads(self.card_path.read_text()) if self.card_path.exists() else {}


@dataclass(frozen=True)
class Floor:
    """A zoo model's held-out score against the floor its card declares.

    ``status`` is ``ok`` (score at or above the floor, or at or below it for ``direction="lower"``),
    ``below floor``, ``no floor`` (the card declares none) or ``no card``.
    """

    status: str
    metric: str = ""
    score: float | None = None
    floor: float | None = None
    direction: str = "higher"
    chance: float | None = None
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def text(self) -> str:
        """``test_accuracy 0.93 ≥ floor 0.85`` (or why there is no comparison)."""
        if self.score is None or self.floor is None:
            return self.status + (f" ({self.why})" if self.why else "")
        rel = ("≥" if self.ok else "<") if self.direction == "higher" else ("≤" if self.ok else ">")
        return f"{self.metric} {self.score:.3f} {rel} floor {self.floor:.3f}"


#: Score keys looked up (in order) for a floor named ``<base>_floor`` in a card's ``metrics``.
SCORE_PREFIXES = ("test_", "val_", "")


def _n_classes(card: dict[str, Any]) -> int | None:
    params = card.get("model_params") or {}
    for k in ("num_classes", "n_classes", "classes"):
        v = params.get(k)
        if isinstance(v, int) and v > 1:
            return v
    return None


def card_floor(card: dict[str, Any]) -> Floor:
    """Read a card's held-out score and floor.

    A card declares its floor either as a field ``floor = {"metric": "test_f1", "value": 0.8,
    "direction": "higher", "chance": 0.5, "why": "..."}`` (``metric`` names a key of the card's
    ``metrics``), or by the key convention in ``metrics``: ``accuracy_floor`` with ``test_accuracy``
    (fallback ``val_accuracy``, ``accuracy``), likewise ``f1_floor`` with ``test_f1``/``val_f1``/``f1``.
    Chance is the declared ``chance`` (field or ``metrics["chance"]``), else 1/classes for accuracy.
    """
    if not card:
        return Floor("no card")
    metrics = card.get("metrics") or {}
    decl = card.get("floor")
    if isinstance(decl, dict) and "metric" in decl and "value" in decl:
        name = str(decl["metric"])
        score = metrics.get(name, decl.get("score"))
        floor = float(decl["value"])
        direction = str(decl.get("direction", "higher"))
        chance = decl.get("chance", metrics.get("chance"))
        why = str(decl.get("why", ""))
    else:
        bases = [k[: -len("_floor")] for k in metrics if k.endswith("_floor")]
        if not bases:
            name = next((p + "accuracy" for p in SCORE_PREFIXES if isinstance(metrics.get(p + "accuracy"), (int, float))),
                        "")
            return Floor("no floor", metric=name, score=float(metrics[name]) if name else None,
                         why="the card declares no floor")
        base = bases[0]
        name = next((p + base for p in SCORE_PREFIXES if isinstance(metrics.get(p + base), (int, float))), "")
        score = metrics.get(name) if name else None
        floor = float(metrics[f"{base}_floor"])
        direction, chance, why = "higher", metrics.get("chance"), str(metrics.get("floor_why", ""))
    if chance is None and "accuracy" in name:
        n = _n_classes(card)
        chance = 1.0 / n if n else None
    if not isinstance(score, (int, float)):
        return Floor("no floor", metric=name, floor=floor, direction=direction, why=f"no held-out score {name!r}")
    score = float(score)
    ok = score >= floor if direction == "higher" else score <= floor
    return Floor("ok" if ok else "below floor", metric=name, score=score, floor=floor, direction=direction,
                 chance=None if chance is None else float(chance), why=why)


def floor_of(name: str) -> Floor:
    """The floor status of a registered zoo model (its committed card)."""
    return card_floor(get_entry(name).card())


#: The zoo: lower_snake keys, values :class:`ZooEntry` (its own metadata).
ZOO: Registry[ZooEntry] = Registry("zoo_model", key_pattern=r"_?[a-z][a-z0-9_]*", key_form="lower_snake", settings=False,
                                   list_hint="`xaibench zoo list` (Python: xaibench.list_zoo())")


def register_zoo(entry: ZooEntry) -> ZooEntry:
    """Register a zoo entry (a duplicate name raises)."""
    return ZOO.add(entry.name, entry, entry)

def list_zoo(pattern: str | None = None) -> list[str]:
    return ZOO.names(pattern)


def get_entry(name: str) -> ZooEntry:
    return ZOO.get(name)


def build(name: str) -> nn.Module:
    """The zoo model with fresh (seeded) random weights."""
    entry = get_entry(name)
    torch.manual_seed(entry.seed)
    return create_model(entry.model, **entry.model_params)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors state dict (a format that cannot carry code).

    Raises:
        DataError: the file is missing, truncated or not safetensors (the message names it).
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: no such weights file") from None
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise DataError(f"{path}: not a readable safetensors weights file ({type(exc).__name__}: {exc}); "
                        "re-save it with safetensors.torch.save_file or retrain it") from None


def load(name: str, weights: str | Path | None = None) -> nn.Module:
    """The zoo model with its committed (or the given) weights, in eval mode.

    Raises:
        FileNotFoundError: no weights yet; the message says how to train them.
        DataError: the weights file is unreadable.
    """
    entry = get_entry(name)
    path = Path(weights) if weights else entry.weights_path
    if not path.exists():
        raise FileNotFoundError(f"zoo model {name!r} has no weights at {path}; train them with `xaibench zoo train {name}`")
    model = build(name)
    state = read_weights(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"zoo model {name!r}: weights at {path} do not fit the model "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()


def train(name: str, seed: int | None = None, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Train a zoo model from its seed and save weights + card. Returns the card."""
    from safetensors.torch import save_file

    entry = get_entry(name)
    seed = entry.seed if seed is None else int(seed)
    torch.manual_seed(seed)
    model = create_model(entry.model, **entry.model_params)
    t0 = time.perf_counter()
    metrics = dict(entry.train(entry, model, seed))
    floor = metrics.pop("floor", None)  # a declared {metric, value, direction, chance, why} (see card_floor)
    seconds = time.perf_counter() - t0
    out = Path(out_dir) if out_dir else Path(entry.weights_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = out / f".{name}.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out / f"{name}.safetensors")
    card = {
        "name": name, "model": entry.model, "model_params": entry.model_params, "dataset": entry.dataset,
        "seed": seed, "metrics": metrics, "train_seconds": round(seconds, 1),
        "torch": torch.__version__, "python": platform.python_version(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        **({"floor": floor} if floor else {}),
    }
    (out / f"{name}.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    return card


def train_classifier(
    model: nn.Module,
    train_batches: Callable[[int], Any],
    val_batches: Any,
    *,
    epochs: int,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    desc: str = "train",
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train a classifier with AdamW + cosine schedule, deterministically from ``seed``.

    Args:
        train_batches: ``epoch -> iterable of Batch`` (a fresh shuffle per epoch is the caller's).
        val_batches: iterable of Batch for the reported accuracy.

    Returns:
        ``{"train_accuracy", "val_accuracy", "epochs"}``.
    """

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    n_steps = epochs * max(1, len(list(train_batches(0))))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=n_steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    correct = total = 0
    with progress_bar(total=n_steps, desc=desc) as advance:
        for ep in range(epochs):
            model.train()
            correct = total = 0
            for batch in train_batches(ep):
                x = batch.inputs
                if augment is not None:
                    x = augment(x, g)
                logits = model(x)
                loss = loss_fn(logits, batch.targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                correct += int((logits.argmax(1) == batch.targets).sum())
                total += len(batch)
                advance(1)
    model.eval()
    return {"train_accuracy": correct / max(total, 1), "val_accuracy": evaluate_accuracy(model, val_batches), "epochs": epochs}


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, batches: Any) -> float:
    """Share of correctly classified samples over an iterable of Batch."""
    was = model.training
    model.eval()
    correct = total = 0
    for batch in batches:
        correct += int((model(batch.inputs).argmax(1) == batch.targets).sum())
        total += len(batch)
    model.train(was)
    return correct / max(total, 1)


def train_on_shuffled_labels(entry: ZooEntry, model: nn.Module, seed: int) -> dict[str, Any]:
    """Train ``model`` on a fixed, seeded set of ``entry.dataset`` whose labels are a seeded
    permutation of the true ones: the data-randomisation reference of Adebayo et al. (Sanity
    checks for saliency maps, NeurIPS 2018). The model can only memorise, so the maps of a
    method that explains the model should share little with its maps of the model trained on
    the true labels.

    ``entry.extra``: ``n_train``, ``epochs``, ``lr``, ``batch_size``, ``dataset_params``. The card
    holds ``shuffled_label_accuracy`` (how far it memorised its training labels, eval mode; its
    floor is :data:`SHUFFLED_FLOOR`),
    ``val_accuracy`` on true labels (chance level expected) and ``label_agreement`` (the share of
    permuted labels that happen to equal the true ones).
    """
    from .data import create_dataset
    from .types import Batch

    ex = entry.extra
    params = dict(ex.get("dataset_params", {}))
    n = int(ex["n_train"])
    pool = create_dataset(entry.dataset, n=n, batch_size=n, seed=seed, split="train", **params).all()
    labels = pool.targets[torch.randperm(n, generator=torch.Generator().manual_seed(seed * 31 + 7))]
    bs = int(ex.get("batch_size", 32))

    def batches(epoch: int) -> list[Batch]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        return [Batch(inputs=pool.inputs[i], targets=labels[i]) for i in order.split(bs)]

    val = create_dataset(entry.dataset, n=ex.get("n_val", 256), batch_size=128, seed=seed, split="val", **params)
    out = train_classifier(model, batches, val, epochs=int(ex["epochs"]), lr=ex.get("lr", 3e-3), seed=seed,
                           desc=f"zoo train {entry.name}")
    out.update(shuffled_label_accuracy=evaluate_accuracy(model, batches(0)), n_train=n,
               label_agreement=float((labels == pool.targets).float().mean()),
               shuffled_label_accuracy_floor=SHUFFLED_FLOOR, floor_why=SHUFFLED_FLOOR_WHY)
    return out


#: The floor of a shuffled-label reference: how far it memorised its permuted labels (its accuracy on
#: true labels is chance by design, so that is no floor).
SHUFFLED_FLOOR = 0.8
SHUFFLED_FLOOR_WHY = ("memorisation of its permuted training labels (Adebayo et al.: the reference must fit random "
                      "labels); its accuracy on true labels is chance by design")
