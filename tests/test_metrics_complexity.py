"""Complexity metrics: equal to Quantus 0.6 Sparseness / Complexity where it is right (non-negative
maps), and to hand-computed values; Quantus' NaN on signed maps shown."""

import math
import warnings

import numpy as np
import pytest
import torch

import xaibench
from xaibench import Attribution, Batch


def px(v):
    return Attribution(values=v, kind="pixel", method="t")


def _batch(b, s=16):
    return Batch(inputs=torch.zeros(b, 3, s, s))


def _quantus(metric, a):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array(metric(model=None, x_batch=np.zeros((len(a), 3, *a.shape[-2:]), np.float32),
                               y_batch=np.zeros(len(a), int), a_batch=a[:, None].astype(np.float32)), dtype=np.float64)


@pytest.fixture(scope="module")
def maps():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(6, 16, 16, generator=g) ** 3
    m[1, :8] = 0  # half zero
    m[2] = 0
    m[2, 3, 4] = 2.0  # one spike
    return m


def test_equal_quantus_on_non_negative_maps(maps):
    quantus = pytest.importorskip("quantus")
    a = maps.numpy()
    qs = _quantus(quantus.Sparseness(normalise=False, abs=True, disable_warnings=True), a)
    qc = _quantus(quantus.Complexity(normalise=False, abs=True, disable_warnings=True), a)
    b = _batch(6)
    # Quantus adds 1e-7 to every value before the Gini index: a 1e-6-level difference on these maps
    np.testing.assert_allclose(xaibench.create_metric("sparseness")(px(maps), b).numpy(), qs, atol=2e-5)
    np.testing.assert_allclose(xaibench.create_metric("complexity")(px(maps), b).numpy(), qc, atol=1e-5)


def test_hand_computed_extremes(maps):
    b = _batch(3)
    flat = torch.ones(3, 16, 16)
    spike = torch.zeros(3, 16, 16)
    spike[:, 0, 0] = 5.0
    n = 256
    assert torch.allclose(xaibench.create_metric("sparseness")(px(flat), b), torch.zeros(3), atol=1e-6)
    assert torch.allclose(xaibench.create_metric("sparseness")(px(spike), b), torch.full((3,), (n - 1) / n))
    assert torch.allclose(xaibench.create_metric("complexity")(px(flat), b), torch.full((3,), math.log(n)))
    assert torch.allclose(xaibench.create_metric("complexity")(px(spike), b), torch.zeros(3))
    # two equal halves: entropy log(n/2); Gini by the formula: sorted (0,..,0,1,..,1)
    half = torch.zeros(3, 16, 16)
    half[:, :8] = 1.0
    assert torch.allclose(xaibench.create_metric("complexity")(px(half), b), torch.full((3,), math.log(n / 2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ref = float(((2 * i - n - 1) * (i > n / 2)).sum() / (n * n / 2))
    assert math.isclose(float(xaibench.create_metric("sparseness")(px(half), b)[0]), ref, rel_tol=1e-6)


def test_signed_maps_use_magnitudes_quantus_gives_nan(maps):
    quantus = pytest.importorskip("quantus")
    signed = maps - maps.mean()
    ours = xaibench.create_metric("complexity")(px(signed), _batch(6))
    assert torch.allclose(ours, xaibench.create_metric("complexity")(px(signed.abs()), _batch(6)))
    # Quantus normalises the signed map by Σ|a| and takes log(p + 1e-12) of negative p: NaN
    q = _quantus(quantus.Complexity(normalise=False, abs=False, disable_warnings=True), signed.numpy())
    assert np.isnan(q).all() and torch.isfinite(ours).all()


def test_zero_map_is_nan_with_reason_and_kinds():
    b = _batch(2)
    v = torch.rand(2, 16, 16)
    v[0] = 0
    for name in ("sparseness", "complexity"):
        res = xaibench.create_metric(name).evaluate(px(v), b)
        assert math.isnan(float(res.scores[0])) and res.reasons[0] == "all-zero map"
        assert res.reasons[1] is None
        ev = Attribution(values=torch.rand(2, 3, 40), kind="event_head", method="t")
        flat = Attribution(values=ev.values.flatten(1), kind="event", method="t")
        bs = Batch(inputs=torch.zeros(2, 40, 2))
        assert torch.allclose(xaibench.create_metric(name)(ev, bs), xaibench.create_metric(name)(flat, bs))
