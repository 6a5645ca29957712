"""Side-by-side performance benchmarks (pytest-benchmark). Run with ``make bench``.

Convention: every benchmark sets ``benchmark.group`` (one comparison) and
``benchmark.extra_info["side"]`` to ``"xaibench"``, ``"anchor"`` (the reference library) or
``"limit"`` (a hardware / lower-bound reference). At the end of the run each group's ratios
are printed: anchor / xaibench (> 1 means we are faster) and xaibench / limit.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):  # marker for -m selection
    for item in items:
        if "benchmarks" in str(item.fspath):
            item.add_marker(pytest.mark.perf)


def _stats(bench):
    s = getattr(bench, "stats", None)
    s = getattr(s, "stats", s)
    return getattr(s, "median", None)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benches = getattr(session, "benchmarks", None) or []
    groups: dict[str, dict[str, tuple[str, float]]] = {}
    for b in benches:
        med = _stats(b)
        side = (getattr(b, "extra_info", {}) or {}).get("side")
        if med is None or side is None:
            continue
        groups.setdefault(b.group or b.name, {})[side] = (b.name, med)
    if not groups:
        return
    tr = terminalreporter
    tr.section("xaibench side-by-side ratios (medians)")
    for g, sides in sorted(groups.items()):
        ours = sides.get("xaibench")
        line = f"{g}: " + ", ".join(f"{k}={v[1]*1e3:.1f} ms" for k, v in sorted(sides.items()))
        if ours and "anchor" in sides:
            line += f" | anchor/xaibench = {sides['anchor'][1] / ours[1]:.2f}x"
        if ours and "limit" in sides:
            line += f" | xaibench/limit = {ours[1] / sides['limit'][1]:.2f}x"
        tr.write_line(line)
