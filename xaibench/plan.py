"""Scale on paper: estimate what a benchmark grid costs before running it.

    xaibench plan vit_study                                  # from the built-in cost table
    xaibench plan vit_study --from reports/vit_study         # from a run's measured per-cell costs
    xaibench plan fcm_study --scale n_samples=1000 --scale workers=8 --scale speed=20

Every finished cell of a run records what it cost (``meta.cell_costs``: seconds, samples and the
samples that went through the model's forward). A plan expands the grid exactly as ``run`` does
and prices each cell by seconds and forwards **per sample**, looked up from the most specific
measurement there is:

1. ``--from RUN``: the same cell (same key) in that run, else the same (explainer, model) there;
2. the built-in cost table (``xaibench/benchmarks/costs.json``, the default benchmark measured on
   a 2-core machine): the same (explainer, model, dataset), else (explainer, model), else the
   median over the explainer's entries;
3. else the median cost per sample of all known cells (and the plan says how many cells it guessed).

Scaling keys (``--scale KEY=VALUE``):
    ``n_samples``  samples per study (cost per sample stays; the forwards scale with it);
    ``workers``    parallel workers/GPUs for the wall-time line (cells are spread evenly);
    ``speed``      divide every measured second by this (e.g. a GPU's measured speed-up over the table);
    ``seconds_per_forward``  price each cell as forwards × this instead of by measured seconds (for a
                   model of another size: the forward time of ViT-B/16 at 224² on your GPU, say);
    ``setup_seconds``  fixed start-up per run (default: the measured one of the table or run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runner.config import BenchmarkConfig, Cell, expand, load_config
from .store import Store

#: The built-in cost table (the default benchmark, measured on this project's 2-core machine).
COST_TABLE = Path(__file__).resolve().parent / "benchmarks" / "costs.json"
SCALE_KEYS = ("n_samples", "workers", "speed", "seconds_per_forward", "setup_seconds")


@dataclass(frozen=True)
class CellCost:
    """One cell priced: samples, seconds and forwards per sample, and where the price came from."""

    key: str
    study: str
    explainer: str
    n_samples: int
    seconds_per_sample: float
    forwards_per_sample: float | None
    source: str  # run:cell | run:explainer+model | table:exact | table:explainer+model | table:explainer | guess

    @property
    def seconds(self) -> float:
        return self.seconds_per_sample * self.n_samples

    @property
    def forwards(self) -> float | None:
        return None if self.forwards_per_sample is None else self.forwards_per_sample * self.n_samples


@dataclass
class Plan:
    """The estimate of a grid: per-cell costs, totals and the assumptions used."""

    name: str
    cells: list[CellCost]
    workers: int = 1
    setup_seconds: float = 0.0
    device: str = "cpu"
    assumptions: list[str] = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def n_samples(self) -> int:
        return sum(c.n_samples for c in self.cells)

    @property
    def forwards(self) -> float:
        return sum(c.forwards or 0.0 for c in self.cells)

    @property
    def compute_seconds(self) -> float:
        """Seconds of compute over all cells (one worker), without start-up."""
        return sum(c.seconds for c in self.cells)

    @property
    def seconds(self) -> float:
        """Estimated wall time on one worker, start-up included."""
        return self.compute_seconds + self.setup_seconds

    @property
    def wall_seconds(self) -> float:
        """Estimated wall time on ``workers`` workers (cells spread evenly, none faster than its longest)."""
        longest = max((c.seconds for c in self.cells), default=0.0)
        return self.setup_seconds + max(self.compute_seconds / max(self.workers, 1), longest)

    def by_study(self) -> list[tuple[str, int, int, float, float]]:
        rows: dict[str, list[float]] = {}
        for c in self.cells:
            r = rows.setdefault(c.study, [0, 0, 0.0, 0.0])
            r[0] += 1
            r[1] += c.n_samples
            r[2] += c.forwards or 0.0
            r[3] += c.seconds
        return [(s, int(r[0]), int(r[1]), r[2], r[3]) for s, r in rows.items()]

    def format(self) -> str:
        unit = "GPU" if self.device.startswith(("cuda", "mps")) else "CPU"
        lines = [f"plan for {self.name!r} ({unit} costs):", ""]
        head = ("study", "cells", "samples", "forwards", f"{unit} hours")
        rows = [(s, str(n), str(k), _si(f), f"{sec / 3600:.3g}") for s, n, k, f, sec in self.by_study()]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        lines += ["", f"total: {self.n_cells} cells, {self.n_samples} cell-samples, {_si(self.forwards)} forward "
                      f"passes (samples through the model), {self.compute_seconds / 3600:.3g} {unit} hours of compute",
                  f"wall time: {_duration(self.seconds)} on 1 worker"
                  + (f", {_duration(self.wall_seconds)} on {self.workers} workers" if self.workers > 1 else "")
                  + f" (start-up {_duration(self.setup_seconds)} included)"]
        sources: dict[str, int] = {}
        for c in self.cells:
            sources[c.source] = sources.get(c.source, 0) + 1
        lines.append("priced from: " + ", ".join(f"{n} cells by {s}" for s, n in sorted(sources.items())))
        lines += [f"assumption: {a}" for a in self.assumptions]
        return "\n".join(lines)


def _si(x: float) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.0f}"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


# ----------------------------------------------------------------------------- cost sources

def _explainer_key(cell: Cell) -> str:
    return cell.explainer.name  # ``baseline.<name>`` for baseline cells


class Costs:
    """Per-sample costs by cell key and by (explainer, model[, dataset]), with their medians."""

    def __init__(self) -> None:
        self.by_key: dict[str, tuple[float, float | None]] = {}
        self.exact: dict[tuple[str, str, str], list[tuple[float, float | None]]] = {}
        self.pair: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
        self.single: dict[str, list[tuple[float, float | None]]] = {}
        self.setup_seconds = 0.0

    def add(self, explainer: str, model: str, dataset: str, sps: float, fps: float | None,
            key: str | None = None) -> None:
        v = (sps, fps)
        if key:
            self.by_key[key] = v
        self.exact.setdefault((explainer, model, dataset), []).append(v)
        self.pair.setdefault((explainer, model), []).append(v)
        self.single.setdefault(explainer, []).append(v)

    def all(self) -> list[tuple[float, float | None]]:
        return [v for vs in self.single.values() for v in vs]


def _median(vs: list[tuple[float, float | None]]) -> tuple[float, float | None]:
    f = [x[1] for x in vs if x[1] is not None]
    return statistics.median(x[0] for x in vs), (statistics.median(f) if f else None)


def costs_from_run(run_dir: str | Path) -> Costs:
    """Per-sample costs of a finished run's cells (``meta.cell_costs``, else the cells' seconds).

    Raises:
        StoreError: not a run folder.
    """
    with Store.open(run_dir) as st:
        meta = st.get_meta()
        cells = st.cells()
    recorded = meta.get("cell_costs") or {}
    specs = _cell_specs(meta)
    out = Costs()
    done = cells[cells["status"] == "done"]
    for r in done.to_dict("records"):
        key = r["cell_key"]
        c = recorded.get(key) or {}
        n = c.get("n_samples") or specs.get(key, {}).get("n_samples")
        sec = c.get("seconds", r["seconds"])
        if not n or sec is None or (isinstance(sec, float) and math.isnan(sec)):
            continue
        fwd = c.get("forwards")
        sp = specs.get(key, {})
        out.add(sp.get("explainer", r["explainer"]), sp.get("model", r["model"]), sp.get("dataset", r["dataset"]),
                float(sec) / n, None if fwd is None else float(fwd) / n, key=key)
    out.setup_seconds = _setup_seconds(meta, float(done["seconds"].sum()) if len(done) else 0.0)
    return out


def _cell_specs(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """cell key -> registry names (explainer key, model name, dataset name) and n_samples, from the config record."""
    out: dict[str, dict[str, Any]] = {}
    for st in (meta.get("config") or {}).get("studies", []):
        for m in st["models"]:
            for d in st["datasets"]:
                items = [(e["label"], e["name"]) for e in st["explainers"]]
                items += [(b["label"] if b["label"] != b["name"] else f"baseline.{b['name']}", f"baseline.{b['name']}")
                          for b in st.get("baselines", [])]
                for label, name in items:
                    out[f"{st['name']}/{d['label']}/{m['label']}/{label}"] = {
                        "explainer": name, "model": m["name"], "dataset": d["name"], "n_samples": st["n_samples"]}
    return out


def _setup_seconds(meta: dict[str, Any], cell_seconds: float) -> float:
    """Wall time of an uninterrupted run not spent in cells (start-up, model loading, commits)."""
    wall = run_wall_seconds(meta)
    return 0.0 if wall is None else max(0.0, wall - cell_seconds)


def run_wall_seconds(meta: dict[str, Any]) -> float | None:
    """The recorded wall time of an uninterrupted run (``run_seconds``: config checks, loading and cells,
    not the report; else finish − start), None for a resumed or unfinished run."""
    from datetime import datetime
    start, end = meta.get("started_at"), meta.get("finished_at")
    if not start or not end or meta.get("resumed_at"):
        return None
    if meta.get("run_seconds") is not None:
        return float(meta["run_seconds"])
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def costs_from_table(path: str | Path = COST_TABLE) -> Costs:
    """The built-in cost table (or another one written by :func:`write_cost_table`)."""
    data = json.loads(Path(path).read_text())
    out = Costs()
    for e in data["entries"]:
        out.add(e["explainer"], e["model"], e["dataset"], e["seconds_per_sample"], e.get("forwards_per_sample"))
    out.setup_seconds = float(data.get("setup_seconds", 0.0))
    return out


def write_cost_table(run_dir: str | Path, out: str | Path = COST_TABLE, check_run: str | Path | None = None) -> Path:
    """Write a cost table from a finished run: per (explainer, model, dataset) seconds and forwards per
    sample, the run's start-up seconds and its wall time. ``check_run``: a second, independent run of the
    same grid on the same machine whose wall time the plan is checked against (``tests/test_plan.py``),
    so the check does not compare the table with the run it was read from."""
    costs = costs_from_run(run_dir)
    with Store.open(run_dir) as st:
        meta = st.get_meta()
    entries = []
    for (ex, model, ds), vs in sorted(costs.exact.items()):
        sps, fps = _median(vs)
        entries.append({"explainer": ex, "model": model, "dataset": ds, "seconds_per_sample": round(sps, 6),
                        "forwards_per_sample": None if fps is None else round(fps, 3)})
    wall = run_wall_seconds(meta)
    data = {"format": "xaibench-costs/1", "measured": {
        "run": meta.get("name"), "config_hash": meta.get("config_hash"), "started_at": meta.get("started_at"),
        "wall_seconds": wall, "host": meta.get("host"), "versions": meta.get("versions"),
        "devices": meta.get("devices"), "cells": sorted(costs.by_key)},
        "setup_seconds": round(costs.setup_seconds, 3), "entries": entries}
    if check_run is not None:
        with Store.open(check_run) as st:
            cmeta, ccells = st.get_meta(), st.cells()
        if cmeta.get("started_at") == meta.get("started_at"):
            raise ValueError("check_run is the run the table is read from; pass an independent run of the grid")
        data["check"] = {"run": cmeta.get("name"), "config_hash": cmeta.get("config_hash"),
                         "started_at": cmeta.get("started_at"), "wall_seconds": run_wall_seconds(cmeta),
                         "cells": sorted(ccells["cell_key"])}
    from .util import atomic_write_text
    atomic_write_text(out, json.dumps(data, indent=1) + "\n")
    return Path(out)


# ----------------------------------------------------------------------------- planning

def parse_scale(items: list[str] | dict[str, Any] | None) -> dict[str, float]:
    """``["n_samples=1000", "workers=8"]`` -> ``{"n_samples": 1000.0, "workers": 8.0}``.

    Raises:
        ValueError: an unknown key or a value that is not a positive number.
    """
    pairs = list(items.items()) if isinstance(items, dict) else [tuple(i.partition("=")[::2]) for i in items or []]
    out: dict[str, float] = {}
    for k, v in pairs:
        k = str(k).strip()
        if k not in SCALE_KEYS:
            from .util import did_you_mean
            raise ValueError(f"--scale: unknown key {k!r}{did_you_mean(k, SCALE_KEYS, n=1)}; "
                             f"use KEY=VALUE with KEY one of {', '.join(SCALE_KEYS)}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"--scale {k}: expected a number, got {v!r}") from None
        if not (x > 0 or (k == "setup_seconds" and x == 0)) or math.isinf(x):
            raise ValueError(f"--scale {k}: expected a positive number, got {v!r}")
        out[k] = x
    return out


def _price(cell: Cell, run: Costs | None, table: Costs) -> tuple[float, float | None, str]:
    ex, model, ds = _explainer_key(cell), cell.model.name, cell.dataset.name
    if run is not None:
        if cell.key in run.by_key:
            return (*run.by_key[cell.key], "run:cell")
        if (ex, model) in run.pair:
            return (*_median(run.pair[ex, model]), "run:explainer+model")
    if (ex, model, ds) in table.exact:
        return (*_median(table.exact[ex, model, ds]), "table:exact")
    if (ex, model) in table.pair:
        return (*_median(table.pair[ex, model]), "table:explainer+model")
    if ex in table.single:
        return (*_median(table.single[ex]), "table:explainer")
    every = (run.all() if run is not None else []) + table.all()
    return (*_median(every), "guess") if every else (0.0, None, "guess")


def plan_benchmark(config: str | Path | BenchmarkConfig | None = None, *, from_run: str | Path | None = None,
                   scale: list[str] | dict[str, Any] | None = None, table: str | Path = COST_TABLE,
                   device: str | None = None) -> Plan:
    """Estimate the cost of a benchmark grid (see the module doc for the pricing and the scale keys).

    Returns:
        a :class:`Plan` (``.format()`` for the text ``xaibench plan`` prints).

    Raises:
        ConfigError: the benchmark is invalid; ValueError: a bad ``--scale``; StoreError: ``from_run``
            is not a run folder.
    """
    sc = parse_scale(scale)
    n = int(sc["n_samples"]) if "n_samples" in sc else None
    cfg = config if isinstance(config, BenchmarkConfig) else load_config(config)
    if n is not None:
        cfg = dataclasses.replace(cfg, studies=tuple(dataclasses.replace(st, n_samples=n) for st in cfg.studies))
    run = costs_from_run(from_run) if from_run is not None else None
    tab = costs_from_table(table)
    speed, spf = sc.get("speed", 1.0), sc.get("seconds_per_forward")
    cells, assumptions = [], []
    for c in expand(cfg):
        sps, fps, src = _price(c, run, tab)
        if spf is not None and fps is not None:
            sps = fps * spf
        cells.append(CellCost(c.key, c.study.name, _explainer_key(c), c.study.n_samples, sps / speed, fps, src))
    setup = sc.get("setup_seconds", (run.setup_seconds if run is not None else tab.setup_seconds))
    if spf is not None:
        assumptions.append(f"each sample through the model costs {spf:g} s (seconds_per_forward); cells without "
                           "a forward count keep their measured seconds")
    if speed != 1.0:
        assumptions.append(f"measured seconds divided by {speed:g} (speed)")
    if from_run is None:
        assumptions.append(f"per-sample costs from the built-in table ({Path(table).name}: the default benchmark "
                           "measured on a 2-core CPU machine)")
    assumptions.append("cost grows linearly with samples; forwards count samples through the model's own forward "
                       "(a lower bound for methods that call its layers directly)")
    return Plan(name=cfg.name, cells=cells, workers=int(sc.get("workers", 1)), setup_seconds=float(setup),
                device=device or getattr(cfg, "device", None) or "cpu", assumptions=assumptions)


__all__ = ["COST_TABLE", "CellCost", "Costs", "Plan", "costs_from_run", "costs_from_table", "parse_scale",
           "plan_benchmark", "write_cost_table"]
