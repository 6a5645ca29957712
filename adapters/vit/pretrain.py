"""Self-supervised pre-training of the zoo ViTs: a small masked autoencoder (He et al. 2022) and DINO.

MAE: the encoder is an ordinary timm ``VisionTransformer``; it sees a random 25% of the
patch tokens (plus the class token), a light decoder (one block) fills in mask tokens and
predicts the per-patch-normalised pixels of the hidden patches.

DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"): a
student ViT matches a momentum (EMA) teacher's centred, sharpened outputs across crops
(2 global + 4 local), no labels.

After pre-training, ``model.encoder`` (MAE: the encoder; DINO: the teacher backbone) is
copied into a classifier and fine-tuned.
"""

from __future__ import annotations

import math
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
              batch_size: int = 64, desc: str = "mae", data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pre-train ``model`` on ``pool.inputs`` (labels unused), AdamW + one-cycle, seeded; ``data``: the
    ``shape_classes`` settings of the held-out images the returned ``test_mae_loss`` is measured on.

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
            "epochs": epochs, "mask_ratio": mask_ratio,
            "test_mae_loss": round(held_out_mae_loss(model, mask_ratio=mask_ratio, **(data or {})), 4),
            "mae_loss_floor": MAE_LOSS_FLOOR}


#: A pre-trained MAE must reconstruct hidden patches clearly better than chance: its targets are
#: per-patch normalised, so predicting any patch's mean (zero) scores 1.0.
MAE_LOSS_FLOOR = 0.85


@torch.no_grad()
def held_out_mae_loss(model: MaskedAutoencoder, n: int = 512, mask_ratio: float = 0.75, seed: int = 0,
                      **params: Any) -> float:
    """Mean reconstruction loss on the first ``n`` held-out ``shape_classes`` images (split "test";
    ``params``: the dataset's settings, those the model pre-trained on)."""
    from xaibench import create_dataset

    g = torch.Generator().manual_seed(seed)
    total = count = 0.0
    for batch in create_dataset("shape_classes", n=n, batch_size=128, seed=0, split="test", **params):
        total += float(model(batch.inputs, mask_ratio, g)) * len(batch)
        count += len(batch)
    return total / count


# ----------------------------------------------------------------------------- DINO

def random_resized_crops(images: Tensor, n: int, size: int, scale: tuple[float, float], generator: torch.Generator,
                         flip: bool = True, jitter: float = 0.2, colour: float = 0.0, grey: float = 0.0,
                         solarize: float = 0.0, rotate: bool = False) -> list[Tensor]:
    """``n`` random-resized crops of every image, each (B, 3, size, size), seeded by ``generator``.

    A crop covers a random share ``scale`` of the image area (aspect ratio 3/4 to 4/3) at a
    random place, is resampled bilinearly to ``size`` and randomly flipped; brightness and
    contrast are jittered by up to ``jitter`` (the DINO augmentations, minus colour/blur,
    scaled to 64-px images)."""
    import math

    b = images.shape[0]
    out = []
    for _ in range(n):
        area = torch.empty(b).uniform_(*scale, generator=generator)
        log_r = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
        w = (area * log_r.exp()).sqrt().clamp(max=1.0)
        h = (area / log_r.exp()).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
        sx = torch.where(torch.rand(b, generator=generator) < 0.5, -w, w) if flip else w
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
        if rotate:  # the view turned by a random angle about its centre
            a = torch.rand(b, generator=generator) * (2 * math.pi)
            cos, sin = a.cos(), a.sin()
            theta[:, 0, 0], theta[:, 0, 1] = sx * cos, -h * sin
            theta[:, 1, 0], theta[:, 1, 1] = sx * sin, h * cos
        grid = torch.nn.functional.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
        crop = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        gain = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        shift = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * jitter * 0.5
        mean = crop.mean((1, 2, 3), keepdim=True)
        crop = ((crop - mean) * gain + mean + shift).clamp(0, 1)
        if colour > 0:  # per-channel gain about the grey level: a saturation / hue shift
            grey_level = crop.mean(1, keepdim=True)
            tint = 1 + (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1) * colour
            crop = ((crop - grey_level) * tint + grey_level).clamp(0, 1)
        if grey > 0:
            to_grey = (torch.rand(b, 1, 1, 1, generator=generator) < grey)
            crop = torch.where(to_grey, crop.mean(1, keepdim=True).expand_as(crop), crop)
        if solarize > 0:
            sol = (torch.rand(b, 1, 1, 1, generator=generator) < solarize)
            crop = torch.where(sol & (crop >= 0.5), 1 - crop, crop)
        out.append(crop)
    return out


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2-normalised bottleneck -> weight-normalised linear (g = 1).

    (B, dim) -> (B, out_dim) logits of the self-distillation 'classes'."""

    def __init__(self, dim: int, out_dim: int = 256, hidden: int = 128, bottleneck: int = 32,
                 use_bn: bool = False, norm_last: bool = True) -> None:
        super().__init__()
        def norm() -> nn.Module:
            return nn.BatchNorm1d(hidden) if use_bn else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), norm(), nn.GELU(), nn.Linear(hidden, hidden), norm(), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.Linear(bottleneck, out_dim, bias=False)
        self.norm_last = norm_last
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.normalize(self.mlp(x), dim=-1)
        w = self.last.weight
        return x @ (nn.functional.normalize(w, dim=1) if self.norm_last else w).T


class DINO(nn.Module):
    """DINO (Caron et al. 2021): self-distillation with no labels, at the zoo's tiny scale.

    A student (ViT + :class:`DINOHead`) is trained to match, on every crop, the sharpened and
    centred output of a momentum teacher (an exponential moving average of the student) on
    the *other* global crops. Multi-crop: ``n_global`` global crops (``global_scale`` of the
    image, resampled to the full size) seen by teacher and student, ``n_local`` local crops
    (``local_scale``, at half size) seen by the student only. Centering (a running mean of the
    teacher outputs, momentum ``center_momentum``) and sharpening (teacher temperature
    ``teacher_temp`` < student ``student_temp``) keep it from collapsing.

    Args:
        encoder: the student ViT (``num_classes=0``, ``dynamic_img_size=True`` for the local
            crops); the teacher is a copy. ``model.encoder`` is the **teacher** backbone, the
            one DINO fine-tunes downstream.

    ``forward(images, generator)`` returns the scalar loss; call :meth:`update_teacher` after
    each optimiser step.
    """

    def __init__(self, encoder: nn.Module, out_dim: int = 256, teacher_temp: float = 0.04, student_temp: float = 0.1,
                 center_momentum: float = 0.9, n_global: int = 2, n_local: int = 4,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.1, 0.4),
                 colour: float = 0.0, grey: float = 0.0, solarize: float = 0.0, rotate: bool = False,
                 head: dict[str, Any] | None = None) -> None:
        super().__init__()
        import copy

        self.student = encoder
        self.student_head = DINOHead(encoder.embed_dim, out_dim, **(head or {}))
        self.encoder = copy.deepcopy(encoder)
        self.teacher_head = copy.deepcopy(self.student_head)
        for p in [*self.encoder.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp, self.student_temp, self.center_momentum = teacher_temp, student_temp, center_momentum
        self.n_global, self.n_local = n_global, n_local
        self.global_scale, self.local_scale = global_scale, local_scale
        self.colour, self.grey, self.solarize, self.rotate = colour, grey, solarize, rotate

    def crops(self, images: Tensor, generator: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
        """(global crops at full size, local crops at half size), each a list of (B, 3, s, s)."""
        size = images.shape[-1]
        aug = {"colour": self.colour, "grey": self.grey, "rotate": self.rotate}
        # asymmetric, as in DINO: only the second global view may be solarised
        glob = [random_resized_crops(images, 1, size, self.global_scale, generator, **aug,
                                     solarize=self.solarize if i == 1 else 0.0)[0] for i in range(self.n_global)]
        loc = random_resized_crops(images, self.n_local, size // 2, self.local_scale, generator, **aug)
        return glob, loc

    def distillation_loss(self, student_out: list[Tensor], teacher_out: list[Tensor]) -> Tensor:
        """Mean over (teacher crop i, student crop j ≠ i) of H(softmax((t_i − c)/τ_t), softmax(s_j/τ_s))."""
        targets = [nn.functional.softmax((t - self.center) / self.teacher_temp, -1) for t in teacher_out]
        total, n = student_out[0].new_zeros(()), 0
        for i, q in enumerate(targets):
            for j, s in enumerate(student_out):
                if j == i:
                    continue
                total = total + (-q * nn.functional.log_softmax(s / self.student_temp, -1)).sum(-1).mean()
                n += 1
        return total / n

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        glob, loc = self.crops(images, generator)
        with torch.no_grad():
            teacher_out = [self.teacher_head(self.encoder(x)) for x in glob]
        student_out = [self.student_head(self.student(x)) for x in glob + loc]
        loss = self.distillation_loss(student_out, teacher_out)
        if self.training:
            self.update_center(torch.cat(teacher_out))
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        """c ← m·c + (1 − m)·mean of this batch's teacher outputs (DINO eq. 4)."""
        self.center.mul_(self.center_momentum).add_(teacher_out.mean(0, keepdim=True), alpha=1 - self.center_momentum)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """θ_t ← λ·θ_t + (1 − λ)·θ_s for backbone and head."""
        pairs = [(self.encoder, self.student), (self.teacher_head, self.student_head)]
        for teacher, student in pairs:
            for pt, ps in zip(teacher.parameters(), student.parameters()):
                pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def cosine(start: float, end: float, t: float) -> float:
    """Cosine schedule from ``start`` (t = 0) to ``end`` (t = 1)."""
    import math
    return end + (start - end) * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0))) / 2


def train_dino(model: DINO, pool: Batch, *, epochs: int, lr: float, seed: int, batch_size: int = 64,
               momentum: tuple[float, float] = (0.996, 1.0), weight_decay: tuple[float, float] = (0.04, 0.4),
               warmup_epochs: float = 1.0, freeze_last_epochs: float = 1.0, clip: float = 3.0, min_lr: float = 1e-6,
               checkpoint: str | None = None, checkpoint_every: int = 100, monitor: Any = None,
               monitor_every: int = 0, desc: str = "dino") -> dict[str, Any]:
    """Self-distillation pre-training on ``pool.inputs`` (labels unused), seeded, with DINO's schedules:
    learning rate linear warm-up over ``warmup_epochs`` then cosine to ``min_lr``; AdamW weight decay
    (weights only, not norms/biases/tokens) cosine from ``weight_decay[0]`` to ``[1]``; teacher momentum
    cosine from ``momentum[0]`` to ``[1]``; the last head layer frozen for ``freeze_last_epochs``;
    gradient norm clipped at ``clip``.

    ``checkpoint``: a file written every ``checkpoint_every`` steps and resumed from (the run continues where it
    stopped, same result). ``monitor(model, step) -> dict``, every ``monitor_every`` steps, logs to stdout.

    Returns losses and the teacher's mean target entropy (nats; ``log(out_dim)`` = collapsed to
    uniform) of the first and last epoch."""
    import os
    import time

    from xaibench.progress import progress_bar

    from .models import shuffled_batches

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    per_epoch = (len(pool) + batch_size - 1) // batch_size
    n_steps = epochs * per_epoch
    warm, frozen = int(warmup_epochs * per_epoch), int(freeze_last_epochs * per_epoch)
    decay, plain = [], []
    for n, p in model.named_parameters():
        if n.startswith("student"):
            (decay if p.ndim > 1 and not n.endswith(("pos_embed", "cls_token")) else plain).append(p)
    params = decay + plain
    opt = torch.optim.AdamW([{"params": decay}, {"params": plain, "weight_decay": 0.0}], lr=lr)
    step, sums = 0, {}
    from xaibench.checkpoint import load_state, optimizer_state, save_state

    if checkpoint and os.path.exists(checkpoint):
        ck = load_state(checkpoint)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(optimizer_state(ck["opt"]))
        g.set_state(ck["generator"])
        step, sums = ck["step"], ck["sums"]
        print(f"{desc}: resumed at step {step} of {n_steps}", flush=True)
    model.train()
    t0 = time.perf_counter()
    with progress_bar(total=n_steps, desc=desc) as advance:
        advance(step)
        while step < n_steps:
            ep, skip = divmod(step, per_epoch)
            for batch in shuffled_batches(pool, batch_size, seed, ep)[skip:]:
                cur_lr = lr * step / max(1, warm) if step < warm else cosine(lr, min_lr, (step - warm) / max(1, n_steps - warm))
                for group in opt.param_groups:
                    group["lr"] = cur_lr
                opt.param_groups[0]["weight_decay"] = cosine(weight_decay[0], weight_decay[1], step / n_steps)
                glob, loc = model.crops(batch.inputs, g)
                with torch.no_grad():
                    teacher_out = [model.teacher_head(model.encoder(x)) for x in glob]
                student_out = [model.student_head(model.student(x)) for x in glob + loc]
                loss = model.distillation_loss(student_out, teacher_out)
                with torch.no_grad():
                    q = nn.functional.softmax((torch.cat(teacher_out) - model.center) / model.teacher_temp, -1)
                    entropy = float(-(q * q.clamp_min(1e-12).log()).sum(-1).mean())
                model.update_center(torch.cat(teacher_out))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if step < frozen:
                    model.student_head.last.weight.grad = None
                nn.utils.clip_grad_norm_(params, clip)
                opt.step()
                model.update_teacher(cosine(momentum[0], momentum[1], step / n_steps))
                for key, v in ((f"loss{ep}", loss.item()), (f"entropy{ep}", entropy), (f"n{ep}", 1.0)):
                    sums[key] = sums.get(key, 0.0) + v
                step += 1
                advance(1)
                if monitor is not None and monitor_every and (step % monitor_every == 0 or step == n_steps):
                    model.eval()
                    extra = monitor(model, step)
                    model.train()
                    print(f"{desc} step {step}/{n_steps} loss {sums[f'loss{ep}'] / sums[f'n{ep}']:.3f} "
                          f"teacher entropy {sums[f'entropy{ep}'] / sums[f'n{ep}']:.3f} lr {cur_lr:.2e} "
                          f"{time.perf_counter() - t0:.0f}s {extra}", flush=True)
                if checkpoint and (step % checkpoint_every == 0 or step == n_steps):
                    save_state(checkpoint, {"model": model.state_dict(), "opt": opt.state_dict(),
                                            "generator": g.get_state(), "step": step, "sums": sums})
    model.eval()

    def mean(key: str, ep: int) -> float:
        return round(sums[f"{key}{ep}"] / sums[f"n{ep}"], 4)

    return {"dino_loss_first_epoch": mean("loss", 0), "dino_loss_last_epoch": mean("loss", epochs - 1),
            "teacher_entropy_first_epoch": mean("entropy", 0), "teacher_entropy_last_epoch": mean("entropy", epochs - 1),
            "uniform_entropy": round(math.log(model.center.shape[-1]), 4),
            "epochs": epochs, "steps": n_steps, "batch_size": batch_size, "lr": lr, "n_local": model.n_local,
            "out_dim": model.center.shape[-1], "teacher_temp": model.teacher_temp, "student_temp": model.student_temp,
            "center_momentum": model.center_momentum, "momentum": list(momentum), "weight_decay": list(weight_decay)}


@torch.no_grad()
def knn_accuracy(encoder: nn.Module, train: Batch, test: Batch, k: int = 20) -> float:
    """k-NN (cosine, majority vote) accuracy of ``encoder``'s features: a label-free check
    that self-supervised features separate the classes (DINO's own evaluation)."""
    was = encoder.training
    encoder.eval()
    f_tr = nn.functional.normalize(encoder(train.inputs), dim=-1)
    f_te = nn.functional.normalize(encoder(test.inputs), dim=-1)
    encoder.train(was)
    nn_idx = (f_te @ f_tr.T).topk(k, dim=1).indices
    votes = nn.functional.one_hot(train.targets[nn_idx], int(train.targets.max()) + 1).sum(1)
    return float((votes.argmax(1) == test.targets).float().mean())
