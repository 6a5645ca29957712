"""Regression baselines keyed by what was measured, claims that flip, environment changes, significant drops."""

from __future__ import annotations

import copy
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from xaibench.cli import app
from xaibench.pytest_plugin import assert_no_regression
from xaibench.regress import compare, load_baseline, make_baseline, regress_run, write_baseline
from xaibench.runner import parse_config, run_benchmark
from xaibench.stats import summarise

CLAIM = "saliency puts positive relevance mass on the lesion"
CFG = {"name": "toy", "seed": 0, "study": [{
    "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "r"}],
    "explainers": [{"name": "cnn.saliency", "label": "sal"}, "cnn.gradcam"],
    "metrics": ["relevance_mass"], "n_samples": 8, "batch_size": 8, "baselines": ["random"]}],
    "claim": [{"claim": CLAIM, "source": "toy", "metric": "relevance_mass", "a": "sal", "value": 0.0}]}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    run_benchmark(parse_config(copy.deepcopy(CFG)), d / "run", quiet=True, report=False)
    path = write_baseline(d / "run", d / "base.json")
    return d / "run", path


def test_baseline_records_identity_samples_environment_and_claims(toy):
    _, path = toy
    b = load_baseline(path)
    assert b["version"] == 2 and b["environment"]["torch"] and b["environment"]["devices"] == ["cpu"]
    e = next(x for x in b["entries"] if x["explainer"] == "sal")
    assert e["identity"]["explainer"]["key"] == "cnn.saliency" and e["identity"]["model"]["name"] == "cnn.small_resnet"
    assert len(e["scores"]) == len(e["samples"]) == 8 and e["fingerprint"] != e["measure"] or e["identity"]["weights"] is None
    assert [c["verdict"] for c in b["claims"]] == ["holds"] and b["claims"][0]["claim"] == CLAIM
    rep = regress_run(*toy)
    assert rep.passed and [c.status for c in rep.claims] == ["ok"]


def test_a_renamed_label_is_still_compared_and_its_drop_caught(toy):
    run, path = toy
    b = load_baseline(path)
    for e in b["entries"]:
        if e["explainer"] == "sal":
            e["explainer"] = "saliency_old_name"
    rep = regress_run(run, b)
    assert rep.passed and not rep.of("missing") and not rep.of("new")
    assert "renamed" in rep.format() and "saliency_old_name" in rep.format()
    for e in b["entries"]:
        if e["explainer"] == "saliency_old_name":
            e["mean"] += 0.5
    rep = regress_run(run, b)
    assert not rep.passed and len(rep.of("drop")) == 1 and rep.of("drop")[0].key[3] == "sal"


def test_a_changed_environment_is_flagged_not_failed(toy):
    run, path = toy
    b = load_baseline(path)
    b["environment"]["torch"] = "1.0.0"
    b["environment"]["devices"] = ["cuda:0"]
    rep = regress_run(run, b)
    assert rep.passed and "ENVIRONMENT CHANGED" in rep.format() and "1.0.0" in rep.format() and "cuda:0" in rep.format()


def test_a_flipped_claim_fails_regress_the_cli_and_the_plugin(toy, tmp_path):
    run, path = toy
    b = load_baseline(path)
    for e in b["entries"]:
        e["tolerance"] = 100.0  # only the claim can fail
    base = tmp_path / "base.json"
    base.write_text(json.dumps(b))
    flipped = tmp_path / "run"
    flipped.mkdir()
    for f in run.glob("results.db*"):
        (flipped / f.name).write_bytes(f.read_bytes())
    with sqlite3.connect(flipped / "results.db") as con:  # the model changed: saliency now misses the lesion
        con.execute("UPDATE results SET score = -1.0 WHERE explainer = 'sal'")
    rep = regress_run(flipped, base)
    assert not rep.passed and [c.status for c in rep.claims] == ["flipped"]
    assert "claim flipped" in rep.format() and CLAIM in rep.format() and "refuted" in rep.format()
    res = CliRunner().invoke(app, ["regress", str(flipped), "--baseline", str(base)])
    assert res.exit_code == 1 and "flipped" in res.stdout
    with pytest.raises(AssertionError, match="flipped"):
        assert_no_regression(flipped, base)
    assert_no_regression(run, base)


# ----------------------------------------------------------------------------- significance (synthetic)

def frames(scores: np.ndarray, mean_shift: float = 0.0):
    rows = [{"study": "s", "dataset": "d", "model": "m", "explainer": "e", "explainer_key": "e", "metric": "x",
             "metric_key": "x", "sample_index": i, "score": float(v), "undefined_reason": None, "seconds": 0.0,
             "protocol": "{}", "explainer_params": "{}", "direction": "higher", "category": "", "is_baseline": False,
             "seed": 0} for i, v in enumerate(scores + mean_shift)]
    res = pd.DataFrame(rows)
    return summarise(res), res


META = {"config": {"studies": [{"name": "s", "seed": 0, "datasets": [{"name": "d", "label": "d"}],
                                "models": [{"name": "m", "label": "m", "source": "zoo", "weights_sha256": "w1"}]}]},
        "versions": {"torch": "2.14.1"}}


def test_significant_fails_only_on_a_drop_beyond_noise():
    rng = np.random.default_rng(0)
    base_scores = rng.uniform(0, 1, 60)
    s0, r0 = frames(base_scores)
    base = make_baseline(s0, results=r0, meta=META)
    # a consistent drop of 0.1 on every sample: beyond tolerance and significant
    s1, r1 = frames(base_scores, -0.1)
    assert not compare(s1, base, results=r1, meta=META).passed
    rep = compare(s1, base, results=r1, meta=META, significant=True)
    assert not rep.passed and "significant:" in rep.format()
    # a mean drop of 0.07 made of large per-sample noise: beyond tolerance, not significant
    noise = rng.normal(0, 0.6, 60)
    noisy = base_scores + noise - noise.mean() - 0.07
    s2, r2 = frames(noisy)
    assert s2["mean"].iloc[0] < s0["mean"].iloc[0] - 0.05
    assert not compare(s2, base, results=r2, meta=META).passed
    rep = compare(s2, base, results=r2, meta=META, significant=True)
    assert rep.passed and "not significant" in rep.format()


def test_retrained_weights_are_compared_and_noted():
    s0, r0 = frames(np.linspace(0, 1, 10))
    base = make_baseline(s0, results=r0, meta=META)
    meta2 = copy.deepcopy(META)
    meta2["config"]["studies"][0]["models"][0].update(weights_sha256="w2", label="m")
    rep = compare(s0, base, results=r0, meta=meta2)
    assert rep.passed and rep.n_compared == 1 and "weights changed" in rep.format()


def test_version_1_baselines_are_still_read(tmp_path):
    s0, r0 = frames(np.linspace(0, 1, 10))
    old = make_baseline(s0)
    old["version"] = 1
    for e in old["entries"]:
        for k in ("identity", "fingerprint", "measure", "samples", "scores"):
            e.pop(k, None)
    (tmp_path / "b.json").write_text(json.dumps(old))
    rep = compare(s0, load_baseline(tmp_path / "b.json"), results=r0, meta=META, significant=True)
    assert rep.passed and rep.n_compared == 1
