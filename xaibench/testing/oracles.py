"""Test oracles: independent reference computations and model-state probes for tests.

Nothing in the library calls these; they live here (not beside the code they check) so that
production modules hold no test-only code, and so that plugin authors can use them too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..explainers import Explainer


class ConvReluNet(nn.Module):
    """Conv / ReLU / Linear only (3x12x12 inputs, 3 classes, seeded weights), so that a backward
    rule (DeepLIFT's rescale rule, the deconvnet pass) can be written out by hand layer by layer
    over ``self.layers``."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.layers = nn.ModuleList([
            nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(5, 4, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(4 * 6 * 6, 10), nn.ReLU(), nn.Linear(10, 3),
        ])
        for p in self.parameters():
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.4)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def hook_count(model: nn.Module) -> int:
    """Number of hooks registered on any module of ``model`` (for leak checks)."""
    n = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            n += len(getattr(m, attr, {}) or {})
    return n


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Everything an explainer must leave unchanged: modes, grad flags, hooks, in-place and
    fused-attention switches, and a parameter checksum."""
    with torch.no_grad():
        checksum = float(sum((p.double().sum() for p in model.parameters()), 0.0))
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": hook_count(model),
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "fused_attn": [getattr(m, "fused_attn", None) for m in model.modules()],
        "types": [type(m).__name__ for m in model.modules()],
        "params": checksum,
    }


def explicit_reluformer_forward(model: nn.Module, events: Tensor) -> Tensor:
    """The N×N reference forward: materialised, row-normalised attention A = ReLU(Q)ReLU(K)ᵀ.

    O(N²) memory: tests only. Same output as ``model(events)`` for an
    ``xaibench.adapters.fcm.model.ReluFormer`` (read through its attributes, so the core
    does not import the family)."""
    def attend(phi_q: Tensor, phi_k: Tensor, v: Tensor, heads: int, eps: float) -> Tensor:
        b, nq, d = phi_q.shape
        split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)
        a = split(phi_q) @ split(phi_k).transpose(-1, -2)  # (B, H, Nq, N)
        a = a / a.sum(-1, keepdim=True).clamp_min(eps)
        return (a @ split(v)).transpose(1, 2).reshape(b, nq, d)

    x = model.embed(events)
    for layer in model.layers:
        h = layer.norm1(x)
        qkv = [layer.attn.project(h, w) for w in "qkv"]
        x = x + layer.attn.proj(attend(F.relu(qkv[0]), F.relu(qkv[1]), qkv[2], model.n_heads, layer.eps))
        x = x + layer.ffn(layer.norm2(x))
    h = model.norm(x)
    if model.task == "classify":
        return model.head(h)
    head = model.head
    q = F.relu(head.query).expand(h.shape[0], -1, -1)
    pooled = attend(q, F.relu(head.key(h)), head.value(h), model.n_heads, head.eps)
    return head.mlp(pooled).reshape(h.shape[0], head.n_polygons, head.n_vertices, 2)


class SobelEdges(Explainer):
    """A model-independent map for randomisation checks (Adebayo et al. 2018): the Sobel gradient
    magnitude of the input's mean channel; it ignores the model entirely. Not registered: a test
    registers it under its own key (``register_explainer("test.edges")(SobelEdges)``)."""

    kind = "pixel"

    def explain(self, inputs, target=None):
        g = inputs.mean(1, keepdim=True)
        kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=inputs.device, dtype=inputs.dtype)[None, None]
        gx = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kx)
        gy = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kx.transpose(-1, -2))
        return self._attribution((gx**2 + gy**2).sqrt()[:, 0])
