"""ReluFormer's fused no-grad path (issue 13) pinned to the previous implementation.

Reference: ``previous_layer_nograd`` below is the chunked no-grad block as it was before the
fused rewrite (module maths: LayerNorm, one qkv GEMM, ``kv_sums`` / ``linear_attend``, proj,
FFN), kept verbatim; the float64 linear == explicit N×N tests live in test_fcm_model.py.
"""

import pytest
import torch
import torch.nn.functional as F
from xaibench.adapters.fcm.model import _chunks, kv_sums, linear_attend

import xaibench


def previous_layer_nograd(layer, x, chunk, out):
    parts = _chunks(x.shape[1], chunk)
    d = x.shape[-1]
    phi_q = torch.empty_like(x)
    s = z = None
    for a, b in parts:
        q, k, v = layer.attn.qkv(layer.norm1(x[:, a:b])).split(d, -1)
        torch.clamp_min(q, 0, out=phi_q[:, a:b])
        sc, zc = kv_sums(F.relu(k), v, layer.attn.block)
        s, z = (sc, zc) if s is None else (s + sc, z + zc)
    if out is not x:
        out.copy_(x)
    for a, b in parts:
        xc = out[:, a:b]
        xc += layer.attn.proj(linear_attend(phi_q[:, a:b], s, z, layer.attn.head_of, layer.eps))
        xc += layer.ffn(layer.norm2(xc))
    return s, z


def previous_forward(model, events, chunk):
    """The previous no-grad ``ReluFormer.forward`` (classify task)."""
    x = torch.cat([model.embed(events[:, a:b]) for a, b in _chunks(events.shape[1], chunk)], 1)
    for layer in model.layers:
        previous_layer_nograd(layer, x, chunk, x)
    return model.head(model.norm(x))


def _model(chunk, d_model=64, heads=4, seed=0):
    torch.manual_seed(seed)
    model = xaibench.create_model("fcm.reluformer", n_markers=11, d_model=d_model, n_heads=heads, n_layers=2,
                                  chunk_size=chunk).eval()
    with torch.no_grad():  # non-trivial norms, so that folding their scale and shift is tested
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    return model


def _events(b, n, seed=1):
    return torch.randn(b, n, 11, generator=torch.Generator().manual_seed(seed)) * 2 + 1


@pytest.mark.parametrize("chunk,d_model,heads", [(1000, 64, 4), (333, 32, 2), (10_000, 16, 4)])
def test_fused_forward_equals_previous_float32(chunk, d_model, heads):
    model = _model(chunk, d_model, heads)
    e = _events(2, 2500)
    with torch.inference_mode():
        ours, ref = model(e), previous_forward(model, e, chunk)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_fused_sums_equal_previous_and_out_of_place():
    model = _model(500)
    layer = model.layers[0]
    x = torch.randn(2, 1700, 64, generator=torch.Generator().manual_seed(3))
    from xaibench.adapters.fcm.model import _layer_nograd
    with torch.no_grad():
        out_new, out_old = torch.empty_like(x), torch.empty_like(x)
        s_new, z_new = _layer_nograd(layer, x, 500, out_new)
        s_old, z_old = previous_layer_nograd(layer, x, 500, out_old)
    torch.testing.assert_close(out_new, out_old, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(s_new, s_old, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(z_new, z_old, atol=1e-3, rtol=1e-4)


def test_gradient_and_attention_equal_plain_autograd_float32():
    """fcm.gradient through the chunked layers (fused forward, recomputing backward) against
    plain autograd through the modules (chunk larger than N: the module maths itself)."""
    e = _events(1, 3000)
    chunked, plain = _model(700), _model(100_000)
    g = [xaibench.create_explainer("fcm.gradient", m, selection="all").explain(e, 1).values for m in (chunked, plain)]
    torch.testing.assert_close(g[0], g[1], atol=1e-5, rtol=1e-3)


def test_attention_equals_previous_hidden_float32():
    """fcm.attention (fused hidden features) against the same scores from the previous path."""
    from xaibench.adapters.fcm.explainers import attention_received
    model, e = _model(700), _events(1, 3000)
    q = torch.zeros(1, 3000, dtype=torch.bool)
    q[0, ::7] = True
    ours = xaibench.create_explainer("fcm.attention", model, queries=q, layer=1).explain(e).values
    with torch.no_grad():
        x = model.embed(e)
        previous_layer_nograd(model.layers[0], x, 700, x)
        layer = model.layers[1]
        ref = attention_received(layer.queries(x[0][q[0]][None])[0], layer.keys(x)[0], model.n_heads, layer.eps)
    torch.testing.assert_close(ours[0], ref, atol=1e-4, rtol=1e-4)


# --- the fused paths against a plain, unchunked reference (module maths over all events at once) ---

def reference_forward(model, events):
    """The model's own maths, unchunked: embed, each ``ReluFormerLayer.forward`` over all events, head."""
    x = model.embed(events)
    for layer in model.layers:
        x = layer(x)
    return model.head(model.norm(x))


def _odd_model(chunk, dead_head=False):
    """A float32 model with non-trivial norms; ``dead_head``: layer 0's head 1 has ReLU(K) = 0 for
    every event (its normaliser is clamped to eps) and layer 1's head 0 has ReLU(Q) = 0."""
    model = _model(chunk)
    if dead_head:
        with torch.no_grad():
            model.layers[0].attn.qkv.bias[64 + 16:64 + 32] = -1e3
            model.layers[1].attn.qkv.bias[0:16] = -1e3
    return model


CASES = [(1, 2501, 1000), (3, 777, 256), (2, 100, 1000), (1, 1000, 1000)]  # odd N, batch > 1, N < chunk, N == chunk


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("b,n,chunk", CASES)
def test_fused_forward_equals_reference(b, n, chunk, onednn, monkeypatch):
    from xaibench.adapters.fcm import model as fcm_model
    if not onednn:
        monkeypatch.setattr(fcm_model, "_LINEAR_POINTWISE", None)
    for dead in (False, True):
        model, e = _odd_model(chunk, dead), _events(b, n)
        with torch.inference_mode():
            ours, ref = model(e), reference_forward(model, e)
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("b,n,chunk", CASES)
def test_hand_backward_equals_reference_autograd(b, n, chunk):
    """The hand-written input gradient (frozen parameters) against autograd through the unchunked module maths."""
    for dead in (False, True):
        model, e = _odd_model(min(chunk, n - 1), dead), _events(b, n)  # chunk < N: the chunked autograd function
        for p in model.parameters():
            p.requires_grad_(False)
        w = torch.randn(b, n, 2, generator=torch.Generator().manual_seed(5))
        grads = []
        for fn in (model, lambda x, m=model: reference_forward(m, x)):
            x = e.clone().requires_grad_(True)
            grads.append(torch.autograd.grad((fn(x) * w).sum(), x)[0])
        torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-3)


def test_hand_backward_of_one_layer_float64():
    """One block's hand-written input gradient against autograd, float64 (tight: the maths, not rounding)."""
    from xaibench.adapters.fcm.model import _ChunkedLayer
    model = _odd_model(300, dead_head=True).double()
    for p in model.parameters():
        p.requires_grad_(False)
    x0 = torch.randn(2, 1001, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    gy = torch.randn(2, 1001, 64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for layer in model.layers:
        a, b = (x0.clone().requires_grad_(True) for _ in range(2))
        ga = torch.autograd.grad(_ChunkedLayer.apply(a, layer, 300, *layer.parameters()), a, gy)[0]
        gb = torch.autograd.grad(layer(b), b, gy)[0]
        torch.testing.assert_close(ga, gb, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("b,n,chunk", CASES)
def test_attention_equals_reference(b, n, chunk):
    from xaibench.adapters.fcm.explainers import attention_received
    model, e = _odd_model(chunk), _events(b, n)
    q = torch.zeros(b, n, dtype=torch.bool)
    q[:, 3::5] = True
    for li in (0, 1):
        ours = xaibench.create_explainer("fcm.attention", model, queries=q, layer=li, n_queries=None).explain(e).values
        with torch.no_grad():
            x = model.embed(e)
            for layer in model.layers[:li]:
                x = layer(x)
            layer = model.layers[li]
            ref = torch.stack([attention_received(layer.queries(x[i][q[i]][None])[0], layer.keys(x[i][None])[0],
                                                  model.n_heads, layer.eps) for i in range(b)])
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_parallel_chunk_workers_equal_one_thread():
    """Chunks on parallel single-threaded workers (torch threads > 1) give the one-thread results
    (per-chunk partial sums, added in chunk order, whichever worker ran a chunk; the unchunked
    GEMMs around them may round differently with more threads)."""
    model, e = _odd_model(300, dead_head=True), _events(2, 2001)
    for p in model.parameters():
        p.requires_grad_(False)
    q = torch.zeros(2, 2001, dtype=torch.bool)
    q[:, ::9] = True
    threads, out = torch.get_num_threads(), []
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            with torch.inference_mode():
                fwd = model(e)
            x = e.clone().requires_grad_(True)
            grad = torch.autograd.grad(model(x)[..., 1].sum(), x)[0]
            att = xaibench.create_explainer("fcm.attention", model, queries=q, layer=1).explain(e).values
            out.append((fwd, grad, att))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
