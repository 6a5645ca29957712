"""The contract suite, generated from the registries: every explainer and every metric."""

import pytest

from xaibench.testing import (
    check_bad_inputs, check_batch_equals_singles, check_deterministic, check_metric, check_model_untouched,
    check_output, explainer_cases, get_fixture, metric_cases,
)
from xaibench.testing import _make, _targets  # noqa: F401  (internal helpers reused by the suite)

CASES = explainer_cases()
IDS = [f"{n}@{f}" for n, f in CASES]


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


@pytest.mark.parametrize("name", metric_cases())
def test_metric_contract(name):
    check_metric(name)


def test_every_plugin_is_covered():
    import xaibench
    assert {n for n, _ in CASES} == set(xaibench.list_explainers())
    assert set(metric_cases()) == set(xaibench.list_metrics())
