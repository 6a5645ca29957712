"""Which cell populations a head attends to: the FCM paper's per-head reading, as a number.

Kowarsch et al. (2023, figure 4) read off by eye that different ReluFormer heads attend to
different populations ("CD19− CD45− (likely erythroblasts) or CD19+ CD45+ (likely healthy
B-cells)"); their appendix 7.2 says only cancer cells had ground truth. The synthetic marrow
(``fcm_ball``) labels every event's population (``batch.meta["population"]``, codes of
``batch.meta["populations"]``), so the reading becomes a metric:

- ``top_k_population_share``: the share of one population among a head's top-k (default 5%)
  attended events. Beside the random baseline (which scores the population's share of the
  sample) it says which populations a head enriches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Literal

import torch
from pydantic import Field

from xaibench import Attribution, Batch, MetricScores, register_metric
from xaibench.util import did_you_mean

from .instance_sets import event_scores, top_k_counts

ABSENT = "population absent from the sample"


def population_mask(batch: Batch, population: str, who: str) -> torch.Tensor:
    """(B, N) bool: the events of ``population`` (a name of ``batch.meta["populations"]``)."""
    meta = batch.meta or {}
    names, codes = meta.get("populations"), meta.get("population")
    if names is None or codes is None:
        raise ValueError(f"{who}: needs batch.meta['population'] (B, N) codes and meta['populations'] names "
                         "(the fcm_ball generator carries them)")
    if population not in names:
        raise KeyError(f"{who}: unknown population {population!r}{did_you_mean(population, names)}; "
                       f"known: {list(names)}")
    return torch.as_tensor(codes) == list(names).index(population)


@register_metric("top_k_population_share", direction="higher", category="instance_set",
                 kinds=("event", "event_head", "event_vector"), undefined=ABSENT, example=lambda: _example())
def top_k_population_share(attr: Attribution, batch: Batch, *, population: str = "blast",
                           k: Annotated[float, Field(gt=0, le=1)] = 0.05,
                           head: int | Literal["mean"] = "mean") -> MetricScores:
    """Share of ``population``'s events among the top-k scored events: n_pop@top-k / n@top-k. (B,)

    Top k = ceil(k · N) events; ties at the threshold count fractionally (as in
    ``top_k_positive_fraction``), so a constant map scores the population's share of the sample.

    Args:
        population: a population name of ``batch.meta["populations"]`` (``fcm_ball``: granulocyte,
            myeloid_precursor, monocyte, t_nk_lymphocyte, mature_b, erythroid, hematogone, blast,
            debris, doublet).
        k: the top fraction (default 0.05, the paper's 5%).
        head: for ``event_head``: a head index, or ``"mean"`` (the mean of the per-head shares). A
            head index on an attribution without heads scores NaN.

    Returns:
        (B,) shares in [0, 1]; NaN for a sample without events of ``population``.
    """
    mask = population_mask(batch, population, "top_k_population_share").to(attr.values.device)
    s = event_scores(attr, head, "top_k_population_share")
    if s.shape[-1] != mask.shape[-1]:
        raise ValueError(f"top_k_population_share: {s.shape[-1]} scores per sample but {mask.shape[-1]} events")
    n_top = max(1, math.ceil(k * s.shape[-1] - 1e-9))
    share = (top_k_counts(s, mask, n_top) / n_top).mean(1)
    share = torch.where(mask.any(-1), share, torch.full_like(share, math.nan))
    if not isinstance(head, str) and attr.kind != "event_head":
        why = f"head={head} asks for one head; {attr.kind!r} attributions have none"
        return MetricScores(torch.full_like(share, math.nan).float(), [why] * len(share))
    return MetricScores.from_nan(share.float(), ABSENT)


def _example():
    """Contract example: the blasts of the FCM fixture scored 1, the rest 0."""
    from xaibench.adapters.fcm.fixture import fixture_batch

    from xaibench.testing import MetricExample

    batch = fixture_batch(n=3, n_events=600)
    perfect = Attribution(values=batch.instance_labels.float(), kind="event", method="perfect")

    def empty(b: Batch, i: int) -> Batch:
        codes = b.meta["population"].clone()
        blast = list(b.meta["populations"]).index("blast")
        codes[i][codes[i] == blast] = 0
        return dataclasses.replace(b, meta={**b.meta, "population": codes})

    return MetricExample(batch=batch, perfect=perfect, empty=empty)
