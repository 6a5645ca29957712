"""Results store and resume: a run interrupted at any point resumes to the same results table."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from xaibench.runner import (RunExistsError, Store, expand, parse_config, run_benchmark)
from xaibench.store import CellResult
from xaibench.testing.runs import kill_after_first_cell

CFG = {
    "name": "resume", "seed": 3,
    "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "rand"}],
        "explainers": ["cnn.gradcam", {"name": "cnn.hirescam", "label": "hires3", "params": {"layer": "layer3"}}],
        "metrics": ["pointing_game", "iou"], "n_samples": 4, "batch_size": 4,
    }],
}
COMPARE = [c for c in ("run", "study", "dataset", "model", "explainer", "explainer_key", "metric", "metric_key",
                       "sample_index", "sample_id", "score", "undefined_reason", "protocol", "explainer_params",
                       "direction", "category", "is_baseline", "seed", "config_hash")]


def results(run_dir: Path) -> pd.DataFrame:
    with Store.open(run_dir) as st:
        return st.results()[COMPARE]


class Crash(Exception):
    pass


def test_resume_after_a_crash_gives_the_uninterrupted_table(tmp_path):
    cfg = parse_config(CFG)
    full = run_benchmark(cfg, tmp_path / "full", quiet=True, report=False)
    committed = []

    def crash_after_two(res: CellResult) -> None:
        committed.append(res.key)
        if len(committed) == 2:
            raise Crash

    with pytest.raises(Crash):
        run_benchmark(cfg, tmp_path / "part", quiet=True, report=False, on_cell=crash_after_two)
    with Store.open(tmp_path / "part") as st:
        assert set(st.done_cells()) == set(committed)
        assert st.get_meta()["finished_at"] is None
        n_rows_partial = st.n_rows()
    assert n_rows_partial == 2 * 2 * 4
    resumed = run_benchmark(cfg, tmp_path / "part", resume=True, quiet=True, report=False)
    assert resumed.n_resumed == 2 and resumed.n_run == full.n_cells - 2
    pd.testing.assert_frame_equal(results(tmp_path / "full"), results(tmp_path / "part"))
    with Store.open(tmp_path / "part") as st:
        meta = st.get_meta()
    assert meta["finished_at"] and len(meta["resumed_at"]) == 1


def test_an_uncommitted_cell_leaves_nothing(tmp_path, monkeypatch):
    """A failure inside the cell's transaction rolls back every row of it."""
    store = Store(tmp_path / "results.db")
    cell = expand(parse_config(CFG))[0]
    store.plan([cell])
    rows = [{"run": "r", "study": "s", "sample_index": i, "score": 0.5} for i in range(3)]
    rows.append({"run": "r", "study": "s", "sample_index": object(), "score": 0.5})  # not storable: fails mid-insert
    with pytest.raises(sqlite3.Error):
        store.commit_cell(CellResult(cell.key, 0, "s", "lesions", "rand", "cnn.gradcam", False, rows=rows))
    assert store.n_rows() == 0 and not store.done_cells()
    store.commit_cell(CellResult(cell.key, 0, "s", "lesions", "rand", "cnn.gradcam", False, rows=rows[:3]))
    store.commit_cell(CellResult(cell.key, 0, "s", "lesions", "rand", "cnn.gradcam", False, rows=rows[:3]))
    assert store.n_rows() == 3 and set(store.done_cells()) == {cell.key}  # recommitting never duplicates
    store.close()


def test_existing_results_are_protected(tmp_path):
    cfg = parse_config(CFG)
    run_benchmark(cfg, tmp_path / "r", quiet=True, report=False)
    with pytest.raises(RunExistsError, match="--resume .* --force"):
        run_benchmark(cfg, tmp_path / "r", quiet=True, report=False)
    again = run_benchmark(cfg, tmp_path / "r", resume=True, quiet=True, report=False)
    assert again.n_run == 0 and again.n_resumed == again.n_cells
    other = json.loads(json.dumps(CFG))
    other["study"][0]["n_samples"] = 3
    forced = run_benchmark(parse_config(other), tmp_path / "r", force=True, quiet=True, report=False)
    assert forced.n_run == forced.n_cells
    with Store.open(tmp_path / "r") as st:
        assert st.n_rows() == forced.n_cells * 2 * 3


def test_resume_is_keyed_per_cell(tmp_path):
    """Resuming after a setting changed reruns exactly the cells whose own spec changed; the
    others keep their rows (a typo fixed in one place never invalidates the whole run)."""
    cfg = parse_config(CFG)
    run_benchmark(cfg, tmp_path / "r", quiet=True, report=False)
    changed = json.loads(json.dumps(CFG))
    changed["study"][0]["explainers"][1]["params"]["relu"] = False  # hires3 only (not the first explainer)
    ran: list[str] = []
    res = run_benchmark(parse_config(changed), tmp_path / "r", resume=True, quiet=True, report=False,
                        on_cell=lambda r: ran.append(r.key))
    assert ran == ["s/lesions/rand/hires3"] and res.n_resumed == res.n_cells - 1
    fresh = run_benchmark(parse_config(changed), tmp_path / "fresh", quiet=True, report=False)
    pd.testing.assert_frame_equal(results(tmp_path / "r").drop(columns="config_hash"),
                                  results(fresh.run_dir).drop(columns="config_hash"))
    more = json.loads(json.dumps(changed))
    more["study"][0]["n_samples"] = 3  # every cell of the study measures something else now
    res = run_benchmark(parse_config(more), tmp_path / "r", resume=True, quiet=True, report=False)
    assert res.n_run == res.n_cells
    with Store.open(tmp_path / "r") as st:
        assert st.n_rows() == res.n_cells * 2 * 3


# ----------------------------------------------------------------------------- real kill

KILL_TOML = """
name = "killme"
seed = 1
[[study]]
name = "quick"
datasets = ["lesions"]
models = [{model = "cnn.small_resnet", label = "a"}]
explainers = ["cnn.gradcam"]
metrics = ["pointing_game", "iou"]
n_samples = 4
batch_size = 4
baselines = []

[[study]]
name = "slow"
datasets = ["lesions"]
models = [{model = "cnn.small_resnet", label = "b", params = {channels = [16, 32, 64, 128]}}]
explainers = ["cnn.gradcam", "cnn.hirescam", {name = "cnn.hirescam", label = "hires2", params = {layer = "layer2"}}]
metrics = ["pointing_game", "iou", "relevance_rank"]
n_samples = 32
batch_size = 16
"""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from xaibench.cli import main; main()", *args]



@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    cfg_path = tmp_path / "kill.toml"
    cfg_path.write_text(KILL_TOML)
    env = {**os.environ, "XAIBENCH_QUIET": "1"}
    total = 1 + 5  # quick: 1 cell; slow: 3 explainers + 2 baselines
    # the uninterrupted reference runs alongside the doomed run (same machine, same settings)
    ref = subprocess.Popen(_cli("run", str(cfg_path), "--out", str(tmp_path / "ref"), "--no-report"), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victim = subprocess.Popen(_cli("run", str(cfg_path), "--out", str(tmp_path / "kill"), "--no-report"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n_done = kill_after_first_cell(victim, tmp_path / "kill", timeout=120)
    assert 1 <= n_done < total, f"killed after {n_done} of {total} cells"
    assert ref.wait(180) == 0, ref.stderr.read().decode()
    resumed = subprocess.run(_cli("run", str(cfg_path), "--out", str(tmp_path / "kill"), "--resume", "--no-report"),
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{n_done} already done" in resumed.stdout
    a, b = results(tmp_path / "ref"), results(tmp_path / "kill")
    assert len(a) == 4 * 2 + 5 * 3 * 32
    pd.testing.assert_frame_equal(a, b)
