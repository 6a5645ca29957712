"""The benchmark file's JSON Schema (what editors use to complete and check a TOML) accepts every
built-in benchmark and rejects what the runner rejects."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import jsonschema
import pytest

from xaibench.runner import benchmark_schema
from xaibench.runner.config import BENCHMARKS_DIR, list_benchmarks

SCHEMA_FILE = BENCHMARKS_DIR / "benchmark.schema.json"


@pytest.fixture(scope="module")
def validator():
    schema = benchmark_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("name", list_benchmarks())
def test_every_builtin_benchmark_validates(validator, name):
    raw = tomllib.loads((BENCHMARKS_DIR / f"{name}.toml").read_text())
    errors = sorted(validator.iter_errors(raw), key=str)
    assert not errors, errors[0].message


def test_the_schema_rejects_what_the_runner_rejects(validator):
    good = {"name": "x", "study": [{"datasets": ["lesions"], "models": ["lesion_cnn"],
                                    "explainers": ["cnn.gradcam"], "metrics": ["iou"]}]}
    assert validator.is_valid(good)
    bad_cases = [
        {"explainers": ["cnn.gradcan"]},                                               # unknown name
        {"metrics": [{"name": "iou", "params": {"threshold": "bogus"}}]},              # bad value
        {"metrics": [{"name": "iou", "params": {"thresh": 0.5}}]},                      # unknown setting
        {"explainers": [{"name": "cnn.gradcam", "params": {"relu": "yes"}}]},           # wrong type
        {"models": ["no_such_zoo_model"]},
        {"target": "labels"},
    ]
    for change in bad_cases:
        raw = json.loads(json.dumps(good))
        raw["study"][0].update(change)
        assert not validator.is_valid(raw), change


def test_the_published_schema_file_is_current():
    """`xaibench schema --out xaibench/benchmarks/benchmark.schema.json` after adding a plugin."""
    assert SCHEMA_FILE.is_file(), "publish it with: xaibench schema --out " + str(SCHEMA_FILE)
    # generated in a fresh process: tests register test-only plugins in this one (raytest.*, test.*)
    fresh = subprocess.run([sys.executable, "-c", "import json, sys; from xaibench.runner import benchmark_schema; "
                            "json.dump(benchmark_schema(), sys.stdout)"], capture_output=True, text=True, check=True)
    assert json.loads(SCHEMA_FILE.read_text()) == json.loads(fresh.stdout), (
        f"{SCHEMA_FILE.name} is out of date: run `xaibench schema --out {SCHEMA_FILE}`")
