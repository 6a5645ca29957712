"""Regression baselines: direction-aware drops, tolerances, missing entries, protocol mismatches."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from xaibench.regress import compare, load_baseline, make_baseline, regress_run, write_baseline
from xaibench.runner import parse_config, run_benchmark


def summary(rows) -> pd.DataFrame:
    base = {"study": "s", "dataset": "d", "model": "m", "ci_low": 0.0, "ci_high": 1.0, "n": 10, "n_undefined": 0,
            "is_baseline": False, "protocol": "{}"}
    return pd.DataFrame([{**base, "metric_key": r["metric"], **r} for r in rows])


RUN = summary([
    {"explainer": "a", "metric": "hi", "direction": "higher", "mean": 0.80, "protocol": '{"tolerance": 0.0}'},
    {"explainer": "a", "metric": "lo", "direction": "lower", "mean": 0.20},
    {"explainer": "baseline.random", "metric": "hi", "direction": "higher", "mean": 0.1, "is_baseline": True,
     "protocol": '{"tolerance": 0.0}'},
])


def test_baseline_holds_real_methods_with_protocols_and_tolerances():
    b = make_baseline(RUN, config_hash="abc", default_tolerance=0.05, tolerances={"lo": 0.01})
    assert b["version"] == 2 and b["config_hash"] == "abc" and b["default_tolerance"] == 0.05
    assert [(e["explainer"], e["metric"]) for e in b["entries"]] == [("a", "hi"), ("a", "lo")]
    hi, lo = b["entries"]
    assert hi["protocol"] == {"tolerance": 0.0} and hi["direction"] == "higher" and hi["tolerance"] == 0.05
    assert lo["tolerance"] == 0.01 and lo["mean"] == 0.20 and {"ci_low", "ci_high", "n", "created"} - set(lo) == {"created"}


def test_identical_run_passes():
    rep = compare(RUN, make_baseline(RUN))
    assert rep.passed and len(rep.of("ok")) == 2 and "no regression" in rep.format()


@pytest.mark.parametrize("metric, new_mean, fails", [
    ("hi", 0.76, False),   # worse but within 0.05
    ("hi", 0.74, True),    # worse beyond tolerance
    ("hi", 0.99, False),   # better
    ("lo", 0.24, False),   # lower is better: +0.04 within tolerance
    ("lo", 0.26, True),    # lower is better: +0.06 is a drop
    ("lo", 0.01, False),   # lower is better: improvement
])
def test_drops_are_direction_aware(metric, new_mean, fails):
    base = make_baseline(RUN, default_tolerance=0.05)
    run = RUN.copy()
    run.loc[(run["metric"] == metric) & ~run["is_baseline"], "mean"] = new_mean
    rep = compare(run, base)
    assert rep.passed is (not fails)
    assert len(rep.of("drop")) == int(fails)
    if fails:
        assert "REGRESSION" in rep.format() and metric in rep.format()


def test_per_entry_tolerance_and_undefined_run():
    base = make_baseline(RUN, default_tolerance=0.05, tolerances={"hi": 0.3})
    run = RUN.copy()
    run.loc[0, "mean"] = 0.6
    assert compare(run, base).passed
    run.loc[0, "mean"] = float("nan")
    rep = compare(run, base)
    assert not rep.passed and "undefined" in rep.format()


def test_missing_entries_fail_unless_allowed_and_new_ones_are_reported():
    base = make_baseline(RUN)
    run = RUN[RUN["metric"] != "lo"]
    rep = compare(run, base)
    assert not rep.passed and len(rep.of("missing")) == 1
    assert compare(run, base, allow_missing=True).passed
    extra = pd.concat([RUN, summary([{"explainer": "b", "metric": "hi", "direction": "higher", "mean": 0.5}])])
    rep = compare(extra, base)
    assert rep.passed and len(rep.of("new")) == 1


def test_protocol_mismatch_is_a_failure_not_a_comparison():
    base = make_baseline(RUN)
    run = RUN.copy()
    run.loc[0, "protocol"] = '{"tolerance": 3}'
    run.loc[0, "mean"] = 0.99  # better, but measured differently
    rep = compare(run, base)
    assert not rep.passed and len(rep.of("protocol_mismatch")) == 1
    assert "not comparable" in rep.format()


def test_bad_baseline_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="xaibench baseline"):
        load_baseline(tmp_path / "none.json")
    (tmp_path / "b.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="entries"):
        load_baseline(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"entries": [{"study": "s"}]}))
    with pytest.raises(ValueError, match=r"entries\[0\] lacks"):
        load_baseline(tmp_path / "c.json")


def test_a_real_run_against_its_own_baseline(tmp_path):
    cfg = parse_config({"name": "rg", "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "r"}],
        "explainers": ["cnn.gradcam"], "metrics": ["pointing_game", "relevance_mass"], "n_samples": 4,
        "batch_size": 4}]})
    run_benchmark(cfg, tmp_path / "run", quiet=True, report=False)
    path = write_baseline(tmp_path / "run", tmp_path / "base.json", tolerances={"relevance_mass": 0.01})
    b = load_baseline(path)
    assert len(b["entries"]) == 2 and {e["tolerance"] for e in b["entries"]} == {0.05, 0.01}
    assert regress_run(tmp_path / "run", path).passed
    hi = next(e for e in b["entries"] if e["metric"] == "relevance_mass")
    hi["mean"] += 0.02
    assert not regress_run(tmp_path / "run", b).passed
