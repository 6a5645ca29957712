"""Attention-based MIL models over bags of cells: ABMIL, CLAM-SB/MB, cell-type-aware attention, GraphMIL.

All take a bag tensor (B, N, 2 + F): columns 0–1 are the cell positions (only GraphMIL reads
them, for its k-nearest-neighbour graph), the rest raw features, standardised inside the model
by its fitted feature transform (buffers ``feat_mean`` / ``feat_std``, saved with the weights).
All-NaN rows are padding (see :mod:`xaibench.datasets.mil_folder`): they get zero attention
and no graph edges. ``forward`` returns slide logits (B, C); :meth:`MILModel.attention` returns
everything the explainers read:

- ``weights`` (B, H, N): softmax attention of each attention row over the cells (rows: heads
  for ABMIL, classes for CLAM-MB, cell types for the type-aware model, 1 for CLAM-SB/GraphMIL);
- ``scores`` (B, H, N): the pre-softmax attention scores (−inf on padding);
- for GraphMIL ``gnn`` [(B, N, N)]: each GAT layer's row-stochastic attention matrix.

:meth:`MILModel.cell_attention` is the attention module as a function of one cell's raw
features, (n, F) -> (n, H) pre-softmax scores: what SHAP of the attention module explains.

References: Ilse et al., Attention-based deep multiple instance learning, ICML 2018; Lu et al.,
Data-efficient and weakly supervised computational pathology on whole-slide images (CLAM),
Nature BME 2021; Veličković et al., Graph attention networks, ICLR 2018.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench import register_model

POS = 2  # position columns ahead of the features


def check_bag(x: Any, n_features: int, who: str) -> None:
    """Raise ValueError unless ``x`` is a floating (B, N, 2 + n_features) bag tensor."""
    want = f"(B, N, {POS + n_features}) = positions x, y then {n_features} features"
    if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != POS + n_features:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who}: expected bags {want}, got {got}; add a batch dimension with bag.unsqueeze(0) "
                         "or build the model with the dataset's number of features")
    if not x.is_floating_point():
        raise ValueError(f"{who}: expected a floating-point bag tensor, got {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError(f"{who}: a bag needs at least one cell, got N = 0")


def split_bag(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(positions (B, N, 2), features (B, N, F), mask (B, N) bool) with padding rows zeroed."""
    mask = ~torch.isnan(x).all(-1)
    x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype))
    return x[..., :POS], x[..., POS:], mask


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim with ``mask`` (broadcastable) False entries at exactly 0 (all masked: 0)."""
    s = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, -1)
    return torch.nan_to_num(w, nan=0.0)


class GatedAttention(nn.Module):
    """Gated attention scores (Ilse et al. 2018, eq. 9): a_h(x) = w_hᵀ(tanh(V_h x) ⊙ σ(U_h x)), one row per head.

    ``gated=False`` drops the sigmoid gate (eq. 8)."""

    def __init__(self, d_in: int, d_att: int, n_heads: int = 1, gated: bool = True) -> None:
        super().__init__()
        self.n_heads, self.d_att, self.gated = n_heads, d_att, gated
        self.V = nn.Linear(d_in, d_att * n_heads)
        self.U = nn.Linear(d_in, d_att * n_heads) if gated else None
        self.w = nn.Parameter(torch.randn(n_heads, d_att) / d_att ** 0.5)
        self.b = nn.Parameter(torch.zeros(n_heads))

    def forward(self, h: Tensor) -> Tensor:
        """(..., d_in) -> (..., n_heads) pre-softmax scores."""
        v = torch.tanh(self.V(h)).unflatten(-1, (self.n_heads, self.d_att))
        if self.U is not None:
            v = v * torch.sigmoid(self.U(h)).unflatten(-1, (self.n_heads, self.d_att))
        return (v * self.w).sum(-1) + self.b


class MILModel(nn.Module):
    """Base of the MIL models: feature transform, instance encoder, attention, pooling, classifier.

    Args:
        n_features: features per cell (F; the bag has 2 + F columns).
        n_classes: slide classes (C).
        hidden: width of the instance embedding.
        d_att: width of the attention network.
    """

    #: what the attention rows are: "head", "class", "type" or "pool"
    row_kind = "head"

    def __init__(self, n_features: int, n_classes: int = 2, hidden: int = 64, d_att: int = 32) -> None:
        super().__init__()
        self.n_features, self.n_classes, self.hidden = int(n_features), int(n_classes), int(hidden)
        self.register_buffer("feat_mean", torch.zeros(n_features))
        self.register_buffer("feat_std", torch.ones(n_features))
        self.encoder = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())

    @torch.no_grad()
    def fit_transform(self, features: Tensor) -> dict[str, list[float]]:
        """Fit the feature standardisation on (n, F) raw training features; returns it as JSON data."""
        f = features.reshape(-1, self.n_features).double()
        f = f[~torch.isnan(f).any(-1)]
        self.feat_mean.copy_(f.mean(0).float())
        self.feat_std.copy_(f.std(0).clamp_min(1e-6).float())
        return {"mean": self.feat_mean.tolist(), "std": self.feat_std.tolist()}

    def standardise(self, feats: Tensor) -> Tensor:
        return (feats - self.feat_mean) / self.feat_std

    def embed(self, feats: Tensor) -> Tensor:
        """Instance embeddings (..., hidden) of raw features (..., F)."""
        return self.encoder(self.standardise(feats))

    def check(self, x: Any) -> None:
        check_bag(x, self.n_features, type(self).__name__)

    def attention(self, x: Tensor) -> dict[str, Tensor]:
        """Logits, attention weights (B, H, N), scores (B, H, N), mask (B, N) (see the module doc)."""
        raise NotImplementedError

    def cell_attention(self, feats: Tensor) -> Tensor:
        """The attention module on single cells: (n, F) raw features -> (n, H) pre-softmax scores."""
        return self.att(self.embed(feats))

    def bag_scores(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Checked bags -> raw features (B, N, F), mask (B, N), embeddings (B, N, D) and the
        attention module's pre-softmax scores (B, rows, N)."""
        self.check(x)
        _, feats, mask = split_bag(x)
        h = self.embed(feats)
        return feats, mask, h, self.att(h).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, 2 + F) bags -> (B, C) slide logits."""
        return self.attention(x)["logits"]


class ABMIL(MILModel):
    """Attention-based deep MIL (Ilse et al. 2018), gated or not, with one or more attention heads.

    Each head pools the instance embeddings with its own softmax attention; the heads' pooled
    vectors are concatenated and classified.
    """

    def __init__(self, n_features: int, n_classes: int = 2, hidden: int = 64, d_att: int = 32,
                 n_heads: int = 1, gated: bool = True) -> None:
        super().__init__(n_features, n_classes, hidden, d_att)
        self.n_heads = int(n_heads)
        self.att = GatedAttention(hidden, d_att, n_heads, gated)
        self.classifier = nn.Linear(hidden * n_heads, n_classes)

    def attention(self, x: Tensor) -> dict[str, Tensor]:
        _, mask, h, scores = self.bag_scores(x)  # scores (B, H, N)
        w = masked_softmax(scores, mask[:, None])
        pooled = w @ h  # (B, H, D)
        logits = self.classifier(pooled.flatten(1))
        return {"logits": logits, "weights": w, "scores": scores.masked_fill(~mask[:, None], float("-inf")),
                "mask": mask, "embeddings": h}


class CLAM(MILModel):
    """CLAM (Lu et al. 2021): gated attention pooling with an instance-level clustering branch.

    ``multi_branch=False`` (CLAM-SB): one attention branch, a linear slide classifier.
    ``multi_branch=True`` (CLAM-MB): one attention branch per class; class c's logit comes from
    its own pooled vector (``weights`` rows are classes). ``instance_classifiers`` (one per
    class, 2 outputs each) are trained on the top-k / bottom-k attended cells as pseudo-labels
    (:meth:`instance_loss`).
    """

    def __init__(self, n_features: int, n_classes: int = 2, hidden: int = 64, d_att: int = 32,
                 multi_branch: bool = False, k_sample: int = 8) -> None:
        super().__init__(n_features, n_classes, hidden, d_att)
        self.multi_branch, self.k_sample = bool(multi_branch), int(k_sample)
        self.row_kind = "class" if multi_branch else "pool"
        self.att = GatedAttention(hidden, d_att, n_classes if multi_branch else 1, gated=True)
        if multi_branch:
            self.classifiers = nn.Parameter(torch.randn(n_classes, hidden) / hidden ** 0.5)
            self.bias = nn.Parameter(torch.zeros(n_classes))
        else:
            self.classifier = nn.Linear(hidden, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_classes))

    def attention(self, x: Tensor) -> dict[str, Tensor]:
        _, mask, h, scores = self.bag_scores(x)  # scores (B, 1 or C, N)
        w = masked_softmax(scores, mask[:, None])
        pooled = w @ h
        if self.multi_branch:
            logits = (pooled * self.classifiers).sum(-1) + self.bias
        else:
            logits = self.classifier(pooled[:, 0])
        return {"logits": logits, "weights": w, "scores": scores.masked_fill(~mask[:, None], float("-inf")),
                "mask": mask, "embeddings": h}

    def instance_loss(self, out: dict[str, Tensor], labels: Tensor) -> Tensor:
        """CLAM's clustering loss: for the true class, the top-k attended cells are positives and
        the bottom-k negatives of its instance classifier (the other classes' classifiers see the
        top-k as negatives, the out-of-class constraint of the multi-branch model)."""
        h, scores, mask = out["embeddings"], out["scores"], out["mask"]
        total = h.new_zeros(())
        for i in range(h.shape[0]):
            n = int(mask[i].sum())
            k = max(1, min(self.k_sample, n // 2))
            y = int(labels[i])
            row = scores[i, y if self.multi_branch else 0][mask[i]]
            hi = h[i][mask[i]]
            top, bot = row.topk(k).indices, (-row).topk(k).indices
            for c in range(self.n_classes):
                clf = self.instance_classifiers[c]
                if c == y:
                    inst = torch.cat([hi[top], hi[bot]])
                    tgt = torch.cat([torch.ones(k), torch.zeros(k)]).long()
                elif self.multi_branch:
                    inst, tgt = hi[top], torch.zeros(k, dtype=torch.long)
                else:
                    continue
                total = total + F.cross_entropy(clf(inst), tgt)
        return total / h.shape[0]


class TypeAwareMIL(MILModel):
    """Cell-type-aware attention (HEAD4TYPE): one gated attention head per cell type, each
    pooling only the cells of its type; the per-type vectors are concatenated and classified.

    The cell type is read from the one-hot feature columns ``type_columns`` (indices among the
    features). ``weights`` rows are types: row t is a softmax over the cells of type t (zero
    elsewhere; all zero when the bag has no cell of that type).
    """

    row_kind = "type"

    def __init__(self, n_features: int, n_classes: int = 2, hidden: int = 64, d_att: int = 32,
                 type_columns: Sequence[int] = ()) -> None:
        super().__init__(n_features, n_classes, hidden, d_att)
        if not type_columns:
            raise ValueError("mil.type_aware: type_columns (indices of the one-hot cell-type feature columns) is required")
        self.type_columns = [int(c) for c in type_columns]
        self.n_types = len(self.type_columns)
        self.att = GatedAttention(hidden, d_att, self.n_types, gated=True)
        self.classifier = nn.Linear(hidden * self.n_types, n_classes)

    def types_of(self, feats: Tensor) -> Tensor:
        """(..., n_types) bool one-hot cell types from raw features."""
        return feats[..., self.type_columns] > 0.5

    def attention(self, x: Tensor) -> dict[str, Tensor]:
        feats, mask, h, scores = self.bag_scores(x)  # scores (B, T, N)
        member = self.types_of(feats).transpose(1, 2) & mask[:, None]  # (B, T, N)
        w = masked_softmax(scores, member)
        pooled = w @ h
        logits = self.classifier(pooled.flatten(1))
        return {"logits": logits, "weights": w, "scores": scores.masked_fill(~member, float("-inf")),
                "mask": mask, "embeddings": h, "member": member}


def knn_graph(pos: Tensor, mask: Tensor, k: int) -> Tensor:
    """(B, N, k') indices of each cell's k' = min(k, N) nearest real cells, itself first.

    Padding cells (mask False) link only to themselves."""
    d = torch.cdist(pos.double(), pos.double())
    n = pos.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=pos.device)
    valid = mask[:, None, :] & mask[:, :, None]
    d = torch.where(valid | eye, d, torch.full_like(d, float("inf")))
    d = d.masked_fill(eye, -1.0)  # self first
    return d.topk(min(k, n), dim=-1, largest=False).indices


class GATLayer(nn.Module):
    """Single-head graph attention (Veličković et al. 2018) over a kNN graph with self loops:
    α_ij = softmax_j∈N(i) LeakyReLU(aᵀ[W h_i ‖ W h_j]), h_i' = h_i + ELU(Σ_j α_ij W h_j)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.W = nn.Linear(d, d, bias=False)
        self.a_src = nn.Parameter(torch.randn(d) / d ** 0.5)
        self.a_dst = nn.Parameter(torch.randn(d) / d ** 0.5)

    def forward(self, h: Tensor, nbr: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(h' (B, N, d), α (B, N, k)) for neighbours ``nbr`` (B, N, k)."""
        wh = self.W(h)
        b, n, k = nbr.shape
        bi = torch.arange(b, device=h.device)[:, None, None]
        whj = wh[bi, nbr]  # (B, N, k, d)
        e = F.leaky_relu((wh * self.a_dst).sum(-1, keepdim=True) + (whj * self.a_src).sum(-1), 0.2)
        nmask = mask[bi, nbr] | (nbr == torch.arange(n, device=h.device)[None, :, None])
        alpha = masked_softmax(e, nmask)
        out = h + F.elu((alpha[..., None] * whj).sum(2))
        return out, alpha


def dense_attention(alpha: Tensor, nbr: Tensor) -> Tensor:
    """The (B, N, N) row-stochastic matrix A[i, j] = α_ij of sparse attention (B, N, k) over ``nbr``."""
    b, n, _ = nbr.shape
    return torch.zeros(b, n, n, dtype=alpha.dtype).scatter_add_(2, nbr, alpha)


class GraphMIL(MILModel):
    """GraphMIL: GAT layers over the cells' k-nearest-neighbour graph, then gated attention pooling.

    Args (beyond :class:`MILModel`):
        n_layers: GAT layers.
        k: neighbours per cell (self included).
    """

    row_kind = "pool"

    def __init__(self, n_features: int, n_classes: int = 2, hidden: int = 64, d_att: int = 32,
                 n_layers: int = 2, k: int = 8) -> None:
        super().__init__(n_features, n_classes, hidden, d_att)
        self.k, self.n_layers = int(k), int(n_layers)
        self.gnn = nn.ModuleList(GATLayer(hidden) for _ in range(n_layers))
        self.att = GatedAttention(hidden, d_att, 1, gated=True)
        self.classifier = nn.Linear(hidden, n_classes)

    def cell_attention(self, feats: Tensor) -> Tensor:
        raise ValueError("mil.graphmil: the pooling attention depends on each cell's graph neighbourhood, not on "
                         "its own features alone; SHAP of the attention module needs ABMIL, CLAM or the type-aware model")

    def attention(self, x: Tensor) -> dict[str, Tensor]:
        self.check(x)
        pos, feats, mask = split_bag(x)
        nbr = knn_graph(pos, mask, self.k)
        h = self.embed(feats)
        gnn = []
        for layer in self.gnn:
            h, alpha = layer(h, nbr, mask)
            gnn.append(dense_attention(alpha, nbr))
        scores = self.att(h).transpose(1, 2)
        w = masked_softmax(scores, mask[:, None])
        logits = self.classifier((w @ h)[:, 0])
        return {"logits": logits, "weights": w, "scores": scores.masked_fill(~mask[:, None], float("-inf")),
                "mask": mask, "embeddings": h, "gnn": gnn, "neighbours": nbr}


@register_model("mil.abmil")
def abmil(*, n_features: int = 22, n_classes: int = 2, hidden: int = 64, d_att: int = 32, n_heads: int = 1,
          gated: bool = True) -> ABMIL:
    """ABMIL (Ilse et al. 2018): gated (or plain tanh) attention pooling, one or more heads."""
    return ABMIL(n_features, n_classes, hidden, d_att, n_heads, gated)


@register_model("mil.clam")
def clam(*, n_features: int = 22, n_classes: int = 2, hidden: int = 64, d_att: int = 32, multi_branch: bool = False,
         k_sample: int = 8) -> CLAM:
    """CLAM-SB (``multi_branch=False``) or CLAM-MB (per-class attention branches), with instance clustering."""
    return CLAM(n_features, n_classes, hidden, d_att, multi_branch, k_sample)


@register_model("mil.type_aware")
def type_aware(*, n_features: int = 22, n_classes: int = 2, hidden: int = 64, d_att: int = 32,
               type_columns: tuple[int, ...] = (18, 19, 20, 21)) -> TypeAwareMIL:
    """Cell-type-aware attention (HEAD4TYPE): one attention head per cell type (default: mil_slides' type columns)."""
    return TypeAwareMIL(n_features, n_classes, hidden, d_att, type_columns)


@register_model("mil.graphmil")
def graphmil(*, n_features: int = 22, n_classes: int = 2, hidden: int = 64, d_att: int = 32, n_layers: int = 2,
             k: int = 8) -> GraphMIL:
    """GraphMIL: GAT layers over a kNN cell graph, then gated attention pooling."""
    return GraphMIL(n_features, n_classes, hidden, d_att, n_layers, k)
