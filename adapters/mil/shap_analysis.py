"""SHAP of the attention module: which cell features drive attention, over a whole dataset.

The attention module is explained, not the prediction: for MIL models the per-cell pre-softmax
attention score a(x) of :meth:`~xaibench.adapters.mil.model.MILModel.cell_attention` ((n, F) raw
features -> (n, H) heads / classes / types); for the flow-cytometry ReluFormer the attention an
event receives in layer 0 from a query population, per head (:func:`fcm_attention_module`, the
exact identity of ``fcm.attention``). One code path serves both.

Steps (:func:`run_analysis`, :func:`analyse_attention`): the cell-level dataset over all slides;
the attention of every cell (batched, ``batch_size``); stratified sampling over ``num_bins``
attention-quantile bins (``samples_per_bin`` each, ``max_total_samples`` cap,
``explain_top_cells``); ``background_percentage`` of the sample as background, the rest explained;
SHAP per head (``explain_per_head``) and of the mean head (``explain_mean_head``); importance =
mean |SHAP| per feature, ``top_features``; outputs ``feature_importance_bar.png``,
``beeswarm_plot.png``, ``feature_distribution_top20.html`` (offline plotly), ``top_features.csv``
and ``shap_values.safetensors`` (raw values, if ``save_raw_shap_values``).

``explainer_type``: ``gradient`` is expected gradients (the estimator of shap's GradientExplainer
without local smoothing: φ = E_{x'~background, α~U(0,1)}[(x − x') ⊙ ∇f(x' + α(x − x'))]),
vectorised over all cells at once (shap's own loops over cells, ~40 ms each here); pass
``gradient_backend="shap"`` to call ``shap.GradientExplainer`` itself. ``deep`` and ``kernel``
call ``shap.DeepExplainer`` and ``shap.KernelExplainer`` (``nsamples`` coalitions per cell; a
background of more than ``kernel_background`` cells is summarised by ``shap.kmeans`` to that many
weighted centres, a smaller one is used as it is, as by the gradient explainer).

Gradient vs kernel: both estimate attributions of f(x) − E f(background) that sum to it, but
not the same quantity. Kernel SHAP estimates the interventional Shapley values (exact as the
coalitions grow); expected gradients are the Aumann–Shapley (path) values averaged over the
background. The two coincide for an additive f and differ by how they share interaction effects
otherwise (on the zoo ABMIL against exact Shapley values from all 2^22 coalitions, one
background cell: expected gradients agree in sign on every large feature and in |φ| rank at
Spearman 0.95–0.97; kernel SHAP with 4,000 coalitions at 0.98–1.0). shap's KernelExplainer
defaults to ``l1_reg="auto"``, which at fewer coalitions than 20% of 2^M keeps only 10 features
and sets the others to zero; we pass ``kernel_l1_reg=False`` (plain Shapley kernel regression)
unless told otherwise. With shap's default the same cells agreed with the exact values at sign
0.75–0.82, rank 0.85–0.88, and not better with 25× more coalitions.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from xaibench import Batch, register_explainer
from xaibench.analyses import register_analysis
from xaibench.explainers import Explainer, Target, model_guard
from xaibench.settings import Settings, validate
from xaibench.types import Attribution

from .model import POS, MILModel, check_bag

ExplainerType = Literal["gradient", "deep", "kernel"]


class ShapSettings(Settings):
    """Settings of the SHAP-of-attention analysis (the cell-MIL toolkit's SHAPExplainerConfig)."""

    num_bins: int = 5
    """Attention quantile bins the cells are stratified by (5 = quintiles)."""
    samples_per_bin: int = 10000
    """Cells sampled per bin (fewer when a bin holds fewer)."""
    max_total_samples: int | None = None
    """Cap on the total sample (overrides samples_per_bin: max_total_samples // num_bins per bin)."""
    explainer_type: ExplainerType = "gradient"
    """gradient (expected gradients), deep (shap.DeepExplainer) or kernel (shap.KernelExplainer)."""
    gradient_backend: Literal["xaibench", "shap"] = "xaibench"
    """gradient only: our vectorised expected gradients, or shap.GradientExplainer itself (slow)."""
    gradient_samples: int = 50
    """gradient only: (background, α) draws per explained cell."""
    background_percentage: float = 0.2
    """Share of the sampled cells used as the SHAP background; the others are explained."""
    nsamples: int = 500
    """kernel only: coalitions per explained cell."""
    kernel_background: int = 20
    """kernel only: a larger background is summarised by shap.kmeans to this many weighted centres."""
    kernel_l1_reg: bool | str = False
    """kernel only: shap's ``l1_reg`` (False: the plain Shapley kernel regression; shap's default
    "auto" keeps 10 features at small coalition counts and zeroes the others)."""
    explain_top_cells: int | None = None
    """Explain only the N most attended of the sampled (non-background) cells; None = all."""
    explain_per_head: bool = True
    """SHAP of every attention head (row) separately."""
    explain_mean_head: bool = True
    """SHAP of the mean over heads."""
    top_features: int = 20
    """Features highlighted in the tables and plots."""
    random_seed: int = 42
    """Seed of the sampling and of the SHAP estimators."""
    batch_size: int = 1024
    """Cells per batch when computing attention for the whole dataset."""
    save_raw_shap_values: bool = True
    """Write the raw SHAP values (safetensors)."""
    create_summary_plots: bool = True
    """Write the bar, beeswarm and distribution plots."""


# ----------------------------------------------------------------------------- attention modules

class MILAttentionModule(nn.Module):
    """(n, F) raw cell features -> (n, H) pre-softmax attention scores of a MIL model."""

    def __init__(self, model: MILModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: Tensor) -> Tensor:
        return self.model.cell_attention(feats)


class FCMHeadAttention(nn.Module):
    """(n, m) events -> (n, heads): attention each event receives in ReluFormer layer 0 from a
    fixed query set, score_h(j) = ReLU(K_j)_h · w_h with w_h = Σ_q ReLU(Q_q)_h / (ReLU(Q_q)_h · Z_h),
    Z = Σ_j ReLU(K_j) over the reference sample (the identity of ``fcm.attention``, per event)."""

    def __init__(self, model: nn.Module, reference: Tensor, queries: Tensor) -> None:
        super().__init__()
        self.model = model
        layer = model.layers[0]
        self.heads = int(model.n_heads)
        with torch.no_grad():
            x = model.embed(reference)
            k, q = layer.keys(x), layer.queries(x[queries])
            d = k.shape[-1]
            z = k.sum(0).reshape(self.heads, d // self.heads)
            qh = q.reshape(-1, self.heads, d // self.heads)
            w = (qh / (qh * z).sum(-1, keepdim=True).clamp_min(layer.eps)).sum(0)
        self.register_buffer("w", w)

    def forward(self, events: Tensor) -> Tensor:
        k = self.model.layers[0].keys(self.model.embed(events))
        return torch.einsum("nhd,hd->nh", k.reshape(len(events), self.heads, -1), self.w)


def fcm_attention_module(model: nn.Module, events: Tensor, labels: Tensor, n_queries: int = 1000,
                         seed: int = 0) -> FCMHeadAttention:
    """The layer-0 head attention of a ReluFormer as a per-event function, queries: up to ``n_queries``
    labelled blasts of the reference sample ``events`` (N, m) (seeded as ``fcm.attention``)."""
    if not hasattr(model, "layers") or not hasattr(model, "embed"):
        raise ValueError(f"fcm_attention_module: needs a ReluFormer (layers, embed), got {type(model).__name__}")
    idx = torch.nonzero(labels.bool()).flatten()
    if len(idx) == 0:
        raise ValueError("fcm_attention_module: the reference sample has no labelled blasts to query with")
    if len(idx) > n_queries:
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:n_queries]]
    q = torch.zeros(len(events), dtype=torch.bool)
    q[idx] = True
    return FCMHeadAttention(model, events, q).eval()


# ----------------------------------------------------------------------------- sampling and SHAP

@contextlib.contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (shap draws from it) and restore its state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed % 2 ** 32)
    try:
        yield
    finally:
        np.random.set_state(state)


def stratified_sample(scores: Tensor, *, num_bins: int, samples_per_bin: int, max_total_samples: int | None = None,
                      seed: int = 42) -> Tensor:
    """Indices of cells sampled evenly from ``num_bins`` quantile bins of ``scores`` (n,).

    Bin b holds the cells whose score rank lies in [b/num_bins, (b+1)/num_bins) (ties broken by
    index); each bin contributes min(its size, per-bin quota) cells drawn without replacement."""
    if num_bins < 1 or samples_per_bin < 1:
        raise ValueError(f"stratified_sample: num_bins and samples_per_bin must be >= 1, got {num_bins}, {samples_per_bin}")
    n = len(scores)
    quota = samples_per_bin if max_total_samples is None else max(1, min(samples_per_bin, max_total_samples // num_bins))
    order = torch.sort(scores, stable=True).indices
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(num_bins):
        members = order[b * n // num_bins:(b + 1) * n // num_bins]
        out.append(members[torch.randperm(len(members), generator=g)[:quota]])
    return torch.cat(out)


def expected_gradients(f: Any, x: Tensor, background: Tensor, *, n_samples: int = 50, seed: int = 0,
                       chunk: int = 262144) -> Tensor:
    """Expected gradients of ``f`` ((n, F) -> (n,) or (n, H)) for x (n, F): (n, F), or (n, F, H).

    φ_i = mean_k (x_i − x'_k) ⊙ ∇f(x'_k + α_k (x_i − x'_k)), x'_k drawn from ``background``, α_k ~ U(0, 1).
    Every output column uses the same draws (one forward, one backward per column), so the values
    of a mean over columns equal the mean of the columns' values exactly. The draws depend on
    ``seed`` and the cells' positions in ``x`` (deterministic for the same x)."""
    n, d = x.shape
    out: Tensor | None = None
    scalar = False
    per = max(1, chunk // n_samples)
    for a in range(0, n, per):
        xi = x[a:a + per]
        m = len(xi)
        g = torch.Generator().manual_seed(seed * 1_000_003 + a)
        ref_idx = torch.randint(len(background), (m, n_samples), generator=g)
        alpha = torch.rand(m, n_samples, generator=g)
        ref = background[ref_idx]  # (m, k, F)
        diff = xi[:, None] - ref
        pts = (ref + alpha[..., None] * diff).reshape(-1, d).detach().requires_grad_(True)
        with torch.enable_grad():
            y = f(pts)
            scalar = y.ndim == 1
            cols = [y] if scalar else list(y.unbind(-1))
            grads = [torch.autograd.grad(c.sum(), pts, retain_graph=j < len(cols) - 1)[0] for j, c in enumerate(cols)]
        phi = torch.stack([(gr.reshape(m, n_samples, d) * diff).mean(1) for gr in grads], -1)  # (m, F, H)
        if out is None:
            out = torch.zeros(n, d, phi.shape[-1], dtype=x.dtype)
        out[a:a + m] = phi
    if out is None:
        raise ValueError("expected_gradients: no cells to explain (x is empty)")
    return out[..., 0] if scalar else out


class _Head(nn.Module):
    """One output column of a module (an int) or the mean over columns ("mean"), as (n, 1)."""

    def __init__(self, module: nn.Module, head: int | str) -> None:
        super().__init__()
        self.module, self.head = module, head

    def forward(self, x: Tensor) -> Tensor:
        y = self.module(x)
        return (y.mean(-1) if self.head == "mean" else y[:, self.head])[:, None]


def shap_values(module: nn.Module, explain: Tensor, background: Tensor, head: int | str, s: ShapSettings,
                seed: int | None = None) -> Tensor:
    """SHAP values (n, F) of one head (or ``"mean"``) of ``module`` at the cells ``explain``."""
    seed = s.random_seed if seed is None else seed
    f = _Head(module, head)
    if s.explainer_type == "gradient" and s.gradient_backend == "xaibench":
        return expected_gradients(lambda z: f(z)[:, 0], explain, background, n_samples=s.gradient_samples, seed=seed)
    import shap

    with seeded_numpy(seed), torch.random.fork_rng(), _quiet():
        torch.manual_seed(seed)
        if s.explainer_type == "gradient":
            v = shap.GradientExplainer(f, background).shap_values(explain, nsamples=s.gradient_samples)
        elif s.explainer_type == "deep":
            v = shap.DeepExplainer(f, background).shap_values(explain, check_additivity=False)
        else:
            bg = background.double().numpy()
            if len(bg) > s.kernel_background:
                bg = shap.kmeans(bg, s.kernel_background)
            fn = lambda z: f(torch.as_tensor(z, dtype=explain.dtype)).detach().double().numpy()[:, 0]  # noqa: E731
            v = shap.KernelExplainer(fn, bg).shap_values(explain.double().numpy(), nsamples=s.nsamples, silent=True,
                                                         l1_reg=s.kernel_l1_reg)
    v = np.asarray(v)
    if v.ndim == 3:
        v = v[..., 0]
    return torch.as_tensor(v, dtype=explain.dtype)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unrecognized nn.Module.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="shap.*")
        yield


@dataclass
class ShapResult:
    """Result of a SHAP-of-attention analysis.

    ``values``: head name -> (n_explained, F) SHAP values; ``cells`` (n_explained, F) the explained
    cells' features; ``importance`` (F × heads) mean |SHAP| as a DataFrame; ``top``: head ->
    feature names by decreasing importance (``top_features`` of them); ``files``: written outputs.
    """

    values: dict[str, Tensor]
    cells: Tensor
    features: list[str]
    importance: Any
    top: dict[str, list[str]]
    sample_index: Tensor
    files: dict[str, Path] = field(default_factory=dict)


def run_analysis(module: nn.Module, cells: Tensor, features: Sequence[str], out_dir: str | Path | None = None,
                 head_names: Sequence[str] | None = None, **settings: Any) -> ShapResult:
    """SHAP of ``module`` ((n, F) -> (n, H) attention) over a cell-level dataset ``cells`` (n, F).

    Raises:
        ValueError: shapes or settings that do not fit (the message says which).
    """
    import pandas as pd

    s = validate(ShapSettings, settings, "SHAP analysis")
    if cells.ndim != 2 or cells.shape[1] != len(features):
        raise ValueError(f"SHAP analysis: expected cells (n, {len(features)}) for {len(features)} feature names, "
                         f"got {tuple(cells.shape)}")
    if not 0 < s.background_percentage < 1:
        raise ValueError(f"SHAP analysis: background_percentage must lie in (0, 1), got {s.background_percentage}")
    cells = cells[~torch.isnan(cells).any(-1)].float()
    with torch.no_grad():
        att = torch.cat([module(cells[a:a + s.batch_size]) for a in range(0, len(cells), s.batch_size)])
    n_heads = att.shape[1]
    names = list(head_names) if head_names else [f"head{h}" for h in range(n_heads)]
    idx = stratified_sample(att.mean(1), num_bins=s.num_bins, samples_per_bin=s.samples_per_bin,
                            max_total_samples=s.max_total_samples, seed=s.random_seed)
    g = torch.Generator().manual_seed(s.random_seed + 1)
    perm = idx[torch.randperm(len(idx), generator=g)]
    n_bg = max(1, int(round(s.background_percentage * len(perm))))
    bg, ex = perm[:n_bg], perm[n_bg:]
    if s.explain_top_cells is not None:
        ex = ex[att.mean(1)[ex].argsort(descending=True, stable=True)[:s.explain_top_cells]]
    if len(ex) == 0:
        raise ValueError("SHAP analysis: no cells left to explain after the background split; sample more cells")
    heads: list[tuple[str, int | str]] = []
    if s.explain_per_head:
        heads += list(zip(names, range(n_heads)))
    if s.explain_mean_head:
        heads.append(("mean", "mean"))
    if not heads:
        raise ValueError("SHAP analysis: explain_per_head and explain_mean_head are both False; nothing to explain")
    with model_guard(module):
        if s.explainer_type == "gradient" and s.gradient_backend == "xaibench":
            # one pass for every head (shared draws); the mean head is then the mean of the heads, exactly
            allh = expected_gradients(module, cells[ex], cells[bg], n_samples=s.gradient_samples, seed=s.random_seed)
            values = {name: (allh.mean(-1) if h == "mean" else allh[..., h]) for name, h in heads}
        else:
            values = {name: shap_values(module, cells[ex], cells[bg], h, s) for name, h in heads}
    imp = pd.DataFrame({name: v.abs().mean(0).numpy() for name, v in values.items()}, index=list(features))
    top = {name: list(imp[name].sort_values(ascending=False, kind="stable").index[:s.top_features]) for name in imp}
    res = ShapResult(values, cells[ex], list(features), imp, top, ex)
    if out_dir is not None:
        res.files = write_outputs(res, att[ex], Path(out_dir), s)
    return res


def write_outputs(res: ShapResult, attention: Tensor, out: Path, s: ShapSettings) -> dict[str, Path]:
    """The analysis files of one result (see the module docstring); per head in ``out/<head>/``."""
    import pandas as pd

    from xaibench.report.figures import new_figure, save

    from .outputs import write_html

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    rows = [{"head": h, "rank": r + 1, "feature": f, "mean_abs_shap": float(res.importance.loc[f, h])}
            for h, feats in res.top.items() for r, f in enumerate(feats)]
    files["top_features"] = out / "top_features.csv"
    pd.DataFrame(rows).to_csv(files["top_features"], index=False)
    if s.save_raw_shap_values:
        from safetensors.torch import save_file
        files["raw"] = out / "shap_values.safetensors"
        save_file({**{f"shap/{h}": v.contiguous() for h, v in res.values.items()}, "cells": res.cells.contiguous(),
                   "sample_index": res.sample_index.contiguous()}, str(files["raw"]),
                  metadata={"features": ",".join(res.features)})
    if not s.create_summary_plots:
        return files
    for head, vals in res.values.items():
        d = out / head
        d.mkdir(exist_ok=True)
        feats = res.top[head][::-1]
        fi = [res.features.index(f) for f in feats]
        fig = new_figure(6, 0.25 * len(feats) + 1.2)
        ax = fig.subplots()
        ax.barh(range(len(feats)), res.importance.loc[feats, head].to_numpy(), color="tab:red")
        ax.set_yticks(range(len(feats)), feats, fontsize=7)
        ax.set_xlabel("mean |SHAP| (impact on the attention score)")
        ax.set_title(f"attention {head}: feature importance", fontsize=9)
        files[f"{head}/bar"] = save(fig, d / "feature_importance_bar.png")
        fig = new_figure(7, 0.3 * len(feats) + 1.2)
        ax = fig.subplots()
        rng = np.random.default_rng(0)
        x = res.cells.numpy()
        for row, j in enumerate(fi):
            v = vals[:, j].numpy()
            col = x[:, j]
            lo, hi = np.nanpercentile(col, [5, 95]) if len(col) else (0, 1)
            c = np.clip((col - lo) / (hi - lo if hi > lo else 1), 0, 1)
            ax.scatter(v, row + rng.uniform(-0.3, 0.3, len(v)), c=c, cmap="coolwarm", s=3, rasterized=True)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_yticks(range(len(feats)), feats, fontsize=7)
        ax.set_xlabel("SHAP value (impact on the attention score); colour: feature value (red high)")
        ax.set_title(f"attention {head}: beeswarm", fontsize=9)
        files[f"{head}/beeswarm"] = save(fig, d / "beeswarm_plot.png")
        files[f"{head}/distribution"] = write_html(_distribution(res, attention, head), d / "feature_distribution_top20.html")
    return files


def _distribution(res: ShapResult, attention: Tensor, head: str) -> Any:
    """Plotly box plots of the top-20 features' values per attention quintile of the explained cells."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    feats = res.top[head][:20]
    a = attention.mean(1) if head == "mean" else attention[:, int(head[4:])] if head.startswith("head") else attention.mean(1)
    a = a.contiguous()
    q = torch.bucketize(a, torch.quantile(a.double(), torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)).float())
    cols = 4
    fig = make_subplots(rows=math.ceil(len(feats) / cols), cols=cols, subplot_titles=feats)
    for i, f in enumerate(feats):
        j = res.features.index(f)
        fig.add_trace(go.Box(x=[f"Q{int(b) + 1}" for b in q], y=res.cells[:, j].numpy(), name=f, showlegend=False,
                             boxpoints=False), row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(title=f"attention {head}: top features by attention quintile (Q5 = most attended)",
                      height=260 * math.ceil(len(feats) / cols), template="plotly_white")
    return fig


def analyse_attention(model: nn.Module, batches: Sequence[Batch], out_dir: str | Path | None = None,
                      **settings: Any) -> ShapResult:
    """SHAP of a MIL model's attention module over every cell of ``batches`` (the document's analysis).

    Example:
        >>> res = analyse_attention(xaibench.zoo.load("mil_abmil"), list(dataset), "shap_out", num_bins=5)
        >>> res.top["mean"][:4]
    """
    if not isinstance(model, MILModel):
        raise ValueError(f"analyse_attention: needs a mil.* model, got {type(model).__name__}; "
                         "for a ReluFormer use run_analysis(fcm_attention_module(...), events, markers)")
    cells = torch.cat([b.inputs[..., POS:].reshape(-1, model.n_features) for b in batches])
    features = list(batches[0].meta.get("features") or [f"f{i}" for i in range(model.n_features)])
    heads = [f"{model.row_kind}{h}" for h in range(_n_rows(model))]
    return run_analysis(MILAttentionModule(model), cells, features, out_dir, head_names=heads, **settings)


def _n_rows(model: MILModel) -> int:
    with torch.no_grad():
        return int(model.cell_attention(torch.zeros(1, model.n_features)).shape[1])


# ----------------------------------------------------------------------------- the explainer

@register_explainer("mil.attention_shap", fixture="mil")
class AttentionShap(Explainer):
    """SHAP of the attention module per cell (cell-MIL toolkit): which features raise a cell's attention, (B, N, 2 + F).

    Per slide: attention scores of all its cells, stratified sampling over attention bins,
    ``background_percentage`` of the sample as background, SHAP of the chosen head (or the
    mean head) at the other sampled cells. Returns an ``event_vector`` Attribution: the SHAP
    vector of each explained cell (zero for the position columns, the background and the
    cells not sampled); ``extras["explained"]`` (B, N) marks the explained cells.
    """

    kind = "event_vector"

    class Settings(Explainer.Settings):
        num_bins: int = 5
        """Attention quantile bins per slide."""
        samples_per_bin: int = 100
        """Cells sampled per bin and slide."""
        background_percentage: float = 0.2
        """Share of the sample used as background."""
        explainer_type: ExplainerType = "gradient"
        """gradient (expected gradients), deep or kernel (shap)."""
        gradient_samples: int = 50
        """gradient: draws per explained cell."""
        nsamples: int = 200
        """kernel: coalitions per explained cell."""
        attention_head: int | None = None
        """The attention row to explain; None = the mean over rows."""
        random_seed: int = 42
        """Seed of the sampling and the estimators (per slide: a slide's values do not depend on the batch)."""

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        model = self.model
        if not isinstance(model, MILModel):
            raise ValueError(f"{self.name}: needs a mil.* model with a per-cell attention module, got {type(model).__name__}")
        check_bag(inputs, model.n_features, self.name)
        st = self.settings
        s = ShapSettings(num_bins=st.num_bins, samples_per_bin=st.samples_per_bin, background_percentage=st.background_percentage,
                         explainer_type=st.explainer_type, gradient_samples=st.gradient_samples, nsamples=st.nsamples,
                         random_seed=st.random_seed)
        module = MILAttentionModule(model)
        head: int | str = "mean" if st.attention_head is None else st.attention_head
        values = torch.zeros(inputs.shape, dtype=inputs.dtype)
        explained = torch.zeros(inputs.shape[:2], dtype=torch.bool)
        with model_guard(model):
            for i in range(inputs.shape[0]):
                real = torch.nonzero(~torch.isnan(inputs[i]).all(-1)).flatten()
                cells = inputs[i, real, POS:]
                with torch.no_grad():
                    att = _Head(module, head)(cells)[:, 0]
                idx = stratified_sample(att, num_bins=s.num_bins, samples_per_bin=s.samples_per_bin, seed=s.random_seed)
                perm = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(s.random_seed + 1))]
                n_bg = max(1, int(round(s.background_percentage * len(perm))))
                bg, ex = perm[:n_bg], perm[n_bg:]
                if len(ex) == 0:
                    continue
                v = shap_values(module, cells[ex], cells[bg], head, s)
                values[i, real[ex], POS:] = v
                explained[i, real[ex]] = True
        return self._attribution(values, explained=explained)

    def explain_batch(self, batch: Batch, target: Target = None) -> Attribution:
        attr = self.explain(batch.inputs, target)
        extras = dict(attr.extras)
        for key in ("columns", "defining_features", "context_features", "confounder"):
            if batch.meta.get(key) is not None:
                extras[key] = batch.meta[key]
        if batch.instance_labels is not None:
            extras["labels"] = batch.instance_labels.bool()
        return attr.replace(extras=extras)


# ----------------------------------------------------------------------------- `xaibench shap`

def _zoo_data(model: str, dataset: str | None, n: int, **defaults: Any) -> tuple[nn.Module, Batch]:
    from xaibench import create_dataset, zoo

    entry = zoo.get_entry(model)
    name = dataset or entry.dataset
    params = {**defaults, **entry.extra.get("dataset_params", {})} if name == entry.dataset else {}
    return zoo.load(model), create_dataset(name, n=n, batch_size=n, seed=0, split="test", **params).all()


def _summary(model: str, res: ShapResult, what: str, s: dict[str, Any]) -> str:
    head = "mean" if "mean" in res.top else next(iter(res.top))
    return (f"{model}: SHAP ({s.get('explainer_type', 'gradient')}) of the attention score over {len(res.cells)} "
            f"explained {what}; top features ({head} head): {', '.join(res.top[head][:5])}")


@register_analysis("mil.attention_shap")
def mil_attention_shap(model: str, *, dataset: str | None = None, n: int = 20, out: str | Path | None = None,
                       **settings: Any) -> tuple[Path, str]:
    """``xaibench shap`` for MIL zoo models: :func:`analyse_attention` over every cell of ``n`` test
    slides (``settings``: :class:`ShapSettings`), files in ``out`` (default ``shap_<model>/``)."""
    from .train import N_CELLS

    net, batch = _zoo_data(model, dataset, n, n_cells=N_CELLS)
    folder = Path(out) if out is not None else Path(f"shap_{model}")
    res = analyse_attention(net, [batch], folder, **settings)
    return folder, _summary(model, res, f"cells of {n} slides", settings)


@register_analysis("fcm.attention_shap")
def fcm_attention_shap(model: str, *, dataset: str | None = None, n: int = 20, out: str | Path | None = None,
                       n_queries: int = 1000, **settings: Any) -> tuple[Path, str]:
    """``xaibench shap`` for the FCM ReluFormer: which markers drive each layer-0 head's attention
    (:func:`fcm_attention_module`, queries: up to ``n_queries`` blasts of the test sample with the
    most blasts) over the events of ``n`` test samples, files in ``out`` (default ``shap_<model>/``)."""
    net, batch = _zoo_data(model, dataset, n)
    if batch.instance_labels is None:
        raise ValueError(f"shap: {model} on {dataset or 'its dataset'}: the samples carry no event labels to query with")
    ref = int(batch.instance_labels.sum(1).argmax())
    module = fcm_attention_module(net, batch.inputs[ref], batch.instance_labels[ref], n_queries=n_queries)
    markers = list(batch.meta.get("markers") or [f"m{i}" for i in range(batch.inputs.shape[-1])])
    folder = Path(out) if out is not None else Path(f"shap_{model}")
    res = run_analysis(module, batch.inputs.reshape(-1, batch.inputs.shape[-1]), markers, folder, **settings)
    return folder, _summary(model, res, f"events of {n} samples", settings)
