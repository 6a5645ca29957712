"""Registries: unique keys, close-match errors, glob listing, explain/create API."""

import os

import pytest

from xaibench.errors import SettingsError
import torch

import xaibench
from xaibench.registry import Registry


def test_duplicate_registration_raises():
    reg = Registry("thing")
    reg.add("a.b", object())
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a.b", object())


def test_unknown_key_suggests_close_matches():
    with pytest.raises(KeyError, match="cnn.gradcam"):
        xaibench.create_explainer("cnn.gradcm", torch.nn.Identity())
    with pytest.raises(KeyError, match="pointing_game"):
        xaibench.create_metric("pointing_gme")
    with pytest.raises(KeyError, match="lesions"):
        xaibench.create_dataset("lesion")


def test_glob_listing():
    assert set(xaibench.list_explainers("cnn.*")) >= {"cnn.gradcam", "cnn.hirescam"}
    assert all(n.startswith("cnn.") for n in xaibench.list_explainers("cnn.*"))
    assert "iou" in xaibench.list_metrics("*io*")
    assert xaibench.list_explainers("nothing.*") == []


def test_register_explainer_validates():
    from xaibench.explainers import Explainer

    with pytest.raises(ValueError, match="family.method"):
        xaibench.register_explainer("nodot")
    with pytest.raises(TypeError, match="subclass of Explainer"):
        xaibench.register_explainer("x.y")(object)

    class Bad(Explainer):
        kind = "hologram"

    with pytest.raises(ValueError, match="kind"):
        xaibench.register_explainer("test.bad_kind")(Bad)
    assert "test.bad_kind" not in xaibench.list_explainers()


def test_register_metric_validates():
    with pytest.raises(ValueError, match="direction"):
        xaibench.register_metric("m1", direction="up", category="x", kinds=("pixel",))
    with pytest.raises(ValueError, match="kinds"):
        xaibench.register_metric("m2", direction="higher", category="x", kinds=("hologram",))


def test_metric_params_and_protocol():
    m = xaibench.create_metric("iou", threshold="mean")
    assert m.protocol == {"threshold": "mean"}
    assert xaibench.create_metric("iou").protocol == {"threshold": "otsu"}
    with pytest.raises(SettingsError, match="accepted"):
        xaibench.create_metric("iou", thresh=0.5)
    assert m.info.direction == "higher" and m.info.category == "localisation"


def test_metric_rejects_wrong_kind_and_size():
    b = xaibench.Batch(inputs=torch.zeros(2, 3, 8, 8), masks=torch.ones(2, 8, 8, dtype=torch.bool))
    ev = xaibench.Attribution(values=torch.zeros(2, 5), kind="event", method="t")
    with pytest.raises(ValueError, match="kinds"):
        xaibench.create_metric("iou")(ev, b)
    px = xaibench.Attribution(values=torch.zeros(3, 8, 8), kind="pixel", method="t")
    with pytest.raises(ValueError, match="3 samples"):
        xaibench.create_metric("iou")(px, b)
    nomask = xaibench.Batch(inputs=torch.zeros(3, 3, 8, 8))
    with pytest.raises(ValueError, match="masks"):
        xaibench.create_metric("iou")(px, nomask)


def test_explainer_get_params_records_settings():
    model = xaibench.create_model("cnn.small_resnet")
    ex = xaibench.create_explainer("cnn.hirescam", model, layer="layer3")
    assert ex.get_params() == {"layer": "layer3", "relu": True}
    a = ex.explain(torch.rand(1, 3, 32, 32))
    assert a.params == {"layer": "layer3", "relu": True} and a.method == "cnn.hirescam"


def test_packages_are_namespaced():
    """adapters/, metrics/ and datasets/ install as xaibench.* — never top-level packages."""

    import xaibench.datasets
    import xaibench.metrics

    assert xaibench.metrics.__name__ == "xaibench.metrics"
    assert xaibench.datasets.__name__ == "xaibench.datasets"
    # reference: a fresh interpreter outside the source tree (so the checkout's own folders are not
    # on sys.path) sees no top-level adapters/metrics/datasets from the installed package
    import subprocess
    import sys
    import tempfile

    code = "import importlib.util as u; print([u.find_spec(n) is None for n in ('adapters', 'metrics', 'datasets', 'xaibench')])"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "[True, True, True, False]", out.stdout
