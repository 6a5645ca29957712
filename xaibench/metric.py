"""Metric registration and the :class:`Metric` wrapper that binds a metric's settings.

A metric is a plain function ``fn(attr, batch, *, setting=default, ...) -> Tensor``
returning (B,) float scores (NaN where undefined), or a :class:`MetricScores` when it
wants to give a reason per undefined sample. Register it with its metadata::

    @register_metric("pointing_game", direction="higher", category="localisation",
                     kinds=("pixel",), needs=("masks",), undefined="empty mask")
    def pointing_game(attr, batch, *, tolerance=0): ...
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from .registry import Registry
from .settings import validate
from .types import KINDS, Attribution, Batch, Direction, MetricInfo, MetricScores

MetricFn = Callable[..., "Tensor | MetricScores"]


def _check_metric_meta(name: str, *, direction: str = "", kinds: tuple[str, ...] = (), **_: Any) -> None:
    Direction.parse(direction, f"register_metric({name!r})")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"register_metric({name!r}): unknown kinds {bad}; expected some of {KINDS}")


def _metric_info(
    name: str,
    fn: MetricFn,
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
) -> MetricInfo:
    fn.__xaibench_undefined__ = undefined  # type: ignore[attr-defined]
    info = MetricInfo(name=name, direction=direction, category=category, kinds=tuple(kinds),
                      needs=tuple(needs), needs_model=needs_model, range=range,
                      contract_skip=dict(contract_skip or {}), example=example)
    fn.info = info  # type: ignore[attr-defined]
    return info


#: The metric registry: lower_snake keys, values metric functions (settings from their typed
#: keyword-only parameters; ``model`` is passed by the runner, not a setting).
METRICS: Registry[MetricFn] = Registry("metric", key_pattern=r"_?[a-z][a-z0-9_]*", key_form="lower_snake",
                                       check_meta=_check_metric_meta, make_info=_metric_info,
                                       settings_skip=("model",))

#: ``@register_metric(name, *, direction, category, kinds, needs=(), needs_model=False,
#: range=(0, 1), undefined="undefined", contract_skip=None, example=None)`` registers a metric
#: function with its metadata (see :class:`MetricInfo`). ``undefined`` is the reason recorded
#: for a NaN score when the function returns a plain tensor; ``contract_skip`` maps contract
#: checks that do not apply (``perfect``, ``empty``, ``composition``, ``range``) to the reason;
#: ``example`` is ``fn() -> xaibench.testing.MetricExample`` when the generic one does not fit.
register_metric = METRICS.register


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
        self.settings = validate(entry.settings, params, f"metric {name!r}")
        self.params = dict(self.settings)

    @property
    def protocol(self) -> dict[str, Any]:
        """The settings a score was measured with (defaults included), as plain JSON data."""
        return self.settings.record()

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
        kwargs = dict(self.params)
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
