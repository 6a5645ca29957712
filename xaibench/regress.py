"""Regression tests of explanation quality: store a baseline, compare a run against it.

A baseline is a JSON file with the summary of a run's real methods (baselines rows are
not included): per (study, dataset, model, explainer, metric) the mean, CI, n, the metric's
direction and full protocol, and an absolute ``tolerance``::

    {"version": 1, "config_hash": "...", "created": "...", "default_tolerance": 0.05,
     "entries": [{"study": ..., "dataset": ..., "model": ..., "explainer": ..., "metric": ...,
                  "direction": "higher", "mean": 0.81, "ci_low": ..., "ci_high": ..., "n": 48,
                  "tolerance": 0.05, "protocol": {"tolerance": 0.0}}, ...]}

A *drop* is a score worse than the baseline mean by more than the entry's tolerance in the
metric's worse direction. A protocol (or direction) mismatch always fails: numbers measured
differently are never compared. Entries of the baseline missing from the run fail unless
allowed. Edit an entry's ``tolerance`` to loosen or tighten one comparison.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import BaselineError
from .store import load_run
from .types import Direction
from .util import atomic_write_text

FORMAT_VERSION = 1
DEFAULT_TOLERANCE = 0.05
KEY = ("study", "dataset", "model", "explainer", "metric")


def _key(d: Any) -> tuple[str, ...]:
    return tuple(str(d[k]) for k in KEY)


def _protocol(p: Any) -> Any:
    if isinstance(p, str):
        try:
            return json.loads(p)
        except ValueError:
            return p
    return p


def make_baseline(summary: pd.DataFrame, *, config_hash: str = "", default_tolerance: float = DEFAULT_TOLERANCE,
                  tolerances: dict[str, float] | None = None) -> dict[str, Any]:
    """A baseline dict from a run summary (real methods only).

    Args:
        default_tolerance: absolute tolerance of every entry without a per-metric one.
        tolerances: per-metric tolerance, keyed by metric label or registry key.
    """
    tolerances = dict(tolerances or {})
    entries = []
    for r in summary[~summary["is_baseline"].astype(bool)].to_dict("records"):
        tol = tolerances.get(r["metric"], tolerances.get(r.get("metric_key", ""), default_tolerance))
        entries.append({
            **{k: r[k] for k in KEY}, "metric_key": r.get("metric_key", r["metric"]), "direction": r["direction"],
            "mean": _num(r["mean"]), "ci_low": _num(r["ci_low"]), "ci_high": _num(r["ci_high"]), "n": int(r["n"]),
            "tolerance": float(tol), "protocol": _protocol(r["protocol"]),
        })
    return {"version": FORMAT_VERSION, "xaibench_version": _version(), "config_hash": config_hash,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "default_tolerance": float(default_tolerance), "tolerances": tolerances, "entries": entries}


def _version() -> str:
    import importlib.metadata as md
    try:
        return md.version("xaibench")
    except md.PackageNotFoundError:
        return "unknown"


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def write_baseline(run_dir: str | Path, out: str | Path | None = None, *, default_tolerance: float = DEFAULT_TOLERANCE,
                   tolerances: dict[str, float] | None = None) -> Path:
    """Write the baseline of a run folder (default ``<run>/baseline.json``); returns its path."""
    data = load_run(run_dir)
    if data.summary.empty:
        raise BaselineError(f"{run_dir}: the run has no results to make a baseline of")
    base = make_baseline(data.summary, config_hash=str(data.meta.get("config_hash", "")),
                         default_tolerance=default_tolerance, tolerances=tolerances)
    path = Path(out) if out is not None else Path(run_dir) / "baseline.json"
    atomic_write_text(path, json.dumps(base, indent=2) + "\n")
    return path


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read and check a baseline file.

    Raises:
        FileNotFoundError: no file; BaselineError: not a baseline (the message says what is wrong).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no baseline file at {p}; write one with `xaibench baseline RUN --out {p}`")
    try:
        base = json.loads(p.read_text())
    except ValueError as exc:
        raise BaselineError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(base, dict) or not isinstance(base.get("entries"), list):
        raise BaselineError(f"{p}: not an xaibench baseline (expected a JSON object with 'entries')")
    if base.get("version", FORMAT_VERSION) > FORMAT_VERSION:
        raise BaselineError(f"{p}: baseline format {base['version']} is newer than this xaibench reads ({FORMAT_VERSION})")
    need = set(KEY) | {"direction", "mean"}
    for i, e in enumerate(base["entries"]):
        missing = sorted(need - set(e))
        if missing:
            raise BaselineError(f"{p}: entries[{i}] lacks {missing}")
    return base


@dataclass
class Comparison:
    """One baseline entry against the run."""

    key: tuple[str, ...]
    direction: str
    baseline: float | None
    run: float | None
    tolerance: float
    status: str  # ok | drop | missing | protocol_mismatch | new
    note: str = ""

    @property
    def change(self) -> float | None:
        """Signed change, positive = better."""
        if self.run is None or self.baseline is None:
            return None
        return Direction.parse(self.direction).sign * (self.run - self.baseline)


@dataclass
class RegressionReport:
    """The outcome of :func:`compare`: every comparison and whether the run passes."""

    comparisons: list[Comparison] = field(default_factory=list)
    allow_missing: bool = False
    allow_mismatch: bool = False
    notes: list[str] = field(default_factory=list)

    def of(self, status: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.status == status]

    @property
    def n_compared(self) -> int:
        """Entries whose scores were actually compared (ok or dropped)."""
        return len(self.of("ok")) + len(self.of("drop"))

    @property
    def passed(self) -> bool:
        if self.n_compared == 0 or self.of("drop"):
            return False
        if not self.allow_mismatch and (self.of("protocol_mismatch") or self.of("n_mismatch")):
            return False
        return self.allow_missing or not self.of("missing")

    def format(self) -> str:
        """A plain-text summary: the failing comparisons as a table, then one verdict line."""
        lines = list(self.notes)
        bad = [c for c in self.comparisons if c.status in ("drop", "protocol_mismatch", "n_mismatch", "missing")]
        if bad:
            head = ("status", "study", "dataset", "model", "explainer", "metric", "baseline", "run", "change", "tol")
            rows = [(c.status, *c.key, _f(c.baseline), _f(c.run), _f(c.change, sign=True), _f(c.tolerance)) for c in bad]
            widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
            lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
            lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in rows]
            lines += [f"  {c.status} {'/'.join(c.key)}: {c.note}" for c in bad if c.note]
        n_ok, n_new = len(self.of("ok")), len(self.of("new"))
        counts = (f"{n_ok} ok, {len(self.of('drop'))} drops, {len(self.of('protocol_mismatch'))} protocol "
                  f"mismatches, {len(self.of('n_mismatch'))} sample-count mismatches"
                  + (" (allowed)" if self.allow_mismatch else "")
                  + f", {len(self.of('missing'))} missing" + (" (allowed)" if self.allow_missing else "")
                  + f", {n_new} new (not in baseline)")
        if self.n_compared == 0:
            lines.append("REGRESSION: nothing was compared (no baseline entry matches a result of this run): "
                         + counts + "; is this the right baseline for this run?")
        else:
            lines.append(("no regression: " if self.passed else "REGRESSION: ") + counts)
        return "\n".join(lines)


def _f(x: float | None, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.4f}" if sign else f"{x:.4f}"


def compare(summary: pd.DataFrame, baseline: dict[str, Any], *, allow_missing: bool = False,
            allow_mismatch: bool = False, config_hash: str | None = None) -> RegressionReport:
    """Compare a run summary with a baseline, direction-aware per metric.

    Args:
        summary: the run's summary table (:func:`xaibench.stats.summarise`).
        baseline: a baseline dict (:func:`load_baseline`).
        allow_missing: entries absent from the run do not fail.
        allow_mismatch: entries measured with another protocol or on another number of samples
            are reported but do not fail (they are never compared).
        config_hash: the run's config hash (a different one is noted, not failed).
    """
    rep = RegressionReport(allow_missing=allow_missing, allow_mismatch=allow_mismatch)
    if config_hash and baseline.get("config_hash") and config_hash != baseline["config_hash"]:
        rep.notes.append(f"note: the run's config hash {config_hash} differs from the baseline's "
                         f"{baseline['config_hash']}; comparing the entries both have")
    default_tol = float(baseline.get("default_tolerance", DEFAULT_TOLERANCE))
    runs = {_key(r): r for r in summary[~summary["is_baseline"].astype(bool)].to_dict("records")}
    seen = set()
    for e in baseline["entries"]:
        k = _key(e)
        seen.add(k)
        tol = float(e["tolerance"]) if e.get("tolerance") is not None else default_tol
        base_mean = None if e["mean"] is None else float(e["mean"])
        r = runs.get(k)
        if r is None:
            rep.comparisons.append(Comparison(k, e["direction"], base_mean, None, tol, "missing",
                                              "not in this run"))
            continue
        run_mean = _num(float(r["mean"]))
        c = Comparison(k, e["direction"], base_mean, run_mean, tol, "ok")
        bp, rp = _protocol(e.get("protocol")), _protocol(r["protocol"])
        if "protocol" in e and bp != rp:
            c.status, c.note = "protocol_mismatch", f"baseline measured with {bp}, run with {rp}; not comparable"
        elif e["direction"] != r["direction"]:
            c.status, c.note = "protocol_mismatch", f"direction {e['direction']} in baseline, {r['direction']} in run"
        elif e.get("n") is not None and int(e["n"]) != int(r["n"]):
            c.status, c.note = "n_mismatch", (f"baseline scored n={int(e['n'])} samples, the run n={int(r['n'])}; "
                                              "not comparable (same config and --n-samples?)")
        elif base_mean is not None and run_mean is None:
            c.status, c.note = "drop", "undefined in the run (all samples NaN)"
        elif c.change is not None and c.change < -tol - 1e-12:
            c.status = "drop"
        rep.comparisons.append(c)
    for k, r in runs.items():
        if k not in seen:
            rep.comparisons.append(Comparison(k, r["direction"], None, _num(float(r["mean"])), default_tol, "new"))
    return rep


def regress_run(run_dir: str | Path, baseline: str | Path | dict[str, Any], *, allow_missing: bool = False,
                allow_mismatch: bool = False) -> RegressionReport:
    """Compare a run folder against a baseline file (or dict)."""
    base = baseline if isinstance(baseline, dict) else load_baseline(baseline)
    data = load_run(run_dir)
    return compare(data.summary, base, allow_missing=allow_missing, allow_mismatch=allow_mismatch,
                   config_hash=data.meta.get("config_hash"))
