"""ViT explainers on patch tokens: raw attention, attention rollout, Chefer ICCV'21 (grad×attn), GradCAM.

Every explainer returns a ``token`` :class:`~xaibench.Attribution` (B, h·w) over the patch
tokens with ``extras["grid"] = (h, w)``, ``extras["pixel"]`` (B, H, W) bilinearly upsampled
to the input (so pixel metrics score it) and ``extras["target"]`` (B,). Values are raw.
All are batched: a batch gives the same values as each sample alone (one forward, and for
the gradient methods one backward of Σ_i logit[i, target_i]).

Which token row is read out follows the model's pooling (``readout="auto"``): the class
token for ``global_pool="token"``, class + distillation token for DeiT-distilled, the mean
over patch rows for average-pooled models (see :func:`~.capture.token_layout`).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, StrictInt
from torch import Tensor, nn

from xaibench import register_explainer
from xaibench.adapters.cnn._common import LayerRef
from xaibench.adapters.cnn.cam import GradCAM
from xaibench.explainers import Explainer, Target, check_images, model_guard, resolve_target
from xaibench.types import Attribution

from .capture import TokenLayout, attention_capture, attention_modules, token_layout

#: How attention heads are combined (see :func:`fuse_heads`).
HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[str, ...] = typing.get_args(HeadFusion)
#: Which token rows explain the prediction (see :func:`~.capture.token_layout`).
Readout = Literal["auto", "cls", "patches", "distilled", "with_prefix"] | StrictInt
#: A first block index (the upper bound depends on the model and is checked when explaining).
StartLayer = Annotated[StrictInt, Field(ge=0)]


def fuse_heads(attn: Tensor, how: str, head: int | None = None) -> Tensor:
    """(B, heads, T, T) -> (B, T, T): one head, or the mean / max / min over heads."""
    if head is not None:
        return attn[:, head]
    if how == "mean":
        return attn.mean(1)
    if how == "max":
        return attn.amax(1)
    if how == "min":
        return attn.amin(1)
    raise ValueError(f"vit: head_fusion must be one of {HEAD_FUSIONS}, got {how!r}")


def readout_rows(matrix: Tensor, layout: TokenLayout) -> Tensor:
    """(B, T, T) token-to-token matrix -> (B, h·w): the readout rows' weights on the patches."""
    w = layout.readout.to(matrix)
    return torch.einsum("t,btu->bu", w, matrix)[:, layout.num_prefix:]


def token_to_pixel(tokens: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """(B, h·w) token scores -> (B, H, W) bilinear upsampling (half-pixel centres, like cv2)."""
    return F.interpolate(tokens.reshape(-1, 1, *grid), size=size, mode="bilinear", align_corners=False)[:, 0]


class TokenExplainer(Explainer):
    """Base of the ViT token explainers: attention capture, layout, token → pixel output."""

    kind = "token"
    needs_grad = False

    class Settings(Explainer.Settings):
        readout: Readout = "auto"
        """Which token rows explain the prediction: ``"auto"`` (from the model's pooling),
        ``"cls"``, ``"patches"`` (mean over patch tokens), ``"distilled"`` (class and
        distillation token), ``"with_prefix"`` (mean over all tokens) or a token index."""

    def _check_settings(self, n_blocks: int) -> None:
        """The checks that need the model: ``start_layer`` below the number of blocks."""
        sl = getattr(self.settings, "start_layer", 0)
        if sl >= n_blocks:
            raise ValueError(f"{self.name}: start_layer must be an int in [0, {n_blocks}), got {sl!r}")

    def capture(self, inputs: Tensor, target: Target) -> tuple[list[Tensor], list[Tensor] | None, Tensor, TokenLayout]:
        """One forward (and, for gradient methods, one backward) with attention recorded.

        Returns:
            maps: per block (B, heads, T, T) probabilities; grads: ∂y/∂A per block or None;
            target: (B,) explained classes; layout: the token layout.
        """
        check_images(inputs, self.name)
        layout = token_layout(self.model, inputs, self.settings.readout)
        self._check_settings(len(attention_modules(self.model)))
        with model_guard(self.model), attention_capture(self.model, grad=self.needs_grad) as store:
            ctx = torch.enable_grad() if self.needs_grad else torch.no_grad()
            with ctx:
                x = inputs.detach().requires_grad_(self.needs_grad)
                logits = self.model(x)
                store.check(self.name)
                t = resolve_target(logits, target)
                grads = store.backward(logits.gather(1, t[:, None]).sum()) if self.needs_grad else None
            maps = [a.detach() for a in store.maps]  # type: ignore[union-attr]
        if maps[0].shape[-1] != layout.num_tokens:
            raise ValueError(f"{self.name}: attention has {maps[0].shape[-1]} tokens, expected "
                             f"{layout.num_prefix} prefix + {layout.grid} patches; unsupported token layout")
        return maps, (None if grads is None else [g.detach() for g in grads]), t, layout

    def finish(self, tokens: Tensor, layout: TokenLayout, inputs: Tensor, **extras: Any) -> Attribution:
        """Build the token Attribution with its grid and upsampled pixel map."""
        pixel = token_to_pixel(tokens, layout.grid, tuple(inputs.shape[-2:]))
        return self._attribution(tokens, grid=layout.grid, pixel=pixel.detach(), **extras)


@register_explainer("vit.attention")
class AttentionMap(TokenExplainer):
    """Raw attention of one layer (default the last) from the readout token to the patches.

    What it shows: where the class token *queries* in that layer (softmax of q·k only); it
    ignores the values, the MLPs and the residual stream, and is class-agnostic (the same
    map for every target). Pitfalls: heads specialise, so mean/max/min fusion gives
    different maps; one layer's attention ignores how tokens were mixed earlier; register
    tokens soak up attention (their columns are dropped, not renormalised).
    """

    class Settings(TokenExplainer.Settings):
        head_fusion: HeadFusion = "mean"
        """How the heads are combined: their ``"mean"``, ``"max"`` or ``"min"``."""
        head: StrictInt | None = None
        """One head's attention instead of fusing (an index, negative from the end); None fuses."""
        layer: StrictInt = -1
        """The block whose attention is read (an index, negative from the end; -1 = the last)."""

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        maps, _, t, layout = self.capture(inputs, target)
        s = self.settings
        layer, head = s.layer, s.head
        if not -len(maps) <= layer < len(maps):
            raise ValueError(f"{self.name}: layer must be an int in [{-len(maps)}, {len(maps)}), got {layer!r}")
        a = maps[layer]
        if head is not None and not -a.shape[1] <= head < a.shape[1]:
            raise ValueError(f"{self.name}: head must be None or an int in [0, {a.shape[1]}), got {head!r}")
        return self.finish(readout_rows(fuse_heads(a, s.head_fusion, head), layout), layout, inputs, target=t)


@register_explainer("vit.rollout")
class AttentionRollout(TokenExplainer):
    """Attention rollout (Abnar & Zuidema 2020): attention propagated through the residual stream.

    Per layer Â = (fuse_heads(A) + I) / rowsum (keepdim); J = Â_L ··· Â_start; the map is
    J's readout rows on the patches. Each Â and so J is row-stochastic (see :meth:`joint`).
    What it shows: how much each input patch flows into the class token through attention
    and skip connections; class-agnostic. Pitfalls: maps blur towards uniform as depth
    grows and are dominated by the identity; a popular implementation divides by the row
    sum without keepdim (scaling columns instead of rows) and lets ``discard_ratio`` drop
    the class token's own entry — both avoided here.
    """

    class Settings(TokenExplainer.Settings):
        head_fusion: HeadFusion = "mean"
        """How the heads are combined in each layer: their ``"mean"``, ``"max"`` or ``"min"``."""
        discard_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
        """Share of the lowest fused attention entries per layer and sample set to 0 before
        adding I; the prefix tokens' own (diagonal) entries are never discarded."""
        start_layer: StartLayer = 0
        """First block included in the rollout."""

    def _fused(self, a: Tensor, num_prefix: int) -> Tensor:
        fused = fuse_heads(a, self.settings.head_fusion)
        ratio = float(self.settings.discard_ratio)
        b, t, _ = fused.shape
        k = int(t * t * ratio)
        if k == 0:
            return fused
        flat = fused.reshape(b, -1).clone()
        keep = torch.arange(num_prefix) * (t + 1)  # the prefix tokens' own entries
        ranked = flat.clone()
        ranked[:, keep] = float("inf")
        idx = ranked.topk(min(k, t * t - len(keep)), dim=1, largest=False).indices
        return flat.scatter(1, idx, 0.0).reshape(b, t, t)

    def joint(self, maps: list[Tensor], layout: TokenLayout) -> Tensor:
        """(B, T, T) rollout matrix J (row-stochastic) from per-block attention maps."""
        eye = torch.eye(maps[0].shape[-1], dtype=maps[0].dtype)
        joint = None
        for a in maps[self.settings.start_layer:]:
            m = self._fused(a, layout.num_prefix) + eye
            m = m / m.sum(-1, keepdim=True)
            joint = m if joint is None else m @ joint
        return joint  # type: ignore[return-value]

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        maps, _, t, layout = self.capture(inputs, target)
        return self.finish(readout_rows(self.joint(maps, layout), layout), layout, inputs, target=t)


@register_explainer("vit.chefer")
class CheferGeneric(TokenExplainer):
    """Chefer ICCV'21 (grad×attn): generic attention explainability, gradient-weighted attention over blocks.

    Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers", ICCV 2021. Not the CVPR'21 LRP method (that is
    ``vit.chefer_lrp``): no relevance propagation, only attention maps and their gradients.

    R = I; for each block from ``start_layer``: Ā = mean_heads(clamp(∂y/∂A ⊙ A, min=0)),
    R ← R + Ā R; the map is R's readout rows on the patches. What it shows: class-specific
    evidence (the gradient picks the heads and entries that raise the target logit) mixed
    through the residual stream. Pitfalls: the reference notebook averages over batch *and*
    heads when B > 1 (here each sample is its own); early layers add noise (``start_layer``
    skips them); the map of a class the model barely predicts can be near zero everywhere.
    """

    needs_grad = True

    class Settings(TokenExplainer.Settings):
        start_layer: StartLayer = 0
        """First block included in the accumulation (later starts skip the noisy early layers)."""

    def relevance(self, maps: list[Tensor], grads: list[Tensor]) -> Tensor:
        """(B, T, T) relevance matrix R from per-block maps and gradients."""
        b, _, t, _ = maps[0].shape
        r = torch.eye(t, dtype=maps[0].dtype).expand(b, t, t).clone()
        for a, g in list(zip(maps, grads))[self.settings.start_layer:]:
            r = r + (g * a).clamp_min(0).mean(1) @ r
        return r

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        maps, grads, t, layout = self.capture(inputs, target)
        return self.finish(readout_rows(self.relevance(maps, grads), layout), layout, inputs, target=t)  # type: ignore[arg-type]


@register_explainer("vit.gradcam")
class ViTGradCAM(GradCAM):
    """GradCAM on patch tokens: channel weights = mean gradient over patches, times activations.

    The layer's (B, T, C) output is reshaped to a (B, C, h, w) grid after dropping the
    prefix tokens (grid from ``patch_embed.grid_size``, prefix from ``num_prefix_tokens``).
    Default layer: the last block's ``norm1``. Pitfalls: at the last block's *output* the
    patch tokens' gradients are exactly zero (only the class token feeds the head), so
    GradCAM there is blank; ViT channels are not spatially meaningful the way CNN feature
    maps are, so GradCAM is often poor on ViTs (the study's finding); pytorch-grad-cam
    hard-codes a 14×14 grid in its examples.
    """

    kind = "token"

    class Settings(GradCAM.Settings):
        layer: LayerRef = None
        """The layer whose token activations are used: a module of the model or its dotted name
        (``"blocks.3"``); None = the last block's ``norm1``."""

    def default_layer(self, model: nn.Module) -> nn.Module:
        blocks = getattr(model, "blocks", None)
        if blocks is None or not len(blocks) or not hasattr(blocks[-1], "norm1"):
            raise ValueError(f"{self.name}: model has no blocks[-1].norm1; pass layer= (a module or dotted name)")
        return blocks[-1].norm1

    def check_inputs(self, inputs: Tensor) -> None:
        check_images(inputs, self.name)
        self._layout = token_layout(self.model, inputs)

    def to_spatial(self, t: Tensor, inputs: Tensor) -> Tensor:
        lay = self._layout
        if t.ndim != 3 or t.shape[1] != lay.num_tokens:
            raise ValueError(f"{self.name}: layer output must be (B, {lay.num_tokens}, C) tokens, got {tuple(t.shape)}; "
                             "choose a layer inside the transformer blocks")
        return t[:, lay.num_prefix:].reshape(t.shape[0], *lay.grid, t.shape[-1]).permute(0, 3, 1, 2)

    def _attribution(self, values: Tensor, **extras: Any) -> Attribution:
        # the CAM base class hands over the (B, H, W) upsampled map; the tokens are its layer map
        tokens = extras["layer_map"].flatten(1)
        return super()._attribution(tokens, grid=self._layout.grid, pixel=values.detach(), **extras)
