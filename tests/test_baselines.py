"""Baselines: per-sample (never batch-dependent), seeded, and of the right kind."""

import torch

from xaibench import Attribution, Batch
from xaibench.baselines import centre_baseline, random_baseline


def _batch(n):
    return Batch(inputs=torch.zeros(n, 3, 16, 16), ids=[f"id{i}" for i in range(n)])


def test_random_baseline_depends_only_on_seed_and_sample_id():
    like = Attribution(values=torch.zeros(4, 16, 16), kind="pixel", method="m")
    full = random_baseline(like, _batch(4), 0).values
    sub = random_baseline(like.select([2, 1]), _batch(4).select([2, 1]), 0).values
    assert torch.equal(sub, full[[2, 1]])
    assert not torch.equal(random_baseline(like, _batch(4), 1).values, full)


def test_random_vectors_are_isotropic():
    like = Attribution(values=torch.zeros(2, 4000, 3), kind="event_vector", method="m")
    v = random_baseline(like, Batch(inputs=torch.zeros(2, 4000, 3)), 0).values
    assert abs(float(v.mean())) < 0.05 and float((v < 0).float().mean()) > 0.45


def test_centre_prior_peaks_in_the_centre_and_skips_events():
    like = Attribution(values=torch.zeros(1, 15, 15), kind="pixel", method="m")
    c = centre_baseline(like, _batch(1), 0).values[0]
    assert divmod(int(c.argmax()), 15) == (7, 7)
    ev = Attribution(values=torch.zeros(1, 10), kind="event", method="m")
    assert centre_baseline(ev, Batch(inputs=torch.zeros(1, 10, 2)), 0) is None
