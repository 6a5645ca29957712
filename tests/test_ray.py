"""The Ray executor: a local Ray with 2 CPUs gives the local executor's results table row for row,
also when a worker dies mid-cell, and a run whose driver was SIGKILLed resumes as locally.

One Ray instance serves the whole module (starting Ray costs ~10 s on a loaded 2-core machine).
Reference in every test: the same grid run by the local, in-process executor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from xaibench.runner import Store, parse_config, run_benchmark
from xaibench.runner.config import expand
from xaibench.runner.ray_executor import (
    MissingExtraError,
    cell_from_data,
    cell_to_data,
    import_ray,
    result_from_data,
    result_to_data,
)
from xaibench.testing.runs import kill_after_first_cell

TESTS = Path(__file__).resolve().parent
#: every column but the timings
COMPARE = ["run", "study", "dataset", "model", "explainer", "explainer_key", "metric", "metric_key", "sample_index",
           "sample_id", "score", "undefined_reason", "protocol", "explainer_params", "direction", "category",
           "is_baseline", "seed", "config_hash"]


def table(run_dir: Path) -> pd.DataFrame:
    with Store.open(run_dir) as st:
        return st.results()[COMPARE]


def grid(marker: Path) -> dict:
    """Two jobs (two models), an explainer whose worker dies once, baselines; small and quick."""
    return {
        "name": "raygrid", "seed": 5,
        "study": [{
            "name": "s", "datasets": ["lesions"],
            "models": [{"model": "cnn.small_resnet", "label": "a"},
                       {"model": "cnn.small_resnet", "label": "b", "params": {"channels": [8, 16, 32, 32]}}],
            "explainers": ["cnn.gradcam",
                           {"name": "raytest.flaky_gradcam", "label": "flaky", "params": {"marker": str(marker)}}],
            "metrics": ["pointing_game", "iou", "relevance_mass"], "n_samples": 6, "batch_size": 3,
            "baselines": ["random"],
        }],
    }


# ----------------------------------------------------------------------------- no Ray needed

@pytest.fixture(scope="module")
def flaky_plugin():
    """Registers raytest.flaky_gradcam for this module only (removed after: other tests see the shipped registry)."""
    import ray_fault_plugin  # noqa: F401
    from xaibench import EXPLAINERS
    yield
    EXPLAINERS.remove("raytest.flaky_gradcam")
    sys.modules.pop("ray_fault_plugin", None)


def test_cells_and_results_cross_as_plain_data(tmp_path, flaky_plugin):
    # reference: the driver's own Cell / CellResult objects
    import json

    from xaibench.runner.work import RunContext, execute_job
    from xaibench.runner.executor import make_jobs

    cfg = parse_config(grid(tmp_path / "m"))
    cells = expand(cfg)
    for c in cells:
        d = cell_to_data(c)
        json.dumps(d)  # nothing but plain data
        assert cell_from_data(d) == c
    (tmp_path / "m").write_text("x")
    job = make_jobs(cells)[0]
    res = next(execute_job(RunContext("r", cfg.hash, cfg.seed), job, lambda *_: None))
    d = result_to_data(res)
    assert isinstance(d["examples"]["tensors"], bytes) and isinstance(d["examples"]["tree"], str)
    back = result_from_data(d)
    assert back.rows == res.rows and back.key == res.key and back.forwards == res.forwards > 0
    import torch
    assert torch.equal(back.examples["values"], res.examples["values"])


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'xaibench\[ray\]'"):
        import_ray()
    from typer.testing import CliRunner

    from xaibench.cli import app
    out = CliRunner().invoke(app, ["run", "default", "--executor", "ray", "--out", "/nonexistent/x"])
    assert out.exit_code == 2 and "pip install 'xaibench[ray]'" in out.output


# ----------------------------------------------------------------------------- with Ray

@pytest.fixture(scope="module")
def ray_cluster(flaky_plugin):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'xaibench[ray]')")
    from xaibench.runner.ray_executor import start_local_ray

    old = os.environ.get("PYTHONPATH")
    # workers of every driver connecting later (the subprocess below) find the test plugin too
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), old) if p)
    start_local_ray(2)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.mark.slow
def test_ray_table_equals_local_even_when_a_worker_dies_mid_cell(ray_cluster, tmp_path):
    marker = tmp_path / "died-once"
    cfg = parse_config(grid(marker))
    marker.write_text("local")  # the local reference must not die
    local = run_benchmark(cfg, tmp_path / "local", quiet=True, report=False)
    marker.unlink()
    remote = run_benchmark(cfg, tmp_path / "ray", quiet=True, report=False, executor="ray")
    assert marker.exists(), "the flaky explainer never ran in a worker"
    assert int(marker.read_text()) != os.getpid(), "the cell ran in the driver, not in a Ray worker"
    assert local.n_failed == 0 and remote.n_failed == 0, remote.failed
    assert remote.n_run == local.n_run == len(expand(cfg))
    a, b = table(tmp_path / "local"), table(tmp_path / "ray")
    assert len(a) == 2 * (2 + 1) * 3 * 6
    pd.testing.assert_frame_equal(a, b)
    with Store.open(tmp_path / "ray") as st:
        meta = st.get_meta()
        cells = st.cells()
    assert meta["executor"] == "ray" and meta["devices"] == ["cpu"] and meta["dtypes"] == ["float32"]
    assert (cells["status"] == "done").all()
    # the example maps came back from the workers as safetensors bytes and were written by the driver
    assert sorted(p.name for p in (tmp_path / "ray" / "examples").iterdir()) == \
        sorted(p.name for p in (tmp_path / "local" / "examples").iterdir())


KILL_TOML = """
name = "raykill"
seed = 2
[[study]]
name = "slow"
datasets = ["lesions"]
models = [{model = "cnn.small_resnet", label = "a"}, {model = "cnn.small_resnet", label = "b"}]
explainers = ["cnn.gradcam", "cnn.hirescam", {name = "cnn.hirescam", label = "hires2", params = {layer = "layer2"}}]
metrics = ["pointing_game", "iou"]
n_samples = 8
batch_size = 8
"""



@pytest.mark.slow
def test_resume_after_the_driver_is_killed(ray_cluster, tmp_path):
    cfg_path = tmp_path / "kill.toml"
    cfg_path.write_text(KILL_TOML)
    total = 2 * (3 + 2)
    env = {**os.environ, "XAIBENCH_QUIET": "1"}
    cmd = [sys.executable, "-c", "from xaibench.cli import main; main()", "run", str(cfg_path), "--out",
           str(tmp_path / "kill"), "--no-report", "--executor", "ray", "--address", ray_cluster, "--workers", "1"]
    victim = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    n_done = kill_after_first_cell(victim, tmp_path / "kill", timeout=240)
    assert 1 <= n_done < total, f"killed after {n_done} of {total} cells"
    resumed = run_benchmark(cfg_path, tmp_path / "kill", resume=True, quiet=True, report=False, executor="ray")
    assert resumed.n_resumed == n_done and resumed.n_run == total - n_done and resumed.n_failed == 0
    run_benchmark(cfg_path, tmp_path / "ref", quiet=True, report=False)
    a, b = table(tmp_path / "ref"), table(tmp_path / "kill")
    assert len(a) == total * 2 * 8
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_driver_cells_while_workers_start_give_the_same_table(ray_cluster, tmp_path, monkeypatch):
    """With ``driver_cells`` the driver runs cells on a thread until every worker answers; each of its
    results goes through the same commit path, so the table equals the local one row for row."""
    import threading

    from xaibench.runner import ray_executor

    marker = tmp_path / "never-dies"
    marker.write_text("driver")  # the flaky explainer may run in the driver here: it must not die
    cfg = parse_config(grid(marker))
    local = run_benchmark(cfg, tmp_path / "local", quiet=True, report=False)
    in_driver: list[str] = []
    real = ray_executor.execute_cell

    def counted(state, cell, on_batch):
        assert threading.current_thread().name == "xaibench-driver-cells"
        in_driver.append(cell.key)
        return real(state, cell, on_batch)

    monkeypatch.setattr(ray_executor, "execute_cell", counted)
    remote = run_benchmark(cfg, tmp_path / "ray", quiet=True, report=False, executor="ray",
                           executor_options={"driver_cells": True})
    assert remote.n_failed == 0 and remote.n_run == local.n_run == len(expand(cfg))
    # the driver takes its first cell before any worker can answer; the workers ran the rest
    assert 1 <= len(in_driver) == len(set(in_driver)) < len(expand(cfg))
    pd.testing.assert_frame_equal(table(tmp_path / "local"), table(tmp_path / "ray"))
    with Store.open(tmp_path / "ray") as st:
        assert (st.cells()["status"] == "done").all()


def test_dispatch_hands_every_cell_out_once_and_keeps_owners_on_their_jobs():
    from xaibench.runner.executor import Job
    from xaibench.runner.ray_executor import _Dispatch

    jobs = [Job("s", m, tuple(f"{m}{i}" for i in range(n))) for m, n in (("a", 3), ("b", 2), ("c", 4))]
    d = _Dispatch(jobs)  # cells are opaque to the dispatcher: strings stand in for them
    assert [d.next(0), d.next("driver", back=True), d.next(1)] == ["a0", "c0", "b0"]
    assert [d.next(0), d.next(0), d.next("driver", back=True)] == ["a1", "a2", "c1"]
    # job a is done and every job left is held: worker 0 helps the largest (c) from its end
    assert d.next(0) == "c3" and d.next(0) == "c2"
    d.release("driver")
    assert d.next(1) == "b1" and d.next(1) is None and d.next(0) is None and d.next("driver") is None
