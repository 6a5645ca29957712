"""The default benchmark on the local executor and on Ray, side by side (wall time of the whole run).

Group "default benchmark: ray vs local, 1 thread per worker": every worker computes with one torch
thread, so the comparison is one of executors, not of thread counts (on a shared 2-core machine a
2-thread local run can be several times slower than two 1-thread processes from oversubscription
alone). Side ``limit`` is the local, in-process executor; side ``xaibench`` the Ray executor with
2 workers (as issue 14 asks), starting its own local Ray — Ray's start-up, the workers' imports and
model loading, the results' transport and the driver's commits all included, as a user running
``xaibench run --executor ray`` pays them: ``xaibench/limit`` is Ray's overhead net of the second
core's gain (the target: < 1.15 on the default grid). Side ``ray1`` is Ray with 1 worker (the
overhead alone). One round each (minutes per round on 2 cores); the report is not built. (Until
2026-11-29 the ``xaibench`` side was the 1-worker run and ``ray2`` the 2-worker one.)

Measured on a quiet machine (2026-11-29, load < 1): local 13.0 s, Ray 1 worker 22.0 s (1.69x),
Ray 2 workers 18.0 s (1.38x); after signature-built settings stopped pydantic's docstring reading
(plugin loading 6.3 s -> 0.9 s per process): local 12.7 s, Ray 1 worker 20.9 s (1.65x), 2 workers
16.2 s (1.27x) [target < 1.15x: missed]. What is left is fixed: ``ray.init`` 3.2 s, a worker's
imports of torch (1.2 s) and timm/torchvision, ~1 s of shutdown, against a default grid that now
takes only ~13 s of cells on one thread. After the import path reached local workers through the
inherited environment instead of a ``runtime_env`` (two workers' start with torch imports 4.2 s ->
2.9 s), four runs on a noisier machine (load 1.2-1.4, local 21-24 s): Ray 2 workers 0.81, 1.26, 0.87,
0.93x local, Ray 1 worker 1.20, 1.63, 1.16, 1.13x; three alternating pairs of local and Ray 2
workers from one script: 1.13, 0.99, 0.92x. Single rounds of a ~20 s run swing by more than the
target's 15% here. With the driver running cells while Ray and its workers start (helpers' processes
paused by SIGSTOP during the runs): alternating runs 1.21x / 1.09x (without the driver's cells 1.38x /
1.25x); this file 1.13x (Ray 1 worker 1.07x), once 0.70x with a slow local side. On the quiet machine
(2026-11-30, nothing else running): 1.14x, 1.11x, 1.03x (Ray 1 worker 1.15x, 1.30x, 1.01x).
"""

import pytest
import torch

from xaibench.runner import load_config, run_benchmark

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'xaibench[ray]')")

GROUP = "default benchmark: ray vs local, 1 thread per worker"


@pytest.fixture(scope="module")
def config():
    return load_config("default")


@pytest.mark.parametrize("executor,workers,side", [("local", 1, "limit"), ("ray", 2, "xaibench"), ("ray", 1, "ray1")])
def test_default_benchmark_executor(benchmark, config, executor, workers, side, tmp_path):
    benchmark.group = GROUP
    benchmark.extra_info.update(side=side, executor=executor, workers=workers)
    options = {"workers": workers} if executor == "ray" else {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the local run computes with one thread, like each Ray worker
    try:
        res = benchmark.pedantic(lambda: run_benchmark(config, tmp_path / "run", quiet=True, report=False,
                                                       executor=executor, executor_options=options),
                                 rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    assert res.n_failed == 0, res.failed
    benchmark.extra_info["cells"] = res.n_cells
