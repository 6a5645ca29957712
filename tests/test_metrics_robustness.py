"""Robustness metrics. References: an explicit per-sample, per-perturbation loop with the noise
drawn by the documented rule (a generator per sample seeded by blake2b(id, key=seed)); a linear
model whose saliency cannot change (score exactly 0)."""

import hashlib
import math

import pytest
import torch
from torch import nn

import xaibench
from xaibench import Batch


def documented_seed(sample_id: str, seed: int) -> int:
    h = hashlib.blake2b(sample_id.encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    g = torch.Generator().manual_seed(1)
    batch = Batch(inputs=torch.rand(4, 3, 10, 10, generator=g), targets=torch.tensor([0, 1, 1, 0]),
                  ids=["a", "b", "c", "d"])
    ex = xaibench.create_explainer("cnn.saliency", model, reduce="sum")
    return model, batch, ex, ex.explain(batch.inputs, batch.targets)


@pytest.mark.parametrize("name", ["max_sensitivity", "local_lipschitz"])
def test_equals_explicit_loop(case, name):
    model, batch, ex, attr = case
    r, n = 0.05, 3
    got = xaibench.create_metric(name, radius=r, n_samples=n, seed=7, batch_size=5)(attr, batch, model=model)
    for i, sid in enumerate(batch.ids):
        gen = torch.Generator().manual_seed(documented_seed(sid, 7))
        if name == "max_sensitivity":
            noise = (torch.rand((n, 3, 10, 10), generator=gen) * 2 - 1) * r
        else:
            noise = torch.randn((n, 3, 10, 10), generator=gen) * r
        phi = attr.values[i].double()
        vals = []
        for j in range(n):
            new = ex.explain(batch.inputs[i:i + 1] + noise[j:j + 1], batch.targets[i:i + 1]).values[0].double()
            den = phi.norm() if name == "max_sensitivity" else noise[j].double().norm()
            vals.append(float((new - phi).norm() / den))
        assert math.isclose(float(got[i]), max(vals), rel_tol=1e-4), (name, i)


def test_constant_gradient_scores_zero_and_batch_independent(case):
    model, batch, _ex, attr = case
    lin = nn.Sequential(nn.Flatten(), nn.Linear(300, 2)).eval()
    a = xaibench.create_explainer("cnn.saliency", lin, reduce="sum").explain(batch.inputs, batch.targets)
    for name in ("max_sensitivity", "local_lipschitz"):
        s = xaibench.create_metric(name, n_samples=3)(a, batch, model=lin)
        assert torch.allclose(s, torch.zeros(4), atol=1e-6)
        m = xaibench.create_metric(name, n_samples=4, batch_size=3)
        full = m(attr, batch, model=model)
        idx = [3, 0]
        assert torch.allclose(m(attr.select(idx), batch.select(idx), model=model), full[idx], atol=1e-6)
        assert (full > 0).all()


def test_nan_with_reason(case):
    model, batch, _ex, attr = case
    res = xaibench.create_metric("max_sensitivity", n_samples=2).evaluate(attr.replace(method="baseline.random"), batch, model=model)
    assert res.scores.isnan().all() and "not a registered explainer" in res.reasons[0]
    zero = attr.replace(values=torch.where(torch.arange(4)[:, None, None] == 1, 0.0, attr.values))
    res = xaibench.create_metric("max_sensitivity", n_samples=2).evaluate(zero, batch, model=model)
    assert math.isnan(float(res.scores[1])) and res.reasons[1] == "all-zero map" and not res.scores[[0, 2, 3]].isnan().any()
    with pytest.raises(Exception, match="radius"):
        xaibench.create_metric("local_lipschitz", radius=0)
