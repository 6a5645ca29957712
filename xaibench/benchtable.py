"""One performance table from a pytest-benchmark run (``make bench``).

The side-by-side benchmarks in ``tests/benchmarks/`` tag every entry with a ``group`` (one
comparison) and ``extra_info["side"]``: ``"xaibench"`` (ours), ``"anchor"`` (the reference
library: captum, pytorch-grad-cam, ...), ``"limit"`` (a physical floor: the forward passes
alone, or the job's matmul FLOPs at this machine's dense-matmul rate) or another label
(extra entries such as our plain engine). This module turns pytest-benchmark's JSON into one
table of medians and ratios with the machine's details, saves it as JSON, and compares it
with an earlier one::

    python -m xaibench.benchtable reports/bench/last-raw.json [more.json ...] --save reports/bench --compare

Ratios: ``anchor/ours`` (> 1: we are faster) and ``ours/limit`` (1 = at the floor). The
comparison reports ``ours now / ours before`` and the same for ``ours/limit`` (which cancels
much of a machine's load, so it is the better signal on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

OURS, ANCHOR, LIMIT = "xaibench", "anchor", "limit"
#: a slowdown beyond this factor (ours/limit now vs before) is flagged in a comparison
SLOWER = 1.10


def machine() -> dict[str, Any]:
    """This machine: CPU, cores, threads, load, Python and torch versions."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


def table(raw: dict[str, Any]) -> dict[str, Any]:
    """Per group: the median seconds of each side and the ratios, from pytest-benchmark JSON."""
    groups: dict[str, dict[str, Any]] = {}
    for b in raw.get("benchmarks", []):
        side = (b.get("extra_info") or {}).get("side")
        if side is None:
            continue
        g = groups.setdefault(b.get("group") or b["name"], {"seconds": {}, "tests": {}})
        g["seconds"][side] = b["stats"]["median"]
        g["tests"][side] = b["name"]
    for g in groups.values():
        s = g["seconds"]
        if OURS in s and ANCHOR in s:
            g["anchor_over_ours"] = s[ANCHOR] / s[OURS]
        if OURS in s and LIMIT in s:
            g["ours_over_limit"] = s[OURS] / s[LIMIT]
    return groups


def build(raw: dict[str, Any]) -> dict[str, Any]:
    """The saved document: when, which commit, the machine (pytest-benchmark's and ours), the table."""
    commit = raw.get("commit_info") or {}
    return {"datetime": raw.get("datetime") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": commit.get("id"), "dirty": commit.get("dirty"),
            "machine": {**{k: v for k, v in (raw.get("machine_info") or {}).items()
                           if k in ("node", "processor", "machine", "python_version", "system", "release")},
                        **machine()},
            "groups": table(raw)}


def _fmt_s(v: float | None) -> str:
    return "" if v is None else (f"{v:.3f} s" if v < 10 else f"{v:.1f} s")


def _fmt_r(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


def render(doc: dict[str, Any], previous: dict[str, Any] | None = None) -> str:
    """The table as text: one row per group (medians, anchor/ours, ours/limit, other sides),
    the machine underneath; with ``previous``, ours now/before and (ours/limit) now/before."""
    head = ["group", "ours", "anchor", "limit", "anchor/ours", "ours/limit", "other"]
    if previous is not None:
        head += ["ours now/before", "(ours/limit) now/before"]
    rows = [head]
    for name, g in sorted(doc["groups"].items()):
        s = g["seconds"]
        other = ", ".join(f"{k} {_fmt_s(v)}" for k, v in sorted(s.items()) if k not in (OURS, ANCHOR, LIMIT))
        row = [name, _fmt_s(s.get(OURS)), _fmt_s(s.get(ANCHOR)), _fmt_s(s.get(LIMIT)),
               _fmt_r(g.get("anchor_over_ours")), _fmt_r(g.get("ours_over_limit")), other]
        if previous is not None:
            before = previous.get("groups", {}).get(name, {})
            now_s, then_s = s.get(OURS), before.get("seconds", {}).get(OURS)
            now_l, then_l = g.get("ours_over_limit"), before.get("ours_over_limit")
            r1 = now_s / then_s if now_s and then_s else None
            r2 = now_l / then_l if now_l and then_l else None
            flag = "  SLOWER" if (r2 or r1 or 0) > SLOWER else ""
            row += [_fmt_r(r1), _fmt_r(r2) + flag]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = doc["machine"]
    lines.append("")
    lines.append(f"machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')} "
                 f"({m.get('threads')} threads), Python {m.get('python')}, load average {m.get('load_average')}")
    lines.append(f"commit: {doc.get('commit')}{' (dirty)' if doc.get('dirty') else ''}, {doc.get('datetime')}")
    if previous is not None:
        lines.append(f"compared with: commit {previous.get('commit')}, {previous.get('datetime')} "
                     f"(load average then {previous.get('machine', {}).get('load_average')})")
    return "\n".join(lines)


def _latest(directory: Path, exclude: Path | None) -> Path | None:
    files = sorted(p for p in directory.glob("bench-*.json") if exclude is None or p.resolve() != exclude.resolve())
    return files[-1] if files else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xaibench.benchtable", description=__doc__.split("\n")[0])
    ap.add_argument("raw", type=Path, nargs="+", help="pytest-benchmark JSON (--benchmark-json); several are merged")
    ap.add_argument("--save", type=Path, default=None, metavar="DIR",
                    help="write the table as DIR/bench-<UTC time>-<commit>.json")
    ap.add_argument("--compare", nargs="?", const="latest", default=None, metavar="JSON",
                    help="an earlier saved table; without a value, the newest one in --save's DIR")
    args = ap.parse_args(argv)
    raws = []
    for path in args.raw:
        try:
            raws.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            print(f"benchtable: cannot read {path}: {e}; run the benchmarks with --benchmark-json first",
                  file=sys.stderr)
            return 2
    raw = {**raws[0], "benchmarks": [b for r in raws for b in r.get("benchmarks", [])]}
    doc = build(raw)
    previous = None
    if args.compare is not None:
        path = _latest(args.save or Path("reports/bench"), None) if args.compare == "latest" else Path(args.compare)
        if path is None or not path.exists():
            print(f"benchtable: nothing to compare with ({args.compare}); showing this run alone", file=sys.stderr)
        else:
            previous = json.loads(path.read_text())
    print(render(doc, previous))
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = args.save / f"bench-{stamp}-{(doc.get('commit') or 'nocommit')[:8]}.json"
        out.write_text(json.dumps(doc, indent=2, sort_keys=True))
        print(f"\nsaved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
