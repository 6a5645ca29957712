"""xaibench: a benchmark suite for explanation (XAI) methods on medical models.

Explain a model and score the explanation in a few lines::

    import xaibench
    attr = xaibench.explain(model, images, "cnn.gradcam", target=labels)
    scores = xaibench.create_metric("pointing_game")(attr, xaibench.Batch(inputs=images, masks=masks))
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .baselines import BASELINES, list_baselines, register_baseline
from .data import (
    DATASETS, MODELS, SampleDataset, create_dataset, create_model, list_datasets, list_models, register_dataset,
    register_model, sample_rng,
)
from .errors import SettingsError, XaibenchError
from .explainers import EXPLAINERS, Explainer, ExplainerInfo, model_guard, register_explainer
from .metric import METRICS, Metric, create_metric, list_metrics, register_metric
from .registry import Registry, load_plugins
from .settings import Settings
from .types import KINDS, Attribution, Batch, MetricInfo, MetricScores
from .zoo import ZooEntry, list_zoo, register_zoo

__version__ = "0.1.0"


def create_explainer(name: str, model: nn.Module, /, **params: Any) -> Explainer:
    """Build a registered explainer for ``model``: ``create_explainer("cnn.gradcam", model, layer="layer4")``.

    Raises:
        KeyError: unknown name (with close matches).
        SettingsError: (a ``ValueError``) an unknown setting or a bad value, each named with
            what is allowed.
    """
    return EXPLAINERS.get(name)(model, **params)


def explain(model: nn.Module, inputs: Tensor, method: str, /, target: int | Tensor | None = None,
            **params: Any) -> Attribution:
    """Explain ``inputs`` with ``method`` in one call (see :func:`create_explainer`).

    ``model``, ``inputs`` and ``method`` are positional-only, so an explainer may have a
    setting called ``method``.
    """
    return create_explainer(method, model, **params).explain(inputs, target)


def list_explainers(pattern: str | None = None) -> list[str]:
    """Registered explainer keys, optionally filtered by a glob (``"vit.*"``)."""
    return EXPLAINERS.names(pattern)


def explainer_info(name: str) -> ExplainerInfo:
    return EXPLAINERS.info(name)


def metric_info(name: str) -> MetricInfo:
    return METRICS.info(name)


__all__ = [
    "BASELINES", "DATASETS", "EXPLAINERS", "METRICS", "MODELS", "Registry", "Settings", "SettingsError",
    "XaibenchError", "Attribution", "Batch", "Explainer", "ExplainerInfo", "KINDS", "Metric", "MetricInfo", "MetricScores",
    "SampleDataset", "ZooEntry", "create_dataset", "create_explainer", "create_metric", "create_model",
    "explain", "explainer_info", "list_baselines", "list_datasets", "list_explainers", "list_metrics",
    "list_models", "list_zoo", "load_plugins", "metric_info", "model_guard", "register_baseline",
    "register_dataset", "register_explainer", "register_metric", "register_model", "register_zoo",
    "sample_rng", "__version__",
]
