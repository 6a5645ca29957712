"""Third-party plugins: a tiny package installed with pip registers an explainer, a metric and
a fixture through the ``xaibench.plugins`` entry point, and passes the contract suite."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = '''
import torch
from xaibench import Attribution, Explainer, register_explainer, register_metric
from xaibench.explainers import check_images
from xaibench.testing import FixtureCase, register_fixture

@register_explainer("demo.brightness")
class Brightness(Explainer):
    """Pixel brightness (mean over channels) as the map."""
    kind = "pixel"
    def explain(self, inputs, target=None):
        check_images(inputs, self.name)
        return self._attribution(inputs.mean(1))

@register_metric("demo_mean_inside", direction="higher", category="localisation", kinds=("pixel",),
                 needs=("masks",), undefined="empty mask")
def demo_mean_inside(attr, batch):
    m = batch.masks.float()
    s = (attr.values * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    return s  # 0/0 -> NaN for an empty mask

@register_fixture("demo")
def demo_fixture():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    from xaibench import Batch
    x = torch.rand(3, 3, 8, 8, generator=g)
    return FixtureCase(model=model, batch=Batch(inputs=x, targets=torch.zeros(3, dtype=torch.long)),
                       bad_inputs=[x[0]])
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    (src / "xaibench_demo").mkdir(parents=True)
    (src / "xaibench_demo" / "__init__.py").write_text(PLUGIN)
    (src / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "xaibench-demo"
        version = "0.0.1"
        [project.entry-points."xaibench.plugins"]
        demo = "xaibench_demo"
        [tool.setuptools]
        packages = ["xaibench_demo"]
    '''))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, capture_output=True)
    return target


def _run(code: str, site: Path, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e)


def test_plugin_registers_and_passes_contract(installed_plugin):
    code = textwrap.dedent('''
        import xaibench
        from xaibench.testing import check_explainer, check_metric
        assert "demo.brightness" in xaibench.list_explainers("demo.*"), xaibench.list_explainers()
        assert "demo_mean_inside" in xaibench.list_metrics()
        assert "demo" in xaibench.load_plugins()
        check_explainer("demo.brightness")
        check_metric("demo_mean_inside")
        print("OK")
    ''')
    r = _run(code, installed_plugin)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_plugin_can_be_disabled(installed_plugin):
    r = _run("import xaibench; print('demo.brightness' in xaibench.list_explainers())", installed_plugin,
             XAIBENCH_DISABLE_PLUGINS="demo")
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_broken_plugin_names_itself(installed_plugin, tmp_path):
    broken = tmp_path / "site"
    import shutil
    shutil.copytree(installed_plugin, broken)
    (broken / "xaibench_demo" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    r = _run("import xaibench; xaibench.list_explainers()", broken)
    assert r.returncode != 0
    assert "xaibench plugin 'demo'" in r.stderr and "boom" in r.stderr and "XAIBENCH_DISABLE_PLUGINS" in r.stderr
