"""The README's Python example runs as written, and its two set-up commands exist."""

import re

import torch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    example = blocks[0]
    ns: dict = {}
    exec(compile(example, "README.md", "exec"), ns)  # noqa: S102 - our own README
    assert ns["attr"].values.shape == (4, 224, 224)


def test_readme_names_exactly_two_setup_commands_that_exist_in_the_makefile():
    text = (ROOT / "README.md").read_text()
    setup = re.search(r"## Set up and run.*?```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in setup.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_adding_a_method_is_a_complete_plugin_under_50_lines():
    """The 'Adding a method' block (explainer + settings + fixture) runs as written, passes the
    contract suite, and its settings are validated: an independent check of the plugin path."""
    import xaibench
    from xaibench.errors import SettingsError
    from xaibench.testing.fixtures import FIXTURES

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adding a method"):]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert len(block.strip().splitlines()) < 50
    ns: dict = {}
    try:
        exec(compile(block, "README.md#adding-a-method", "exec"), ns)  # noqa: S102 - our own README
        model = FIXTURES.get("demo")().model
        with __import__("pytest").raises(SettingsError, match="absolute"):
            xaibench.create_explainer("demo.input_x_gradient", model, absolute="yes please")
        x = torch.rand(2, 3, 16, 16)
        a = xaibench.explain(model, x, "demo.input_x_gradient", target=1, absolute=True)
        assert a.values.shape == (2, 16, 16) and bool((a.values >= 0).all())
        # independent reference: input × gradient by hand
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xr)[:, 1].sum(), xr)
        torch.testing.assert_close(a.values, (x * g).sum(1).abs())
    finally:
        xaibench.EXPLAINERS.remove("demo.input_x_gradient")
        FIXTURES.remove("demo")
