"""The core's shape: no import cycle among xaibench's own modules, no unpickling anywhere.

Both checks read the source (ast / text), independently of what Python happens to have
imported already, and count function-local imports too: a cycle hidden inside a function is
still a cycle.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "xaibench"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def core_import_graph() -> dict[str, set[str]]:
    """module -> core modules it imports (anywhere in the file), resolving relative imports."""
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
            for t in targets:
                # the deepest core module the import names (``from . import x`` may name a module x)
                while t and t not in modules:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != mod and (t in modules):
                    graph[mod].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    # the checker itself must be able to fail
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_core_modules():
    graph = core_import_graph()
    assert "xaibench.store" in graph and "xaibench.stats" in graph["xaibench.store"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among core modules: " + "; ".join(" <-> ".join(c) for c in cycles)


UNSAFE = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.load\(|import pickle|"
                    r"cloudpickle|joblib\.load|np\.load\(|numpy\.load\(")


def test_no_code_that_can_unpickle():
    """Nothing in the library may load a format that can carry code (a results folder, weights
    or data file must be as safe to open as a CSV): no torch.load, np.load, pickle."""
    offenders = []
    for folder in ("xaibench", "adapters", "metrics", "datasets"):
        for p in (ROOT / folder).rglob("*.py"):
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if UNSAFE.search(line):
                    offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
    assert UNSAFE.search("x = torch.load(f)") and UNSAFE.search("np.load(p, allow_pickle=True)")


def test_atomic_writes_give_ordinary_file_modes(tmp_path):
    """Report files written atomically get the mode a plain open() gives (mkstemp's 0600 would
    hide them from colleagues sharing the folder); an existing file keeps its mode."""
    from xaibench.util import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    fresh = atomic_write_text(tmp_path / "fresh.txt", "y")
    assert fresh.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    os.chmod(plain, 0o640)
    atomic_write_text(plain, "z")
    assert plain.stat().st_mode & 0o777 == 0o640 and plain.read_text() == "z"
