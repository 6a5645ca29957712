"""Training checkpoints that cannot carry code: tensors as safetensors, the rest as JSON.

    save_state("run/ck.safetensors", {"model": model.state_dict(), "opt": opt.state_dict(), "step": step})
    ck = load_state("run/ck.safetensors")
    model.load_state_dict(ck["model"]); opt.load_state_dict(optimizer_state(ck["opt"]))

Used by the zoo's long trainings to resume where they stopped, instead of ``torch.save``/``torch.load``
(pickles, which nothing in this package may read).
"""

from __future__ import annotations

from pathlib import Path

from .util import atomic_write_bytes, atomic_write_text


def save_state(path: str | Path, state: dict) -> Path:
    """Write a training state (nested dicts/lists of tensors and plain values, e.g. a model's and an
    optimiser's ``state_dict``) as ``path`` (safetensors, the tensors) + ``path.json`` (the tree), each
    atomically: a resumable checkpoint that cannot carry code, unlike ``torch.save``."""
    import json

    from safetensors.torch import save

    from .store import _flatten

    tensors: dict = {}
    tree = _flatten(state, "s", tensors)
    atomic_write_bytes(path, save(tensors))
    atomic_write_text(f"{path}.json", json.dumps(tree))
    return Path(path)


def load_state(path: str | Path) -> dict:
    """Read what :func:`save_state` wrote. Dict keys come back as strings (JSON): an optimiser's
    ``state`` needs its integer keys restored before ``load_state_dict`` (see :func:`optimizer_state`)."""
    import json

    from safetensors.torch import load

    from .store import _unflatten

    return _unflatten(json.loads(Path(f"{path}.json").read_text()), load(Path(path).read_bytes()))


def optimizer_state(state: dict) -> dict:
    """An optimiser ``state_dict`` read back by :func:`load_state`, with the integer parameter keys of its
    ``state`` restored (torch matches them against ``param_groups[*]["params"]``) and Adam's ``betas``
    pairs tuples again (JSON made them lists)."""
    groups = [{**g, "betas": tuple(g["betas"])} if isinstance(g.get("betas"), list) else g
              for g in state["param_groups"]]
    return {**state, "state": {int(k): v for k, v in state["state"].items()}, "param_groups": groups}


__all__ = ["load_state", "optimizer_state", "save_state"]
