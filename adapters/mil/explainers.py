"""Attention heatmaps of MIL models: per-cell attention with the cell-MIL toolkit's options.

- ``mil.attention``: one score per cell, (B, N) ``event``;
- ``mil.attention_heads``: one score per attention row per cell, (B, H, N) ``event_head`` (rows:
  heads of ABMIL, class branches of CLAM-MB, cell types of the type-aware model, GNN layers
  for GraphMIL with ``attention_aggregation="gnn_only"``).

``values`` are always the raw weights (softmax attention of the pooling, or the aggregated
GraphMIL attention); the normalisation (:func:`normalize`) is a display and analysis choice,
recorded in the protocol and returned in ``extras["normalized"]``, and used as ``values`` only
with ``score_normalized=True``.

GraphMIL aggregations (A_l: the row-stochastic attention matrix of GAT layer l, a: the pooling
attention over the cells after the last layer):

- ``pooling_only``: a;
- ``gnn_layer``: the attention each cell receives in layer ``gnn_layer_index``, the column
  sums of A_l divided by the number of cells (sums to 1);
- ``gnn_only``: the mean of ``gnn_layer`` over the layers;
- ``random_walk``: the pooling attention propagated back through the layers like attention
  rollout, r = a · Â_L ⋯ Â_1 with Â_l = (A_l + I) / 2 (the GAT layers are residual); r sums to 1
  and is each cell's share of the walks that end in the pooled vector.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from xaibench import Batch, register_explainer
from xaibench.explainers import Explainer, Target, model_guard
from xaibench.types import Attribution

from .model import GraphMIL, MILModel, check_bag

Normalization = Literal["min_max", "z_score", "robust", "softmax", "sigmoid", "none"]
Aggregation = Literal["pooling_only", "gnn_only", "gnn_layer", "random_walk"]


def normalize(values: Tensor, rule: str, mask: Tensor | None = None) -> Tensor:
    """Normalise per-cell scores (..., N) per row over the real cells; padding stays 0.

    - ``min_max``: (v − min) / (max − min); a constant row (a bag of one included) gives 0.
    - ``z_score``: (v − mean) / std (population std); a constant row gives 0.
    - ``robust``: (v − median) / IQR (quantiles by linear interpolation, as numpy); an IQR of 0
      divides by 1 (the row is only centred).
    - ``softmax``: exp(v) / Σ exp(v) (sums to 1; a constant row gives 1/N).
    - ``sigmoid``: 1 / (1 + exp(−v)), element-wise.
    - ``none``: v unchanged.

    Args:
        values: (..., N) raw scores.
        rule: one of the names above.
        mask: (..., N) bool real cells (default: all).

    Raises:
        ValueError: unknown rule.
    """
    v = values.double()
    m = torch.ones_like(v, dtype=torch.bool) if mask is None else mask.expand_as(v)
    n = m.sum(-1, keepdim=True).clamp_min(1)
    if rule == "none":
        out = v
    elif rule == "sigmoid":
        out = torch.sigmoid(v)
    elif rule == "softmax":
        out = torch.softmax(v.masked_fill(~m, float("-inf")), -1).nan_to_num(0.0)
    elif rule == "min_max":
        lo = v.masked_fill(~m, float("inf")).amin(-1, keepdim=True)
        hi = v.masked_fill(~m, float("-inf")).amax(-1, keepdim=True)
        span = hi - lo
        out = torch.where(span > 0, (v - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(v))
    elif rule == "z_score":
        mean = (v * m).sum(-1, keepdim=True) / n
        std = (((v - mean) ** 2) * m).sum(-1, keepdim=True).div(n).sqrt()
        out = torch.where(std > 0, (v - mean) / torch.where(std > 0, std, 1.0), torch.zeros_like(v))
    elif rule == "robust":
        vn = v.masked_fill(~m, float("nan"))
        q = torch.nanquantile(vn, torch.tensor([0.25, 0.5, 0.75], dtype=v.dtype, device=v.device), dim=-1, keepdim=True)
        iqr = q[2] - q[0]
        out = (v - q[1]) / torch.where(iqr > 0, iqr, 1.0)
    else:
        raise ValueError(f"normalize: unknown normalization {rule!r}; expected one of "
                         "'min_max', 'z_score', 'robust', 'softmax', 'sigmoid', 'none'")
    return torch.where(m, out, torch.zeros_like(out)).to(values.dtype)


def random_walk(pooling: Tensor, gnn: list[Tensor]) -> Tensor:
    """r = a · Â_L ⋯ Â_1 with Â_l = (A_l + I)/2: pooling attention (B, N) through layer matrices (B, N, N)."""
    r = pooling
    for a in reversed(gnn):
        r = 0.5 * (r + (r[:, None] @ a)[:, 0])
    return r


def received(a: Tensor, mask: Tensor) -> Tensor:
    """Attention each cell receives in a layer: column sums of A (B, N, N) / number of real cells. (B, N)"""
    return a.sum(1) / mask.sum(-1, keepdim=True).clamp_min(1)


def attention_stats(weights: Tensor, mask: Tensor | None = None) -> dict[str, list[float]]:
    """Per-bag summary of attention weights (B, N) over the real cells.

    - ``mean``, ``std`` (population) of the weights;
    - ``entropy``: Shannon entropy (nats) of p = w / Σw, H = −Σ p log p (0 for one attended cell,
      log N for uniform attention); ``normalized_entropy`` = H / log N (1 for uniform; 0 for N = 1);
    - ``sparsity`` = 1 − exp(H) / N: one minus the effective number of attended cells over N (0 for
      uniform attention, 1 − 1/N when one cell takes everything).
    """
    w = weights.double().clamp_min(0)
    m = torch.ones_like(w, dtype=torch.bool) if mask is None else mask
    w = w * m
    n = m.sum(-1).clamp_min(1).double()
    mean = w.sum(-1) / n
    std = ((((w - mean[:, None]) ** 2) * m).sum(-1) / n).sqrt()
    p = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
    ent = -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))).sum(-1)
    norm = torch.where(n > 1, ent / n.log().clamp_min(1e-300), torch.zeros_like(ent))
    return {"mean": mean.tolist(), "std": std.tolist(), "entropy": ent.tolist(),
            "normalized_entropy": norm.tolist(), "sparsity": (1 - ent.exp() / n).tolist()}


class MILAttentionBase(Explainer):
    """Base of the MIL attention explainers (settings and the row selection are shared)."""

    class Settings(Explainer.Settings):
        normalization: Normalization = "min_max"
        """Normalisation of the displayed weights (extras['normalized'], GeoJSON, graph): min_max, z_score, robust (median/IQR), softmax, sigmoid or none."""
        normalize_attention: bool = True
        """Apply ``normalization`` at all (False is the same as normalization='none')."""
        score_normalized: bool = False
        """Put the normalised weights in ``values`` (what metrics score) instead of the raw ones."""
        class_index: int | None = None
        """Per-class attention (CLAM-MB): the class branch to explain; None = the target (or predicted) class."""
        attention_head: int | None = None
        """Multi-row attention (ABMIL heads, type-aware types): explain only this row; None = all rows (mean for heads, the cell's own type row for types)."""
        attention_aggregation: Aggregation = "pooling_only"
        """GraphMIL only: pooling_only, gnn_only (mean over GAT layers), gnn_layer (layer gnn_layer_index) or random_walk (rollout through the GAT layers)."""
        gnn_layer_index: int = -1
        """GraphMIL, attention_aggregation='gnn_layer': the GAT layer (negative counts from the last)."""

    def _rule(self) -> str:
        return self.settings.normalization if self.settings.normalize_attention else "none"

    def rows(self, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """(rows (B, H, N) raw weights, mask (B, N), extras) for the settings."""
        model = self.model
        if not isinstance(model, MILModel):
            raise ValueError(f"{self.name}: needs a mil.* model (ABMIL, CLAM, type-aware, GraphMIL), got {type(model).__name__}")
        check_bag(inputs, model.n_features, self.name)
        s = self.settings
        with model_guard(model), torch.no_grad():
            out = model.attention(inputs)
        w, mask = out["weights"], out["mask"]
        predicted = out["logits"].argmax(-1)
        extras: dict[str, Any] = {"mask": mask, "predicted": predicted, "row_kind": model.row_kind}
        graph = isinstance(model, GraphMIL)
        if s.attention_aggregation != "pooling_only":
            if not graph:
                raise ValueError(f"{self.name}: attention_aggregation={s.attention_aggregation!r} needs a GraphMIL model; "
                                 f"{type(model).__name__} has only pooling attention (use 'pooling_only')")
            gnn = out["gnn"]
            if s.attention_aggregation == "random_walk":
                w = random_walk(w[:, 0], gnn)[:, None]
            elif s.attention_aggregation == "gnn_layer":
                li = s.gnn_layer_index
                if not -len(gnn) <= li < len(gnn):
                    raise ValueError(f"{self.name}: gnn_layer_index {li} out of range for {len(gnn)} GAT layers")
                w = received(gnn[li], mask)[:, None]
            else:
                w = torch.stack([received(a, mask) for a in gnn], 1)
            extras["row_kind"] = "layer" if s.attention_aggregation == "gnn_only" else "pool"
        if model.row_kind == "class":
            if s.class_index is not None:
                if not 0 <= s.class_index < w.shape[1]:
                    raise ValueError(f"{self.name}: class_index {s.class_index} out of range for {w.shape[1]} classes")
                cls = torch.full((w.shape[0],), s.class_index, dtype=torch.long)
            elif target is not None:
                cls = torch.as_tensor(target).long().reshape(-1)
                if cls.numel() not in (1, w.shape[0]) or int(cls.min()) < 0 or int(cls.max()) >= w.shape[1]:
                    raise ValueError(f"{self.name}: target must be a class in [0, {w.shape[1]}) or one per slide "
                                     f"({w.shape[0]}), got {cls.tolist()}")
                cls = cls.expand(w.shape[0])
            else:
                cls = predicted
            extras["class_index"] = cls
            w = w[torch.arange(w.shape[0]), cls][:, None]
        elif s.class_index is not None:
            raise ValueError(f"{self.name}: class_index needs per-class attention (CLAM-MB); "
                             f"{type(model).__name__} has {model.row_kind!r} attention rows")
        if s.attention_head is not None:
            if not -w.shape[1] <= s.attention_head < w.shape[1]:
                raise ValueError(f"{self.name}: attention_head {s.attention_head} out of range for {w.shape[1]} attention rows")
            w = w[:, [s.attention_head]]
        return w, mask, extras

    def explain_batch(self, batch: Batch, target: Target = None) -> Attribution:
        attr = self.explain(batch.inputs, target)
        extras = dict(attr.extras)
        if batch.instance_labels is not None:
            extras["labels"] = batch.instance_labels.bool()
        if isinstance(batch.meta.get("cell_type"), Tensor):
            extras["cell_type"] = batch.meta["cell_type"]
        return attr.replace(extras=extras)


@register_explainer("mil.attention", fixture="mil_graph")
class MILAttention(MILAttentionBase):
    """MIL attention heatmap (Ilse et al. 2018; CLAM; GraphMIL): the attention each cell gets, (B, N).

    Rows are combined as: heads -> mean; cell types -> the cell's own type row (each cell is in
    exactly one); a single row (CLAM-SB, GraphMIL, a chosen head or class) as is.

    Returns an ``event`` Attribution (B, N) of raw weights (padding 0); ``extras``: ``normalized``
    (B, N) with the chosen normalisation, ``mask`` (B, N) real cells, ``predicted`` (B,) classes,
    ``row_kind``, ``class_index`` (CLAM-MB), and from ``explain_batch`` ``labels`` and ``cell_type``.

    Example:
        >>> attr = xaibench.create_explainer("mil.attention", model, normalization="robust").explain(bags)
    """

    kind = "event"

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        w, mask, extras = self.rows(inputs, target)
        if extras["row_kind"] == "type" and self.settings.attention_head is None:
            values = w.sum(1)
        else:
            values = w.mean(1)
        norm = normalize(values, self._rule(), mask)
        extras["normalized"] = norm
        return self._attribution(norm if self.settings.score_normalized else values, **extras)


@register_explainer("mil.attention_heads", fixture="mil")
class MILAttentionHeads(MILAttentionBase):
    """Per-row MIL attention (ABMIL heads, CLAM-MB classes, cell-type heads, GraphMIL layers), (B, H, N).

    Returns an ``event_head`` Attribution of raw weights; ``extras["normalized"]`` (B, H, N) is
    normalised per row. Other extras as ``mil.attention``.
    """

    kind = "event_head"

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        w, mask, extras = self.rows(inputs, target)
        norm = normalize(w, self._rule(), mask[:, None])
        extras["normalized"] = norm
        return self._attribution(norm if self.settings.score_normalized else w, **extras)
