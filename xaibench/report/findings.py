"""The report's opening section: the verdicts on the benchmark's claims, and the models' floors.

Findings are evaluated from the run's results and the claims stored with its configuration
(:mod:`xaibench.claims`). Floors are read from each zoo model's card (:func:`xaibench.zoo.card_floor`)
when the run used the committed weights (same digest); a model below its floor, or without one,
is marked wherever its rows appear.
"""

from __future__ import annotations

import hashlib
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..claims import ALPHA, CORRECTION_NOTE, Finding, evaluate_claims, findings_frame
from ..store import RunData
from ..util import atomic_write_bytes
from ..zoo import ZOO, Floor, card_floor

VERDICT_MARK = {"holds": "✔ holds", "refuted": "✘ refuted", "inconclusive": "? inconclusive",
                "not tested": "– not tested"}
_CACHE: dict[int, tuple[RunData, list[Finding]]] = {}


def findings(data: RunData) -> list[Finding]:
    """The run's claims evaluated on its results (cached per loaded run)."""
    hit = _CACHE.get(id(data))
    if hit is not None and hit[0] is data:
        return hit[1]
    claims = (data.meta.get("config") or {}).get("claims") or []
    out = evaluate_claims(claims, data.results, seed=data.seed) if claims else []
    _CACHE.clear()
    _CACHE[id(data)] = (data, out)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def model_floors(meta: dict[str, Any]) -> dict[tuple[str, str], Floor]:
    """``(study, model label) -> Floor`` for every model of the run's configuration."""
    out: dict[tuple[str, str], Floor] = {}
    for st in (meta.get("config") or {}).get("studies", []):
        for m in st.get("models", []):
            key = (st["name"], m["label"])
            if m.get("source") != "zoo":
                out[key] = Floor("no floor", why="not a zoo model: no card states its held-out score")
                continue
            try:
                entry = ZOO.get(m["name"])
            except Exception:  # a zoo model of a plugin that is not installed now
                out[key] = Floor("no card", why=f"zoo model {m['name']!r} is not registered here")
                continue
            fl = card_floor(entry.card())
            wp = Path(entry.weights_path)
            if m.get("weights_sha256") and wp.is_file() and _digest(wp) != m["weights_sha256"]:
                fl = Floor("no floor", why="the run used other weights than the card describes")
            out[key] = fl
    return out


def row_notes(meta: dict[str, Any]) -> dict[tuple[str, str], str]:
    """``(study, model label) -> badge`` for models below their floor or without one."""
    return {k: ("below floor" if f.status == "below floor" else "no floor")
            for k, f in model_floors(meta).items() if f.status != "ok"}


def write_findings(data: RunData) -> dict[str, Path]:
    """Write ``findings.csv`` (one row per claim) when the run declares claims."""
    fs = findings(data)
    if not fs:
        return {}
    path = data.run_dir / "findings.csv"
    atomic_write_bytes(path, findings_frame(fs).to_csv(index=False).encode())
    return {"findings.csv": path}


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


def _p(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.2g}" if x >= 1e-4 else "<1e-4"


def _rows(f: Finding) -> str:
    if f.definition.get("rows", "pooled") == "pooled":
        return "pooled"
    return (f"{f.rows_holding}/{f.rows_total} hold" + (f", {f.rows_refuted} refuted" if f.rows_refuted else "")
            + f" (need {f.rows_needed})")


def _effect(f: Finding) -> str:
    if not math.isfinite(f.effect):
        return "–"
    return f"{_num(f.effect)} [{_num(f.ci_low)}, {_num(f.ci_high)}]"


def _table(data: RunData) -> list[list[str]]:
    return [[f.claim, f.source, f.metric, f.measured, _effect(f), str(f.n), _rows(f), _p(f.p_value),
             _p(f.p_adjusted), VERDICT_MARK.get(f.verdict, f.verdict) + (f" ({f.note})" if f.note else "")]
            for f in findings(data)]


HEADER = ["claim", "source", "metric", "compared", "effect [95% CI]", "n", "rows", "p", "p (Holm)", "verdict"]


def _floor_rows(data: RunData) -> list[list[str]]:
    """study, model, held-out score, status — for the models below their floor or without one."""
    return [[study, model, f"{f.metric} {f.score:.3f}" if f.score is not None else "–",
             (f.text() if f.floor is not None else f.status) + (f": {f.why}" if f.why else "")]
            for (study, model), f in model_floors(data.meta).items() if f.status != "ok"]


def findings_md(report: Any, md: Any, _md_table: Any) -> list[str]:
    """Markdown lines of the Findings section (claims) and the models' floors (``md`` escapes a string,
    ``_md_table(header, rows)`` lays out a table: the markdown renderer's own helpers)."""
    data: RunData = report.data
    lines: list[str] = []
    fs = findings(data)
    if fs:
        counts = pd.Series([f.verdict for f in fs]).value_counts()
        lines += ["", "## Findings", "", "Claims of the source documents, checked on this run: "
                  + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", "",
                  md(CORRECTION_NOTE.format(alpha=ALPHA)), ""]
        lines += _md_table(HEADER, [[md(c) for c in r] for r in _table(data)])
    bad = _floor_rows(data)
    if bad:
        lines += ["", "## Models without a passing floor", "", "Rows of these models are marked in the tables: a "
                  "model below its floor (or with no stated floor) may not have learned its task, so its "
                  "explanations are not evidence about the method.", ""]
        lines += _md_table(["study", "model", "held-out score", "status"], [[md(c) for c in r] for r in bad])
    return lines


def findings_html(report: Any) -> str:
    """HTML of the Findings section (claims) and the models' floors."""
    e = html.escape
    data: RunData = report.data
    parts: list[str] = []
    fs = findings(data)
    if fs:
        cls = {"holds": "best", "refuted": "below", "inconclusive": "", "not tested": "baseline"}
        head = "".join(f"<th>{e(h)}</th>" for h in HEADER)
        body = []
        for f, r in zip(fs, _table(data)):
            tds = "".join(f"<td class='key'>{e(c)}</td>" if i < 2 else f"<td>{e(c)}</td>" for i, c in enumerate(r[:-1]))
            body.append(f"<tr>{tds}<td class='{cls.get(f.verdict, '')}'>{e(r[-1])}</td></tr>")
        parts += ["<style>table.findings td { white-space: normal; max-width: 30em; text-align: left; }</style>",
                  "<h2>Findings</h2>", f"<p class='legend'>{e(CORRECTION_NOTE.format(alpha=ALPHA))}</p>",
                  f"<div class='scroll'><table class='findings'><thead><tr>{head}</tr></thead>"
                  f"<tbody>{''.join(body)}</tbody></table></div>"]
    bad = _floor_rows(data)
    if bad:
        rows = "".join("<tr>" + "".join(f"<td class='key'>{e(c)}</td>" for c in r) + "</tr>" for r in bad)
        parts += ["<h2>Models without a passing floor</h2>",
                  "<p class='legend'>Rows of these models are marked in the tables: a model below its floor (or "
                  "with no stated floor) may not have learned its task.</p>",
                  f"<div class='scroll'><table><thead><tr><th>study</th><th>model</th><th>held-out score</th>"
                  f"<th>status</th></tr></thead><tbody>{rows}</tbody></table></div>"]
    return "\n".join(parts)


__all__ = ["findings", "findings_html", "findings_md", "model_floors", "row_notes", "write_findings"]
