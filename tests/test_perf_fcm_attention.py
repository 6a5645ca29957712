"""fcm.attention's scores as one GEMM against block-diagonal weights (issue 13, speed): pinned to
the previous formulation (per-head einsum over the permuted keys, kept here as the reference)
and to the explicit N×N attention matrix."""

import torch
import torch.nn.functional as F
from xaibench.adapters.fcm.explainers import attention_received


def previous_attention_received(phi_q, phi_k, heads, eps=1e-6):
    """The implementation before the GEMM rewrite, verbatim."""
    n, d = phi_k.shape
    k = phi_k.reshape(n, heads, d // heads)
    q = phi_q.reshape(-1, heads, d // heads)
    z = k.sum(0)
    w = (q / (q * z).sum(-1, keepdim=True).clamp_min(eps)).sum(0)
    return torch.einsum("nhd,hd->hn", k, w)


def test_attention_received_equals_previous_and_explicit():
    g = torch.Generator().manual_seed(3)
    for heads, d, n, m in ((4, 64, 5000, 300), (2, 8, 40, 7), (1, 16, 100, 1)):
        q, k = F.relu(torch.randn(m, d, generator=g)), F.relu(torch.randn(n, d, generator=g))
        q[0] = 0  # an all-zero query row adds nothing
        got = attention_received(q, k, heads)
        assert got.shape == (heads, n) and got.is_contiguous()
        torch.testing.assert_close(got, previous_attention_received(q, k, heads), atol=1e-6, rtol=1e-5)
        dh = d // heads
        explicit = []
        for h in range(heads):  # the N×N (here M×N) matrix, row-normalised
            a = q[:, h * dh:(h + 1) * dh] @ k[:, h * dh:(h + 1) * dh].T
            explicit.append((a / a.sum(1, keepdim=True).clamp_min(1e-6)).sum(0))
        torch.testing.assert_close(got, torch.stack(explicit), atol=1e-5, rtol=1e-4)
