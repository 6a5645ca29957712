"""Report tables built from the summary: the comparison table (ViT-study layout) and friends.

The comparison table of a study has one row per (dataset, model) and one column per
(metric, method), baselines included as columns. In every row and metric the best mean
(in the metric's better direction) is ``best``, the runner-up ``second``; a real method
whose mean does not beat the best baseline's is flagged ``below_baseline``. Renderers
(:mod:`.markdown`, :mod:`.html`) only format these structures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..stats import rank_best

Row = tuple[str, str]  # (dataset, model)


@dataclass
class Value:
    """One table cell: mean with CI, counts, and its marks."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    n_undefined: int
    is_baseline: bool
    mark: str | None = None  # "best" | "second" | None
    below_baseline: bool = False

    def text(self, digits: int = 3) -> str:
        return fmt_ci(self.mean, self.ci_low, self.ci_high, digits)


@dataclass
class ComparisonTable:
    """The comparison table of one study (see the module docstring)."""

    study: str
    metrics: list[str]
    methods: list[str]
    baselines: list[str]
    rows: list[Row]
    directions: dict[str, str]
    values: dict[tuple[Row, str, str], Value] = field(default_factory=dict)
    #: a badge per row whose model is below its floor or has none ("below floor", "no floor")
    notes: dict[Row, str] = field(default_factory=dict)

    def get(self, row: Row, metric: str, method: str) -> Value | None:
        return self.values.get((row, metric, method))

    def row_values(self, row: Row) -> list[Value | None]:
        """The row's cells in column order (metric-major, then method); None where absent."""
        return [self.get(row, metric, meth) for metric in self.metrics for meth in self.methods]


def fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.625 [0.49, 0.75]`` (CI one digit shorter); ``–`` when undefined."""
    if mean is None or math.isnan(mean):
        return "–"
    d = max(digits - 1, 1)
    return f"{mean:.{digits}f} [{lo:.{d}f}, {hi:.{d}f}]"


def _order(values: pd.Series) -> list[str]:
    return list(dict.fromkeys(values.tolist()))


def comparison_tables(summary: pd.DataFrame, notes: dict[tuple[str, str], str] | None = None) -> list[ComparisonTable]:
    """One :class:`ComparisonTable` per study, in the summary's order.

    Args:
        notes: ``(study, model label) -> badge`` for models below their floor or without one.
    """
    tables = []
    for study, s in summary.groupby("study", sort=False):
        methods = _order(s.loc[~s["is_baseline"], "explainer"]) + _order(s.loc[s["is_baseline"], "explainer"])
        t = ComparisonTable(
            study=str(study), metrics=_order(s["metric"]), methods=methods,
            baselines=_order(s.loc[s["is_baseline"], "explainer"]),
            rows=list(dict.fromkeys(zip(s["dataset"], s["model"]))),
            directions={m: g["direction"].iloc[0] for m, g in s.groupby("metric", sort=False)},
        )
        for r in s.itertuples(index=False):
            t.values[((r.dataset, r.model), r.metric, r.explainer)] = Value(
                float(r.mean), float(r.ci_low), float(r.ci_high), int(r.n), int(r.n_undefined), bool(r.is_baseline))
        for row in t.rows:
            for metric in t.metrics:
                _mark(t, row, metric)
            if notes and (t.study, row[1]) in notes:
                t.notes[row] = notes[(t.study, row[1])]
        tables.append(t)
    return tables


def _mark(t: ComparisonTable, row: Row, metric: str) -> None:
    """Mark best / second (ties within 1e-6 relative share the mark); flag methods not beating the best baseline."""
    direction = t.directions[metric]
    cells = [v for v in (t.get(row, metric, m) for m in t.methods) if v is not None]
    means = [v.mean for v in cells]
    best = rank_best(means, direction)
    if best is not None:
        top = means[best]
        rest = [x if not _same(x, top) else math.nan for x in means]
        second = rank_best(rest, direction)
        for v in cells:
            if _same(v.mean, top):
                v.mark = "best"
            elif second is not None and _same(v.mean, rest[second]):
                v.mark = "second"
    b = rank_best([v.mean for v in cells if v.is_baseline], direction)
    if b is None:
        return
    best_base = [v.mean for v in cells if v.is_baseline][b]
    for v in cells:
        if not v.is_baseline:
            beats = (v.mean > best_base) if direction == "higher" else (v.mean < best_base)
            v.below_baseline = not (math.isfinite(v.mean) and beats)


def _same(a: float, b: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def protocols(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """Per study and metric label: registry key, direction, category and the full protocol."""
    out = []
    for (study, metric), g in summary.groupby(["study", "metric"], sort=False):
        first = g.iloc[0]
        try:
            proto = json.loads(first["protocol"])
        except (TypeError, ValueError):
            proto = first["protocol"]
        out.append({"study": study, "metric": metric, "metric_key": first["metric_key"],
                    "direction": first["direction"], "category": first["category"], "protocol": proto})
    return out


def protocol_text(proto: Any) -> str:
    """``threshold='otsu', tolerance=0.0`` (or ``defaults (no settings)``)."""
    if isinstance(proto, dict):
        return ", ".join(f"{k}={v!r}" for k, v in proto.items()) or "no settings"
    return str(proto)


def counts_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (study, dataset, model, explainer): ``n (undefined)`` for every metric, plus reasons."""
    s = summary.copy()
    s["n (undefined)"] = [f"{n} ({u})" for n, u in zip(s["n"], s["n_undefined"])]
    wide = s.pivot_table(index=["study", "dataset", "model", "explainer"], columns="metric",
                         values="n (undefined)", aggfunc="first", sort=False)
    reasons = s.groupby(["study", "dataset", "model", "explainer"], sort=False)["undefined_reasons"].agg(
        lambda r: "; ".join(sorted({x for x in r if x})))
    wide["undefined reasons"] = reasons
    return wide.reset_index()


def seconds_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Milliseconds per sample of each explainer (rows: study, dataset, model)."""
    s = summary.drop_duplicates(["study", "dataset", "model", "explainer"]).copy()
    s["ms"] = s["seconds_per_sample"] * 1000
    wide = s.pivot_table(index=["study", "dataset", "model"], columns="explainer", values="ms",
                         aggfunc="first", sort=False)
    return wide.reset_index()
