"""The pytest plugin: a user's test suite records and checks explanation quality."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import torch
import xaibench


def test_gradcam_mass(xai_quality):
    torch.manual_seed(0)
    model = xaibench.create_model("cnn.small_resnet").eval()
    batch = xaibench.create_dataset("lesions", n=4, batch_size=4, seed=0).all()
    attr = xaibench.explain(model, batch.inputs, "cnn.gradcam", target=batch.targets)
    xai_quality.check(xaibench.create_metric("relevance_mass"), attr, batch)


def test_error_rate(xai_quality):
    xai_quality.check_scores([0.1, 0.2, 0.3], metric="error", direction="lower", explainer="mine", name="errors")
"""


def entries(path):
    return {(e["dataset"], e["metric"]): e for e in json.loads(path.read_text())["entries"]}


@pytest.fixture(scope="module", autouse=True)
def _imported_before_pytester():
    """In-process pytester runs drop the modules first imported inside them (and torch cannot be
    imported twice): run the user code once before pytester takes its snapshot of sys.modules."""
    ns: dict = {}
    exec(USER_TESTS, ns)
    ns["test_gradcam_mass"](type("NoCheck", (), {"check": lambda *a, **k: None})())


def test_record_then_check_then_detect_drops(pytester: pytest.Pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    base = pytester.path / "xaibench_baseline.json"

    res = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    res.assert_outcomes(failed=2)
    res.stdout.fnmatch_lines(["*no baseline file*--xaibench-update*"])

    pytester.runpytest_inprocess("--xaibench-update").assert_outcomes(passed=2)
    e = entries(base)
    mass = e[("test_gradcam_mass", "relevance_mass")]
    assert mass["explainer"] == "cnn.gradcam" and mass["direction"] == "higher" and mass["protocol"] == {}
    assert e[("errors", "error")]["mean"] == pytest.approx(0.2)

    pytester.runpytest_inprocess().assert_outcomes(passed=2)

    # the stored scores were better than today's by more than the tolerance: both tests fail
    data = json.loads(base.read_text())
    for ent in data["entries"]:
        ent["mean"] += 0.1 if ent["direction"] == "higher" else -0.1
    base.write_text(json.dumps(data))
    res = pytester.runpytest_inprocess()
    res.assert_outcomes(failed=2)
    res.stdout.fnmatch_lines(["*explanation quality regressed*", "*REGRESSION*"])

    # a loose per-entry tolerance accepts the same drop
    for ent in data["entries"]:
        ent["tolerance"] = 0.2
    base.write_text(json.dumps(data))
    pytester.runpytest_inprocess().assert_outcomes(passed=2)

    # scores measured with another protocol are never compared
    data["entries"] = [ent for ent in data["entries"] if ent["metric"] == "relevance_mass"]
    data["entries"][0]["protocol"] = {"normalise": True}
    other = pytester.path / "other.json"
    other.write_text(json.dumps(data))
    res = pytester.runpytest_inprocess("--xaibench-baseline", str(other), "-k", "mass")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*protocol_mismatch*"])


def test_assert_no_regression_on_a_run(tmp_path):
    from xaibench.pytest_plugin import assert_no_regression
    from xaibench.regress import write_baseline
    from xaibench.runner import parse_config, run_benchmark

    cfg = parse_config({"name": "pl", "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "r"}],
        "explainers": ["cnn.gradcam"], "metrics": ["iou"], "n_samples": 2, "batch_size": 2, "baselines": []}]})
    run_benchmark(cfg, tmp_path / "run", quiet=True, report=False)
    path = write_baseline(tmp_path / "run", tmp_path / "b.json")
    assert_no_regression(tmp_path / "run", path)
    data = json.loads(path.read_text())
    data["entries"][0]["mean"] += 0.5
    path.write_text(json.dumps(data))
    with pytest.raises(AssertionError, match="regressed"):
        assert_no_regression(tmp_path / "run", path)
