"""Contract-test fixtures of the MIL family: small random models on synthetic slides.

``mil``: a 3-head gated ABMIL; ``mil_graph``: a 2-layer GraphMIL (the ``mil.attention`` fixture,
explained with ``random_walk`` aggregation so the contract covers the GAT path). 3 slides of
120 cells, every one positive.
"""

from __future__ import annotations

import torch

from xaibench.testing.fixtures import FixtureCase, register_fixture


def fixture_batch(n: int = 3, n_cells: int = 120, seed: int = 7):
    """A small batch of positive synthetic slides (5–30% tumour cells)."""
    from xaibench import create_dataset

    return create_dataset("mil_slides", n=n, batch_size=n, seed=seed, n_cells=n_cells, positive_rate=1.0,
                          tumour_fraction=(0.05, 0.3)).all()


def bad_inputs(batch) -> list[torch.Tensor]:
    x = batch.inputs
    return [x[0], x[..., :-1], x[:, :, 0]]  # no batch dim; a feature missing; (B, N)


def _fit(model, batch):
    model.fit_transform(batch.inputs[..., 2:])
    return model.eval()


@register_fixture("mil")
def mil_fixture() -> FixtureCase:
    from xaibench import create_model

    batch = fixture_batch()
    torch.manual_seed(0)
    model = _fit(create_model("mil.abmil", n_features=22, hidden=16, d_att=8, n_heads=3), batch)
    params = {"mil.attention_shap": {"samples_per_bin": 20, "num_bins": 3}}
    return FixtureCase(model=model, batch=batch, bad_inputs=bad_inputs(batch), params=params,
                       atol=1e-5, rtol=1e-4, differentiable=False)


@register_fixture("mil_graph")
def mil_graph_fixture() -> FixtureCase:
    from xaibench import create_model

    batch = fixture_batch()
    torch.manual_seed(0)
    model = _fit(create_model("mil.graphmil", n_features=22, hidden=16, d_att=8, n_layers=2, k=6), batch)
    params = {"mil.attention": {"attention_aggregation": "random_walk"}}
    return FixtureCase(model=model, batch=batch, bad_inputs=bad_inputs(batch), params=params,
                       atol=1e-5, rtol=1e-4, differentiable=False)
