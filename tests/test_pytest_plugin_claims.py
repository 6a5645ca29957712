"""The pytest plugin fails a user's test when a toy claim that held in the baseline stops holding."""

from __future__ import annotations

import json

import pytest
import scipy.stats  # noqa: F401  (the claim tests' statistics; numpy's C modules cannot load twice)

import xaibench.claims  # noqa: F401  (imported before pytester snapshots sys.modules: no double import)
import xaibench.pytest_plugin  # noqa: F401

pytest_plugins = ["pytester"]

USER_TESTS = """
import json
import pathlib


def test_new_method_beats_old(xai_quality):
    shift = json.loads(pathlib.Path(__file__).with_name("shift.json").read_text())
    old = [((i * 7) % 10) / 10 for i in range(30)]
    new = [x + shift + ((i * 3) % 5) / 100 for i, x in enumerate(old)]
    xai_quality.check_claim("new method beats the old one", new, old, source="toy")


def test_recall_at_least(xai_quality):
    xai_quality.check_claim("recall is at least 0.5", [0.8, 0.9, 0.7, 0.85, 0.95, 0.75, 0.8, 0.9], value=0.5)
"""


def test_a_claim_that_stops_holding_fails(pytester: pytest.Pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    shift = pytester.path / "shift.json"
    base = pytester.path / "xaibench_baseline.json"
    shift.write_text("0.2")

    res = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    res.assert_outcomes(failed=2)
    res.stdout.fnmatch_lines(["*no baseline file*"])

    pytester.runpytest_inprocess("-p", "no:cacheprovider", "--xaibench-update").assert_outcomes(passed=2)
    claims = {c["claim"]: c for c in json.loads(base.read_text())["claims"]}
    assert claims["new method beats the old one"]["verdict"] == "holds"
    assert claims["recall is at least 0.5"]["verdict"] == "holds"
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)

    shift.write_text("-0.2")  # the new method got worse than the old one: the claim is refuted
    res = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines(["*claim flipped*new method beats the old one*now refuted*"])

    shift.write_text("-0.03")  # no clear difference any more: no longer holds either
    res = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines(["*claim flipped*"])
