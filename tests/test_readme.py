"""The README's Python example runs as written, and its two set-up commands exist."""

import re
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
