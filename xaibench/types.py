"""Core value types: :class:`Attribution`, :class:`Batch` and metric metadata."""

from __future__ import annotations

import dataclasses
from enum import Enum
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

#: The kinds of attribution and the number of dimensions of ``values`` for each.
KIND_NDIM: dict[str, int] = {
    "pixel": 3,  # (B, H, W) at input resolution
    "token": 2,  # (B, T) patch tokens, extras["grid"] = (h, w)
    "event": 2,  # (B, N) one score per event / instance
    "event_head": 3,  # (B, heads, N)
    "event_vector": 3,  # (B, N, m) a vector per event in feature space
    "voxel": 4,  # (B, D, H, W) at input resolution, one volume per sample
}
KINDS: tuple[str, ...] = tuple(KIND_NDIM)

class Direction(str, Enum):
    """Which way a metric's score is better: the one encoding used everywhere (it compares
    equal to, and serialises as, ``"higher"`` / ``"lower"``)."""

    HIGHER = "higher"
    LOWER = "lower"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: "str | Direction", who: str = "direction") -> "Direction":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{who}: direction must be 'higher' or 'lower', got {value!r}") from None

    @property
    def sign(self) -> int:
        """+1 when higher is better, -1 when lower is: ``sign * (new - old)`` is an improvement."""
        return 1 if self is Direction.HIGHER else -1

    def better(self, a: float, b: float) -> bool:
        """True when score ``a`` is better than ``b``."""
        return self.sign * (a - b) > 0


def _check_kind(kind: str, values: Tensor, who: str) -> None:
    if kind not in KIND_NDIM:
        raise ValueError(f"{who}: unknown kind {kind!r}; expected one of {KINDS}")
    if not isinstance(values, Tensor):
        raise TypeError(f"{who}: values must be a torch.Tensor, got {type(values).__name__}")
    if values.ndim != KIND_NDIM[kind]:
        raise ValueError(
            f"{who}: kind {kind!r} expects values with {KIND_NDIM[kind]} dims, "
            f"got shape {tuple(values.shape)}"
        )


@dataclass(frozen=True, kw_only=True)
class Attribution:
    """An explanation for a batch of B samples.

    Args:
        values: raw scores, never normalised; shape fixed by ``kind``:
            ``pixel`` (B, H, W), ``token`` (B, T), ``event`` (B, N),
            ``event_head`` (B, heads, N), ``event_vector`` (B, N, m), ``voxel`` (B, D, H, W).
        kind: one of :data:`KINDS`.
        method: registry key of the explainer that made it (``"cnn.gradcam"``).
        params: the explainer's settings, for reproducible reports.
        extras: anything else (``grid`` for tokens, ``pixel`` upsampled maps, ...).

    Example:
        >>> a = Attribution(values=torch.zeros(2, 8, 8), kind="pixel", method="demo")
        >>> a.batch_size
        2
    """

    values: Tensor
    kind: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_kind(self.kind, self.values, f"Attribution({self.method})")
        if self.kind == "token" and "grid" not in self.extras:
            raise ValueError(
                f"Attribution({self.method}): kind 'token' needs extras['grid'] = (h, w)"
            )

    @property
    def batch_size(self) -> int:
        return int(self.values.shape[0])

    def replace(self, **changes: Any) -> "Attribution":
        """A copy with some fields changed (``values=...``)."""
        return dataclasses.replace(self, **changes)

    def select(self, index: Sequence[int] | Tensor | slice) -> "Attribution":
        """The attribution of a subset of the batch (extras that are per-sample tensors follow)."""
        extras = {
            k: (v[index] if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == self.batch_size else v)
            for k, v in self.extras.items()
        }
        return dataclasses.replace(self, values=self.values[index], extras=extras)

    def pixel_map(self) -> Tensor:
        """A (B, H, W) map: ``values`` for pixel kind, else ``extras['pixel']``."""
        if self.kind == "pixel":
            return self.values
        if "pixel" in self.extras:
            return self.extras["pixel"]
        raise ValueError(f"Attribution({self.method}): kind {self.kind!r} has no pixel map")


@dataclass(kw_only=True)
class Batch:
    """Inputs, targets and ground truth of B samples. Every field but ``inputs`` is optional.

    Args:
        inputs: model input, e.g. images (B, C, H, W) or event sets (B, N, m).
        targets: class labels (B,).
        masks: ground-truth regions (B, H, W) bool; (B, D, H, W) for volumes.
        boxes: per-sample list of (k, 4) boxes ``x0, y0, x1, y1`` in pixels (exclusive end).
        instance_labels: (B, N) per-event / per-instance labels (sets).
        polygons: gate polygons, per sample.
        ids: per-sample identifiers (str).
        meta: anything else (per-sample lists or batch-level values).
    """

    inputs: Tensor
    targets: Tensor | None = None
    masks: Tensor | None = None
    boxes: list[Tensor] | None = None
    instance_labels: Tensor | None = None
    polygons: Any = None
    ids: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = len(self)
        for name in ("targets", "masks", "instance_labels"):
            v = getattr(self, name)
            if v is not None and int(v.shape[0]) != b:
                raise ValueError(
                    f"Batch: {name} has {int(v.shape[0])} samples but inputs has {b}"
                )
        if self.masks is not None and self.masks.ndim not in (3, 4):
            raise ValueError(f"Batch: masks must be (B, H, W) or, for volumes, (B, D, H, W), got {tuple(self.masks.shape)}")
        if self.ids is not None and len(self.ids) != b:
            raise ValueError(f"Batch: {len(self.ids)} ids for {b} samples")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def select(self, index: Sequence[int] | Tensor) -> "Batch":
        """A sub-batch of the given sample indices (order kept)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = lambda v: None if v is None else v[idx]  # noqa: E731
        plist = lambda v: None if v is None else [v[i] for i in idx.tolist()]  # noqa: E731
        meta = {
            k: (plist(v) if isinstance(v, list) and len(v) == len(self) else
                (v[idx] if isinstance(v, Tensor) and v.ndim and v.shape[0] == len(self) else v))
            for k, v in self.meta.items()
        }
        polygons = plist(self.polygons) if isinstance(self.polygons, list) and len(self.polygons) == len(self) else self.polygons
        return Batch(
            inputs=self.inputs[idx], targets=pick(self.targets), masks=pick(self.masks),
            boxes=plist(self.boxes), instance_labels=pick(self.instance_labels),
            polygons=polygons, ids=plist(self.ids), meta=meta,
        )

    @staticmethod
    def concat(batches: Sequence["Batch"]) -> "Batch":
        """Join batches sample-wise (fields present in all of them)."""
        if not batches:
            raise ValueError("Batch.concat: no batches given")
        first = batches[0]

        def cat(name: str) -> Any:
            vals = [getattr(b, name) for b in batches]
            if any(v is None for v in vals):
                return None
            if isinstance(vals[0], Tensor):
                return torch.cat(vals)
            if isinstance(vals[0], list):
                return [x for v in vals for x in v]
            return vals[0]

        meta: dict[str, Any] = {}
        for k, v in first.meta.items():
            vals = [b.meta.get(k) for b in batches]
            if isinstance(v, list):
                meta[k] = [x for vv in vals for x in (vv or [])]
            elif isinstance(v, Tensor) and v.ndim:
                meta[k] = torch.cat(vals)
            else:
                meta[k] = v
        return Batch(
            inputs=cat("inputs"), targets=cat("targets"), masks=cat("masks"), boxes=cat("boxes"),
            instance_labels=cat("instance_labels"), polygons=cat("polygons"), ids=cat("ids"),
            meta=meta,
        )


@dataclass(frozen=True, kw_only=True)
class MetricInfo:
    """Metadata of a registered metric.

    Args:
        name: registry key (lower_snake).
        direction: ``"higher"`` or ``"lower"`` is better.
        category: ``localisation``, ``faithfulness``, ``randomisation``, ``instance_set``, ...
        kinds: attribution kinds the metric accepts.
        needs: ground-truth fields of :class:`Batch` it reads (``masks``, ``instance_labels``).
        needs_model: the metric calls the model (faithfulness); the runner passes ``model=``.
        range: the (low, high) the score can take, for plots and checks.
        contract_skip: contract checks that do not apply, mapped to the reason.
        example: optional ``fn() -> MetricExample`` giving the contract suite a batch and a
            perfect attribution when the generic ones (built from ``kinds`` and ``needs``) do not fit.
    """

    name: str
    direction: Direction
    category: str
    kinds: tuple[str, ...]
    needs: tuple[str, ...] = ()
    needs_model: bool = False
    range: tuple[float, float] = (0.0, 1.0)
    contract_skip: dict[str, str] = field(default_factory=dict)
    example: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", Direction.parse(self.direction, f"metric {self.name!r}"))

    def better(self, a: float, b: float) -> bool:
        """True when score ``a`` is better than ``b`` in this metric's direction."""
        return self.direction.better(a, b)


@dataclass(frozen=True)
class MetricScores:
    """Scores of one metric call with the reason for each undefined (NaN) score.

    ``scores`` (B,) float; ``reasons`` a list of B entries, ``None`` where defined.
    """

    scores: Tensor
    reasons: list[str | None]

    @staticmethod
    def from_nan(scores: Tensor, reason: str | Tensor | list[str | None] = "undefined") -> "MetricScores":
        """Attach one reason to every NaN score (or take a list of per-sample reasons)."""
        if isinstance(reason, list):
            return MetricScores(scores, reason)
        nan = torch.isnan(scores).tolist()
        return MetricScores(scores, [reason if n else None for n in nan])
