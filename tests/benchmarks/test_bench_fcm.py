"""ReluFormer at 500,000 events × 11 markers (d=64, 4 heads, 2 layers): forward, ``fcm.gradient``
and ``fcm.attention`` (1000 queries), each next to its hardware limit.

The "limit" of a group is the model's own matmul FLOPs for that job (counted with
``torch.utils.flop_counter`` at two small sizes and extrapolated linearly in N) run as square
fp32 matmuls in the same process, i.e. the time the job would take at this machine's dense
matmul rate. For the gradient, the FLOPs are those of plain autograd (forward + input
backward), not of our chunk recomputation. In the attention group the "anchor" is the
model's plain forward: the explainer must cost well under it.

Peak memory: each job also runs once in a subprocess at 125k and 500k events; its peak RSS
above the resident size it started from is in ``extra_info["rss_mb"]``: O(N) (chunk-sized
temporaries plus a few N×d buffers), never N². Both sides get one warm-up round (ours pays
~0.5 s once per process for oneDNN kernels and the chunk worker threads).

Measured (2026-11-29, 2 vCPUs "Intel Xeon Processor" with AVX-512, 2 MiB L2 per core, torch
2.14.1, 2 threads, niced jobs paused with SIGSTOP; other sessions' jobs still ran), xaibench/limit
medians of 3 rounds (forward, gradient, attention):
- before issue 13's ReluFormer rework (19:48 UTC, busy): 7.19×, 6.58×, 12.99×; the attention
  cost 3.76× a plain forward. Peak RSS at 500k: 362 / 723 / 466 MB.
- after, no warm-up round (20:44, 20:46): 3.67× / 3.51×, 4.69× / 4.67×, 3.61× / 3.20×; the
  attention 0.75× / 0.62× a forward; the first round, which includes one-time costs, was the
  median. Peak RSS 296 / 692 / 311 MB.
- after, with the warm-up round (20:49, 20:52): 2.92× / 2.66×, 3.28× / 3.90×, 1.87× / 4.05×
  (20:49's gradient and attention limits ran at 99 and 86 GFLOP/s against 250-285 GFLOP/s when
  quiet: contended, so those two ratios are too low).
Targets (issue 13: ≤ 2×, ≤ 2.5×, ≤ 2×): forward and gradient missed, attention met only in a
contended run. Why: the model's GEMMs are skinny (K or N = 64); on one core they run at 70-100
GFLOP/s in cache (oneDNN/MKL, measured per shape) against 125-143 GFLOP/s for the square matmuls
of the limit, so its 107 GFLOP alone take ~1.3× the limit; per 500k events and layer the
elementwise work that cannot go into a GEMM adds layer norms (1.15 ns/element, ~45 ms each on one
core, 5 per chunk and 2 layers incl. the head's), the exact-erf GELU (~65 ms fused into oneDNN)
and the per-head normalisation (~95 ms): ~0.3 s on 2 cores, 0.65× the limit by itself. The
gradient's hand-written backward recomputes each chunk (~1.2× the FLOPs plain autograd counts)
and adds GELU's derivative (2.4 ns/element, ~0.3 s per layer on one core) and 2 layer-norm
backwards per chunk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from xaibench.adapters.fcm import model as fcm_model
from xaibench.adapters.fcm.model import ReluFormer

import xaibench

#: events per sample; XAIBENCH_FCM_EVENTS overrides it for a quick smoke run
N = int(os.environ.get("XAIBENCH_FCM_EVENTS", 500_000))
M, D, HEADS, LAYERS, QUERIES = 11, 64, 4, 2, 1000
ROUNDS = 3


def _model(chunk: int | None = None) -> ReluFormer:
    torch.manual_seed(0)
    kw = {"chunk_size": chunk} if chunk else {}
    model = xaibench.create_model("fcm.reluformer", n_markers=M, d_model=D, n_heads=HEADS, n_layers=LAYERS, **kw).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _queries(n: int, b: int = 1) -> torch.Tensor:
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[:, torch.randperm(n, generator=torch.Generator().manual_seed(0))[:QUERIES]] = True
    return mask


def job(name: str, model: ReluFormer, events: torch.Tensor):
    """The three timed jobs as zero-argument callables."""
    if name == "forward":
        def run():
            with torch.inference_mode():
                return model(events)
    elif name == "gradient":
        ex = xaibench.create_explainer("fcm.gradient", model, selection="all")

        def run():
            return ex.explain(events, 1)
    else:
        ex = xaibench.create_explainer("fcm.attention", model, queries=_queries(events.shape[1]), layer=-1)

        def run():
            return ex.explain(events)
    return run


def _module_maths_layer(layer, x, chunk, out):
    """The no-grad block as the modules compute it (for counting the model's own FLOPs: the
    fused path's in-place / out= GEMMs are not all seen by FlopCounterMode)."""
    s, z = layer.sums(x)
    out.copy_(layer.attend(x, s, z))
    return s, z


def _module_maths_hidden(embed, layers, events, chunk):
    """The no-grad features as the modules compute them (the streamed path's oneDNN and out= GEMMs
    are invisible to FlopCounterMode)."""
    x = embed(events)
    for layer in layers:
        x = layer(x)
    return x


def count_flops(name: str) -> float:
    """Matmul FLOPs of a job at N events (the model's own maths), extrapolated linearly from
    16k and 32k events."""
    counts = []
    for n in (16384, 32768):
        model = _model(chunk=10**7)  # plain autograd for the gradient: the model's own backward
        ev = torch.randn(1, n, M)
        with (FlopCounterMode(display=False) as fc, mock.patch.object(fcm_model, "_layer_nograd", _module_maths_layer),
              mock.patch.object(fcm_model, "_hidden_nograd", _module_maths_hidden),
              mock.patch.object(fcm_model, "layer_keys", lambda layer, x, chunk: layer.keys(x))):
            if name == "gradient":  # FlopCounterMode cannot follow autograd.grad: the same maths via backward()
                x = ev.requires_grad_(True)
                model(x)[..., 1].sum().backward()
            else:
                job(name, model, ev)()
        counts.append(fc.get_total_flops())
    slope = (counts[1] - counts[0]) / 16384
    return counts[0] + slope * (N - 16384)


@pytest.fixture(scope="module")
def events():
    torch.manual_seed(0)
    return xaibench.create_dataset("fcm_ball", n=1, n_events=N, include_time=True).all().inputs


def peak_rss_mb(name: str, n: int) -> float:
    """Peak RSS growth (MB) while running a job once at n events, in a fresh subprocess.

    Linux: the peak (VmHWM) is reset through /proc/self/clear_refs right before the job, so the
    number is the job's own peak above the resident size it started from."""
    code = f"""
import json, sys, torch
sys.path.insert(0, {repr(str(__import__('pathlib').Path(__file__).parent))})
from test_bench_fcm import _model, job, M
def status(key):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key + ':'))
torch.manual_seed(0)
model = _model(); ev = torch.randn(1, {n}, M)
run = job({name!r}, model, ev)
before = status('VmRSS')
open('/proc/self/clear_refs', 'w').write('5')
out = run()
print(json.dumps((status('VmHWM') - before) / 1024))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(json.loads(out.stdout.strip().splitlines()[-1]), 1)


def _limit(benchmark, flops: float, group: str) -> None:
    """Time ``flops`` of square fp32 matmuls: 8 products of a size chosen so 8·2·s³ = flops."""
    s = max(64, round((flops / 16) ** (1 / 3)))
    a, b = torch.randn(s, s), torch.randn(s, s)

    def run():
        for _ in range(8):
            a @ b

    run()
    benchmark.group = group
    benchmark.extra_info.update(side="limit", gflop=round(flops / 1e9, 2), matmul_size=s)
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def _ours(benchmark, name: str, events: torch.Tensor, group: str) -> None:
    model = _model()
    run = job(name, model, events)
    benchmark.group = group
    benchmark.extra_info.update(side="xaibench", events=N, markers=M, d_model=D, heads=HEADS, layers=LAYERS,
                                chunk_size=model.chunk_size, threads=torch.get_num_threads(),
                                rss_mb={n: peak_rss_mb(name, n) for n in (N // 4, N)},
                                events_mb=round(N * M * 4 / 2**20, 1), hidden_mb=round(N * D * 4 / 2**20, 1))
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)  # as the limit: first-call costs (oneDNN kernels, worker threads) apart


G_FWD, G_GRAD, G_ATT = "fcm forward 500k", "fcm.gradient 500k", "fcm.attention 500k (1000 queries)"


def test_forward(benchmark, events):
    _ours(benchmark, "forward", events, G_FWD)


def test_forward_limit(benchmark):
    _limit(benchmark, count_flops("forward"), G_FWD)


def test_gradient(benchmark, events):
    _ours(benchmark, "gradient", events, G_GRAD)


def test_gradient_limit(benchmark):
    _limit(benchmark, count_flops("gradient"), G_GRAD)


def test_attention(benchmark, events):
    _ours(benchmark, "attention", events, G_ATT)


def test_attention_limit(benchmark):
    _limit(benchmark, count_flops("attention"), G_ATT)


def test_attention_vs_forward(benchmark, events):
    """Anchor of the attention group: one plain forward of the same model and events."""
    model = _model()
    benchmark.group = G_ATT
    benchmark.extra_info.update(side="anchor", note="the model's own forward; anchor/xaibench > 1: attention costs less")
    benchmark.pedantic(job("forward", model, events), rounds=ROUNDS, iterations=1, warmup_rounds=1)
