"""Property tests (hypothesis) of every registered metric and every explainer's input check (issue 9).

Generated from the registries, so a new metric or explainer is covered the moment it is
registered. Each metric runs on its contract example (``xaibench.testing``: the registered
``example`` or the generic one built from its kinds and needs), cut to a few samples, with
drawn maps (random at several scales, constant, sparse spikes, the perfect map) and drawn
ground truth per sample (as given, empty, full, random):

- every sample gets a finite score inside the declared range, or NaN with a non-empty reason,
  and never another exception;
- an emptied sample scores NaN (unless the metric declares the empty check does not apply);
- NaN/Inf injected into one sample's map makes that sample NaN with "non-finite attribution"
  and leaves every other sample's score and reason as they were.

Every explainer refuses NaN/Inf injected into one sample's input with a ValueError naming that
sample, and a float or string target, through ``explain`` and ``explain_batch``; every explainer
of a convolutional model says which channel count the model expects.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import xaibench
from xaibench import Attribution, Batch
from xaibench.explainers import first_conv
from xaibench.metric import METRICS, NONFINITE
from xaibench.testing import explainer_cases, get_fixture, get_metric_example, metric_cases

N = 4  # samples per metric batch: enough for neighbours, small enough to be quick
BAD = st.sampled_from([math.nan, math.inf, -math.inf])


def _budget(name: str) -> tuple[int, int]:
    """(samples, hypothesis examples) for a metric: metrics that run the model (perturbation
    curves, ROAD imputation, re-explaining) get two samples and one draw, the rest four and eight."""
    return (2, 1) if METRICS.info(name).needs_model else (N, 8)


@functools.lru_cache(maxsize=None)
def _example(name: str):
    ex = get_metric_example(name)
    idx = list(range(min(_budget(name)[0], len(ex.batch))))
    return ex.batch.select(idx), ex.perfect.select(idx), ex.model, ex.empty


def _truth_fields(batch: Batch) -> list[tuple[object, str]]:
    """(holder, key) of every per-sample bool ground truth: masks, instance labels, bool meta tensors."""
    out: list[tuple[object, str]] = [(batch, f) for f in ("masks", "instance_labels") if getattr(batch, f) is not None]
    out += [(batch.meta, k) for k, v in batch.meta.items()
            if isinstance(v, torch.Tensor) and v.dtype == torch.bool and v.ndim > 1 and v.shape[0] == len(batch)]
    return out


def _get(holder, key):
    return holder[key] if isinstance(holder, dict) else getattr(holder, key)


def _with_truth(batch: Batch, modes: list[str], seed: int, empty=None) -> Batch:
    """A copy of ``batch`` whose sample i's ground truth is kept, emptied, filled or random
    (modes[i]): masks, instance labels, bool meta tensors and boxes; ``empty`` (the example's
    own ``empty(batch, i)``, when it has one) empties sample i as well."""
    out = batch.select(list(range(len(batch))))
    g = torch.Generator().manual_seed(seed)
    if empty is not None:
        for i, mode in enumerate(modes):
            if mode == "empty":
                out = empty(out, i)
    if out.boxes is not None:
        h, w = out.inputs.shape[-2:]
        for i, mode in enumerate(modes):
            if mode == "empty":
                out.boxes[i] = torch.zeros(0, 4)
            elif mode == "full":
                out.boxes[i] = torch.tensor([[0.0, 0.0, float(w), float(h)]])
            elif mode == "random":
                y0, x0 = (torch.rand(2, generator=g) * torch.tensor([h, w])).floor().tolist()
                out.boxes[i] = torch.tensor([[x0, y0, x0 + 1 + (w - x0 - 1) * 0.5, y0 + 1 + (h - y0 - 1) * 0.5]])
    for holder, key in _truth_fields(out):
        t = _get(holder, key).clone()
        for i, mode in enumerate(modes):
            if mode == "empty":
                t[i] = False
            elif mode == "full":
                t[i] = True
            elif mode == "random":
                t[i] = torch.rand(t[i].shape, generator=g) < 0.3
        if isinstance(holder, dict):
            holder[key] = t
        else:
            setattr(holder, key, t)
    return out


def _draw_values(perfect: Tensor, style: str, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = perfect.shape
    if style == "perfect":
        return perfect.clone().float()
    if style == "constant":
        return torch.full(shape, scale if seed % 3 else -scale if seed % 2 else 0.0)
    if style == "sparse":
        return (torch.rand(shape, generator=g) < 0.02).float() * scale
    return (torch.rand(shape, generator=g) * 2 - 1) * scale  # random, signed


metric_draws = st.fixed_dictionaries({
    "style": st.sampled_from(["random", "constant", "sparse", "perfect"]),
    "scale": st.sampled_from([1e-6, 1.0, 1e3, 1e6]),
    "seed": st.integers(0, 2**16),
    "truth": st.lists(st.sampled_from(["keep", "empty", "full", "random"]), min_size=N, max_size=N),
    "as_token": st.booleans(),
    "victim": st.integers(0, N - 1),
    "bad": BAD,
    "n_bad": st.sampled_from([1, 3, -1]),  # -1: the whole map
})  # truth and victim are cut to the metric's batch size


def _attr(perfect: Attribution, values: Tensor, as_token: bool, kinds: tuple[str, ...]) -> Attribution:
    if as_token and perfect.kind == "pixel" and "token" in kinds:  # scored through extras["pixel"]
        tokens = values.flatten(1)[:, :4].clone()
        return Attribution(values=tokens, kind="token", method="drawn", extras={"grid": (2, 2), "pixel": values})
    return perfect.replace(values=values, method="drawn")


def _poison(attr: Attribution, victim: int, bad: float, n_bad: int, seed: int) -> Attribution:
    via_pixel = attr.kind == "token" and "pixel" in attr.extras  # NaN only in the map that is scored
    m = (attr.extras["pixel"] if via_pixel else attr.values).clone()
    flat = m[victim].reshape(-1)
    if n_bad < 0:
        flat[:] = bad
    else:
        g = torch.Generator().manual_seed(seed + 1)
        flat[torch.randperm(flat.numel(), generator=g)[:n_bad]] = bad
    if via_pixel:
        return attr.replace(extras={**attr.extras, "pixel": m})
    return attr.replace(values=m)


def _assert_defined_or_reasoned(name: str, res, n: int) -> None:
    info = METRICS.info(name)
    assert res.scores.shape == (n,) and len(res.reasons) == n
    lo, hi = info.range
    for i, (s, why) in enumerate(zip(res.scores.tolist(), res.reasons)):
        if math.isnan(s):
            assert isinstance(why, str) and why.strip(), f"{name}: sample {i} is NaN without a reason ({why!r})"
        else:
            assert math.isfinite(s), f"{name}: sample {i} scored {s}"
            if "range" not in info.contract_skip:
                assert lo - 1e-5 <= s <= hi + 1e-5, f"{name}: sample {i} scored {s} outside {info.range}"


@pytest.mark.parametrize("name", metric_cases())
def test_metric_scores_are_finite_or_nan_with_a_reason_and_nan_stays_in_its_sample(name):
    @settings(max_examples=_budget(name)[1], deadline=None, derandomize=True, database=None)
    @given(d=metric_draws)
    def check(d):
        _check_metric(name, d)

    check()


def _check_metric(name: str, d: dict) -> None:
    batch, perfect, model, empty = _example(name)
    n = len(batch)
    truth = d["truth"][:n]
    info = METRICS.info(name)
    metric = xaibench.create_metric(name)
    b = _with_truth(batch, truth, d["seed"], empty)
    attr = _attr(perfect, _draw_values(perfect.values, d["style"], d["scale"], d["seed"]), d["as_token"], info.kinds)

    clean = metric.evaluate(attr, b, model=model)
    _assert_defined_or_reasoned(name, clean, n)
    if "empty" not in info.contract_skip:
        for i, mode in enumerate(truth):
            if mode == "empty":
                assert math.isnan(float(clean.scores[i])), f"{name}: sample {i} with empty ground truth scored {float(clean.scores[i])}"

    v = d["victim"] % n
    hit = metric.evaluate(_poison(attr, v, d["bad"], d["n_bad"], d["seed"]), b, model=model)
    _assert_defined_or_reasoned(name, hit, n)
    assert math.isnan(float(hit.scores[v])) and hit.reasons[v] == NONFINITE, (
        f"{name}: a map with {d['bad']} scored {float(hit.scores[v])} ({hit.reasons[v]!r})")
    others = [i for i in range(n) if i != v]
    assert torch.allclose(hit.scores[others], clean.scores[others], atol=1e-6, equal_nan=True), (
        f"{name}: poisoning sample {v} changed its neighbours: {clean.scores.tolist()} -> {hit.scores.tolist()}")
    assert [hit.reasons[i] for i in others] == [clean.reasons[i] for i in others]


# ------------------------------------------------------------------ explainers

@functools.lru_cache(maxsize=None)
def _explainer(name: str, fixture: str):
    case = get_fixture(fixture)
    return xaibench.create_explainer(name, case.model, **case.params.get(name, {})), case


@pytest.mark.parametrize("name, fixture", explainer_cases())
@settings(max_examples=5, deadline=None, derandomize=True, database=None)
@given(victim=st.integers(0, 63), pos=st.integers(0, 2**31 - 1), bad=BAD, via_batch=st.booleans())
def test_explainer_refuses_non_finite_input_naming_the_sample(name, fixture, victim, pos, bad, via_batch):
    ex, case = _explainer(name, fixture)
    x = case.batch.inputs.clone()
    victim %= x.shape[0]
    flat = x[victim].reshape(-1)
    flat[pos % flat.numel()] = bad
    with pytest.raises(ValueError, match=rf"samples \[{victim}\] \(1 of {x.shape[0]}\) contain NaN/Inf"):
        if via_batch:
            ex.explain_batch(dataclasses.replace(case.batch, inputs=x), case.batch.targets)
        else:
            ex.explain(x, case.batch.targets)


@pytest.mark.parametrize("name, fixture", explainer_cases())
@settings(max_examples=3, deadline=None, derandomize=True, database=None)
@given(frac=st.floats(0.01, 0.99), as_string=st.booleans(), via_batch=st.booleans())
def test_explainer_refuses_float_and_string_targets(name, fixture, frac, as_string, via_batch):
    ex, case = _explainer(name, fixture)
    b = len(case.batch)
    target = [str(i) for i in range(b)] if as_string else [i % 2 + frac for i in range(b)]
    with pytest.raises(ValueError, match="map class names to their indices" if as_string else "whole numbers"):
        if via_batch:
            ex.explain_batch(case.batch, target)
        else:
            ex.explain(case.batch.inputs, target)


def _conv_input(fixture: str) -> bool:
    """Images or volumes fed to a model whose stem is a convolution of that dimensionality."""
    case = get_fixture(fixture)
    return first_conv(case.model, case.batch.inputs.ndim) is not None


@pytest.mark.parametrize("name, fixture", [c for c in explainer_cases() if _conv_input(c[1])])
def test_image_explainer_says_which_channel_count_the_model_expects(name, fixture):
    ex, case = _explainer(name, fixture)
    x = case.batch.inputs
    c = x.shape[1]
    for wrong in (x[:, :1] if c > 1 else x.expand(-1, 3, *x.shape[2:]), torch.cat([x, x[:, :1]], 1)):
        with pytest.raises(ValueError, match=rf"model expects {c}-channel inputs .*got {wrong.shape[1]} channels"):
            ex.explain(wrong, case.batch.targets)
