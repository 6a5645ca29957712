"""Complexity metrics: how concentrated is a map? (Any attribution kind; no ground truth.)

Both read the magnitude of every value of a sample (``|a|``, flattened over all its axes: pixels,
tokens, events, heads) and never normalise across samples, so a sample's score depends on its
own map only. A map that is zero everywhere has no distribution to measure: NaN ("all-zero map").

References: Chalasani et al., Concise explanations of neural networks using adversarial
training, ICML 2020 (Gini sparseness); Bhatt et al., Evaluating and aggregating feature-based
model explanations, IJCAI 2020 (entropy complexity). Both as Quantus 0.6 defines them
(``quantus.Sparseness``, ``quantus.Complexity``), tested equal in tests/test_metrics_complexity.py.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xaibench import Attribution, Batch, MetricScores, register_metric

ZERO = "all-zero map"
KINDS = ("pixel", "token", "event", "event_head", "event_vector", "voxel")


def _magnitudes(attr: Attribution) -> Tensor:
    """(B, n) float64 |values| of each sample, flattened."""
    return attr.values.detach().double().abs().flatten(1)


def _nan_where_zero(score: Tensor, total: Tensor) -> MetricScores:
    zero = total <= 0
    score = torch.where(zero, torch.full_like(score, math.nan), score).float()
    return MetricScores(score, [ZERO if z else None for z in zero.tolist()])


def gini(a: Tensor) -> Tensor:
    """Gini index of each row of non-negative (B, n) values: sort ascending,
    G = Σ_i (2i − n − 1) a_(i) / (n Σ_i a_i), i = 1..n; 0 for a flat row, (n−1)/n for one spike. (B,)"""
    n = a.shape[1]
    s = a.sort(dim=1).values
    i = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
    return ((2 * i - n - 1) * s).sum(1) / (n * s.sum(1)).clamp_min(1e-300)


@register_metric("sparseness", direction="higher", category="complexity", kinds=KINDS, undefined=ZERO,
                 contract_skip={"empty": "uses no ground truth; only an all-zero map is undefined (tested)"})
def sparseness(attr: Attribution, batch: Batch) -> MetricScores:
    """Gini index of the map's magnitudes (Chalasani et al. 2020), in [0, 1): 0 when every
    value is equal, (n−1)/n when one value holds all the relevance. Higher = sparser. (B,)

    Quantus adds 1e-7 to every value before sorting (so an all-zero map scores 0 there); we
    do not, and score an all-zero map NaN.
    """
    a = _magnitudes(attr)
    return _nan_where_zero(gini(a), a.sum(1))


@register_metric("complexity", direction="lower", category="complexity", kinds=KINDS, range=(0.0, math.inf),
                 undefined=ZERO,
                 contract_skip={"empty": "uses no ground truth; only an all-zero map is undefined (tested)"})
def complexity(attr: Attribution, batch: Batch) -> MetricScores:
    """Shannon entropy (nats) of the normalised magnitudes p = |a| / Σ|a| (Bhatt et al. 2020), in
    [0, log n]: 0 for one spike, log n for a flat map. Lower = simpler. (B,)

    Quantus normalises the signed values (a / Σ|a|) and takes ``log(p + 1e-12)``, so a map with
    negative values gets a NaN entropy there; equal to ours on non-negative maps.
    """
    a = _magnitudes(attr)
    total = a.sum(1, keepdim=True)
    p = a / total.clamp_min(1e-300)
    ent = -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(1)
    return _nan_where_zero(ent, total[:, 0])
