"""MIL metrics: attention against the true tumour cells, and the SHAP faithfulness check.

- ``attention_auroc``: AUROC of per-cell attention against ``instance_labels`` (Mann-Whitney,
  ties counted half), per sample; padding cells (all-NaN input rows) are left out.
- ``shap_defining_precision``: precision@k of a dataset's defining features among the k features
  with the largest mean |SHAP| of the attention module (``mil.attention_shap``): on synthetic
  slides the defining features must rank on top; a model that learned a confounder does not.
- ``shap_defining_mass``: the share of the mean |SHAP| on the defining features (threshold-free).

``top_k_positive_fraction`` (shared with the FCM family) scores MIL attention as it is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xaibench import Attribution, Batch, MetricScores, register_metric

from .instance_sets import event_scores


def _real_cells(batch: Batch, n: int) -> Tensor:
    x = batch.inputs
    if x.ndim == 3 and x.shape[1] == n:
        return ~torch.isnan(x).all(-1)
    return torch.ones(len(batch), n, dtype=torch.bool)


@register_metric("attention_auroc", direction="higher", category="instance_set", kinds=("event", "event_head"),
                 needs=("instance_labels",), undefined="no positive or no negative cells")
def attention_auroc(attr: Attribution, batch: Batch, *, head: int | str = "mean") -> MetricScores:
    """AUROC of per-cell scores against the true cell labels (Mann-Whitney U / (n_pos·n_neg)). (B,)

    0.5 is chance, 1 ranks every tumour cell above every other cell. Ranks are averaged over
    ties, so a constant map scores exactly 0.5. Padding cells are excluded.

    Args:
        head: for ``event_head``: a head index, or ``"mean"`` / ``"max"`` over the per-head AUROCs.

    Returns:
        (B,) scores in [0, 1]; NaN for a sample without positive or without negative cells.
    """
    labels = batch.instance_labels.bool()
    s = event_scores(attr, head, "attention_auroc").double()  # (B, H, N)
    if s.shape[-1] != labels.shape[-1]:
        raise ValueError(f"attention_auroc: {s.shape[-1]} scores per sample but {labels.shape[-1]} labels")
    real = _real_cells(batch, labels.shape[-1])
    pos, neg = labels & real, ~labels & real
    v = s.masked_fill(~real[:, None], math.inf)  # padding sorts last and never ranks below a real cell
    srt = v.sort(-1).values
    below = torch.searchsorted(srt.contiguous(), v.contiguous(), right=False).double()
    upto = torch.searchsorted(srt.contiguous(), v.contiguous(), right=True).double()
    ranks = (below + upto + 1) / 2  # 1-based, ties averaged
    n_pos, n_neg = pos.sum(-1).double(), neg.sum(-1).double()
    u = (ranks * pos[:, None]).sum(-1) - (n_pos * (n_pos + 1) / 2)[:, None]
    auc = u / (n_pos * n_neg).clamp_min(1)[:, None]
    auc = auc.max(1).values if head == "max" else auc.mean(1)
    ok = (n_pos > 0) & (n_neg > 0)
    reasons = [None if o else ("no positive cells" if p == 0 else "no negative cells")
               for o, p in zip(ok.tolist(), n_pos.tolist())]
    return MetricScores(torch.where(ok, auc, torch.full_like(auc, math.nan)).float(), reasons)


def _shap_example():
    from xaibench.testing import MetricExample

    g = torch.Generator().manual_seed(0)
    cols = ("x", "y", *(f"f{i}" for i in range(10)))
    b, n = 8, 50
    batch = Batch(inputs=torch.rand(b, n, len(cols), generator=g), targets=torch.ones(b, dtype=torch.long),
                  ids=[f"s{i}" for i in range(b)], meta={"columns": cols, "defining_features": ("f1", "f4", "f7")})
    vals = torch.zeros(b, n, len(cols))
    vals[..., [3, 6, 9]] = torch.randn(b, n, 3, generator=g)
    return MetricExample(batch, Attribution(values=vals, kind="event_vector", method="perfect"))


@register_metric("shap_defining_precision", direction="higher", category="faithfulness", kinds=("event_vector",),
                 undefined="no SHAP values (no explained cells)", example=_shap_example,
                 contract_skip={"empty": "the defining features are one set for the dataset (batch.meta), not per "
                                         "sample; a sample without explained cells scores NaN"})
def shap_defining_precision(attr: Attribution, batch: Batch, *, k: int = 3, position_columns: int = 2,
                            exclude_context: bool = True) -> MetricScores:
    """Share of the k most important features (mean |SHAP| over a slide's cells) that are defining features. (B,)

    The defining features come from ``batch.meta["defining_features"]`` (names) and
    ``batch.meta["columns"]`` (the input columns; the first ``position_columns`` are positions
    and never ranked). Context features (``batch.meta["context_features"]``: the cell-type
    one-hots of synthetic slides, which condition how morphology reads rather than measure the
    cell) are left out of the ranking unless ``exclude_context=False``. Ties in importance are
    broken towards non-defining features (a constant map does not score by luck). Chance is |defining| / F.

    Args:
        k: how many top features are checked (1 ≤ k ≤ F).
        position_columns: leading input columns that are positions, not features.
        exclude_context: leave ``batch.meta["context_features"]`` out of the ranking.

    Returns:
        (B,) in [0, 1]; NaN for a sample whose SHAP vectors are all zero.
    """
    imp, is_def = _importance(attr, batch, position_columns, exclude_context, "shap_defining_precision")
    if not 1 <= k <= imp.shape[-1]:
        raise ValueError(f"shap_defining_precision: k must lie in [1, {imp.shape[-1]}], got {k}")
    order = _tie_break(imp, is_def, k)
    prec = is_def[order].double().mean(-1)
    empty = imp.sum(-1) == 0
    return MetricScores.from_nan(torch.where(empty, torch.full_like(prec, math.nan), prec).float(),
                                 "no SHAP values (no explained cells)")


def _importance(attr: Attribution, batch: Batch, position_columns: int, exclude_context: bool,
                who: str) -> tuple[Tensor, Tensor]:
    """(mean |SHAP| per ranked feature (B, F'), is-defining (F',) bool) of an event_vector attribution."""
    cols = batch.meta.get("columns")
    defining = batch.meta.get("defining_features")
    if not cols or not defining:
        raise ValueError(f"{who}: needs batch.meta['columns'] and batch.meta['defining_features'] "
                         "(synthetic slides carry them; for your own data set them on the batch)")
    v = attr.values
    if v.shape[-1] != len(cols):
        raise ValueError(f"{who}: SHAP vectors have {v.shape[-1]} entries but the batch has {len(cols)} columns")
    context = set(batch.meta.get("context_features") or ()) if exclude_context else set()
    keep = [i for i, c in enumerate(cols) if i >= position_columns and c not in context]
    imp = v[..., keep].abs().double().sum(1)  # (B, F')
    return imp, torch.tensor([cols[i] in set(defining) for i in keep])


@register_metric("shap_defining_mass", direction="higher", category="faithfulness", kinds=("event_vector",),
                 undefined="no SHAP values (no explained cells)", example=_shap_example,
                 contract_skip={"empty": "the defining features are one set for the dataset (batch.meta), not per "
                                         "sample; a sample without explained cells scores NaN"})
def shap_defining_mass(attr: Attribution, batch: Batch, *, position_columns: int = 2,
                       exclude_context: bool = True) -> MetricScores:
    """Share of a slide's total mean |SHAP| that falls on the defining features. (B,)

    Threshold-free companion of ``shap_defining_precision``: a model whose attention follows a
    confounder puts a large share of its SHAP mass on it. Chance (equal importance) is
    |defining| / F. Same ground truth and exclusions as ``shap_defining_precision``.

    Args:
        position_columns: leading input columns that are positions, not features.
        exclude_context: leave ``batch.meta["context_features"]`` out.

    Returns:
        (B,) in [0, 1]; NaN for a sample whose SHAP vectors are all zero.
    """
    imp, is_def = _importance(attr, batch, position_columns, exclude_context, "shap_defining_mass")
    tot = imp.sum(-1)
    mass = (imp * is_def).sum(-1) / tot.clamp_min(1e-300)
    return MetricScores.from_nan(torch.where(tot == 0, torch.full_like(mass, math.nan), mass).float(),
                                 "no SHAP values (no explained cells)")


def _tie_break(imp: Tensor, is_def: Tensor, k: int) -> Tensor:
    """Indices (B, k) of the top-k importances; among ties, non-defining features first."""
    order = torch.argsort(is_def.long(), stable=True)  # non-defining first
    srt = torch.sort(imp[:, order], dim=-1, descending=True, stable=True).indices
    return order[srt[:, :k]]
