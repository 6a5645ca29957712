"""ReluFormer: a set transformer for flow-cytometry events with ReLU linear attention.

ReluFormer is cosFormer without the cosine re-weighting (Kowarsch et al. 2023): the similarity
of events i and j in a head is ReLU(Q_i)·ReLU(K_j), so the attention output is

    out_i = ReLU(Q_i) (ReLU(K)ᵀ V) / max(ReLU(Q_i) · Σ_j ReLU(K_j), eps)

and the N×N matrix is never formed: per sample and layer only the global sums ReLU(K)ᵀV
(d×d, block-diagonal over heads) and Σ_j ReLU(K_j) are needed. The forward runs in chunks of
events: one pass accumulates the sums, a second computes every chunk's attention output and
feed-forward, so peak memory is O(N·d) (the layer input and output) plus one chunk's
temporaries. Without autograd the passes are streamed (a block's output pass also runs the next
block's sums pass), fused (layer norms folded into the next GEMM, GELU and residuals inside
oneDNN linear layers) and cache-sized, and their chunks run on parallel single-threaded workers.
With gradients and frozen parameters (the explainers) the input gradient is written out by hand
and recomputes chunks (:class:`_StreamedLayers`); with trainable parameters each layer is a
custom autograd function that recomputes chunks through the modules (:class:`_ChunkedLayer`).
Either way input gradients stay O(N·d).

:func:`xaibench.testing.oracles.explicit_reluformer_forward` is the N×N reference (materialised, row-normalised attention) used
only in tests.

References: Qin et al., cosFormer: Rethinking softmax in attention, ICLR 2022; Kowarsch et al.,
Explainable techniques for analyzing flow cytometry cell transformers, 2023.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench import register_model


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def check_event_tensor(events: Any, n_markers: int | None, who: str) -> None:
    """Raise ValueError unless ``events`` is a floating (B, N, n_markers) tensor."""
    if not isinstance(events, Tensor) or events.ndim != 3 or (n_markers is not None and events.shape[-1] != n_markers):
        got = tuple(events.shape) if isinstance(events, Tensor) else type(events).__name__
        raise ValueError(f"{who}: expected events (B, N, {n_markers or 'm'}), got {got}; "
                         "add a batch dimension with events.unsqueeze(0) or select the model's markers")
    if not events.is_floating_point():
        raise ValueError(f"{who}: expected floating-point events, got {events.dtype}")


class ReluAttention(nn.Module):
    """Multi-head ReLU linear attention projections (the maths lives in :class:`ReluFormerLayer`)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"fcm.reluformer: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        head = torch.arange(d_model) // self.head_dim
        self.register_buffer("block", (head[:, None] == head[None, :]).float(), persistent=False)
        self.register_buffer("head_of", F.one_hot(head, n_heads).float(), persistent=False)

    def project(self, h: Tensor, which: str) -> Tensor:
        """One of the q / k / v projections of normalised events h (B, n, d) -> (B, n, d)."""
        i = "qkv".index(which)
        d = h.shape[-1]
        return F.linear(h, self.qkv.weight[i * d:(i + 1) * d], self.qkv.bias[i * d:(i + 1) * d])


def kv_sums(phi_k: Tensor, v: Tensor, block: Tensor) -> tuple[Tensor, Tensor]:
    """Global sums of linear attention: ReLU(K)ᵀV masked block-diagonal (B, d, d) and ΣReLU(K) (B, d)."""
    return (phi_k.transpose(1, 2) @ v) * block, phi_k.sum(1)


def linear_attend(phi_q: Tensor, s: Tensor, z: Tensor, head_of: Tensor, eps: float) -> Tensor:
    """Row-normalised linear attention output of queries phi_q (B, n, d) given the sums. (B, n, d)"""
    b, n, d = phi_q.shape
    h = head_of.shape[1]
    out = phi_q @ torch.cat([s, z[:, :, None] * head_of], -1)  # one GEMM: numerators and denominators
    num, den = out.split([d, h], -1)
    return (num.reshape(b, n, h, d // h) / den.clamp_min(eps)[..., None]).reshape(b, n, d)


class ReluFormerLayer(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then + FFN(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int = 4, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = ReluAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Linear(ffn_mult * d_model, d_model))

    def keys(self, x: Tensor) -> Tensor:
        """ReLU(K) of events x (B, n, d)."""
        return F.relu(self.attn.project(self.norm1(x), "k"))

    def queries(self, x: Tensor) -> Tensor:
        """ReLU(Q) of events x (B, n, d)."""
        return F.relu(self.attn.project(self.norm1(x), "q"))

    def sums(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(ReLU(K)ᵀV, ΣReLU(K)) of a chunk of events x (B, n, d)."""
        h = self.norm1(x)
        return kv_sums(F.relu(self.attn.project(h, "k")), self.attn.project(h, "v"), self.attn.block)

    def attend(self, x: Tensor, s: Tensor, z: Tensor) -> Tensor:
        """The block's output for a chunk of events x (B, n, d), given the sample-wide sums."""
        o = linear_attend(self.queries(x), s, z, self.attn.head_of, self.eps)
        x = x + self.attn.proj(o)
        return x + self.ffn(self.norm2(x))

    def forward(self, x: Tensor) -> Tensor:
        s, z = self.sums(x)
        return self.attend(x, s, z)


def _folded(norm: nn.LayerNorm, lin: nn.Linear) -> tuple[Tensor, Tensor]:
    """``lin(norm(x)) = normalise(x) @ W + b``: the norm's scale and shift folded into the
    linear layer. Returns W (in, out) and b (out,)."""
    w, b = lin.weight, lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
    if norm.weight is not None:
        b = b + w @ norm.bias if norm.bias is not None else b
        w = w * norm.weight
    return w.t(), b


try:  # oneDNN's linear layer with a fused activation or residual addition (CPU builds with mkldnn)
    _LINEAR_POINTWISE: Any = torch.ops.mkldnn._linear_pointwise
except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
    _LINEAR_POINTWISE = None


def _use_onednn(x: Tensor) -> bool:
    return (_LINEAR_POINTWISE is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available())


_HUGE_PAGE = 2 << 20
_madvise: Any = None


def _big_empty(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``like.new_empty(shape)`` for the (N, d) buffers, advised to transparent huge pages on Linux
    (MADV_HUGEPAGE). Faulting in 128 MB of fresh 4 KiB pages took 70-500 ms on the 2-core test
    machine (more under load), the same buffer in 2 MiB pages ~35 ms; each chunked pass writes
    such buffers."""
    import sys

    t = like.new_empty(shape)
    nbytes = t.numel() * t.element_size()
    if t.device.type != "cpu" or nbytes < 8 * _HUGE_PAGE or not sys.platform.startswith("linux"):
        return t
    global _madvise
    if _madvise is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
            _madvise = fn
        except (OSError, AttributeError):  # pragma: no cover - no libc madvise
            _madvise = False
    if _madvise:
        start = -(-t.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        end = (t.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            _madvise(start, end - start, 14)  # MADV_HUGEPAGE: advice only, failures are harmless
    return t


class _Fused:
    """A block's weights laid out for the fused chunked paths, (out, in), detached.

    The layer norms' scale and shift are folded into the next linear layer (``_folded``); the
    key/value projection has one more output, constant 1 (zero weights, bias 1), so that
    ReLU(K)ᵀ[V | 1] = [ReLU(K)ᵀV | ΣReLU(K)] is a single GEMM. ``onednn``: the feed-forward
    runs as oneDNN linear layers with GELU and the residual addition fused in (float32 CPU),
    otherwise as ``addmm`` with a separate GELU."""

    def __init__(self, layer: ReluFormerLayer, onednn: bool) -> None:
        att = layer.attn
        d = att.qkv.in_features
        self.d, self.heads, self.dh, self.onednn = d, att.n_heads, att.head_dim, onednn
        self.eps, self.eps1, self.eps2 = layer.eps, layer.norm1.eps, layer.norm2.eps
        self.approximate = getattr(layer.ffn[1], "approximate", "none")
        with torch.no_grad():
            wqkv, bqkv = _folded(layer.norm1, att.qkv)  # (in, 3d)
            self.wq, self.bq = wqkv[:, :d].t().contiguous(), bqkv[:d].contiguous()
            self.wkv = torch.cat([wqkv[:, d:], wqkv.new_zeros(d, 1)], 1).t().contiguous()  # (2d + 1, d)
            self.bkv = torch.cat([bqkv[d:], bqkv.new_ones(1)])
            w1, self.b1 = _folded(layer.norm2, layer.ffn[0])
            self.w1 = w1.t().contiguous()  # (4d, d)
            lin2 = layer.ffn[2]
            self.w2 = lin2.weight.detach()  # (d, 4d)
            self.b2 = lin2.bias.detach() if lin2.bias is not None else self.w2.new_zeros(d)
            self.wp, self.bp = att.proj.weight.detach(), att.proj.bias.detach()
        self.block, self.head_of = att.block, att.head_of

    def queries(self, h: Tensor, out: Tensor) -> None:
        """out = ReLU(h Wqᵀ + bq) for normalised events h (c, d)."""
        if self.onednn:
            out.copy_(_LINEAR_POINTWISE(h, self.wq, self.bq, "relu", [], ""))
        else:
            torch.addmm(self.bq, h, self.wq.t(), out=out).clamp_min_(0)

    def keys_values(self, h: Tensor, buf: Tensor) -> Tensor:
        """[ReLU(K) | V | 1] of normalised events h (c, d) -> (c, 2d + 1), in ``buf`` unless oneDNN runs it."""
        kv = _LINEAR_POINTWISE(h, self.wkv, self.bkv, "none", [], "") if self.onednn else \
            torch.addmm(self.bkv, h, self.wkv.t(), out=buf)
        kv[:, :self.d].clamp_min_(0)
        return kv

    def ffn_pre(self, h: Tensor) -> Tensor:
        """The feed-forward's pre-activation h W1ᵀ + b1 (c, 4d)."""
        if self.onednn:
            return _LINEAR_POINTWISE(h, self.w1, self.b1, "none", [], "")
        return torch.addmm(self.b1, h, self.w1.t())

    def ffn_hidden(self, h: Tensor) -> Tensor:
        """GELU(h W1ᵀ + b1) of normalised events h (c, d) -> (c, 4d)."""
        if self.onednn:
            return _LINEAR_POINTWISE(h, self.w1, self.b1, "gelu", [], self.approximate)
        return F.gelu(torch.addmm(self.b1, h, self.w1.t()), approximate=self.approximate)

    def ffn_out(self, u: Tensor, y: Tensor, out: Tensor) -> None:
        """out = y + u W2ᵀ + b2 (out: a (c, d) row block, not aliasing y)."""
        if self.onednn:
            out.copy_(_LINEAR_POINTWISE.binary(u, y, self.w2, self.b2, "add"))
        else:
            torch.addmm(y, u, self.w2.t(), out=out).add_(self.b2)

    def attention_weights(self, s: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """From one sample's sums (s masked (d, d), z (d,)): the numerators times the output
        projection with its bias as a last row, (d + 1, d), and the normalisers' weights (d, heads)."""
        return torch.cat([s @ self.wp.t(), self.bp[None]]), z[:, None] * self.head_of


#: events per chunk of the fused paths at most (whatever ``chunk_size``): a chunk's (c, 4d) feed-forward
#: temporaries stay near the 2 MiB L2 of a core (4096: 1.1-1.2 s vs 1.5 s for 16384 on a 500k-event
#: forward, 2 threads; the gradient 3.9-4.4 s vs 4.1 s)
CACHE_CHUNK = 4096
_POOLS: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's worker threads
    os.register_at_fork(after_in_child=_POOLS.clear)


def _one_thread() -> None:
    torch.set_num_threads(1)


def _for_chunks(fn: Callable[[int], None], n: int, like: Tensor) -> None:
    """``fn(k)`` for k < n, the chunks of a pass. On the CPU with torch set to T > 1 threads they
    run on T worker threads, each running its ops single-threaded: a chunk's ops are too small to
    split across cores (each op of a 2-thread team paid a fork/join, and on a loaded machine a
    wait for a descheduled thread), whole chunks per core are not. Work stealing (any free worker
    takes the next chunk); the caller's grad / inference mode holds in the workers."""
    t = torch.get_num_threads()
    if t <= 1 or n <= 1 or like.device.type != "cpu":
        for k in range(n):
            fn(k)
        return
    fresh = t not in _POOLS
    pool = _POOLS.setdefault(t, ThreadPoolExecutor(t, thread_name_prefix="reluformer", initializer=_one_thread))
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(k: int) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            fn(k)

    try:
        list(pool.map(run, range(n)))
    finally:
        if fresh:  # the workers' set_num_threads(1) also set torch's default for threads it starts later
            torch.set_num_threads(t)


class _PerThread:
    """Scratch buffers made once per worker thread by ``make()``."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make, self.local = make, threading.local()

    def get(self) -> Any:
        bufs = getattr(self.local, "bufs", None)
        if bufs is None:
            bufs = self.local.bufs = self.make()
        return bufs


def _chunk_scratch(like: Tensor, c: int, d: int, heads: int) -> _PerThread:
    """Per-thread (c, ·) buffers of the chunked passes: qs [normalised ReLU(Q) | 1], den, y, kv."""
    def make() -> dict[str, Tensor]:
        qs = like.new_empty(c, d + 1)
        qs[:, d] = 1  # the output projection's bias row
        return {"qs": qs, "den": like.new_empty(c, heads), "y": like.new_empty(c, d),
                "kv": like.new_empty(c, 2 * d + 1), "q": like.new_empty(c, d), "gkv": like.new_empty(c, 2 * d)}
    return _PerThread(make)


def _normalised_queries(f: _Fused, q: Tensor, z_heads: Tensor, qs: Tensor, den: Tensor) -> Tensor:
    """qs[:, :d] = ReLU(Q) divided per head by its normaliser max(ReLU(Q)·Σ ReLU(K), eps); returns
    the normalisers' reciprocals (c, heads). ``den``: a (c, heads) buffer that keeps the normalisers."""
    c = q.shape[0]
    torch.mm(q, z_heads, out=den)
    inv = den.clamp_min(f.eps).reciprocal_()
    torch.mul(q.view(c, f.heads, f.dh), inv[:, :, None], out=qs[:, :f.d].view(c, f.heads, f.dh))
    return inv


def _sums_chunk(f: _Fused, xc: Tensor, q_out: Tensor, kv: Tensor, sz: Tensor) -> None:
    """First pass over a chunk of events xc (c, d): ReLU(Q) into ``q_out``; [ReLU(K)ᵀV | ΣReLU(K)]
    added to ``sz`` (d, d + 1). ``kv``: a (≥c, 2d + 1) buffer."""
    h = F.layer_norm(xc, (f.d,), eps=f.eps1)
    f.queries(h, q_out)
    kvc = f.keys_values(h, kv[:xc.shape[0]])
    sz.addmm_(kvc[:, :f.d].t(), kvc[:, f.d:])


class _ChunkWork:
    """One sample's second pass: the block's output for chunks of events, given its sums
    (``sz`` (d, d + 1), masked in place)."""

    def __init__(self, f: _Fused, sz: Tensor) -> None:
        d = f.d
        sz[:, :d] *= f.block
        self.f, self.num_proj, self.z_heads = f, *f.attention_weights(sz[:, :d], sz[:, d])

    def __call__(self, xc: Tensor, q: Tensor, out: Tensor, bufs: dict[str, Tensor]) -> None:
        """out = block(xc) for a chunk xc (c, d) with ReLU(Q) q (c, d); out may be xc or q."""
        f, c = self.f, xc.shape[0]
        _normalised_queries(f, q, self.z_heads, bufs["qs"][:c], bufs["den"][:c])
        yc = torch.addmm(xc, bufs["qs"][:c], self.num_proj, out=bufs["y"][:c])
        f.ffn_out(f.ffn_hidden(F.layer_norm(yc, (f.d,), eps=f.eps2)), yc, out)


def _layer_nograd(layer: ReluFormerLayer, x: Tensor, chunk: int, out: Tensor) -> tuple[Tensor, Tensor]:
    """Chunked no-grad block, sample by sample: one pass accumulates the sums and keeps ReLU(Q)
    (in ``out`` itself unless ``out`` is ``x``); a second writes each chunk's output into ``out``.
    Returns the sums (B, d, d) and (B, d), as :func:`kv_sums`.

    Fewer, cache-sized passes than the module's own maths: the layer norms' scale and shift
    are folded into the next linear layer; ΣReLU(K) comes out of the ReLU(K)ᵀV GEMM (a constant
    value column); ReLU(Q) is divided by its normaliser first, so the attention numerators, the
    output projection and its bias are one (d + 1, d) matrix per sample; the residual additions
    are GEMM inputs; GELU and the second residual are fused into oneDNN linear layers (float32).
    Chunks run on parallel single-threaded workers (:func:`_for_chunks`); the sums are added up
    per chunk, then over chunks in order (deterministic)."""
    bsz, n, d = x.shape
    f = _Fused(layer, _use_onednn(x))
    parts = _chunks(n, chunk)
    scratch = _chunk_scratch(x, parts[0][1] if parts else 0, d, f.heads)
    sz, part_sums = x.new_zeros(bsz, d, d + 1), x.new_empty(len(parts), d, d + 1)
    phi_buf = _big_empty((n, d), x) if out is x else None

    def sample(i: int) -> None:  # one sample's passes (the chunk workers see this call's names)
        xi, oi = x[i], out[i]
        phi_q = oi if phi_buf is None else phi_buf
        part_sums.zero_()

        def sums(k: int) -> None:
            a, b = parts[k]
            _sums_chunk(f, xi[a:b], phi_q[a:b], scratch.get()["kv"], part_sums[k])

        _for_chunks(sums, len(parts), x)
        torch.sum(part_sums, 0, out=sz[i])
        work = _ChunkWork(f, sz[i])

        def outputs(k: int) -> None:
            a, b = parts[k]
            work(xi[a:b], phi_q[a:b], oi[a:b], scratch.get())

        _for_chunks(outputs, len(parts), x)

    for i in range(bsz):
        sample(i)
    return sz[:, :, :d], sz[:, :, d]


def _stream(embed: nn.Linear, layers: Sequence[ReluFormerLayer], events: Tensor, chunk: int,
            keep: bool) -> tuple[list[Tensor], Tensor]:
    """Embedding and blocks without autograd, streamed: the embedding pass also runs the first
    block's sums pass, and each block's output pass the next block's sums pass, chunk by chunk
    while the chunk is in cache. Passes over (N, d) data: 1 + L instead of 1 + 2L. Chunks run on
    parallel single-threaded workers (:func:`_for_chunks`).

    Returns the features entering each block and after the last ([x_0, ..., x_L], each (B, N, d);
    with ``keep=False`` one buffer overwritten in place, so only x_L is valid) and each block's
    sums (L, B, d, d + 1): [ReLU(K)ᵀV masked | ΣReLU(K)]."""
    bsz, n, _ = events.shape
    parts = _chunks(n, chunk)
    x = _big_empty((bsz, n, embed.out_features), events)
    d = x.shape[-1]
    onednn = _use_onednn(x)
    fs = [_Fused(layer, onednn) for layer in layers]
    xs = [x] + [_big_empty(x.shape, x) if keep else x for _ in fs]
    phi_q = _big_empty((n, d), x) if fs else None
    scratch = _chunk_scratch(x, parts[0][1] if parts else 0, d, fs[0].heads if fs else 1)
    sums, part_sums = x.new_zeros(len(fs), bsz, d, d + 1), x.new_empty(len(parts), d, d + 1)
    w, b0 = embed.weight.t(), embed.bias

    def sample(i: int) -> None:  # one sample's passes (the chunk workers see this call's names)
        xi = x[i]
        part_sums.zero_()

        def first(k: int) -> None:
            a, b = parts[k]
            xc = xi[a:b]
            if b0 is not None:
                torch.addmm(b0, events[i, a:b], w, out=xc)
            else:
                torch.mm(events[i, a:b], w, out=xc)
            if fs:
                _sums_chunk(fs[0], xc, phi_q[a:b], scratch.get()["kv"], part_sums[k])

        _for_chunks(first, len(parts), x)
        for li, f in enumerate(fs):
            torch.sum(part_sums, 0, out=sums[li, i])
            part_sums.zero_()
            work = _ChunkWork(f, sums[li, i])
            nxt = fs[li + 1] if li + 1 < len(fs) else None
            src, dst = xs[li][i], xs[li + 1][i]

            def block(k: int, work: _ChunkWork = work, nxt: _Fused | None = nxt, src: Tensor = src,
                      dst: Tensor = dst) -> None:
                a, b = parts[k]
                bufs = scratch.get()
                work(src[a:b], phi_q[a:b], dst[a:b], bufs)
                if nxt is not None:
                    _sums_chunk(nxt, dst[a:b], phi_q[a:b], bufs["kv"], part_sums[k])

            _for_chunks(block, len(parts), x)

    for i in range(bsz):
        sample(i)
    return xs, sums


def _hidden_nograd(embed: nn.Linear, layers: Sequence[ReluFormerLayer], events: Tensor, chunk: int) -> Tensor:
    """No-grad features after the blocks (B, N, d), streamed (:func:`_stream`), in one buffer."""
    return _stream(embed, layers, events, chunk, keep=False)[0][-1]


class _StreamedLayers(torch.autograd.Function):
    """Embedding and blocks with frozen parameters, events -> features (B, N, d): the streamed
    chunked forward (:func:`_stream`, keeping each block's input) and, backwards, each block's
    hand-written input gradient (:func:`_layer_input_grad`, in place into one gradient buffer),
    then the embedding's. Memory: L + 2 (N, d) buffers and a chunk's temporaries."""

    @staticmethod
    def forward(ctx: Any, events: Tensor, embed: nn.Linear, layers: Sequence[ReluFormerLayer], chunk: int) -> Tensor:
        xs, sums = _stream(embed, layers, events, chunk, keep=True)
        ctx.embed, ctx.layers, ctx.chunk = embed, layers, chunk
        ctx.save_for_backward(sums, *xs[:-1])
        return xs[-1]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        sums, *xs = ctx.saved_tensors
        d = xs[0].shape[-1]
        g, out = g.contiguous(), None
        for li in reversed(range(len(ctx.layers))):
            g = out = _layer_input_grad(ctx.layers[li], xs[li], sums[li, :, :, :d], sums[li, :, :, d], g, ctx.chunk, out)
        return g @ ctx.embed.weight, None, None, None


def layer_keys(layer: ReluFormerLayer, x: Tensor, chunk: int) -> Tensor:
    """ReLU(K) of a block for events x (B, N, d), no grad, chunk by chunk into one (B, N, d)
    buffer (the layer norm folded into the key projection); equals ``layer.keys(x)``."""
    f = _Fused(layer, _use_onednn(x))
    d = f.d
    wk, bk = f.wkv[:d], f.bkv[:d]
    out = _big_empty(x.shape, x)
    parts = _chunks(x.shape[1], min(chunk, CACHE_CHUNK))
    for i in range(x.shape[0]):
        def keys(k: int, i: int = i) -> None:
            a, b = parts[k]
            h = F.layer_norm(x[i, a:b], (d,), eps=f.eps1)
            if f.onednn:
                out[i, a:b] = _LINEAR_POINTWISE(h, wk, bk, "relu", [], "")
            else:
                torch.addmm(bk, h, wk.t(), out=out[i, a:b]).clamp_min_(0)

        _for_chunks(keys, len(parts), x)
    return out


def _ln_backward(g: Tensor, x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """Input gradient of a layer norm without scale and shift."""
    return torch.ops.aten.native_layer_norm_backward(g, x, (x.shape[-1],), mean, rstd, None, None,
                                                     [True, False, False])[0]


def _layer_input_grad(layer: ReluFormerLayer, x: Tensor, s: Tensor, z: Tensor, gy: Tensor, chunk: int,
                      out: Tensor | None = None) -> Tensor:
    """∂(Σ gy · block(x))/∂x for a chunked block, the backward written out by hand (input gradient
    only: the parameters are frozen), in two chunked passes over the events.

    Pass 1 recomputes each chunk's queries, attention output and feed-forward input, and
    back-propagates through the feed-forward, the output projection and the normalised queries
    to the events; it accumulates the gradients of the sample-wide sums (ReLU(K)ᵀV, ΣReLU(K)),
    per chunk, then over chunks in order. Pass 2 recomputes keys and values and adds their share.
    Memory: the (B, N, d) gradient (``out``, may be ``gy``: each chunk is read before it is
    written) plus one chunk's temporaries per worker (:func:`_for_chunks`)."""
    bsz, n, d = x.shape
    f = _Fused(layer, _use_onednn(x))
    heads, dh = f.heads, f.dh
    parts = _chunks(n, chunk)
    gx = _big_empty(x.shape, x) if out is None else out
    scratch = _chunk_scratch(x, parts[0][1] if parts else 0, d, heads)
    gnums, gzhs = x.new_empty(len(parts), d, d), x.new_empty(len(parts), heads, d)

    def sample(i: int) -> None:  # one sample's passes (the chunk workers see this call's names)
        xi, gi, gxi = x[i], gy[i], gx[i]
        num_proj, z_heads = f.attention_weights(s[i], z[i])
        num_t, zr = num_proj[:d].t(), z[i].view(heads, dh)

        def queries_ffn(k: int) -> None:
            a, b = parts[k]
            c, xc, g, bufs = b - a, xi[a:b], gi[a:b], scratch.get()
            qs, den = bufs["qs"][:c], bufs["den"][:c]
            n1, mu1, r1 = torch.native_layer_norm(xc, (d,), None, None, f.eps1)
            q = bufs["q"][:c]
            f.queries(n1, q)
            inv = _normalised_queries(f, q, z_heads, qs, den)
            yc = torch.addmm(xc, qs, num_proj, out=bufs["y"][:c])
            n2, mu2, r2 = torch.native_layer_norm(yc, (d,), None, None, f.eps2)
            pre = f.ffn_pre(n2)
            ga = torch.ops.aten.gelu_backward(g @ f.w2, pre, approximate=f.approximate)
            gyc = _ln_backward(ga @ f.w1, yc, mu2, r2).add_(g)
            torch.mm(qs[:, :d].t(), gyc, out=gnums[k])
            gqs = gyc @ num_t
            # through the normalisers: ∂/∂den = -(gqs·q) / den² per head where den was not clamped
            gden = (gqs * q).view(c, heads, dh).sum(-1).mul_(inv).mul_(inv).neg_().mul_(den >= f.eps)
            gq = gqs.view(c, heads, dh).mul_(inv[:, :, None]).addcmul_(gden[:, :, None], zr).view(c, d)
            torch.mm(gden.t(), q, out=gzhs[k])
            gq.mul_(q > 0)
            gxi[a:b] = _ln_backward(gq @ f.wq, xc, mu1, r1).add_(gyc)

        _for_chunks(queries_ffn, len(parts), x)
        gs = (gnums.sum(0) @ f.wp).mul_(f.block)
        gsz = torch.cat([gs, (gzhs.sum(0) * f.head_of.t()).sum(0)[:, None]], 1)  # (d, d + 1): [∂S | ∂z]

        def keys_values(k: int) -> None:
            a, b = parts[k]
            c, xc, bufs = b - a, xi[a:b], scratch.get()
            n1, mu1, r1 = torch.native_layer_norm(xc, (d,), None, None, f.eps1)
            kv = f.keys_values(n1, bufs["kv"][:c])
            kk, gkv = kv[:, :d], bufs["gkv"][:c]
            torch.mm(kv[:, d:], gsz.t(), out=gkv[:, :d]).mul_(kk > 0)  # [V | 1] [∂S | ∂z]ᵀ
            torch.mm(kk, gs, out=gkv[:, d:])
            gxi[a:b] += _ln_backward(gkv @ f.wkv[:2 * d], xc, mu1, r1)

        _for_chunks(keys_values, len(parts), x)

    for i in range(bsz):
        sample(i)
    return gx


class _ChunkedLayer(torch.autograd.Function):
    """A block with chunked forward and a chunk-recomputing backward (O(N·d) memory): the input
    gradient by hand (:func:`_layer_input_grad`) when no parameter needs one, else autograd
    through the modules chunk by chunk."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, layer: ReluFormerLayer, chunk: int, *params: Tensor) -> Tensor:
        x = x.contiguous()
        out = _big_empty(x.shape, x)
        s, z = _layer_nograd(layer, x, chunk, out)
        ctx.layer, ctx.chunk = layer, chunk
        ctx.save_for_backward(x, s, z)
        return out

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, s, z = ctx.saved_tensors
        layer, chunk = ctx.layer, ctx.chunk
        need = ctx.needs_input_grad[3:]
        if not any(need):
            gx = _layer_input_grad(layer, x, s, z, gy.contiguous(), chunk) if ctx.needs_input_grad[0] else None
            return (gx, None, None, *[None] * len(need))
        params = list(layer.parameters())
        ps = [p for p, n in zip(params, need) if n]
        gps = [torch.zeros_like(p) for p in ps]
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        gs, gz = torch.zeros_like(s), torch.zeros_like(z)
        parts = _chunks(x.shape[1], chunk)
        with torch.enable_grad():
            sl, zl = s.detach().requires_grad_(True), z.detach().requires_grad_(True)
            for a, b in parts:  # through the queries, the residuals and the feed-forward
                xc = x[:, a:b].detach().requires_grad_(True)
                g = torch.autograd.grad(layer.attend(xc, sl, zl), [xc, sl, zl, *ps], gy[:, a:b], allow_unused=True)
                if gx is not None:
                    gx[:, a:b] = g[0]
                gs += g[1]
                gz += g[2]
                for acc, gp in zip(gps, g[3:]):
                    if gp is not None:
                        acc += gp
            for a, b in parts:  # through the keys and values of the global sums
                xc = x[:, a:b].detach().requires_grad_(True)
                sc, zc = layer.sums(xc)
                g = torch.autograd.grad([sc, zc], [xc, *ps], [gs, gz], allow_unused=True)
                if gx is not None:
                    gx[:, a:b] += g[0]
                for acc, gp in zip(gps, g[1:]):
                    if gp is not None:
                        acc += gp
        it = iter(gps)
        return (gx, None, None, *[next(it) if n else None for n in need])


class PolygonHead(nn.Module):
    """Gate polygons from the events: one learned query per polygon pools the events with ReLU
    attention (per head), an MLP maps the pooled vector to V vertices. Output (B, P, V, 2)."""

    def __init__(self, d_model: int, n_heads: int, n_polygons: int, n_vertices: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.n_polygons, self.n_vertices, self.eps = n_polygons, n_vertices, eps
        self.query = nn.Parameter(torch.randn(n_polygons, d_model) * 0.5 + 0.5)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                 nn.Linear(2 * d_model, 2 * n_vertices))
        head = torch.arange(d_model) // (d_model // n_heads)
        self.register_buffer("block", (head[:, None] == head[None, :]).float(), persistent=False)
        self.register_buffer("head_of", F.one_hot(head, n_heads).float(), persistent=False)

    def finish(self, s: Tensor, z: Tensor) -> Tensor:
        q = F.relu(self.query).expand(s.shape[0], -1, -1)
        pooled = linear_attend(q, s, z, self.head_of, self.eps)
        return self.mlp(pooled).reshape(s.shape[0], self.n_polygons, self.n_vertices, 2)

    def sums(self, h: Tensor, events: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample sums of a chunk of events (``events`` unused: this head reads only ``h``)."""
        return kv_sums(F.relu(self.key(h)), self.value(h), self.block)

    def forward(self, h: Tensor, events: Tensor | None = None) -> Tensor:
        return self.finish(*self.sums(h))


class SlotPolygonHead(nn.Module):
    """Gate polygons from population statistics, as a cytometrist sets gates.

    Every event is assigned softly to C slots: a_jc = softmax_c(W h_j + b), h_j its ReluFormer
    features (the slots can be taught the cell populations, see :meth:`slot_logits`). Each slot is
    summarised by its share of the events and its mean event (markers standardised by
    ``event_mean`` / ``event_sd``); the statistics are standardised over samples (running
    estimates, frozen in eval mode), and per gate a linear map plus a small MLP gives the vertices
    as an offset from a template polygon in units of the gate's typical displacement
    (``template`` + ``scale`` · output). The sums are linear in the events, so the forward runs in
    chunks like the encoder's; the polygons are a function of every event through both the slot
    means and (through the ReluFormer) the assignments. Output (B, P, V, 2).
    """

    def __init__(self, d_model: int, n_markers: int, n_polygons: int, n_vertices: int, n_slots: int = 16,
                 hidden: int = 64, momentum: float = 0.05, eps: float = 1e-6) -> None:
        super().__init__()
        self.n_polygons, self.n_vertices, self.n_slots, self.eps, self.momentum = n_polygons, n_vertices, n_slots, eps, momentum
        self.assign = nn.Linear(d_model, n_slots)
        n_in = n_slots * (n_markers + 1)
        out = 2 * n_vertices
        self.linear = nn.Linear(n_in, n_polygons * out)
        self.w1 = nn.Parameter(torch.randn(n_polygons, n_in, hidden) / n_in ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(n_polygons, hidden))
        self.w2 = nn.Parameter(torch.randn(n_polygons, hidden, out) / hidden ** 0.5 * 0.1)
        self.b2 = nn.Parameter(torch.zeros(n_polygons, out))
        # priors set by training (saved with the weights): template polygons, their typical displacement,
        # the event scale, and running statistics of the slot features
        self.register_buffer("template", torch.zeros(n_polygons, n_vertices, 2))
        self.register_buffer("scale", torch.ones(n_polygons))
        self.register_buffer("event_mean", torch.zeros(n_markers))
        self.register_buffer("event_sd", torch.ones(n_markers))
        self.register_buffer("feature_mean", torch.zeros(n_in))
        self.register_buffer("feature_var", torch.ones(n_in))
        self.register_buffer("feature_seen", torch.zeros(()))

    @torch.no_grad()
    def set_priors(self, template: Tensor, scale: Tensor, event_mean: Tensor, event_sd: Tensor) -> None:
        """Template polygons (P, V, 2), their typical displacement (P,), the markers' mean and SD (m,)."""
        self.template.copy_(template)
        self.scale.copy_(scale)
        self.event_mean.copy_(event_mean)
        self.event_sd.copy_(event_sd)

    def slot_logits(self, h: Tensor) -> Tensor:
        """Slot logits of events with ReluFormer features h (B, n, d) -> (B, n, C)."""
        return self.assign(h)

    def sums(self, h: Tensor, events: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample sums of a chunk: Σ_j a_jc x_j (B, C, m) over standardised events x, and Σ_j a_jc (B, C)."""
        a = torch.softmax(self.assign(h), -1)
        x = (events - self.event_mean) / self.event_sd
        return a.transpose(1, 2) @ x, a.sum(1)

    def features(self, s: Tensor, z: Tensor) -> Tensor:
        """The slots' mean events and log shares, standardised over samples. (B, C·(m + 1))"""
        means = s / z[..., None].clamp_min(self.eps)
        share = z / z.sum(-1, keepdim=True).clamp_min(self.eps)
        f = torch.cat([means.flatten(1), torch.log(share + 1e-4)], 1)
        if self.training:
            with torch.no_grad():
                fd = f.detach()
                m, v = fd.mean(0), fd.var(0, unbiased=False) if len(fd) > 1 else torch.zeros_like(fd[0])
                if self.feature_seen.item() == 0:
                    self.feature_mean.copy_(m)
                    self.feature_var.copy_(v if len(fd) > 1 else torch.ones_like(v))
                else:
                    self.feature_mean.lerp_(m, self.momentum)
                    if len(fd) > 1:
                        self.feature_var.lerp_(v, self.momentum)
                self.feature_seen += 1
        return (f - self.feature_mean) / (self.feature_var + 1e-4).sqrt()

    def finish(self, s: Tensor, z: Tensor) -> Tensor:
        f = self.features(s, z)
        b = f.shape[0]
        hid = F.gelu(torch.einsum("bi,pih->bph", f, self.w1) + self.b1)
        out = self.linear(f).view(b, self.n_polygons, -1) + torch.einsum("bph,pho->bpo", hid, self.w2) + self.b2
        return self.template + self.scale[:, None, None] * out.view(b, self.n_polygons, self.n_vertices, 2)

    def forward(self, h: Tensor, events: Tensor) -> Tensor:
        return self.finish(*self.sums(h, events))


class ReluFormer(nn.Module):
    """Event-set transformer with ReLU linear attention, for per-event classification or gate polygons.

    Args:
        n_markers: features per event (m).
        d_model, n_heads, n_layers, ffn_mult: transformer size.
        task: ``"classify"`` (per-event logits (B, N, n_classes)) or ``"polygon"`` (gate polygons
            (B, P, V, 2) in each gate's 2D projection).
        n_classes: classes per event (2: blast or not).
        gate_dims: for ``polygon``, the (x, y) marker indices of each gate (P pairs).
        gate_names: names of the P gates.
        n_vertices: vertices per polygon (V).
        polygon_head: ``"pooled"`` (:class:`PolygonHead`: learned queries pool the events' features)
            or ``"slots"`` (:class:`SlotPolygonHead`: gates from the statistics of soft event
            populations; what the zoo's polygon model uses).
        n_slots: slots of the ``"slots"`` head.
        chunk_size: events per chunk of the chunked forward/backward (memory vs. overhead; 16384
            keeps a chunk's temporaries near the CPU caches: a 200k-event forward ran ~1.4x faster
            than with 65536 on one thread).
        eps: floor of the attention normaliser.

    Example:
        >>> model = xaibench.create_model("fcm.reluformer", n_markers=10)
        >>> model(torch.randn(2, 5000, 10)).shape
        torch.Size([2, 5000, 2])
    """

    def __init__(self, n_markers: int, d_model: int = 64, n_heads: int = 4, n_layers: int = 2, ffn_mult: int = 4,
                 task: str = "classify", n_classes: int = 2, gate_dims: Sequence[Sequence[int]] = (),
                 gate_names: Sequence[str] = (), n_vertices: int = 8, chunk_size: int = 16384, eps: float = 1e-6,
                 polygon_head: str = "pooled", n_slots: int = 16) -> None:
        super().__init__()
        if task not in ("classify", "polygon"):
            raise ValueError(f"fcm.reluformer: task must be 'classify' or 'polygon', got {task!r}")
        if task == "polygon" and not gate_dims:
            raise ValueError("fcm.reluformer: task='polygon' needs gate_dims, the (x, y) marker indices of each gate")
        if polygon_head not in ("pooled", "slots"):
            raise ValueError(f"fcm.reluformer: polygon_head must be 'pooled' or 'slots', got {polygon_head!r}")
        self.n_markers, self.task, self.chunk_size = int(n_markers), task, int(chunk_size)
        self.gate_dims = [tuple(int(i) for i in g) for g in gate_dims]
        self.gate_names = list(gate_names) or [f"gate{i}" for i in range(len(self.gate_dims))]
        self.embed = nn.Linear(n_markers, d_model)
        self.layers = nn.ModuleList(ReluFormerLayer(d_model, n_heads, ffn_mult, eps) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.n_heads = n_heads
        self.head: nn.Module = (nn.Linear(d_model, n_classes) if task == "classify"
                                else PolygonHead(d_model, n_heads, len(self.gate_dims), n_vertices, eps)
                                if polygon_head == "pooled"
                                else SlotPolygonHead(d_model, n_markers, len(self.gate_dims), n_vertices, n_slots, eps=eps))

    def check_events(self, events: Tensor, who: str = "fcm.reluformer") -> None:
        """Raise ValueError unless ``events`` is a floating (B, N, n_markers) tensor."""
        check_event_tensor(events, self.n_markers, who)

    def _needs_grad(self, events: Tensor) -> bool:
        return torch.is_grad_enabled() and (events.requires_grad or any(p.requires_grad for p in self.parameters()))

    def hidden(self, events: Tensor, upto: int | None = None) -> Tensor:
        """Event features entering layer ``upto`` (default: after the last layer), (B, N, d).

        Chunked without autograd when no gradient is needed (streamed, :func:`_stream`). With
        gradients: plain autograd for N ≤ chunk_size; above it, with every parameter frozen (the
        explainers' case), the streamed forward and hand-written input-gradient backward
        (:class:`_StreamedLayers`); otherwise chunk-recomputing layers (:class:`_ChunkedLayer`)."""
        self.check_events(events)
        layers = self.layers[:upto] if upto is not None else self.layers
        if not self._needs_grad(events):
            return _hidden_nograd(self.embed, layers, events, min(self.chunk_size, CACHE_CHUNK))
        if events.shape[1] > self.chunk_size and not any(p.requires_grad for p in self.parameters()):
            return _StreamedLayers.apply(events, self.embed, layers, min(self.chunk_size, CACHE_CHUNK))
        x = self.embed(events)
        for layer in layers:
            if x.shape[1] <= self.chunk_size:
                x = layer(x)
            else:
                x = _ChunkedLayer.apply(x, layer, self.chunk_size, *layer.parameters())
        return x

    def forward(self, events: Tensor) -> Tensor:
        """(B, N, m) events -> (B, N, n_classes) logits, or (B, P, V, 2) polygons."""
        x = self.hidden(events)
        if self._needs_grad(events):
            return self.head(self.norm(x)) if self.task == "classify" else self.head(self.norm(x), events)
        parts = _chunks(x.shape[1], self.chunk_size)
        if self.task == "classify":
            return torch.cat([self.head(self.norm(x[:, a:b])) for a, b in parts], 1)
        s = z = None
        for a, b in parts:
            sc, zc = self.head.sums(self.norm(x[:, a:b]), events[:, a:b])
            s, z = (sc, zc) if s is None else (s + sc, z + zc)
        return self.head.finish(s, z)


@register_model("fcm.reluformer")
def reluformer(n_markers: int = 10, **params: Any) -> ReluFormer:
    """ReluFormer builder: ``create_model("fcm.reluformer", n_markers=10, d_model=64, n_heads=4,
    n_layers=2, task="classify" | "polygon")`` (see :class:`ReluFormer`)."""
    return ReluFormer(n_markers=n_markers, **params)
