"""A small masked autoencoder (He et al. 2022) for self-supervised pre-training of the zoo ViTs.

The encoder is an ordinary timm ``VisionTransformer``; it sees a random 25% of the patch
tokens (plus the class token), a light decoder (one block) fills in mask tokens and
predicts the per-patch-normalised pixels of the hidden patches. After pre-training,
``model.encoder`` is copied into a classifier and fine-tuned.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xaibench.types import Batch


class MaskedAutoencoder(nn.Module):
    """MAE around a timm ``VisionTransformer`` encoder with a learned position embedding.

    Args:
        encoder: the ViT to pre-train (class token, ``pos_embed`` covering it).
        decoder_dim: width of the decoder; decoder_depth: its blocks.

    ``forward(images, mask_ratio, generator)`` returns the scalar reconstruction loss.
    """

    def __init__(self, encoder: nn.Module, decoder_dim: int = 48, decoder_depth: int = 1, decoder_heads: int = 4) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.encoder = encoder
        dim = encoder.embed_dim
        self.patch = int(encoder.patch_embed.patch_size[0])
        n = encoder.patch_embed.num_patches
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.randn(1, n + 1, decoder_dim) * 0.02)
        self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, mlp_ratio=2.0) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * 3)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, p·p·3) in raster patch order."""
        b, c, h, w = images.shape
        p = self.patch
        x = images.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, images: Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None) -> Tensor:
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
        b, n, d = x.shape
        keep = max(1, int(n * (1 - mask_ratio)))
        ids_shuffle = torch.rand(b, n, generator=generator).argsort(1)
        ids_restore = ids_shuffle.argsort(1)
        x = x.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(b, -1, -1)
        x = enc.norm(enc.blocks(enc.norm_pre(torch.cat([cls, x], 1))))
        y = self.decoder_embed(x)
        fill = torch.cat([y[:, 1:], self.mask_token.expand(b, n - keep, -1)], 1)
        fill = fill.gather(1, ids_restore[..., None].expand(-1, -1, y.shape[-1]))
        y = self.decoder_blocks(torch.cat([y[:, :1], fill], 1) + self.decoder_pos)
        pred = self.decoder_pred(self.decoder_norm(y))[:, 1:]
        target = self.patchify(images)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        hidden = torch.ones(b, n)
        hidden[:, :keep] = 0
        hidden = hidden.gather(1, ids_restore)
        return (((pred - target) ** 2).mean(-1) * hidden).sum() / hidden.sum()


def train_mae(model: MaskedAutoencoder, pool: Batch, *, epochs: int, lr: float, seed: int, mask_ratio: float = 0.75,
              batch_size: int = 64, desc: str = "mae") -> dict[str, Any]:
    """Pre-train ``model`` on ``pool.inputs`` (labels unused), AdamW + one-cycle, seeded.

    Returns ``{"mae_loss_first_epoch", "mae_loss_last_epoch", "epochs", "mask_ratio"}``."""
    from xaibench.progress import progress_bar

    from .models import shuffled_batches

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    per_epoch = (len(pool) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.15)
    losses = []
    model.train()
    with progress_bar(total=epochs * per_epoch, desc=desc) as advance:
        for ep in range(epochs):
            total = 0.0
            for batch in shuffled_batches(pool, batch_size, seed, ep):
                loss = model(batch.inputs, mask_ratio, g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(batch)
                advance(1)
            losses.append(total / len(pool))
    model.eval()
    return {"mae_loss_first_epoch": round(losses[0], 4), "mae_loss_last_epoch": round(losses[-1], 4),
            "epochs": epochs, "mask_ratio": mask_ratio}
