"""Explainers of event-set models: event gradients, SmoothGrad, polygon-query gradients, head attention.

All take events (B, N, m). The runner calls :meth:`explain_batch`, which reads what a method
needs from the batch (per-event labels for ``false_negative`` selections or labelled query
blasts); :meth:`explain` works on bare events with rules that need no labels, or with an
explicit (B, N) boolean selection.

- ``fcm.gradient``: ∂(Σ of selected events' class outputs)/∂E, a vector per event (B, N, m).
- ``fcm.smoothgrad``: the same averaged over noisy copies E + U(0, 0.1) (paper, appendix 7.1).
- ``fcm.polygon_gradient``: ∂Σ_v‖R(E)_v − Q_v‖/∂E for a query polygon Q (eq. 3), (B, N, m).
- ``fcm.attention``: attention each event receives from a query sub-population, per head,
  row-normalised A_viz = ReLU(Q̌)ReLU(K)ᵀ summed over the queries, exact in O(N·d), (B, heads, N).

References: Kowarsch et al., Explainable techniques for analyzing flow cytometry cell
transformers, 2023; Smilkov et al., SmoothGrad, 2017.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, PlainSerializer, field_validator
from torch import Tensor, nn

from xaibench import Batch, register_explainer
from xaibench.explainers import Explainer, Target, model_guard
from xaibench.types import Attribution

from . import model as fcm_model
from .model import check_event_tensor

#: A selection / query rule by name (``"positives"`` is an alias of ``"positive"``).
Rule = Literal["all", "predicted_positive", "positive", "positives", "false_negative", "true_positive"]
#: selection / query rules and whether they need per-event labels
RULES: dict[Rule, bool] = {"all": False, "predicted_positive": False, "positive": True, "positives": True,
         "false_negative": True, "true_positive": True}


def _short(v: Any) -> Any:
    """A tensor or array setting as a short JSON string for protocols (``"Tensor(2, 300) torch.bool"``)."""
    if isinstance(v, (Tensor, np.ndarray)):
        return f"{type(v).__name__}{tuple(v.shape)} {v.dtype}"
    return v


#: A rule name, a (B, N) bool mask or a (B, k) index tensor; tensors are recorded by shape and dtype.
Selection = Annotated[Rule | Tensor, PlainSerializer(_short, when_used="json")]


def check_events(model: nn.Module, inputs: Any, who: str) -> None:
    """Raise ValueError unless ``inputs`` is a floating (B, N, m) tensor that fits ``model``."""
    check_event_tensor(inputs, getattr(model, "n_markers", None), who)


def class_targets(target: Target, b: int, device: torch.device | str | None = None) -> Tensor:
    """(B,) class whose per-event output is explained, on ``device``; None -> 1 (the positive, blast class)."""
    if target is None:
        return torch.ones(b, dtype=torch.long, device=device)
    t = torch.as_tensor(target, device=device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(b)
    if t.shape[0] != b:
        raise ValueError(f"target: expected an int or a ({b},) tensor, got shape {tuple(t.shape)}")
    return t


def select_events(rule: Any, predicted: Tensor | None, labels: Tensor | None, who: str) -> Tensor:
    """(B, N) bool selection from a rule name or an explicit mask / index tensor.

    Args:
        rule: ``"all"``, ``"predicted_positive"``, ``"positive"``, ``"false_negative"``,
            ``"true_positive"``, a (B, N) bool mask or a (B, k) index tensor.
        predicted: (B, N) bool, events predicted as the target class.
        labels: (B, N) per-event ground truth, or None.
    """
    shape = predicted.shape if predicted is not None else (labels.shape if labels is not None else None)
    device = predicted.device if predicted is not None else (labels.device if labels is not None else None)
    if isinstance(rule, Tensor):
        if rule.dtype == torch.bool:
            if shape is not None and tuple(rule.shape) != tuple(shape):
                raise ValueError(f"{who}: selection mask must be (B, N) = {tuple(shape)}, got {tuple(rule.shape)}")
            return rule
        if shape is None or rule.ndim != 2:
            raise ValueError(f"{who}: an index selection must be (B, k) event indices, got {tuple(rule.shape)}")
        return torch.zeros(shape, dtype=torch.bool, device=device).scatter_(1, rule.long().to(device), True)
    if rule not in RULES:
        raise ValueError(f"{who}: unknown selection {rule!r}; expected one of {sorted(RULES)} or a (B, N) bool tensor")
    if RULES[rule] and labels is None:
        raise ValueError(f"{who}: selection {rule!r} needs per-event labels; call explain_batch(batch) with "
                         "batch.instance_labels, or pass a (B, N) bool mask")
    lab = labels.bool() if labels is not None else None
    if rule == "all":
        return torch.ones(shape, dtype=torch.bool, device=device)
    if rule == "predicted_positive":
        return predicted
    if rule in ("positive", "positives"):
        return lab
    if rule == "false_negative":
        return lab & ~predicted
    return lab & predicted


class EventExplainer(Explainer):
    """Base of the FCM explainers: :meth:`explain` on bare events; :meth:`explain_batch` also passes
    the batch's per-event labels (for label-based selections) and adds ``labels`` and ``markers``
    to the extras (for figures). Subclasses implement ``_explain(inputs, target, labels)``."""

    #: FCM event sets have no padding rows: any NaN/Inf event is refused (the ReluFormer does not mask rows)
    nan_padding = False

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        return self._explain(inputs, target, None)

    def explain_batch(self, batch: Batch, target: Target = None) -> Attribution:
        attr = self._explain(batch.inputs, target, batch.instance_labels)
        extras = dict(attr.extras)
        if batch.instance_labels is not None:
            extras["labels"] = batch.instance_labels.bool()
        if batch.meta.get("markers"):
            extras["markers"] = tuple(batch.meta["markers"])
        return attr.replace(extras=extras)

    def _explain(self, inputs: Tensor, target: Target, labels: Tensor | None) -> Attribution:
        raise NotImplementedError


class EventGradient(EventExplainer):
    """Base of event-gradient explainers: the events' gradient of a scalar built from the model output."""

    kind = "event_vector"


@register_explainer("fcm.gradient")
class ClassGradient(EventGradient):
    """Event gradients of a classification (eq. 2): ∂(Σ_i∈S out_i)/∂E, a vector per event.

    Returns an ``event_vector`` Attribution (B, N, m): raw gradients (the direction in marker
    space that most increases the selected outputs). ``extras``: ``selection`` (B, N) bool,
    ``predicted`` (B, N) bool, ``target`` (B,) (and from ``explain_batch`` ``labels``, ``markers``).
    Target: the class index (default 1, blasts).

    Example:
        >>> attr = xaibench.create_explainer("fcm.gradient", model, selection="false_negative").explain_batch(batch)
    """

    class Settings(EventGradient.Settings):
        selection: Selection = "predicted_positive"
        """Which events' outputs are summed: ``"predicted_positive"`` (events predicted as the
        target class), ``"false_negative"``, ``"true_positive"``, ``"positive"`` (labelled;
        alias ``"positives"``), ``"all"``, a (B, N) bool mask or a (B, k) index tensor."""
        output: Literal["logit", "probability"] = "logit"
        """Which per-event output of the target class is differentiated."""

    def outputs(self, logits: Tensor, t: Tensor) -> Tensor:
        """(B, N) per-event output of class t from (B, N, C) logits."""
        if self.settings.output == "probability":
            logits = logits.softmax(-1)
        return logits.gather(-1, t.view(-1, 1, 1).expand(*logits.shape[:2], 1))[..., 0]

    def logits(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        if logits.ndim != 3 or logits.shape[:2] != x.shape[:2]:
            raise ValueError(f"{self.name}: the model must return per-event logits (B, N, C), got {tuple(logits.shape)}; "
                             "use fcm.polygon_gradient for polygon models")
        return logits

    def gradient(self, events: Tensor, t: Tensor, rule: Any, labels: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(gradient (B, N, m), selection (B, N), predicted (B, N)) in one forward and one backward."""
        with model_guard(self.model), torch.enable_grad():
            x = events.detach().clone().requires_grad_(True)
            logits = self.logits(x)
            predicted = logits.detach().argmax(-1) == t[:, None]
            sel = select_events(rule, predicted, labels, self.name)
            score = (self.outputs(logits, t) * sel).sum()
            (g,) = torch.autograd.grad(score, x)
        return g, sel, predicted

    def _explain(self, inputs: Tensor, target: Target, labels: Tensor | None) -> Attribution:
        check_events(self.model, inputs, self.name)
        t = class_targets(target, inputs.shape[0], inputs.device)
        g, sel, pred = self.gradient(inputs, t, self.settings.selection, labels)
        extras = {"selection": sel, "predicted": pred, "target": t}
        return self._attribution(g, **extras)


@register_explainer("fcm.smoothgrad")
class SmoothGradient(ClassGradient):
    """SmoothGrad of event gradients (paper appendix 7.1): the mean gradient over noisy copies.

    Copy k's noise depends only on (seed, k) and the events' shape, so a sample gets the same
    noise alone or in a batch. The selection is fixed from the clean events' predictions and
    used for every copy.
    """

    class Settings(ClassGradient.Settings):
        n_samples: Annotated[int, Field(ge=1)] = 10
        """Number of noisy copies."""
        noise: tuple[float, float] = (0.0, 0.1)
        """(low, high) of the uniform noise added to every marker."""
        seed: int = 0
        """Noise seed."""

        @field_validator("noise")
        @classmethod
        def _low_high(cls, v: tuple[float, float]) -> tuple[float, float]:
            if v[1] < v[0]:
                raise ValueError("noise must be (low, high) with low <= high")
            return v

    def _explain(self, inputs: Tensor, target: Target, labels: Tensor | None) -> Attribution:
        check_events(self.model, inputs, self.name)
        s = self.settings
        n, (lo, hi) = s.n_samples, s.noise
        t = class_targets(target, inputs.shape[0], inputs.device)
        with model_guard(self.model), torch.no_grad():
            predicted = self.logits(inputs).argmax(-1) == t[:, None]
        sel = select_events(s.selection, predicted, labels, self.name)
        total = torch.zeros_like(inputs)
        for k in range(n):
            g = torch.Generator().manual_seed(s.seed * 100003 + k)
            # drawn in float32 whatever the input dtype: float64 inputs get the same noise (then cast)
            unit = torch.rand((1, *inputs.shape[1:]), generator=g, dtype=torch.float32).to(inputs.device, inputs.dtype)
            noise = lo + (hi - lo) * unit
            total += self.gradient(inputs + noise, t, sel, labels)[0]
        extras = {"selection": sel, "predicted": predicted, "target": t}
        return self._attribution(total / n, **extras)


@register_explainer("fcm.polygon_gradient", fixture="fcm_polygon")
class PolygonGradient(EventGradient):
    """Polygon-query gradients (eq. 3): ∂Σ_v‖R(E)_v − Q_v‖/∂E for a query polygon Q.

    "How should the events change for the model to predict Q instead of P?": the negative
    of these gradients is the direction each event should move. With Q = P translated by
    ``shift``, a model that ties the gate to its events shows large gradients inside P that
    point against the translation (the events move with the gate).

    Returns an ``event_vector`` Attribution (B, N, m), raw gradients. ``extras``: ``polygon``
    (B, V, 2) predicted, ``query`` (B, V, 2), ``dims`` (x, y) marker indices, ``gate``,
    ``shift`` (and from ``explain_batch`` ``labels``, ``markers``).
    """

    class Settings(EventGradient.Settings):
        gate: int | str = 0
        """The gate: its index (negative from the end) or its name in the model's ``gate_names``."""
        shift: tuple[float, float] = (0.5, 0.0)
        """(dx, dy) translation of the predicted polygon giving Q, in the gate's marker units."""
        query: Annotated[Tensor | np.ndarray | list | tuple | None, PlainSerializer(_short, when_used="json")] = None
        """Explicit query polygons (B, V, 2) instead of a shift; None uses ``shift``."""

    def gate_index(self) -> int:
        names = list(getattr(self.model, "gate_names", []))
        gate = self.settings.gate
        if isinstance(gate, str):
            if gate not in names:
                raise ValueError(f"{self.name}: unknown gate {gate!r}; the model's gates are {names}")
            return names.index(gate)
        n = len(getattr(self.model, "gate_dims", [])) or 1
        if not -n <= int(gate) < n:
            raise ValueError(f"{self.name}: gate index {gate} out of range for {n} gates")
        return int(gate) % n

    def _explain(self, inputs: Tensor, target: Target, labels: Tensor | None) -> Attribution:
        check_events(self.model, inputs, self.name)
        gi = self.gate_index()
        with model_guard(self.model), torch.enable_grad():
            x = inputs.detach().clone().requires_grad_(True)
            polys = self.model(x)
            if polys.ndim != 4 or polys.shape[-1] != 2 or polys.shape[0] != x.shape[0]:
                raise ValueError(f"{self.name}: the model must return polygons (B, P, V, 2), got {tuple(polys.shape)}; "
                                 "build it with task='polygon'")
            pred = polys[:, gi]
            if self.settings.query is not None:
                q = torch.as_tensor(self.settings.query, dtype=pred.dtype, device=pred.device)
                if q.shape != pred.shape:
                    raise ValueError(f"{self.name}: query must be (B, V, 2) = {tuple(pred.shape)}, got {tuple(q.shape)}")
            else:
                q = pred.detach() + torch.as_tensor(self.settings.shift, dtype=pred.dtype, device=pred.device)
            dist = (pred - q).norm(dim=-1).sum()
            (g,) = torch.autograd.grad(dist, x)
        dims = tuple(self.model.gate_dims[gi]) if getattr(self.model, "gate_dims", None) else (0, 1)
        extras: dict[str, Any] = {"polygon": pred.detach(), "query": q.detach(), "dims": dims,
                                  "gate": self.model.gate_names[gi] if hasattr(self.model, "gate_names") else str(gi),
                                  "shift": tuple(float(s) for s in self.settings.shift)}
        return self._attribution(g, **extras)


def attention_received(phi_q: Tensor, phi_k: Tensor, heads: int, eps: float = 1e-6) -> Tensor:
    """Attention each event receives from a query set, per head, row-normalised, exact in O(N·d).

    score_h(j) = ReLU(K_j)·Σ_m ReLU(Q_m) / max(ReLU(Q_m)·Σ_j' ReLU(K_j'), eps).

    Args:
        phi_q: (M, d) ReLU(Q) of the query events of one sample.
        phi_k: (N, d) ReLU(K) of all events of that sample.

    Returns:
        (heads, N) scores; each head's scores sum to the number of queries with a non-zero row.
    """
    d = phi_k.shape[1]
    q = phi_q.reshape(-1, heads, d // heads)
    z = phi_k.sum(0).view(heads, d // heads)  # (H, dh)
    w = (q / (q * z).sum(-1, keepdim=True).clamp_min(eps)).sum(0)  # (H, dh)
    # one (N, d) @ (d, H) GEMM against w laid out block-diagonally (head h's dh weights in column h):
    # reads phi_k once, where einsum("nhd,hd->hn") permutes it to (H, N, dh) and copies it first
    return (phi_k @ torch.block_diag(*w[:, :, None])).t().contiguous()


@register_explainer("fcm.attention")
class HeadAttention(EventExplainer):
    """Per-head attention that events receive from a query sub-population (paper, sec. 2.2).

    Returns an ``event_head`` Attribution (B, heads, N): Σ over queries of the row-normalised
    A_viz = ReLU(Q̌)ReLU(K)ᵀ, so each head sums to the number of queries. ``extras``:
    ``queries`` (B, N) bool, ``layer`` (and from ``explain_batch`` ``labels``, ``markers``).
    """

    kind = "event_head"

    class Settings(EventExplainer.Settings):
        layer: int = -1
        """The layer whose attention is read (an index, negative from the end; -1 = the last)."""
        queries: Selection = "positives"
        """The query events: ``"positives"`` (labelled blasts), ``"predicted_positive"``, ``"all"``
        (or another selection rule), a (B, N) bool mask or a (B, k) index tensor."""
        n_queries: Annotated[int, Field(ge=1)] | None = 1000
        """At most this many queries per sample, sampled without replacement with ``seed``
        (1000, as the paper); None keeps all."""
        seed: int = 0
        """Query sampling seed (per sample: a sample's queries do not depend on the batch)."""

    def sample_queries(self, mask: Tensor) -> Tensor:
        """Keep at most ``n_queries`` of each sample's (B, N) query mask, seeded per sample."""
        k = self.settings.n_queries
        if k is None:
            return mask
        out = torch.zeros_like(mask)
        for i in range(mask.shape[0]):
            idx = torch.nonzero(mask[i]).flatten()
            if len(idx) > k:
                g = torch.Generator().manual_seed(self.settings.seed)
                idx = idx[torch.randperm(len(idx), generator=g)[:k]]
            out[i, idx] = True
        return out

    def _explain(self, inputs: Tensor, target: Target, labels: Tensor | None) -> Attribution:
        model = self.model
        check_events(model, inputs, self.name)
        layers = getattr(model, "layers", None)
        if layers is None or not hasattr(model, "hidden"):
            raise ValueError(f"{self.name}: needs a ReluFormer-like model (hidden(), layers); got {type(model).__name__}")
        n_layers = len(layers)
        li = self.settings.layer
        if not -n_layers <= li < n_layers:
            raise ValueError(f"{self.name}: layer {li} out of range for a model with {n_layers} layers")
        li %= n_layers
        layer = layers[li]
        with model_guard(model), torch.no_grad():
            rule = self.settings.queries
            predicted = None
            if rule == "predicted_positive":
                predicted = model(inputs).argmax(-1) == class_targets(target, inputs.shape[0], inputs.device)[:, None]
            elif not isinstance(rule, Tensor):
                predicted = torch.zeros(inputs.shape[:2], dtype=torch.bool, device=inputs.device)
            qmask = self.sample_queries(select_events(rule, predicted, labels, self.name))
            x = model.hidden(inputs, upto=li)
            chunk = getattr(model, "chunk_size", x.shape[1])
            phi_k = fcm_model.layer_keys(layer, x, chunk) if isinstance(layer, fcm_model.ReluFormerLayer) else \
                torch.cat([layer.keys(x[:, a:a + chunk]) for a in range(0, x.shape[1], chunk)], 1)
            scores = torch.stack([
                attention_received(layer.queries(x[i][qmask[i]][None])[0], phi_k[i], model.n_heads, layer.eps)
                for i in range(x.shape[0])])
        extras: dict[str, Any] = {"queries": qmask, "layer": li}
        return self._attribution(scores.clone(), **extras)
