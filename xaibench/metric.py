"""Metric registration and the :class:`Metric` wrapper that binds a metric's settings.

A metric is a plain function ``fn(attr, batch, *, setting=default, ...) -> Tensor``
returning (B,) float scores (NaN where undefined), or a :class:`MetricScores` when it
wants to give a reason per undefined sample. Register it with its metadata::

    @register_metric("pointing_game", direction="higher", category="localisation",
                     kinds=("pixel",), needs=("masks",), undefined="empty mask")
    def pointing_game(attr, batch, *, tolerance=0): ...
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .explainers import nonfinite_rows
from .registry import Registry
from .settings import validate
from .types import KINDS, Attribution, Batch, Direction, MetricInfo, MetricScores

MetricFn = Callable[..., "Tensor | MetricScores"]

#: The reason recorded for every sample whose map holds NaN or ±Inf.
NONFINITE = "non-finite attribution"


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
        """Scores and the reason for each undefined score.

        Every metric gets the same treatment of bad maps, whatever its function does: a sample
        whose map (``values``, or the ``extras["pixel"]`` map a token attribution is scored
        through) holds any NaN/Inf scores NaN with the reason ``"non-finite attribution"``;
        the function sees those samples as zeros, so their neighbours in the batch are scored
        as if they were alone. A NaN the function returns without a reason gets the metric's
        registered ``undefined`` reason; an infinite score becomes NaN with a reason.
        """
        self._check(attr, batch)
        kwargs = dict(self.params)
        if self.info.needs_model:
            if model is None:
                raise ValueError(f"{self.name}: needs the model; call metric(attr, batch, model=model)")
            kwargs["model"] = model
        bad = nonfinite_maps(attr)
        out = self.fn(placeholder(attr, bad) if bad.any() else attr, batch, **kwargs)
        undefined = getattr(self.fn, "__xaibench_undefined__", None) or "undefined"
        res = out if isinstance(out, MetricScores) else MetricScores.from_nan(out, undefined)
        s = res.scores
        if not (isinstance(s, Tensor) and s.ndim == 1 and s.shape[0] == len(batch)):
            raise RuntimeError(f"{self.name}: metric returned shape {tuple(getattr(s, 'shape', ()))}, expected ({len(batch)},)")
        if len(res.reasons) != len(batch):
            raise RuntimeError(f"{self.name}: metric returned {len(res.reasons)} reasons for {len(batch)} samples")
        s = s.detach().float().cpu().clone()
        reasons = list(res.reasons)
        for i in torch.nonzero(bad).flatten().tolist():
            s[i], reasons[i] = math.nan, NONFINITE
        for i in torch.nonzero(~torch.isfinite(s)).flatten().tolist():
            if not math.isnan(float(s[i])):
                s[i], reasons[i] = math.nan, f"{self.name} gave an infinite score ({float(s[i])})"
            elif not reasons[i]:
                reasons[i] = undefined
        return MetricScores(s, reasons)

    def __call__(self, attr: Attribution, batch: Batch, model: nn.Module | None = None) -> Tensor:
        return self.evaluate(attr, batch, model).scores

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, {self.protocol})"


def _per_sample(v: Any, b: int) -> bool:
    return isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == b and v.is_floating_point()


def nonfinite_maps(attr: Attribution) -> Tensor:
    """(B,) bool: samples whose ``values`` or ``extras["pixel"]`` map hold any NaN/Inf."""
    b = attr.batch_size
    bad = torch.zeros(b, dtype=torch.bool)
    for v in (attr.values, attr.extras.get("pixel")):
        if _per_sample(v, b):
            bad |= nonfinite_rows(v).cpu()
    return bad


def placeholder(attr: Attribution, bad: Tensor) -> Attribution:
    """A copy of ``attr`` whose ``bad`` samples are zeros, in ``values`` and in every per-sample
    floating tensor of ``extras`` (so no NaN reaches a metric function); the rest unchanged."""
    b = attr.batch_size

    def fix(v: Tensor) -> Tensor:
        m = bad.to(v.device).reshape(b, *([1] * (v.ndim - 1)))
        return torch.where(m, torch.zeros((), dtype=v.dtype, device=v.device), v)

    extras = {k: fix(v) if _per_sample(v, b) else v for k, v in attr.extras.items()}
    return attr.replace(values=fix(attr.values), extras=extras)


def create_metric(name: str, **params: Any) -> Metric:
    """Build a registered metric with settings, e.g. ``create_metric("iou", threshold="otsu")``."""
    return Metric(name, **params)


def list_metrics(pattern: str | None = None) -> list[str]:
    """Registered metric names, optionally filtered by a glob (``"*iou*"``)."""
    return METRICS.names(pattern)
