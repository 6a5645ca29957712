"""The contract suite, generated from the registries: every explainer, metric, dataset and baseline.

Coverage is checked against an inventory that does not come from the registry: the
registration decorators found by parsing the source files.
"""

import ast
import pathlib

import pytest
import torch

from xaibench.testing import (
    baseline_cases, check_bad_inputs, check_baseline, check_batch_equals_singles, check_dataset, check_deterministic,
    check_baseline_device, check_device, check_dtype_float64, check_metric, check_metric_device, check_model_untouched,
    check_output, check_target_formats,
    dataset_cases, explainer_cases, get_fixture, metric_cases,
)
from xaibench.testing import _make, _targets  # internal helpers reused by the suite

CASES = explainer_cases()
IDS = [f"{n}@{f}" for n, f in CASES]
METRIC_CASES = metric_cases()
DATASET_CASES = dataset_cases()
BASELINE_CASES = baseline_cases()

#: Contract failures known and reported, as strict xfails: fixing one makes its test XPASS
#: (a failure), so the entry has to be removed then.
KNOWN: dict[tuple[str, str], str] = {}  # (check, explainer) -> why it fails today (a strict xfail)


def _params(kind):
    return [pytest.param(n, f, id=f"{n}@{f}", marks=[pytest.mark.xfail(reason=KNOWN[kind, n], strict=True)]
                         if (kind, n) in KNOWN else []) for n, f in CASES]


@pytest.mark.parametrize("name,fixture", CASES, ids=IDS)
def test_output(name, fixture):
    case = get_fixture(fixture)
    check_output(name, _make(name, case).explain_batch(case.batch, _targets(case)), case)


@pytest.mark.parametrize("name,fixture", CASES, ids=IDS)
def test_batch_equals_singles(name, fixture):
    check_batch_equals_singles(name, get_fixture(fixture))


@pytest.mark.parametrize("name,fixture", CASES, ids=IDS)
def test_deterministic(name, fixture):
    check_deterministic(name, get_fixture(fixture))


@pytest.mark.parametrize("name,fixture", CASES, ids=IDS)
def test_model_untouched(name, fixture):
    check_model_untouched(name, get_fixture(fixture))


@pytest.mark.parametrize("name,fixture", CASES, ids=IDS)
def test_bad_inputs_raise_valueerror(name, fixture):
    check_bad_inputs(name, get_fixture(fixture))


@pytest.mark.parametrize("name,fixture", _params("targets"))
def test_target_formats(name, fixture):
    # reference: the same explainer called with the explicit (B,) tensor each format stands for
    check_target_formats(name, get_fixture(fixture))


@pytest.mark.parametrize("name,fixture", _params("dtype"))
def test_float64(name, fixture):
    # reference: the float32 result on the same model and inputs
    check_dtype_float64(name, get_fixture(fixture))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name,fixture", _params("device"))
def test_cuda(name, fixture):
    # reference: the CPU result on the same model and inputs
    check_device(name, get_fixture(fixture), "cuda")


@pytest.mark.parametrize("name", METRIC_CASES)
def test_metric_contract(name):
    check_metric(name)


#: the CPU always (the check itself runs), CUDA when present
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", METRIC_CASES)
def test_metric_on_device(name, device):
    # reference: the same metric on the CPU
    check_metric_device(name, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", BASELINE_CASES)
def test_baseline_on_device(name, device):
    # reference: the same baseline on the CPU
    check_baseline_device(name, device)


@pytest.mark.parametrize("name", DATASET_CASES)
def test_dataset_contract(name):
    check_dataset(name)


@pytest.mark.parametrize("name", BASELINE_CASES)
def test_baseline_contract(name):
    check_baseline(name)


# ------------------------------------------------------------------ coverage

ROOT = pathlib.Path(__file__).resolve().parents[1]
DECORATORS = {"register_explainer": "explainer", "register_metric": "metric",
              "register_dataset": "dataset", "register_baseline": "baseline"}


def registrations_in_source() -> dict[str, set[str]]:
    """{kind: keys} of every ``@register_explainer("key")`` / ``@register_metric`` /
    ``@register_dataset`` / ``@register_baseline`` decorator in our source files, found by
    parsing them (no import, no registry)."""
    found: dict[str, set[str]] = {k: set() for k in DECORATORS.values()}
    for folder in ("adapters", "metrics", "datasets", "xaibench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    continue
                for dec in node.decorator_list:
                    if not isinstance(dec, ast.Call):
                        continue
                    fn = dec.func.id if isinstance(dec.func, ast.Name) else getattr(dec.func, "attr", None)
                    if fn in DECORATORS:
                        arg = dec.args[0] if dec.args else None
                        assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), (
                            f"{path.relative_to(ROOT)}:{dec.lineno}: {fn} without a literal key")
                        found[DECORATORS[fn]].add(arg.value)
    return found


def test_source_inventory_finds_registrations():
    # guards the parser: keys named in DESIGN.md / the README must be found in the source
    found = registrations_in_source()
    assert {"cnn.gradcam", "cnn.hirescam", "cnn.occlusion", "vit.chefer", "vit.rollout", "fcm.gradient"} <= found["explainer"]
    assert {"pointing_game", "iou", "top_k_positive_fraction"} <= found["metric"]
    assert {"lesions", "fcm_ball"} <= found["dataset"]
    assert {"random", "centre"} <= found["baseline"]


def test_every_plugin_is_covered():
    # reference: the registrations written in the source files, not the registry
    found = registrations_in_source()
    cases = {"explainer": {n for n, _ in CASES}, "metric": set(METRIC_CASES),
             "dataset": set(DATASET_CASES), "baseline": set(BASELINE_CASES)}
    for kind, keys in found.items():
        missing = keys - cases[kind]
        assert not missing, f"{kind}s registered in the source but not in the contract suite: {sorted(missing)}"
    from xaibench import BASELINES, DATASETS, EXPLAINERS, METRICS

    # vice versa, for our own package (a third-party plugin registers outside our source)
    for kind, reg in (("explainer", EXPLAINERS), ("metric", METRICS), ("dataset", DATASETS), ("baseline", BASELINES)):
        ours = {n for n in cases[kind] if getattr(reg.get(n), "__module__", "").startswith("xaibench.")}
        extra = ours - found[kind]
        assert not extra, f"{kind}s in the contract suite with no registration found in the source: {sorted(extra)}"


def test_cnn_fixture_refuses_to_run_without_its_weights(monkeypatch, tmp_path):
    # reference: zoo.load pointed at an empty folder (no weights), not the fixture's own logic
    from xaibench import zoo
    from xaibench.testing.fixtures import FIXTURES

    real = zoo.load
    monkeypatch.setattr(zoo, "load", lambda name, weights=None: real(name, weights=tmp_path / "none.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"lesion_cnn.*`xaibench zoo train lesion_cnn`"):
        FIXTURES.get("cnn")()
