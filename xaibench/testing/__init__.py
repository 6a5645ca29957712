"""Contract checks that every registered explainer and metric runs through.

``tests/test_contract.py`` parametrises over :func:`explainer_cases` and :func:`metric_cases`,
so a plugin is tested the moment it is registered. A user's plugin package can run the
same suite::

    from xaibench.testing import check_explainer, check_metric
    check_explainer("myfam.mymethod")
    check_metric("my_metric")
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..explainers import Explainer
from .oracles import model_fingerprint
from ..metric import Metric
from ..registry import load_plugins
from ..explainers import EXPLAINERS
from .fixtures import FIXTURES
from ..metric import METRICS
from ..types import KIND_NDIM, Attribution, Batch
from .fixtures import FixtureCase, register_fixture

__all__ = [
    "FixtureCase", "MetricExample", "register_fixture", "explainer_cases", "metric_cases",
    "check_explainer", "check_metric", "get_fixture",
]


@dataclass
class MetricExample:
    """A batch with ground truth and a perfect attribution for a metric's contract checks.

    ``empty(batch, i)`` returns a copy of ``batch`` whose sample i has empty ground truth
    (default: clears ``masks`` / ``instance_labels``); ``model`` for metrics that need one.
    """

    batch: Batch
    perfect: Attribution
    model: nn.Module | None = None
    empty: Any = None


# ------------------------------------------------------------------ explainers

@functools.lru_cache(maxsize=None)
def get_fixture(name: str) -> FixtureCase:
    """Build (once per process) the registered fixture ``name``."""
    return FIXTURES.get(name)()


def explainer_cases() -> list[tuple[str, str]]:
    """(explainer key, fixture name) for every registered explainer. ``any.*`` explainers run
    on every differentiable fixture."""
    load_plugins()
    cases = []
    for name in EXPLAINERS.names():
        info = EXPLAINERS.info(name)
        if info.family == "any":
            cases += [(name, f) for f in FIXTURES.names() if get_fixture(f).differentiable]
        else:
            cases.append((name, info.fixture))
    return cases


def _targets(case: FixtureCase) -> Tensor | None:
    return case.batch.targets


def _make(name: str, case: FixtureCase) -> Explainer:
    return EXPLAINERS.get(name)(case.model, **case.params.get(name, {}))


def _close(a: Tensor, b: Tensor, case: FixtureCase) -> tuple[bool, float]:
    diff = (a.double() - b.double()).abs()
    tol = case.atol + case.rtol * b.double().abs()
    return bool((diff <= tol).all()), float(diff.max()) if diff.numel() else 0.0


def check_output(name: str, attr: Attribution, case: FixtureCase) -> None:
    info = EXPLAINERS.info(name)
    assert isinstance(attr, Attribution), f"{name}: explain must return an Attribution, got {type(attr).__name__}"
    assert attr.kind == info.kind, f"{name}: registered kind {info.kind!r} but returned {attr.kind!r}"
    assert attr.values.ndim == KIND_NDIM[attr.kind]
    assert attr.batch_size == len(case.batch), f"{name}: {attr.batch_size} maps for {len(case.batch)} samples"
    assert attr.values.is_floating_point(), f"{name}: values must be floating point, got {attr.values.dtype}"
    assert torch.isfinite(attr.values).all(), f"{name}: values contain NaN/inf"
    assert not attr.values.requires_grad, f"{name}: values must be detached"
    x = case.batch.inputs
    if attr.kind == "pixel" and x.ndim == 4:
        assert tuple(attr.values.shape[-2:]) == tuple(x.shape[-2:]), (
            f"{name}: pixel map {tuple(attr.values.shape)} not at input resolution {tuple(x.shape[-2:])}")
    if attr.kind in ("event", "event_head", "event_vector") and x.ndim == 3:
        assert attr.values.shape[-1 if attr.kind != "event_vector" else -2] == x.shape[1], (
            f"{name}: expected one score per event ({x.shape[1]}), got {tuple(attr.values.shape)}")
    assert attr.method == name, f"{name}: attribution.method is {attr.method!r}"


def check_batch_equals_singles(name: str, case: FixtureCase) -> None:
    ex = _make(name, case)
    t = _targets(case)
    full = ex.explain_batch(case.batch, t)
    for i in range(len(case.batch)):
        one = ex.explain_batch(case.batch.select([i]), None if t is None else t[i:i + 1])
        ok, err = _close(one.values[0], full.values[i], case)
        assert ok, f"{name}: sample {i} explained alone differs from the batched result (max |diff| {err:.3g})"


def check_deterministic(name: str, case: FixtureCase) -> None:
    t = _targets(case)
    a = _make(name, case).explain_batch(case.batch, t).values
    b = _make(name, case).explain_batch(case.batch, t).values
    ok, err = _close(a, b, case)
    assert ok, f"{name}: two identical calls differ (max |diff| {err:.3g}); seed every random draw"


def check_model_untouched(name: str, case: FixtureCase) -> None:
    before = model_fingerprint(case.model)
    ex = _make(name, case)
    ex.explain_batch(case.batch, _targets(case))
    for bad in case.bad_inputs:
        try:
            ex.explain(bad, None)
        except ValueError:
            pass
    after = model_fingerprint(case.model)
    for key in before:
        assert before[key] == after[key], f"{name}: the model's {key!r} changed after explaining ({before[key]} -> {after[key]})"
    # also from train mode: an explainer must not leave the model in eval mode
    case.model.train()
    try:
        tr_before = model_fingerprint(case.model)
        _make(name, case).explain_batch(case.batch.select([0]), None if _targets(case) is None else _targets(case)[:1])
        assert model_fingerprint(case.model)["training"] == tr_before["training"], f"{name}: train/eval flags changed"
    finally:
        case.model.eval()


def check_bad_inputs(name: str, case: FixtureCase) -> None:
    ex = _make(name, case)
    for bad in case.bad_inputs:
        try:
            ex.explain(bad, None)
        except ValueError as e:
            assert str(e), f"{name}: ValueError without a message"
            continue
        except Exception as e:  # noqa: BLE001 - we report the wrong type
            raise AssertionError(f"{name}: input of shape {tuple(bad.shape)} raised {type(e).__name__}: {e}; expected ValueError") from e
        raise AssertionError(f"{name}: input of shape {tuple(bad.shape)} was accepted; expected ValueError")


def check_explainer(name: str, fixture: str | None = None) -> None:
    """Run every explainer contract check for ``name`` on its (or the given) fixture."""
    case = get_fixture(fixture or EXPLAINERS.info(name).fixture)
    check_output(name, _make(name, case).explain_batch(case.batch, _targets(case)), case)
    check_batch_equals_singles(name, case)
    check_deterministic(name, case)
    check_model_untouched(name, case)
    check_bad_inputs(name, case)


# ------------------------------------------------------------------ metrics

def metric_cases() -> list[str]:
    load_plugins()
    return METRICS.names()


def _generic_example(name: str, b: int = 16, seed: int = 0) -> MetricExample:
    info = METRICS.info(name)
    g = torch.Generator().manual_seed(seed)
    kind = info.kinds[0]
    if kind in ("pixel", "token"):
        h = w = 32
        masks = torch.zeros(b, h, w, dtype=torch.bool)
        for i in range(b):
            y0, x0 = torch.randint(0, h - 10, (2,), generator=g).tolist()
            sh, sw = torch.randint(4, 10, (2,), generator=g).tolist()
            masks[i, y0:y0 + sh, x0:x0 + sw] = True
        batch = Batch(inputs=torch.rand(b, 3, h, w, generator=g), targets=torch.zeros(b, dtype=torch.long),
                      masks=masks, ids=[f"s{i}" for i in range(b)])
        perfect = Attribution(values=masks.float(), kind="pixel", method="perfect")
        if "pixel" not in info.kinds:
            raise ValueError(f"{name}: no generic example for kinds {info.kinds}; pass example= to register_metric")
        return MetricExample(batch, perfect)
    if kind in ("event", "event_head"):
        n = 400
        labels = torch.rand(b, n, generator=g) < 0.1
        labels[:, 0] = True
        batch = Batch(inputs=torch.rand(b, n, 4, generator=g), instance_labels=labels, ids=[f"s{i}" for i in range(b)])
        vals = labels.float()
        if kind == "event_head":
            vals = vals[:, None].expand(b, 2, n).clone()
        return MetricExample(batch, Attribution(values=vals, kind=kind, method="perfect"))
    raise ValueError(f"{name}: no generic contract example for kind {kind!r}; pass example= to register_metric")


def _default_empty(batch: Batch, i: int) -> Batch:
    out = batch.select(list(range(len(batch))))
    if out.masks is not None:
        out.masks[i] = False
    if out.instance_labels is not None:
        out.instance_labels[i] = False
    return out


def _random_like(attr: Attribution, seed: int = 1) -> Attribution:
    g = torch.Generator().manual_seed(seed)
    return attr.replace(values=torch.rand(attr.values.shape, generator=g), method="random")


def get_metric_example(name: str) -> MetricExample:
    info = METRICS.info(name)
    return info.example() if info.example is not None else _generic_example(name)


def check_metric(name: str) -> None:
    """Run every metric contract check for ``name``."""
    info = METRICS.info(name)
    metric = Metric(name)
    ex = get_metric_example(name)
    skip = info.contract_skip
    run = lambda a, b: metric(a, b, model=ex.model)  # noqa: E731
    perfect = run(ex.perfect, ex.batch)
    assert perfect.shape == (len(ex.batch),) and perfect.dtype == torch.float32, f"{name}: expected float32 ({len(ex.batch)},) scores, got {perfect.dtype} {tuple(perfect.shape)}"
    if "range" not in skip:
        lo, hi = info.range
        ok = perfect[~perfect.isnan()]
        assert ((ok >= lo - 1e-6) & (ok <= hi + 1e-6)).all(), f"{name}: scores {ok.tolist()} outside declared range {info.range}"
    if "perfect" not in skip:
        rnd = run(_random_like(ex.perfect), ex.batch)
        pm, rm = float(perfect.nanmean()), float(rnd.nanmean())
        assert info.better(pm, rm), f"{name}: perfect attribution ({pm:.3f}) does not beat random ({rm:.3f}) ({info.direction} is better)"
    if "empty" not in skip:
        empty = (ex.empty or _default_empty)(ex.batch, 0)
        res = metric.evaluate(ex.perfect, empty, model=ex.model)
        assert math.isnan(float(res.scores[0])), f"{name}: empty ground truth must give NaN, got {float(res.scores[0])}"
        assert res.reasons[0], f"{name}: a NaN score needs a reason"
        same = torch.equal(res.scores[1:].nan_to_num(-7), perfect[1:].nan_to_num(-7))
        assert same, f"{name}: emptying sample 0's ground truth changed other samples' scores"
    if "composition" not in skip:
        attr = _random_like(ex.perfect, seed=3)
        full = run(attr, ex.batch)
        idx = [len(ex.batch) - 1, 0, 2]
        sub = run(attr.select(idx), ex.batch.select(idx))
        assert torch.allclose(sub.nan_to_num(-7), full[idx].nan_to_num(-7), atol=1e-6), (
            f"{name}: a sample's score depends on the other samples in the batch ({sub.tolist()} vs {full[idx].tolist()})")
