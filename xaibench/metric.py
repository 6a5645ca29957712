"""Metric registration and the :class:`Metric` wrapper that binds a metric's settings.

A metric is a plain function ``fn(attr, batch, *, setting=default, ...) -> Tensor``
returning (B,) float scores (NaN where undefined), or a :class:`MetricScores` when it
wants to give a reason per undefined sample. Register it with its metadata::

    @register_metric("pointing_game", direction="higher", category="localisation",
                     kinds=("pixel",), needs=("masks",), undefined="empty mask")
    def pointing_game(attr, batch, *, tolerance=0): ...
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .registry import METRICS
from .types import KINDS, Attribution, Batch, MetricInfo, MetricScores

MetricFn = Callable[..., "Tensor | MetricScores"]


def register_metric(
    name: str,
    *,
    direction: str,
    category: str,
    kinds: tuple[str, ...],
    needs: tuple[str, ...] = (),
    needs_model: bool = False,
    range: tuple[float, float] = (0.0, 1.0),
    undefined: str = "undefined",
    contract_skip: dict[str, str] | None = None,
    example: Callable[[], Any] | None = None,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering a metric function with its metadata (see :class:`MetricInfo`).

    Args:
        undefined: the reason recorded for a NaN score when the function returns a plain tensor.
        contract_skip: contract checks that do not apply (``perfect``, ``empty``, ``composition``,
            ``range``), each mapped to the reason.
        example: ``fn() -> xaibench.testing.MetricExample`` for the contract suite, when the
            generic example built from ``kinds`` and ``needs`` does not fit the metric.

    Raises:
        ValueError: bad direction or kind, or the name is taken.
    """
    if direction not in ("higher", "lower"):
        raise ValueError(f"register_metric({name!r}): direction must be 'higher' or 'lower', got {direction!r}")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"register_metric({name!r}): unknown kinds {bad}; expected some of {KINDS}")
    info = MetricInfo(name=name, direction=direction, category=category, kinds=tuple(kinds),
                      needs=tuple(needs), needs_model=needs_model, range=range,
                      contract_skip=dict(contract_skip or {}), example=example)

    def deco(fn: MetricFn) -> MetricFn:
        fn.__xaibench_undefined__ = undefined  # type: ignore[attr-defined]
        fn.info = info  # type: ignore[attr-defined]
        METRICS.add(name, fn, info)
        return fn

    return deco


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    sig = inspect.signature(fn)
    return {k: p.default for k, p in sig.parameters.items()
            if p.kind == p.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


class Metric:
    """A registered metric with its settings bound.

    ``metric(attr, batch)`` returns (B,) float scores; ``metric.evaluate(attr, batch)``
    also gives the reason for each NaN. ``metric.protocol`` is the full set of settings
    (defaults included) that a score was measured with.
    """

    def __init__(self, name: str, **params: Any) -> None:
        entry = METRICS.entry(name)
        self.name = name
        self.fn: MetricFn = entry.obj
        self.info: MetricInfo = entry.info
        accepted = _defaults(self.fn)
        unknown = sorted(set(params) - set(accepted) - {"model"})
        if unknown:
            raise TypeError(f"metric {name}: unknown setting(s) {unknown}; accepted: {sorted(accepted)}")
        self.params = {**accepted, **params}

    @property
    def protocol(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k != "model"}

    def get_params(self) -> dict[str, Any]:
        return self.protocol

    def _check(self, attr: Attribution, batch: Batch) -> None:
        if not isinstance(attr, Attribution):
            raise ValueError(f"{self.name}: expected an Attribution, got {type(attr).__name__}")
        if attr.kind not in self.info.kinds:
            raise ValueError(
                f"{self.name}: accepts attribution kinds {self.info.kinds}, got {attr.kind!r} "
                f"from {attr.method}"
            )
        if attr.batch_size != len(batch):
            raise ValueError(f"{self.name}: attribution has {attr.batch_size} samples, batch has {len(batch)}")
        for need in self.info.needs:
            if getattr(batch, need, None) is None:
                raise ValueError(f"{self.name}: needs batch.{need} (ground truth), which is None")

    def evaluate(self, attr: Attribution, batch: Batch, model: nn.Module | None = None) -> MetricScores:
        """Scores and the reason for each undefined score."""
        self._check(attr, batch)
        kwargs = dict(self.protocol)
        if self.info.needs_model:
            if model is None:
                raise ValueError(f"{self.name}: needs the model; call metric(attr, batch, model=model)")
            kwargs["model"] = model
        out = self.fn(attr, batch, **kwargs)
        res = out if isinstance(out, MetricScores) else MetricScores.from_nan(
            out, getattr(self.fn, "__xaibench_undefined__", "undefined"))
        s = res.scores
        if not (isinstance(s, Tensor) and s.ndim == 1 and s.shape[0] == len(batch)):
            raise RuntimeError(f"{self.name}: metric returned shape {tuple(getattr(s, 'shape', ()))}, expected ({len(batch)},)")
        return MetricScores(s.detach().float().cpu(), res.reasons)

    def __call__(self, attr: Attribution, batch: Batch, model: nn.Module | None = None) -> Tensor:
        return self.evaluate(attr, batch, model).scores

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, {self.protocol})"


def create_metric(name: str, **params: Any) -> Metric:
    """Build a registered metric with settings, e.g. ``create_metric("iou", threshold="otsu")``."""
    return Metric(name, **params)


def list_metrics(pattern: str | None = None) -> list[str]:
    """Registered metric names, optionally filtered by a glob (``"*iou*"``)."""
    return METRICS.names(pattern)
