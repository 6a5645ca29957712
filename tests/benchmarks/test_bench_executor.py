"""The default benchmark on the local executor and on Ray with 2 workers, side by side (wall time).

Group "default benchmark: ray 2 workers vs local": side ``limit`` is the local, in-process executor
(one process, torch's own threads), side ``xaibench`` the Ray executor starting its own local Ray
with 2 workers (one CPU and one torch thread each) — Ray's start-up, the workers' imports and model
loading, the results' transport and the driver's commits all included, as a user running
``xaibench run --executor ray --workers 2`` pays them. ``xaibench/limit`` is Ray's overhead over
local (the target: < 1.15 on the default grid). On 2 cores little gain is expected: the point is
the measured overhead. One round each (minutes per round on 2 cores); the report is not built.
"""

import pytest

from xaibench.runner import load_config, run_benchmark

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'xaibench[ray]')")

GROUP = "default benchmark: ray 2 workers vs local"


@pytest.fixture(scope="module")
def config():
    return load_config("default")


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_default_benchmark_executor(benchmark, config, executor, tmp_path):
    benchmark.group = GROUP
    benchmark.extra_info["side"] = "xaibench" if executor == "ray" else "limit"
    benchmark.extra_info["executor"] = executor
    options = {"workers": 2} if executor == "ray" else {}
    runs = iter(range(100))

    def once():
        return run_benchmark(config, tmp_path / f"run{next(runs)}", quiet=True, report=False, executor=executor,
                             executor_options=options)

    res = benchmark.pedantic(once, rounds=1, iterations=1)
    assert res.n_failed == 0, res.failed
    benchmark.extra_info["cells"] = res.n_cells
