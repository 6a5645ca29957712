"""Dataset and model registration, and the base class of seeded sample-wise generators."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .registry import FAMILY_KEY, Registry
from .settings import Settings, validate
from .types import Batch


def _dataset_info(name: str, cls: type) -> None:
    cls.name = name


#: Dataset registry: lower_snake keys, values :class:`SampleDataset` subclasses.
DATASETS: Registry[type["SampleDataset"]] = Registry("dataset", key_pattern=r"_?[a-z][a-z0-9_]*", key_form="lower_snake",
                                                     make_info=_dataset_info, functions=False)
#: Model builders ``fn(**params) -> nn.Module``, keys ``family.name``; their settings are the
#: builder's typed keyword-only parameters.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model", key_pattern=FAMILY_KEY, key_form="'family.name'", settings=False)

#: ``@register_dataset("lesions")``: class decorator registering a :class:`SampleDataset`.
register_dataset = DATASETS.register
#: ``@register_model("cnn.timm")``: decorator registering a model builder.
register_model = MODELS.register


def create_dataset(name: str, **params: Any) -> Any:
    """Build a registered dataset: an iterable of :class:`~xaibench.Batch`."""
    return DATASETS.get(name)(**params)


def create_model(name: str, **params: Any) -> nn.Module:
    """Build a registered model with random (seeded where ``seed=`` is accepted) weights."""
    return MODELS.get(name)(**params)


def list_datasets(pattern: str | None = None) -> list[str]:
    return DATASETS.names(pattern)


def list_models(pattern: str | None = None) -> list[str]:
    return MODELS.names(pattern)


def files_fingerprint(paths: Iterable[str | Path]) -> str:
    """A digest of files' names, sizes and modification times: what a dataset read from disk.

    The runner stores it with every cell, so resuming after the files changed is refused
    instead of mixing scores of old and new data. Missing files count too.
    """
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        try:
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:16]


def sample_rng(*keys: Any) -> np.random.Generator:
    """A numpy generator seeded from any tuple of keys (seed, split, index, ...).

    Sample ``i`` of a dataset is drawn from ``sample_rng(seed, split, i)``, so it is the same
    whatever the batch size, the number of samples or the order of generation.
    """
    h = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(h, "little"))


class SampleDataset:
    """Base of seeded generators that make each sample independently from its index.

    Subclasses implement :meth:`make_sample` (returns a dict of per-sample fields), declare
    their settings as a nested ``Settings`` (validated at construction, read as
    ``self.settings.<name>``) and may override :meth:`collate`. ``get_params()`` gives the
    settings back for reports.

    Args:
        n: number of samples.
        batch_size: samples per :class:`Batch`.
        seed: base seed; sample i is drawn from ``sample_rng(seed, split, i)``.
        split: ``"train"``, ``"val"`` or ``"test"`` (different samples for each).
    """

    name: ClassVar[str] = ""
    #: settings the runner sets itself (never part of a dataset's ``Settings``)
    RUN_ARGS: ClassVar[tuple[str, ...]] = ("n", "batch_size", "seed", "split")

    class Settings(Settings):
        """No settings."""

    def __init__(self, n: int = 64, batch_size: int = 16, seed: int = 0, split: str = "test", **params: Any):
        if n < 1 or batch_size < 1:
            raise ValueError(f"{self.name}: n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        self.n, self.batch_size, self.seed, self.split = int(n), int(batch_size), int(seed), str(split)
        self.settings = validate(type(self).Settings, params, f"dataset {self.name or type(self).__name__!r}")
        self.params = dict(self.settings)

    def get_params(self) -> dict[str, Any]:
        return {"n": self.n, "batch_size": self.batch_size, "seed": self.seed, "split": self.split, **self.params}

    def fingerprint(self) -> str:
        """What the samples are made of beyond the settings: ``""`` for generators (settings and
        seed determine every sample); loaders of user files return a digest of those files."""
        return ""

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def sample(self, index: int) -> dict[str, Any]:
        return self.make_sample(sample_rng(self.name, self.seed, self.split, index), index)

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        fields: dict[str, Any] = {}
        for key in ("inputs", "targets", "masks", "instance_labels"):
            if key in samples[0] and samples[0][key] is not None:
                fields[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
        for key in ("boxes", "polygons", "ids"):
            if key in samples[0]:
                fields[key] = [s[key] for s in samples]
        meta_keys = [k for k in samples[0] if k not in ("inputs", "targets", "masks", "instance_labels", "boxes", "polygons", "ids")]
        fields["meta"] = {k: [s[k] for s in samples] for k in meta_keys}
        return Batch(**fields)

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, self.n, self.batch_size):
            idx = range(start, min(self.n, start + self.batch_size))
            yield self.collate([self.sample(i) for i in idx])

    def all(self) -> Batch:
        """Every sample in one batch."""
        return self.collate([self.sample(i) for i in range(self.n)])
DATASETS.base = SampleDataset
