"""Contract checks that every registered explainer, metric, dataset and baseline runs through.

``tests/test_contract.py`` parametrises over :func:`explainer_cases`, :func:`metric_cases`,
:func:`dataset_cases` and :func:`baseline_cases`, so a plugin is tested the moment it is
registered. A user's plugin package can run the same suite::

    from xaibench.testing import check_explainer, check_metric
    check_explainer("myfam.mymethod")
    check_metric("my_metric")
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..baselines import BASELINES
from ..data import DATASETS
from ..explainers import EXPLAINERS, Explainer
from ..metric import METRICS, Metric
from ..registry import load_plugins
from ..types import KIND_NDIM, KINDS, Attribution, Batch
from .fixtures import FIXTURES, FixtureCase, register_fixture
from .oracles import model_fingerprint

__all__ = [
    "FixtureCase", "MetricExample", "register_fixture", "explainer_cases", "metric_cases", "dataset_cases",
    "baseline_cases", "check_explainer", "check_metric", "check_dataset", "check_baseline", "get_fixture",
    "check_target_formats", "check_dtype_float64", "check_device", "check_metric_device", "check_baseline_device",
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
    """(explainer key, fixture name) for every registered explainer, once per kind it declares
    (``kinds``: its main fixture, then the fixture of each further kind, e.g. ``cnn3d`` for
    ``voxel``). ``any.*`` explainers run on every differentiable fixture."""
    load_plugins()
    cases = []
    for name in EXPLAINERS.names():
        info = EXPLAINERS.info(name)
        if info.family == "any":
            cases += [(name, f) for f in FIXTURES.names() if get_fixture(f).differentiable]
        else:
            cases.append((name, info.fixture))
            cases += [(name, fx) for _, fx in info.kind_fixtures]
    return cases


def _targets(case: FixtureCase) -> Tensor | None:
    return case.batch.targets


def _make(name: str, case: FixtureCase) -> Explainer:
    return EXPLAINERS.get(name)(case.model, **case.params.get(name, {}))


def _close(a: Tensor, b: Tensor, case: FixtureCase) -> tuple[bool, float]:
    diff = (a.double() - b.double()).abs()
    tol = case.atol + case.rtol * b.double().abs()
    return bool((diff <= tol).all()), float(diff.max()) if diff.numel() else 0.0


def _case_kind(name: str, case: FixtureCase) -> str:
    """The kind ``name`` must return on ``case``: the kind whose fixture ``case`` is (fixtures are cached)."""
    info = EXPLAINERS.info(name)
    for kind, fx in info.kind_fixtures:
        if get_fixture(fx) is case:
            return kind
    return info.kind


def check_output(name: str, attr: Attribution, case: FixtureCase, kind: str | None = None) -> None:
    """The attribution's type, kind (``kind``, default: the kind of ``case``'s fixture), shape and values."""
    info = EXPLAINERS.info(name)
    kind = kind or _case_kind(name, case)
    assert isinstance(attr, Attribution), f"{name}: explain must return an Attribution, got {type(attr).__name__}"
    assert attr.kind == kind, f"{name}: registered kind {kind!r} for this fixture but returned {attr.kind!r}"
    assert attr.values.ndim == KIND_NDIM[attr.kind]
    assert attr.batch_size == len(case.batch), f"{name}: {attr.batch_size} maps for {len(case.batch)} samples"
    assert attr.values.is_floating_point(), f"{name}: values must be floating point, got {attr.values.dtype}"
    assert torch.isfinite(attr.values).all(), f"{name}: values contain NaN/inf"
    assert not attr.values.requires_grad, f"{name}: values must be detached"
    x = case.batch.inputs
    if attr.kind == "pixel" and x.ndim == 4:
        assert tuple(attr.values.shape[-2:]) == tuple(x.shape[-2:]), (
            f"{name}: pixel map {tuple(attr.values.shape)} not at input resolution {tuple(x.shape[-2:])}")
    if attr.kind == "voxel" and x.ndim == 5:
        assert tuple(attr.values.shape[-3:]) == tuple(x.shape[-3:]), (
            f"{name}: voxel map {tuple(attr.values.shape)} not at input resolution {tuple(x.shape[-3:])}")
    assert attr.kind in info.kinds, f"{name}: returned {attr.kind!r}, not among its declared kinds {info.kinds}"
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


def _pair(case: FixtureCase) -> Batch:
    """The fixture's first two samples (the format / dtype / device checks need no more)."""
    return case.batch.select(list(range(min(2, len(case.batch)))))


def _same(a: Tensor, b: Tensor, case: FixtureCase, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)})"
    ok, err = _close(a, b, case)
    assert ok, f"{what} (max |diff| {err:.3g})"


def check_target_formats(name: str, case: FixtureCase) -> None:
    """Every target format means the same as its explicit (B,) tensor: an int k and a 0-d
    tensor k as ``full((B,), k)``; None as the target the explainer reports it resolved to
    (``extras["target"]``), which for a classifier with (B, K) outputs is the predicted class."""
    batch = _pair(case)
    b = len(batch)
    ex = _make(name, case)
    none = ex.explain_batch(batch, None)
    resolved = none.extras.get("target")
    if isinstance(resolved, Tensor):
        explicit = ex.explain_batch(batch, resolved.clone()).values
        _same(none.values, explicit, case, f"{name}: target=None differs from its resolved target {resolved.tolist()}")
        with torch.no_grad():
            out = case.model(batch.inputs)
        if isinstance(out, Tensor) and out.ndim == 2:
            pred = out.argmax(1)
            assert resolved.tolist() == pred.tolist(), (
                f"{name}: target=None resolved to {resolved.tolist()}, the predicted classes are {pred.tolist()}")
    # a class other than sample 0's default, so an ignored int would show
    k = 1 if isinstance(resolved, Tensor) and int(resolved.reshape(-1)[0]) == 0 else 0
    full = ex.explain_batch(batch, torch.full((b,), k, dtype=torch.long)).values
    _same(ex.explain_batch(batch, k).values, full, case, f"{name}: target={k} differs from target=full(({b},), {k})")
    _same(ex.explain_batch(batch, torch.tensor(k)).values, full, case,
          f"{name}: target=torch.tensor({k}) (0-d) differs from target=full(({b},), {k})")


def _converted(name: str, case: FixtureCase, batch: Batch, *, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> Attribution:
    """Explain ``batch`` with a copy of the model and inputs moved to ``dtype`` / ``device``."""
    model = copy.deepcopy(case.model).to(device=device, dtype=dtype)
    moved = dataclasses.replace(batch, inputs=batch.inputs.to(device=device, dtype=dtype))
    if device is not None:
        for field_name in ("targets", "masks", "instance_labels"):
            v = getattr(moved, field_name)
            if isinstance(v, Tensor):
                setattr(moved, field_name, v.to(device))
    ex = EXPLAINERS.get(name)(model, **case.params.get(name, {}))
    t = _targets(case)
    return ex.explain_batch(moved, None if t is None else t[:len(batch)].to(moved.inputs.device))


def _close_scaled(a: Tensor, ref: Tensor, rel: float) -> tuple[bool, float, float]:
    """|a - ref| <= rel * max|ref| everywhere (float32 rounding may flip a ReLU for a few inputs)."""
    a, ref = a.detach().cpu().double(), ref.detach().cpu().double()
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    err = float((a - ref).abs().max()) if ref.numel() else 0.0
    return err <= rel * scale + 1e-7, err, scale


def check_dtype_float64(name: str, case: FixtureCase, rel: float = 5e-3) -> None:
    """Given a float64 model and float64 inputs, an explainer returns float64 values equal to its
    float32 values within float32 precision (``rel`` × the map's max), or raises a ValueError /
    TypeError that names the dtype."""
    batch = _pair(case)
    t = _targets(case)
    ref = _make(name, case).explain_batch(batch, None if t is None else t[:len(batch)]).values
    try:
        attr = _converted(name, case, batch, dtype=torch.float64)
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert "float64" in msg or "dtype" in msg or "double" in msg, (
            f"{name}: float64 inputs raised {type(e).__name__} without naming the dtype: {msg}")
        return
    assert attr.values.dtype == torch.float64, f"{name}: float64 model and inputs gave {attr.values.dtype} values"
    ok, err, scale = _close_scaled(attr.values, ref, rel)
    assert ok, f"{name}: float64 values differ from float32 by {err:.3g} (map max {scale:.3g}; allowed {rel} of it)"


def check_device(name: str, case: FixtureCase, device: str = "cuda", rel: float = 1e-2) -> None:
    """On ``device`` (model and inputs moved there) an explainer gives the CPU values, within
    ``rel`` × the map's max (TF32 convolutions on GPUs round to ~1e-3)."""
    batch = _pair(case)
    t = _targets(case)
    ref = _make(name, case).explain_batch(batch, None if t is None else t[:len(batch)]).values
    attr = _converted(name, case, batch, device=device)
    assert attr.values.device.type == torch.device(device).type, (
        f"{name}: inputs on {device} gave values on {attr.values.device}")
    ok, err, scale = _close_scaled(attr.values, ref, rel)
    assert ok, f"{name}: values on {device} differ from the CPU by {err:.3g} (map max {scale:.3g})"


def check_explainer(name: str, fixture: str | None = None) -> None:
    """Run every explainer contract check for ``name`` on the given fixture, or on the fixture of
    each kind it declares (the device check too when CUDA is available)."""
    info = EXPLAINERS.info(name)
    for fx in [fixture] if fixture else [info.fixture, *(f for _, f in info.kind_fixtures)]:
        case = get_fixture(fx)
        check_output(name, _make(name, case).explain_batch(case.batch, _targets(case)), case)
        check_batch_equals_singles(name, case)
        check_deterministic(name, case)
        check_model_untouched(name, case)
        check_bad_inputs(name, case)
        check_target_formats(name, case)
        check_dtype_float64(name, case)
        if torch.cuda.is_available():
            check_device(name, case)


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


def _attr_to(attr: Attribution, device: str | torch.device) -> Attribution:
    extras = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in attr.extras.items()}
    return attr.replace(values=attr.values.to(device), extras=extras)


def check_metric_device(name: str, device: str = "cuda", atol: float = 1e-4) -> None:
    """On ``device`` (attribution, batch and model moved there) a metric function returns its scores on
    that device, and the scores equal the CPU ones within ``atol`` (NaN where the CPU gives NaN)."""
    from ..runner.work import batch_to
    metric = Metric(name)
    ex = get_metric_example(name)
    dev = torch.device(device)
    model = None if ex.model is None else copy.deepcopy(ex.model).to(dev)
    for attr in (ex.perfect, _random_like(ex.perfect, seed=5)):
        ref = metric(attr, ex.batch, model=ex.model)
        moved, batch = _attr_to(attr, dev), batch_to(ex.batch, dev)
        kwargs = dict(metric.params)
        if metric.info.needs_model:
            kwargs["model"] = model
        raw = metric.fn(moved, batch, **kwargs)
        raw = getattr(raw, "scores", raw)
        assert raw.device.type == dev.type, f"{name}: inputs on {device} gave scores on {raw.device}"
        got = metric(moved, batch, model=model)
        same_nan = torch.equal(got.isnan(), ref.isnan())
        err = float((got - ref).nan_to_num(0).abs().max()) if len(ref) else 0.0
        assert same_nan and err <= atol, f"{name}: scores on {device} differ from the CPU ({got.tolist()} vs {ref.tolist()})"


# ------------------------------------------------------------------ datasets

def dataset_cases() -> list[str]:
    load_plugins()
    return DATASETS.names()


def check_dataset(name: str) -> None:
    """Contract of a dataset: seeded and deterministic, sample i the same whatever ``n`` and
    ``batch_size``, batches of at most ``batch_size`` covering all ``n`` samples.

    A loader that needs the user's files (a required ``root=``/``path=``) must say so with a
    ValueError (SettingsError is one) when built without them; its reading is tested with
    its own files elsewhere.
    """
    cls = DATASETS.get(name)
    try:
        ds = cls(n=3, batch_size=2, seed=0)
    except ValueError as e:
        assert str(e), f"{name}: ValueError without a message"
        return
    batches = list(ds)
    assert all(isinstance(b, Batch) for b in batches), f"{name}: iterating must yield Batch objects"
    assert [len(b) for b in batches] == [2, 1], f"{name}: n=3, batch_size=2 gave batches of {[len(b) for b in batches]}"
    full = ds.all()
    assert full.inputs.is_floating_point(), f"{name}: inputs must be floating point, got {full.inputs.dtype}"
    assert torch.equal(torch.cat([b.inputs for b in batches]), full.inputs), f"{name}: batches differ from all()"
    again = cls(n=3, batch_size=2, seed=0).all()
    assert torch.equal(again.inputs, full.inputs), f"{name}: two builds with the same seed differ"
    first_two = cls(n=2, batch_size=1, seed=0).all()
    assert torch.equal(first_two.inputs, full.inputs[:2]), f"{name}: sample i depends on n or batch_size"
    other = cls(n=3, batch_size=2, seed=1).all()
    assert not torch.equal(other.inputs, full.inputs), f"{name}: seed=1 gives the same samples as seed=0"


# ------------------------------------------------------------------ baselines

def baseline_cases() -> list[str]:
    load_plugins()
    return BASELINES.names()


def _like(kind: str, b: int = 3) -> Attribution:
    g = torch.Generator().manual_seed(0)
    shape = {"pixel": (b, 12, 10), "token": (b, 12), "event": (b, 50), "event_head": (b, 2, 50),
             "event_vector": (b, 50, 3), "voxel": (b, 4, 6, 5)}[kind]
    extras = {"grid": (3, 4)} if kind == "token" else {}
    return Attribution(values=torch.rand(shape, generator=g), kind=kind, method="m", extras=extras)


def _baseline_cases(fn: Any) -> Iterator[tuple[str, Attribution, Batch, Attribution]]:
    """(kind, like, batch, baseline seeded 0) for every kind where the baseline ``fn`` applies (not None)."""
    for kind in KINDS:
        like = _like(kind)
        batch = Batch(inputs=torch.zeros(len(like.values), 1), ids=[f"s{i}" for i in range(like.batch_size)])
        out = fn(like, batch, 0)
        if out is not None:
            yield kind, like, batch, out


def check_baseline(name: str) -> None:
    """Contract of a baseline, for every attribution kind: None (does not apply) or an
    Attribution of the same kind and shape, finite, the same for the same seed, and each
    sample's values independent of the other samples in the batch."""
    fn = BASELINES.get(name)
    for kind, like, batch, out in _baseline_cases(fn):
        assert isinstance(out, Attribution), f"{name}: expected an Attribution or None for {kind!r}, got {type(out).__name__}"
        assert out.kind == kind and out.values.shape == like.values.shape, (
            f"{name}: {kind} {tuple(like.values.shape)} gave {out.kind} {tuple(out.values.shape)}")
        assert torch.isfinite(out.values).all(), f"{name}: {kind} values contain NaN/inf"
        assert torch.equal(fn(like, batch, 0).values, out.values), f"{name}: {kind}: same seed, different values"
        idx = [2, 0]
        sub = fn(like.select(idx), batch.select(idx), 0)
        assert torch.equal(sub.values, out.values[idx]), f"{name}: {kind}: a sample's baseline depends on the batch"


def check_baseline_device(name: str, device: str = "cuda") -> None:
    """On ``device`` a baseline gives its values on that device, equal to the CPU ones (seeded noise is
    drawn the same way whatever the device)."""
    fn = BASELINES.get(name)
    dev = torch.device(device)
    for kind, like, batch, ref in _baseline_cases(fn):
        out = fn(_attr_to(like, dev), dataclasses.replace(batch, inputs=batch.inputs.to(dev)), 0)
        assert out is not None and out.values.device.type == dev.type, (
            f"{name}: {kind} attributions on {device} gave values on {getattr(out, 'values', ref.values).device}")
        assert torch.allclose(out.values.cpu(), ref.values, atol=1e-5), f"{name}: {kind} values on {device} differ from the CPU"
