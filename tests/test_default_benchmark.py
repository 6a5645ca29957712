"""The default benchmark end to end, as `make demo` runs it: every family's study, the report
files, and no regression against the committed reports/baseline.json (checked in CI)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "reports" / "baseline.json"


def _xaibench(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("xaibench")
    env = {**os.environ, "XAIBENCH_QUIET": "1"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.slow
def test_default_benchmark_runs_reports_and_does_not_regress(tmp_path):
    out = tmp_path / "default"
    r = _xaibench("run", "--out", str(out))
    assert r.returncode == 0, r.stderr + r.stdout
    for name in ("report.html", "report.md", "summary.csv", "results.csv", "results.parquet"):
        assert (out / name).exists(), name
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    summary = pd.read_csv(out / "summary.csv")
    assert {"baseline.random", "baseline.centre"} <= set(summary["explainer"])
    assert summary["study"].nunique() >= 1
    assert BASELINE.exists(), "reports/baseline.json is missing: run `xaibench baseline reports/default --out reports/baseline.json`"
    r = _xaibench("regress", str(out), "--baseline", str(BASELINE))
    assert r.returncode == 0, r.stdout + r.stderr
