"""Trust the run (issue 9): each test reproduces a command a careless colleague or an attacker
would try, and checks that the run folder stays data, has one writer, loses nothing, and that
bad values are named before anything runs."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xaibench.cli import app
from xaibench.errors import ConfigError, ConfigMismatchError, DataError, RunExistsError, RunLockedError
from xaibench.runner import Store, parse_config, run_benchmark
from xaibench.store import RunLock, load_examples

TINY = {
    "name": "trust", "seed": 0,
    "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "rand"}],
        "explainers": ["cnn.gradcam"], "metrics": ["pointing_game"], "n_samples": 2, "batch_size": 2,
        "baselines": ["random"],
    }],
}


def cfg(**study) -> dict:
    c = json.loads(json.dumps(TINY))
    c["study"][0].update(study)
    return c


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trust") / "run"
    run_benchmark(parse_config(cfg()), d, quiet=True)
    return d


# ----------------------------------------------------------------------------- 1. a run folder is data

class _Evil:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def test_a_crafted_pickle_in_a_run_folder_never_executes(done_run, tmp_path):
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(done_run), str(run)], check=True)
    canary = tmp_path / "canary"
    for name in ("x.pt", "evil.pkl", "zz.safetensors.pt"):
        (run / "examples" / name).write_bytes(pickle.dumps(_Evil(canary)))
    # the payload is live: unpickling it would create the canary (checked on a throwaway copy)
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe)))
    assert probe.exists()
    res = invoke("report", str(run))
    assert res.exit_code == 0, res.output
    assert not canary.exists(), "a file in the run folder executed code"
    assert len(load_examples(run)) == 2  # the run's own examples (safetensors + JSON) still load


def test_examples_are_safetensors_plus_json(done_run):
    files = sorted(p.name for p in (done_run / "examples").iterdir())
    assert files and all(f.endswith((".safetensors", ".json")) for f in files)
    ex = load_examples(done_run)
    assert {e["explainer"] for e in ex} == {"cnn.gradcam", "baseline.random"}
    assert ex[0]["values"].shape[0] == 2


# ----------------------------------------------------------------------------- 2. one writer

def test_a_locked_folder_refuses_run_resume_and_force_at_once(tmp_path):
    d = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from xaibench.store import RunLock
        lock = RunLock({str(d)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--resume"], ["--force"]):
            t0 = time.time()
            res = invoke("run", "--out", str(d), "--quiet", "--n-samples", "2", *extra)
            assert res.exit_code == 2, res.output
            assert f"pid {holder.pid}" in res.output and "in use by a live run" in res.output
            assert time.time() - t0 < 60  # refused at once, not after running
        with pytest.raises(RunLockedError):
            run_benchmark(parse_config(cfg()), d, quiet=True, report=False)
        assert not (d / "results.db").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    res = run_benchmark(parse_config(cfg()), d, quiet=True, report=False)  # a stale lock blocks nothing
    assert res.n_run == res.n_cells


def test_the_lock_is_released_after_a_run_and_held_during_it(tmp_path):
    d = tmp_path / "run"
    seen = []

    def probe(_res):
        with pytest.raises(RunLockedError):
            RunLock(d).acquire()
        seen.append(1)

    run_benchmark(parse_config(cfg()), d, quiet=True, report=False, on_cell=probe)
    assert seen
    RunLock(d).acquire().release()


# ----------------------------------------------------------------------------- 3. empty or foreign database

@pytest.mark.parametrize("kind", ["empty", "foreign", "garbage"])
def test_report_refuses_a_database_without_run_metadata(done_run, tmp_path, kind):
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(done_run), str(run)], check=True)
    before = {n: (run / n).read_bytes() for n in ("results.csv", "summary.csv", "report.html", "report.md")}
    db = run / "results.db"
    for extra in ("results.db-wal", "results.db-shm"):
        (run / extra).unlink(missing_ok=True)
    if kind == "empty":
        db.write_bytes(b"")
    elif kind == "garbage":
        db.write_bytes(b"not a database at all" * 10)
    else:
        db.unlink()
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE other (x INTEGER)")
        con.commit()
        con.close()
    size = db.stat().st_size
    res = invoke("report", str(run))
    assert res.exit_code == 2 and "nothing was changed" in res.output, res.output
    assert {n: (run / n).read_bytes() for n in before} == before
    assert db.stat().st_size == size  # no schema was created in it


# ----------------------------------------------------------------------------- 5. paths and --force

def test_a_config_name_never_escapes_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_benchmark(parse_config({**cfg(), "name": "..x"}), quiet=True, report=False)
    assert res.run_dir.resolve().parent == (tmp_path / "reports").resolve()
    with pytest.raises(ConfigError, match="name"):
        parse_config({**cfg(), "name": "../../etc"})


def test_force_deletes_exactly_what_the_run_wrote(tmp_path):
    d = tmp_path / "run"
    run_benchmark(parse_config(cfg()), d, quiet=True)
    mine = [d / "figures" / "my_drawing.png", d / "examples" / "notes.txt", d / "my_notes.md"]
    for p in mine:
        p.write_text("the user's")
    run_benchmark(parse_config(cfg(n_samples=3)), d, force=True, quiet=True)
    assert all(p.read_text() == "the user's" for p in mine)
    with Store.open(d) as st:
        assert st.n_rows() == 2 * 3
        files = st.files()
    assert "report.html" in files and any(f.startswith("examples/") for f in files)
    assert not any("my_" in f or "notes" in f for f in files)


def test_a_first_run_never_overwrites_a_users_files(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "report.md").write_text("my own report")
    with pytest.raises(RunExistsError, match="no xaibench run"):
        run_benchmark(parse_config(cfg()), d, quiet=True)
    assert (d / "report.md").read_text() == "my own report"


# ----------------------------------------------------------------------------- 6. every bad value before any cell

def test_every_bad_value_of_the_grid_is_named_before_the_first_cell(tmp_path):
    good = cfg()["study"][0]
    late = {**good, "name": "late", "datasets": [{"name": "lesions", "params": {"radius": "big"}}],
            "explainers": [{"name": "cnn.gradcam", "params": {"layer": "nope"}}],
            "metrics": [{"name": "iou", "params": {"threshold": "bogus"}}]}
    raw = {**cfg(), "study": [good, late]}
    with pytest.raises(ConfigError) as ei:
        run_benchmark(parse_config(raw), tmp_path / "r", quiet=True)
    msg = str(ei.value)
    assert "study[1].datasets[0].params.radius" in msg
    assert "study[1].metrics[0].params.threshold" in msg and "'otsu'" in msg  # the allowed values are listed
    assert not (tmp_path / "r").exists()  # nothing ran, nothing was written
    # the model-dependent check (a layer the model lacks) is also found before any cell
    raw_layer = {**cfg(), "study": [good, {**good, "name": "late",
                                            "explainers": [{"name": "cnn.gradcam", "params": {"layer": "nope"}}]}]}
    with pytest.raises(ConfigError, match=r"study\[1\]\.explainers\[0\].*nope"):
        run_benchmark(parse_config(raw_layer), tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- 7. changed data

def _folder(root: Path, shift: int = 0) -> Path:
    rng = np.random.default_rng(0)
    for i, cls in enumerate(["a", "a", "b", "b"]):
        (root / "images" / cls).mkdir(parents=True, exist_ok=True)
        (root / "masks" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / cls / f"{i}.png")
        m = np.zeros((32, 32), np.uint8)
        m[4 + shift:12 + shift, 4:12] = 255
        Image.fromarray(m).save(root / "masks" / cls / f"{i}.png")
    return root


def test_resume_refuses_when_user_data_changed_on_disk(tmp_path):
    data = _folder(tmp_path / "data")
    raw = cfg(datasets=[{"name": "image_folder", "params": {"root": str(data)}}], n_samples=4,
              explainers=["cnn.gradcam", "cnn.hirescam"])
    d = tmp_path / "run"
    crash = []

    def stop_after_one(_res):
        crash.append(1)
        if len(crash) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_benchmark(parse_config(raw), d, quiet=True, report=False, on_cell=stop_after_one)
    time.sleep(0.01)
    _folder(data, shift=10)  # new masks, same names
    with pytest.raises(ConfigMismatchError, match="changed on disk"):
        run_benchmark(parse_config(raw), d, resume=True, quiet=True, report=False)
    # unchanged data resumes normally
    d2 = tmp_path / "run2"
    with pytest.raises(KeyboardInterrupt):
        crash.clear()
        run_benchmark(parse_config(raw), d2, quiet=True, report=False, on_cell=stop_after_one)
    assert run_benchmark(parse_config(raw), d2, resume=True, quiet=True, report=False).n_resumed == 1


# ----------------------------------------------------------------------------- 8. regress on nothing

def test_regress_never_passes_on_nothing(done_run, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"version": 1, "entries": []}))
    res = invoke("regress", str(done_run), "--baseline", str(empty), "--allow-missing")
    assert res.exit_code == 1 and "nothing was compared" in res.output
    unrelated = tmp_path / "unrelated.json"
    unrelated.write_text(json.dumps({"version": 1, "entries": [
        {"study": "other", "dataset": "x", "model": "y", "explainer": "z", "metric": "pointing_game",
         "direction": "higher", "mean": 0.5, "n": 2}]}))
    res = invoke("regress", str(done_run), "--baseline", str(unrelated), "--allow-missing")
    assert res.exit_code == 1 and "nothing was compared" in res.output
    base = tmp_path / "base.json"
    assert invoke("baseline", str(done_run), "--out", str(base)).exit_code == 0
    assert invoke("regress", str(done_run), "--baseline", str(base)).exit_code == 0
    b = json.loads(base.read_text())
    for e in b["entries"]:
        e["n"] = 48  # a baseline of another config: other sample counts
    base.write_text(json.dumps(b))
    res = invoke("regress", str(done_run), "--baseline", str(base))
    assert res.exit_code == 1 and "n_mismatch" in res.output and "n=48" in res.output
    assert invoke("regress", str(done_run), "--baseline", str(base), "--allow-mismatch").exit_code == 1  # still 0 compared


# ----------------------------------------------------------------------------- 9. files named, strings escaped

def test_unreadable_files_are_named(tmp_path):
    from xaibench.datasets.fcs import read_fcs
    from xaibench.zoo import read_weights

    garbage = tmp_path / "garbage.fcs"
    garbage.write_bytes(b"FCS3.0   garbage" + bytes(range(200)))
    with pytest.raises(DataError, match="garbage.fcs"):
        read_fcs(garbage)
    from xaibench import zoo
    w = zoo.get_entry("lesion_cnn").weights_path.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(w[: len(w) // 3])
    with pytest.raises(DataError, match="trunc.safetensors"):
        read_weights(trunc)


def test_unknown_zoo_model_hint_names_a_real_command():
    res = invoke("explain", "--model", "lesion_cnm", "--method", "cnn.gradcam")
    assert res.exit_code == 2 and "xaibench zoo list" in res.output and "list_zoo_models" not in res.output


def test_report_md_escapes_user_strings(tmp_path):
    raw = cfg(explainers=[{"name": "cnn.gradcam", "label": "<script>alert(1)<b>*bold*"}])
    raw["description"] = "# Not a heading <img src=x onerror=alert(1)>"
    run = run_benchmark(parse_config(raw), tmp_path / "r", quiet=True).run_dir
    md = (run / "report.md").read_text()
    assert "<script>" not in md and "<img" not in md and "<b>*bold*" not in md
    assert "&lt;script&gt;alert\\(1\\)&lt;b&gt;\\*bold\\*" in md and "\\# Not a heading" in md
    html = (run / "report.html").read_text()
    assert "<script>alert" not in html
