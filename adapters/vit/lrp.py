"""Chefer et al. (CVPR 2021) "Transformer Interpretability Beyond Attention Visualization".

Relevance is propagated by LRP from the target class back through every block of a timm
``VisionTransformer``; each block's attention relevance R_A (from the A·V product) is
weighted by the gradient ∂y/∂A, and the positive head mean is rolled out without
renormalisation: C = Π_b (mean_h (∇A_b ⊙ R_A_b)^+ + I); the map is C's class-token row on
the patches.

Rules, as the reference implementation (``baselines/ViT/ViT_LRP.py``, method "transformer
attribution", alpha=1): linear layers LRP-αβ with α=1, β=0 (biases ignored); LayerNorm,
GELU, softmax and dropout pass relevance unchanged; products (q·kᵀ, A·V) split relevance
in proportion to x·∂z/∂x, halved between the two factors; a residual sum splits it in
proportion to the two inputs' contributions, rescaled to conserve the total; the class
token selection and the clone at each residual branch are relevance-conserving.
Differences from the reference: batched (every sum and normalisation per sample, not over
the batch; the reference runs batch size 1 only), and the relevance is computed in closed
form instead of with one ``autograd.grad`` per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench import register_explainer
from xaibench.explainers import Target, check_images, model_guard, resolve_target
from xaibench.types import Attribution

from .capture import token_layout
from .explainers import StartLayer, TokenExplainer, readout_rows


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """a / b with the reference's stabiliser (±1e-9 away from 0, and 0 where b is exactly 0)."""
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).to(den.dtype) * 1e-9
    return a / den * b.ne(0).to(b.dtype)


def linear_relprop(x: Tensor, weight: Tensor, r: Tensor) -> Tensor:
    """LRP-α1β0 through ``y = x Wᵀ`` (bias ignored): (…, in) relevance of x."""
    px, nx = x.clamp(min=0), x.clamp(max=0)
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    s = safe_divide(r, px @ pw.T + nx @ nw.T)
    return px * (s @ pw) + nx * (s @ nw)


def matmul_relprop(a: Tensor, b: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance of both factors of ``z = a @ b`` in proportion to x·∂z/∂x."""
    s = safe_divide(r, a @ b)
    return a * (s @ b.transpose(-2, -1)), b * (a.transpose(-2, -1) @ s)


def add_relprop(skip: Tensor, branch: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance of both inputs of a residual sum, rescaled so their totals split Σr per sample
    in proportion to |Σ| of each share."""
    s = safe_divide(r, skip + branch)
    ra, rb = skip * s, branch * s
    dims = tuple(range(1, r.ndim))
    sa, sb, total = ra.sum(dims), rb.sum(dims), r.sum(dims)
    fa = safe_divide(sa.abs(), sa.abs() + sb.abs()) * total
    fb = safe_divide(sb.abs(), sa.abs() + sb.abs()) * total
    shape = (-1,) + (1,) * (r.ndim - 1)
    return ra * safe_divide(fa, sa).reshape(shape), rb * safe_divide(fb, sb).reshape(shape)


def clone_relprop(x: Tensor, *rs: Tensor) -> Tensor:
    """Relevance of a tensor used by several branches: the sum of theirs."""
    return x * sum(safe_divide(r, x) for r in rs)


def _check_supported(model: nn.Module, who: str) -> None:
    why = []
    if getattr(model, "global_pool", None) != "token" or getattr(model, "cls_token", None) is None:
        why.append("needs class-token pooling (global_pool='token')")
    if getattr(model, "dist_token", None) is not None or getattr(model, "attn_pool", None) is not None:
        why.append("distillation heads / attention pooling are not covered")
    if not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity):
        why.append("fc_norm is not covered")
    for blk in getattr(model, "blocks", []):
        a, mlp = blk.attn, blk.mlp
        if not all(isinstance(getattr(blk, n, nn.Identity()), nn.Identity) for n in ("ls1", "ls2")):
            why.append("layer scale is not covered")
        if not all(isinstance(getattr(a, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm")) \
                or getattr(a, "gate", None) is not None or not hasattr(a, "qkv"):
            why.append("only plain timm Attention (fused qkv, no qk-norm / gates) is covered")
        if not (hasattr(mlp, "fc1") and hasattr(mlp, "fc2")) or not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
            why.append("only timm's plain Mlp (fc1, act, fc2) is covered")
    if why:
        raise ValueError(f"{who}: unsupported model {type(model).__name__}: {'; '.join(sorted(set(why)))}; "
                         "use vit.chefer (the generic rule) instead")


@register_explainer("vit.chefer_lrp")
class CheferLRP(TokenExplainer):
    """Chefer CVPR'21 (LRP): LRP relevance × gradient of each block's attention, rolled out.

    Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention Visualization", CVPR 2021.

    Not the ICCV'21 generic gradient×attention rule (that is ``vit.chefer``).

    What it shows: class-specific relevance that, unlike raw attention, accounts for the
    values, the MLPs and the residual stream through LRP. Pitfalls: only plain timm ViTs
    with class-token pooling are covered (layer scale, qk-norm, distillation heads raise);
    biases are ignored by the LRP-αβ rule; the rollout is not renormalised, so values grow
    with depth (compare maps within one model); the reference runs batch size 1 and sums its
    conservation terms over the batch (here per sample).
    """

    class Settings(TokenExplainer.Settings):
        start_layer: StartLayer = 0
        """First block in the rollout."""

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        check_images(inputs, self.name)
        model = self.model
        _check_supported(model, self.name)
        layout = token_layout(model, inputs, self.settings.readout)
        self._check_settings(len(model.blocks))
        with model_guard(model), torch.enable_grad():
            rec, logits = self._forward(inputs.detach().requires_grad_(True))
            t = resolve_target(logits, target)
            grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), [b["A"] for b in rec])
        with torch.no_grad():
            rec = [{k: v.detach() for k, v in b.items()} for b in rec]
            cams = self._attention_relevance(rec, logits.detach(), t)
            n = cams[0].shape[-1]
            eye = torch.eye(n, dtype=cams[0].dtype)
            joint = None
            for ra, g in list(zip(cams, grads))[self.settings.start_layer:]:
                m = (g * ra).clamp(min=0).mean(1) + eye
                joint = m if joint is None else m @ joint
        return self.finish(readout_rows(joint, layout), layout, inputs, target=t)

    def _forward(self, x: Tensor) -> tuple[list[dict[str, Tensor]], Tensor]:
        """The model's forward, step by step, keeping what the relevance pass needs."""
        m = self.model
        z = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        rec = []
        for blk in m.blocks:
            a = blk.attn
            h1 = blk.norm1(z)
            b, n, _ = h1.shape
            q, k, v = a.qkv(h1).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
            attn = ((q * a.scale) @ k.transpose(-2, -1)).softmax(-1)
            ctx = (attn @ v).transpose(1, 2).reshape(b, n, -1)
            mid = z + a.proj(ctx)
            h2 = blk.norm2(mid)
            f1 = blk.mlp.act(blk.mlp.fc1(h2))
            out = mid + blk.mlp.fc2(f1)
            rec.append({"x": z, "h1": h1, "q": q, "k": k, "v": v, "A": attn, "ctx": ctx, "o": mid - z,
                        "mid": mid, "h2": h2, "f1": f1, "f2": out - mid})
            z = out
        pooled = m.norm(z)[:, 0]
        logits = m.head(m.head_drop(m.fc_norm(pooled)))
        with torch.no_grad():
            ref = m(x)
        if not torch.allclose(logits, ref, atol=1e-4, rtol=1e-4):
            raise ValueError(f"{self.name}: the step-by-step forward does not reproduce the model's logits "
                             f"(max diff {float((logits - ref).abs().max()):.2e}); unsupported model variant")
        rec[-1]["pooled"] = pooled
        return rec, logits

    def _attention_relevance(self, rec: list[dict[str, Tensor]], logits: Tensor, t: Tensor) -> list[Tensor]:
        """Per block (B, heads, T, T) LRP relevance of the attention probabilities."""
        m = self.model
        one_hot = torch.zeros_like(logits).scatter_(1, t[:, None], 1.0)
        pooled = rec[-1]["pooled"]
        r_pooled = linear_relprop(pooled, m.head.weight, one_hot)
        z_last = rec[-1]["mid"] + rec[-1]["f2"]
        r = torch.zeros_like(z_last)
        r[:, 0] = safe_divide(r_pooled, pooled) * pooled  # class-token selection (final norm: identity)
        cams: list[Tensor] = []
        for blk, s in zip(reversed(m.blocks), reversed(rec)):
            a = blk.attn
            r_skip, r_mlp = add_relprop(s["mid"], s["f2"], r)
            r_mlp = linear_relprop(s["h2"], blk.mlp.fc1.weight, linear_relprop(s["f1"], blk.mlp.fc2.weight, r_mlp))
            r = clone_relprop(s["mid"], r_skip, r_mlp)
            r_skip, r_att = add_relprop(s["x"], s["o"], r)
            b, n, c = r_att.shape
            r_ctx = linear_relprop(s["ctx"], a.proj.weight, r_att).reshape(b, n, a.num_heads, -1).transpose(1, 2)
            r_attn, r_v = matmul_relprop(s["A"], s["v"], r_ctx)
            r_attn, r_v = r_attn / 2, r_v / 2
            cams.append(r_attn)
            r_q, r_k = matmul_relprop(s["q"], s["k"].transpose(-2, -1), r_attn)  # softmax: identity
            r_qkv = torch.stack([r_q / 2, r_k.transpose(-2, -1) / 2, r_v]).permute(1, 3, 0, 2, 4).reshape(b, n, -1)
            r = clone_relprop(s["x"], r_skip, linear_relprop(s["h1"], a.qkv.weight, r_qkv))
        return cams[::-1]
