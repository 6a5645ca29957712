"""Contract-test fixtures of the FCM family: small random ReluFormers on synthetic B-ALL samples.

N = 2,000 events with chunk_size = 512, so the chunked forward and the chunk-recomputing
backward are what the contract checks exercise.
"""

from __future__ import annotations

import torch

from xaibench.testing.fixtures import FixtureCase, register_fixture

N_EVENTS = 2000


def fixture_batch(n: int = 3, n_events: int = N_EVENTS, seed: int = 123):
    """A small batch of synthetic B-ALL samples with 5–30% blasts (every sample has positives)."""
    from xaibench import create_dataset

    return create_dataset("fcm_ball", n=n, batch_size=n, seed=seed, n_events=n_events,
                          blast_fraction=(0.05, 0.3)).all()


def _bad(batch) -> list[torch.Tensor]:
    x = batch.inputs
    return [x[0], x[..., :-1], x[:, :, 0]]  # no batch dim; a marker missing; (B, N)


@register_fixture("fcm")
def fcm_fixture() -> FixtureCase:
    from xaibench import create_model

    torch.manual_seed(0)
    model = create_model("fcm.reluformer", n_markers=10, d_model=16, n_heads=4, n_layers=2, chunk_size=512).eval()
    batch = fixture_batch()
    params = {
        "fcm.gradient": {"selection": "positive"},
        "fcm.smoothgrad": {"selection": "positive", "n_samples": 3},
        "fcm.attention": {"n_queries": 50, "layer": 0},
    }
    return FixtureCase(model=model, batch=batch, bad_inputs=_bad(batch), params=params, atol=1e-5, rtol=1e-3)


@register_fixture("fcm_polygon")
def fcm_polygon_fixture() -> FixtureCase:
    from xaibench import create_model

    batch = fixture_batch()
    gates = batch.polygons[0]
    torch.manual_seed(0)
    model = create_model("fcm.reluformer", n_markers=10, d_model=16, n_heads=4, n_layers=2, chunk_size=512,
                         task="polygon", gate_dims=[list(d) for d in gates["dims"]],
                         gate_names=list(gates["names"])).eval()
    return FixtureCase(model=model, batch=batch, bad_inputs=_bad(batch), params={}, atol=1e-5, rtol=1e-3)
