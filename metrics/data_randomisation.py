"""Data-randomisation sanity check (Adebayo et al., Sanity checks for saliency maps, NeurIPS
2018, sec. 4): the explainer that made a map explains the same samples again on a model of the
same architecture trained on permuted labels (a zoo model such as ``lesion_cnn_shuffled``, built
by :func:`xaibench.zoo.train_on_shuffled_labels`), and the two maps of each sample are compared.
A model trained on random labels has learnt nothing about the task, so a method that explains
the model should give a different map; a map that survives (an edge detector, for example)
describes the input, not the model.

The similarity is computed per sample (Spearman rank correlation with or without absolute
values, SSIM of min-max scaled maps as ``skimage.metrics.structural_similarity``, or the overlap
of the top-k% sets; see :func:`xaibench.metrics.randomisation.similarity`), for the target the
original map explained. Lower = more sensitive to what the model learnt = better.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from xaibench import Attribution, Batch, MetricScores, register_metric

from ._common import NO_EXPLAINER, remake_explainer, saliency_example
from .randomisation import Similarity
from .randomisation import similarity as map_similarity

#: NaN reason when no reference model is named.
NO_REFERENCE = "no shuffled-label reference model named (set reference = '<zoo model>', e.g. 'lesion_cnn_shuffled')"

_LOADED: dict[str, nn.Module] = {}


def reference_model(name: str) -> nn.Module:
    """The zoo model ``name`` in eval mode, loaded once per process (explainers never change a model)."""
    if name not in _LOADED:
        from xaibench import zoo
        _LOADED[name] = zoo.load(name).eval()
    return _LOADED[name]


def _example():
    return saliency_example(4, 12)


_SKIP = {"perfect": "scores the method against a reference model trained on shuffled labels (named by the "
                    "`reference` setting, none by default); tests/test_randomisation_data.py compares a model-"
                    "dependent and a model-independent method on lesion_cnn vs lesion_cnn_shuffled",
         "empty": "uses no ground truth",
         "composition": "needs a reference model; batch independence is tested in tests/test_randomisation_data.py"}


@register_metric("data_randomisation", direction="lower", category="randomisation",
                 kinds=("pixel", "token", "event", "event_head", "event_vector", "voxel"), needs_model=True,
                 range=(-1.0, 1.0), undefined=NO_REFERENCE, example=_example, contract_skip=_SKIP)
def data_randomisation(attr: Attribution, batch: Batch, *, reference: str = "", similarity: Similarity = "spearman",
                       top_k: Annotated[float, Field(gt=0, le=1)] = 0.1,
                       model: nn.Module | None = None) -> MetricScores:
    """Similarity between a sample's map and the same method's map of it on a model of the same
    architecture trained on shuffled labels. Lower = the map depends on what the model learnt. (B,)

    Args:
        reference: zoo name of the shuffled-label model (``lesion_cnn_shuffled``,
            ``face_cnn_shuffled``, ``vit_large_shuffled``); empty = NaN with a reason.
        similarity: ``"spearman"``, ``"spearman_abs"``, ``"ssim"`` or ``"top_k"``.
        top_k: the top fraction for ``"top_k"``.

    References: Adebayo et al., Sanity checks for saliency maps, NeurIPS 2018.
    """
    b = len(batch)
    if not reference:
        return MetricScores(torch.full((b,), math.nan), [NO_REFERENCE] * b)
    explainer = remake_explainer(attr, reference_model(reference), "data_randomisation")
    if explainer is None:
        return MetricScores(torch.full((b,), math.nan), [NO_EXPLAINER] * b)
    target = attr.extras.get("target")
    if not isinstance(target, torch.Tensor):
        target = batch.targets if isinstance(batch.targets, torch.Tensor) else None
    new = explainer.explain_batch(batch, target)
    if new.values.shape != attr.values.shape:
        raise ValueError(f"data_randomisation: the reference {reference!r} gives maps {tuple(new.values.shape)}, "
                         f"the model {tuple(attr.values.shape)}; the reference must share the model's architecture")
    sims = map_similarity(attr.values, new.values.to(attr.values.device), similarity, top_k, attr)
    return MetricScores.from_nan(sims.float(), "undefined similarity")  # a constant map scores 0 (see similarity)
