"""Faults (issue 9): a real `xaibench run` SIGKILLed at many points resumes to the uninterrupted
table row for row; a full disk fails one cell and the grid goes on.

Kill points are deterministic: a driver process patches one function to SIGKILL itself at its
k-th call (the kill is real; only its moment is chosen), so every point is reached on any machine.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from xaibench.runner import Store, parse_config, run_benchmark

CFG = {
    "name": "faults", "seed": 2,
    "study": [
        {"name": "a", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "m"}],
         "explainers": ["cnn.gradcam", "cnn.saliency"], "metrics": ["pointing_game", "iou"],
         "n_samples": 4, "batch_size": 2, "baselines": ["random"]},
        {"name": "b", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "m2"}],
         "explainers": ["cnn.hirescam"], "metrics": ["relevance_rank"], "n_samples": 2, "batch_size": 2,
         "baselines": []},
    ],
}
COLS = ["study", "dataset", "model", "explainer", "metric", "sample_index", "sample_id", "score",
        "undefined_reason", "protocol", "explainer_params", "direction", "is_baseline", "seed"]

# (module path, attribute, k): SIGKILL at the k-th call of that function, spread over a whole run
KILL_POINTS = [
    ("xaibench.runner.run", "check_grid", 1, "after the grid check, before the lock"),
    ("xaibench.runner.work", "run_explainer_cell", 1, "inside the first cell"),
    ("xaibench.runner.run", "save_examples", 1, "while the first cell's example maps are written"),
    ("xaibench.store.Store", "commit_cell", 2, "at the second cell's commit"),
    ("xaibench.runner.work", "run_baseline_cell", 1, "inside a baseline cell"),
    ("xaibench.store.Store", "commit_cell", 4, "at the last cell's commit"),
    ("xaibench.report", "_write_table", 2, "report build: after results.csv"),
    ("xaibench.report", "run_figures", 1, "report build: during the figures"),
    ("xaibench.report", "render_html", 1, "report build: after report.md"),
    ("xaibench.store.Store", "record_files", 1, "report build: recording the manifest"),
]

DRIVER = textwrap.dedent("""
    import functools, importlib, os, signal, sys
    mod_path, attr, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        owner = importlib.import_module(mod_path)
    except ModuleNotFoundError:
        m, cls = mod_path.rsplit(".", 1)
        owner = getattr(importlib.import_module(m), cls)
    real = getattr(owner, attr)
    calls = [0]
    @functools.wraps(real)
    def killer(*a, **kw):
        calls[0] += 1
        if calls[0] == k:
            if attr in ("save_examples", "_write_table", "render_html"):
                out = real(*a, **kw)   # kill right after this write
                os.kill(os.getpid(), signal.SIGKILL)
                return out
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)
    setattr(owner, attr, killer)
    from xaibench.cli import main
    sys.argv = ["xaibench", *sys.argv[4:]]
    main()
""")


def table(run: Path) -> pd.DataFrame:
    with Store.open(run) as st:
        return st.results()[COLS].reset_index(drop=True)


@pytest.mark.slow
def test_sigkill_at_many_points_then_resume_equals_uninterrupted(tmp_path):
    toml = tmp_path / "faults.toml"
    toml.write_text(_toml(CFG))
    ref = run_benchmark(parse_config(CFG), tmp_path / "ref", quiet=True)
    want = table(ref.run_dir)
    assert len(want) == (3 * 4 * 2) + 2  # study a: 3 cells x 4 samples x 2 metrics; b: 2 samples
    runs = [tmp_path / f"kill{i}" for i in range(len(KILL_POINTS))]

    def kill(i: int) -> subprocess.CompletedProcess:
        mod, attr, k, _ = KILL_POINTS[i]
        return subprocess.run([sys.executable, "-c", DRIVER, mod, attr, str(k), "run", str(toml), "--out",
                               str(runs[i]), "--quiet"], capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:  # two kills at a time: the machine has 2 cores
        procs = list(pool.map(kill, range(len(KILL_POINTS))))
    killed = []
    for (_, _, _, where), run, proc in zip(KILL_POINTS, runs, procs):
        assert proc.returncode == -9, f"{where}: the run was not killed (rc {proc.returncode}): {proc.stderr[-500:]}"
        killed.append(where)
        # resume finishes the run and rebuilds the report; the table equals the uninterrupted one
        res = run_benchmark(str(toml), run, resume=(run / "results.db").exists(), quiet=True)
        pd.testing.assert_frame_equal(table(run), want, obj=f"results after a kill {where}")
        assert (run / "report.html").stat().st_size > 1000
        assert (run / "results.csv").read_text().count("\n") == len(want) + 1
        assert res.n_failed == 0
    assert len(killed) >= 8


def _toml(cfg: dict) -> str:
    """The benchmark dict as TOML (inline tables and arrays only)."""
    lines = [f"name = {_inline(cfg['name'])}", f"seed = {cfg['seed']}"]
    for st in cfg["study"]:
        lines.append("[[study]]")
        lines += [f"{k} = {_inline(v)}" for k, v in st.items()]
    return "\n".join(lines) + "\n"


def _inline(x: object) -> str:
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k} = {_inline(v)}" for k, v in x.items()) + "}"
    if isinstance(x, list):
        return "[" + ", ".join(_inline(v) for v in x) + "]"
    return json.dumps(x)


def test_a_full_disk_fails_one_cell_and_the_grid_goes_on(tmp_path, monkeypatch):
    from xaibench.runner import run as run_mod

    real = run_mod.save_examples
    calls = []

    def disk_full(run_dir, key, examples):
        calls.append(key)
        if key == "a/lesions/m/cnn.saliency":
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir))
        return real(run_dir, key, examples)

    monkeypatch.setattr(run_mod, "save_examples", disk_full)
    res = run_benchmark(parse_config(CFG), tmp_path / "r", quiet=True)
    assert list(res.failed) == ["a/lesions/m/cnn.saliency"] and "No space left on device" in res.failed[
        "a/lesions/m/cnn.saliency"]
    with Store.open(tmp_path / "r") as st:
        cells = st.cells().set_index("cell_key")
    assert (cells.drop("a/lesions/m/cnn.saliency")["status"] == "done").all()
    assert "No space left" in (tmp_path / "r" / "report.md").read_text()
    monkeypatch.setattr(run_mod, "save_examples", real)
    ran = []
    res = run_benchmark(parse_config(CFG), tmp_path / "r", resume=True, quiet=True, on_cell=lambda r: ran.append(r.key))
    assert ran == ["a/lesions/m/cnn.saliency"] and res.n_failed == 0
    ref = run_benchmark(parse_config(CFG), tmp_path / "ref", quiet=True)
    pd.testing.assert_frame_equal(table(tmp_path / "r"), table(ref.run_dir))
