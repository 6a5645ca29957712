"""Attention capture for timm Vision Transformers, and the token layout of a ViT.

:func:`attention_capture` records every block's attention probabilities (B, heads, T, T)
during one forward pass and, after :meth:`AttentionStore.backward`, their gradients
∂y/∂A from a single backward for the whole batch. It works on any timm
``VisionTransformer`` (and relatives: DeiT distilled, register-token models, models the
user built or loaded) whose attention modules follow timm's ``Attention`` layout
(``fused_attn`` switch, ``attn_drop`` applied to the softmax probabilities).

Pitfall handled here: with ``fused_attn=True`` (timm's default) attention runs through
``F.scaled_dot_product_attention`` and never calls ``attn_drop``, so hooks there see
nothing. The context switches fused attention off for its duration (logits change by
≤ 1e-6) and restores every flag, hook and the grad mode on exit, even on error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TokenLayout:
    """Where the patch tokens sit in a ViT's sequence.

    Args:
        num_prefix: class + register/distillation tokens before the patches.
        grid: (h, w) patch grid of the input.
        readout: (T,) weights over tokens of the rows that feed the head (sum 1): the class
            token for ``global_pool="token"``, class + distillation token for DeiT-distilled,
            the mean of the patch tokens for average/max/attention pooling.
    """

    num_prefix: int
    grid: tuple[int, int]
    readout: Tensor

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.grid[0] * self.grid[1]


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a timm ViT, in block order.

    A module counts when it has a ``fused_attn`` flag and an ``attn_drop`` module (timm's
    ``Attention`` and its relatives). Inside ``model.blocks`` when it exists, so an
    attention-pooling head is not mistaken for a block.

    Raises:
        ValueError: the model has no such module (not a timm-style ViT).
    """
    root = getattr(model, "blocks", model)
    found = [m for m in root.modules() if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)]
    if not found:
        raise ValueError(
            f"vit: found no timm-style attention module (with fused_attn and attn_drop) in {type(model).__name__}; "
            "vit.* explainers need a timm VisionTransformer or a model whose blocks use timm's Attention"
        )
    return found


def token_layout(model: nn.Module, inputs: Tensor, readout: str | int = "auto") -> TokenLayout:
    """The token layout of ``model`` for ``inputs`` (B, C, H, W).

    Args:
        readout: ``"auto"`` (from the model's pooling), ``"cls"`` (token 0), ``"patches"``
            (mean over patch tokens) or a token index.

    Raises:
        ValueError: no ``patch_embed``, or an input size the model does not accept.
    """
    pe = getattr(model, "patch_embed", None)
    if pe is None or not hasattr(pe, "patch_size"):
        raise ValueError(f"vit: {type(model).__name__} has no patch_embed with patch_size; not a timm ViT")
    ph, pw = _pair(pe.patch_size)
    h, w = int(inputs.shape[-2]), int(inputs.shape[-1])
    dynamic = bool(getattr(model, "dynamic_img_size", False) or getattr(pe, "dynamic_img_size", False))
    img = getattr(pe, "img_size", None)
    if not dynamic and img is not None and tuple(_pair(img)) != (h, w):
        raise ValueError(
            f"vit: expected inputs (B, C, {_pair(img)[0]}, {_pair(img)[1]}) for this model, got {tuple(inputs.shape)}; "
            "resize the images or build the model with img_size= (or dynamic_img_size=True)"
        )
    grid = (h // ph, w // pw) if dynamic else tuple(int(g) for g in pe.grid_size)
    has_cls = getattr(model, "cls_token", None) is not None
    prefix = int(getattr(model, "num_prefix_tokens", 1 if has_cls else 0))
    t = prefix + grid[0] * grid[1]
    weights = torch.zeros(t)
    if readout == "auto":
        pool = getattr(model, "global_pool", "token")
        if pool == "token" and has_cls:
            readout = "distilled" if getattr(model, "dist_token", None) is not None else "cls"
        else:
            readout = "with_prefix" if getattr(model, "pool_include_prefix", False) else "patches"
    if readout == "cls":
        weights[0] = 1.0
    elif readout == "distilled":  # DeiT-distilled averages the class and distillation heads
        weights[:2] = 0.5
    elif readout == "patches":
        weights[prefix:] = 1.0 / (t - prefix)
    elif readout == "with_prefix":
        weights[:] = 1.0 / t
    elif isinstance(readout, int) and not isinstance(readout, bool) and -t <= readout < t:
        weights[readout] = 1.0
    else:
        raise ValueError(f"vit: readout must be 'auto', 'cls', 'patches' or a token index in [0, {t}), got {readout!r}")
    return TokenLayout(num_prefix=prefix, grid=(int(grid[0]), int(grid[1])), readout=weights)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


@dataclass
class AttentionStore:
    """What :func:`attention_capture` records: per block (B, heads, T, T) tensors.

    ``maps[l]`` are the softmax probabilities of block ``l`` (still in the autograd graph
    during the context); ``grads[l]`` is ∂score/∂A_l after :meth:`backward`.
    """

    n_blocks: int
    maps: list[Tensor | None] = field(default_factory=list)
    grads: list[Tensor | None] = field(default_factory=list)

    def check(self, who: str = "vit") -> None:
        """Raise ``ValueError`` unless every block's attention was captured exactly once."""
        missing = [i for i, a in enumerate(self.maps) if a is None]
        if missing:
            raise ValueError(
                f"{who}: attention of block(s) {missing} was not captured; the model's forward did not call "
                "their attn_drop (a custom attention forward?); these explainers need timm's unfused Attention path"
            )

    def backward(self, score: Tensor) -> list[Tensor]:
        """∂score/∂A for every block with one backward (no parameter gradients)."""
        self.check()
        maps = [a for a in self.maps if a is not None]
        if not all(a.requires_grad for a in maps):
            raise ValueError("vit: attention maps do not require grad; run the forward under torch.enable_grad() "
                             "with an input that requires grad")
        self.grads = list(torch.autograd.grad(score, maps, allow_unused=True))
        self.grads = [torch.zeros_like(a) if g is None else g for a, g in zip(maps, self.grads)]
        return self.grads  # type: ignore[return-value]


@contextlib.contextmanager
def attention_capture(model: nn.Module, *, grad: bool = False) -> Iterator[AttentionStore]:
    """Record every block's attention probabilities during the forward passes in the block.

    Args:
        model: a timm ViT (any weights; the user's own model is fine).
        grad: run the block with gradients enabled (for :meth:`AttentionStore.backward`);
            otherwise the caller's grad mode is kept.

    Yields:
        an :class:`AttentionStore`; after a forward, ``store.maps[l]`` is (B, heads, T, T).

    Example:
        >>> with attention_capture(model) as store:
        ...     model(images)
        >>> store.maps[-1].shape  # (B, heads, T, T)

    The model is left exactly as found: ``fused_attn`` flags, hooks and grad mode.
    """
    mods = attention_modules(model)
    store = AttentionStore(n_blocks=len(mods), maps=[None] * len(mods), grads=[None] * len(mods))
    flags = [m.fused_attn for m in mods]
    handles = []

    def make_hook(i: int):
        def hook(_m: nn.Module, inp: tuple[Tensor, ...], _out: Tensor) -> None:
            store.maps[i] = inp[0]  # the probabilities before dropout
        return hook

    grad_was = torch.is_grad_enabled()
    try:
        for i, m in enumerate(mods):
            m.fused_attn = False
            handles.append(m.attn_drop.register_forward_hook(make_hook(i)))
        if grad:
            torch.set_grad_enabled(True)
        yield store
    finally:
        torch.set_grad_enabled(grad_was)
        for h in handles:
            h.remove()
        for m, f in zip(mods, flags):
            m.fused_attn = f
