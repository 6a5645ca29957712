"""`xaibench plan`: a grid's cost estimated from recorded per-cell costs, before it runs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from xaibench.cli import app
from xaibench.plan import COST_TABLE, parse_scale, plan_benchmark
from xaibench.runner import Store, parse_config, run_benchmark

CFG = {
    "name": "tiny", "seed": 1,
    "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "r"}],
        "explainers": ["cnn.gradcam", "cnn.saliency"], "metrics": ["pointing_game"],
        "n_samples": 4, "batch_size": 4, "baselines": ["random"],
    }],
}


def test_plan_default_is_within_a_factor_2_of_the_measured_default_run():
    # reference: the wall time of a second, independent default run on the machine the table was measured
    # on (costs.json "check": its run_seconds — config checks, model loading and every cell, not the
    # report), not the run the table's prices were read from
    table = json.loads(COST_TABLE.read_text())
    measured, check = table["measured"], table["check"]
    assert measured["run"] == check["run"] == "default" and measured["started_at"] != check["started_at"]
    plan = plan_benchmark("default")
    assert plan.n_cells > 0
    # the cells the checked run had (default.toml may have grown since: new studies are priced, not compared)
    same = [c for c in plan.cells if c.key in set(check["cells"])]
    assert len(same) >= 0.8 * len(check["cells"]), (
        "default.toml changed a lot since costs.json was measured: run `xaibench run default` twice and "
        "xaibench.plan.write_cost_table(RUN1, check_run=RUN2)")
    assert {c.source for c in same} == {"table:exact"}  # every compared cell priced by its own measured cost
    estimate = sum(c.seconds for c in same) + plan.setup_seconds
    ratio = estimate / check["wall_seconds"]
    assert 0.5 <= ratio <= 2.0, f"plan {estimate:.0f} s vs measured {check['wall_seconds']:.0f} s"
    out = CliRunner().invoke(app, ["plan", "default"])
    assert out.exit_code == 0, out.output
    assert "total: " in out.output and "CPU hours" in out.output and "wall time:" in out.output


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan") / "run"
    run_benchmark(parse_config(CFG), d, quiet=True, report=False)
    return d


def test_plan_from_a_run_prices_each_cell_by_its_recorded_cost(tiny_run):
    # reference: the per-cell seconds and forwards the store recorded while the run ran
    with Store.open(tiny_run) as st:
        cells = st.cells().set_index("cell_key")
        costs = st.get_meta()["cell_costs"]
    plan = plan_benchmark(parse_config(CFG), from_run=tiny_run)
    assert {c.key for c in plan.cells} == set(cells.index)
    for c in plan.cells:
        assert c.source == "run:cell"
        assert c.seconds == pytest.approx(cells.loc[c.key, "seconds"], rel=1e-9)
        assert c.forwards == costs[c.key]["forwards"]
    assert plan.compute_seconds == pytest.approx(cells["seconds"].sum(), rel=1e-9)
    assert plan.forwards == 4 + 4  # gradcam and saliency: one forward per sample; the baseline none


def test_scaling_is_linear_in_samples_and_divides_by_workers(tiny_run):
    base = plan_benchmark(parse_config(CFG), from_run=tiny_run)
    big = plan_benchmark(parse_config(CFG), from_run=tiny_run, scale=["n_samples=40", "workers=3", "setup_seconds=0"])
    assert big.n_samples == 10 * base.n_samples and big.forwards == 10 * base.forwards
    assert big.compute_seconds == pytest.approx(10 * base.compute_seconds)
    longest = max(c.seconds for c in big.cells)
    assert big.wall_seconds == pytest.approx(max(big.compute_seconds / 3, longest))
    per_fwd = plan_benchmark(parse_config(CFG), from_run=tiny_run, scale={"seconds_per_forward": 0.5})
    assert per_fwd.compute_seconds == pytest.approx(0.5 * per_fwd.forwards)
    fast = plan_benchmark(parse_config(CFG), from_run=tiny_run, scale={"speed": 4})
    assert fast.compute_seconds == pytest.approx(base.compute_seconds / 4)


def test_unknown_cells_fall_back_from_exact_to_explainer_to_guess():
    cfg = parse_config({**CFG, "study": [{**CFG["study"][0], "explainers": ["cnn.gradcam", "cnn.integrated_gradients"]}]})
    plan = plan_benchmark(cfg)
    src = {c.key.rsplit("/", 1)[1]: c.source for c in plan.cells}
    # cnn.gradcam is in the table (on other models), the small_resnet builder is not
    assert src["cnn.gradcam"] == "table:explainer"
    assert src["cnn.integrated_gradients"] in ("table:explainer", "guess")
    assert "priced from:" in plan.format()


def test_bad_scale_is_refused_with_the_allowed_keys():
    with pytest.raises(ValueError, match=r"unknown key 'n_sample'.*n_samples"):
        parse_scale(["n_sample=3"])
    with pytest.raises(ValueError, match=r"workers: expected a positive number"):
        parse_scale(["workers=-1"])
    out = CliRunner().invoke(app, ["plan", "default", "--scale", "gpus=4"])
    assert out.exit_code == 2 and "unknown key 'gpus'" in out.output
