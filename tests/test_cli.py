"""The command line: list, run, report, baseline, regress, explain, zoo; errors are one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from xaibench.cli import app

runner = CliRunner()

TOML = """
name = "clitest"
seed = 0
[[study]]
name = "s"
datasets = ["lesions"]
models = [{model = "cnn.small_resnet", label = "r"}]
explainers = ["cnn.gradcam"]
metrics = ["pointing_game", "relevance_mass"]
n_samples = 4
batch_size = 4
"""


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(res, code: int = 2) -> str:
    assert res.exit_code == code, res.output
    err = res.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("xaibench: error:") and "Traceback" not in res.output
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "b.toml").write_text(TOML)
    res = invoke("run", str(d / "b.toml"), "--out", str(d / "run"), "--quiet")
    assert res.exit_code == 0, res.output
    assert f"report: {d / 'run' / 'report.html'}" in res.stdout
    return d / "run"


def test_list():
    res = invoke("list", "metrics")
    assert res.exit_code == 0 and "pointing_game" in res.stdout and "higher is better" in res.stdout
    res = invoke("list", "explainers", "cnn.*cam")
    assert res.exit_code == 0 and "cnn.gradcam" in res.stdout and "cnn.hirescam" in res.stdout
    assert "vit." not in res.stdout
    res = invoke("list")
    for section in ("[explainers]", "[metrics]", "[datasets]", "[models]", "[zoo]", "[baselines]", "[benchmarks]"):
        assert section in res.stdout
    assert "default" in invoke("list", "benchmarks").stdout
    assert "'metrics'" in one_line_error(invoke("list", "metrix"))


def test_run_refuses_existing_results_then_resumes(run_dir):
    cfg = str(run_dir.parent / "b.toml")
    err = one_line_error(invoke("run", cfg, "--out", str(run_dir), "--quiet"))
    assert "--resume" in err and "--force" in err
    res = invoke("run", cfg, "--out", str(run_dir), "--quiet", "--resume")
    assert res.exit_code == 0 and "0 cells run, 3 already done" in res.stdout
    assert "exclude each other" in one_line_error(invoke("run", cfg, "--out", str(run_dir), "--resume", "--force"))


def test_config_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TOML.replace('explainers = ["cnn.gradcam"]', 'explainers = ["cnn.gradcma"]'))
    err = one_line_error(invoke("run", str(bad), "--out", str(tmp_path / "o")))
    assert "explainers[0]" in err and "'cnn.gradcam'" in err
    assert "did you mean 'default'" in one_line_error(invoke("run", "defualt", "--out", str(tmp_path / "o")))
    assert "does not exist" in one_line_error(invoke("run", str(tmp_path / "missing.toml")))
    assert "no results database" in one_line_error(invoke("report", str(tmp_path)))


def test_report_baseline_regress(run_dir, tmp_path):
    res = invoke("report", str(run_dir))
    assert res.exit_code == 0 and "report.html" in res.stdout
    base = tmp_path / "base.json"
    res = invoke("baseline", str(run_dir), "--out", str(base), "--tolerance", "relevance_mass=0.01", "-t", "0.1")
    assert res.exit_code == 0 and "2 entries" in res.stdout
    b = json.loads(base.read_text())
    assert b["default_tolerance"] == 0.1 and {e["metric"]: e["tolerance"] for e in b["entries"]} == {
        "pointing_game": 0.1, "relevance_mass": 0.01}
    res = invoke("regress", str(run_dir), "--baseline", str(base))
    assert res.exit_code == 0 and "no regression" in res.stdout
    # a quality drop: the stored mean is higher than the run's by more than the tolerance
    b["entries"][1]["mean"] += 0.05
    base.write_text(json.dumps(b))
    res = invoke("regress", str(run_dir), "--baseline", str(base))
    assert res.exit_code == 1 and "REGRESSION" in res.stdout and "drop" in res.stdout and "relevance_mass" in res.stdout
    # entries missing from the run fail unless allowed
    b["entries"][1]["mean"] -= 0.05
    b["entries"].append({**b["entries"][0], "explainer": "cnn.other"})
    base.write_text(json.dumps(b))
    assert invoke("regress", str(run_dir), "--baseline", str(base)).exit_code == 1
    assert invoke("regress", str(run_dir), "--baseline", str(base), "--allow-missing").exit_code == 0
    # a protocol mismatch fails
    b["entries"].pop()
    b["entries"][0]["protocol"] = {"tolerance": 3}
    base.write_text(json.dumps(b))
    res = invoke("regress", str(run_dir), "--baseline", str(base))
    assert res.exit_code == 1 and "protocol_mismatch" in res.stdout
    assert "no baseline file" in one_line_error(invoke("regress", str(run_dir), "--baseline", str(tmp_path / "x.json")))
    assert "METRIC=NUMBER" in one_line_error(invoke("baseline", str(run_dir), "-t", "iou=abc"))


def test_explain_writes_an_overlay_png(tmp_path):
    out = tmp_path / "ex.png"
    res = invoke("explain", "--model", "lesion_cnn", "--method", "cnn.hirescam", "--index", "2", "--out", str(out),
                 "--param", 'layer="layer3"')
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "predicted class" in res.stdout
    assert "lesion_cnn on lesions sample 2:" in res.stdout  # was "on lesions2:"
    assert "unknown explainer" in one_line_error(invoke("explain", "--model", "lesion_cnn", "--method", "cnn.gradcum"))


def test_explain_a_users_image(tmp_path):
    from matplotlib import image as mpimg
    img = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    mpimg.imsave(tmp_path / "mine.png", img)
    out = tmp_path / "ov.png"
    res = invoke("explain", "--model", "lesion_cnn", "--method", "cnn.gradcam", "--image", str(tmp_path / "mine.png"),
                 "--out", str(out))
    assert res.exit_code == 0, res.output
    assert out.is_file() and "mine" in res.stdout


def test_zoo_commands():
    res = invoke("zoo", "list")
    assert res.exit_code == 0
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("lesion_cnn"))
    assert "lesions" in line and "0." in line
    assert "--all" in one_line_error(invoke("zoo", "train"))


def test_list_details_prints_every_setting_from_the_settings_model():
    """`xaibench list explainers --details` shows each setting's type, default and doc, read from
    the same settings model that validates them (checked field by field)."""
    import xaibench
    from xaibench.settings import describe

    res = invoke("list", "explainers", "cnn.occlusion", "--details")
    assert res.exit_code == 0, res.output
    docs = describe(xaibench.EXPLAINERS.settings("cnn.occlusion"))
    assert docs and all(d.doc for d in docs)
    for d in docs:
        assert f"    {d.name}: {d.type} = {d.default!r}" in res.output
        assert d.doc.split()[0] in res.output
    res = invoke("list", "metrics", "iou", "--details")
    assert "threshold: 'otsu' | 'mean' | 'gt_area' | float > 0 < 1 = 'otsu'" in res.output
    assert invoke("list", "--details").exit_code == 2
