"""Fixtures that the contract suite runs explainers on, registered by each family."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor, nn

from ..registry import Registry
from ..types import Batch


@dataclass
class FixtureCase:
    """A small model and batch of one family for the contract checks.

    Args:
        model: the model (random or trained weights), deterministic in eval mode.
        batch: inputs with ground truth; ``batch.targets`` are the classes to explain.
        bad_inputs: inputs of a wrong shape that every explainer must reject with ValueError.
        explain_kwargs: extra keyword arguments for ``explain`` (beyond inputs and target).
        params: per-explainer constructor settings for this fixture (key -> dict).
        atol: tolerance for batch == singles comparisons.
        differentiable: ``any.*`` explainers (gradient methods) run on it.
    """

    model: nn.Module
    batch: Batch
    bad_inputs: list[Tensor] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    atol: float = 1e-5
    rtol: float = 1e-4
    differentiable: bool = True


#: Contract-test fixtures ``fn() -> FixtureCase``, keyed by family name (``"cnn"``).
FIXTURES: Registry[Callable[[], FixtureCase]] = Registry("fixture", settings=False)

#: ``@register_fixture("cnn")``: decorator registering ``fn() -> FixtureCase`` for a family.
register_fixture = FIXTURES.register
