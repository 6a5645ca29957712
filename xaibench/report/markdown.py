"""``report.md``: the comparison tables, protocols, counts, timings and figure links."""

from __future__ import annotations

import html
import os
import re
from urllib.parse import quote
from pathlib import Path
from typing import Any

import pandas as pd

from .findings import findings_md, row_notes
from .parts import Report
from .statistics_section import statistics_md
from .tables import (ComparisonTable, comparison_tables, counts_table, fmt, protocol_text, protocols,
                     seconds_table)

LEGEND = ("**bold** = best in the row for that metric (ties share it), <u>underlined</u> = second; "
          "† = a method that does not beat the best baseline (random or centre prior) on that metric. "
          "Cells: mean [95% bootstrap CI].")

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>-])")


def md(text: Any) -> str:
    """A user string (name, label, description, error) as literal markdown text: markdown
    punctuation backslash-escaped, HTML special characters as entities, one line."""
    s = html.escape(" ".join(str(text).split()), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", s)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table of already-escaped cells (only ``|`` is escaped here)."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return out


def _frame(df: pd.DataFrame, digits: int = 2) -> list[str]:
    rows = [[fmt(v, digits) if isinstance(v, float) else md(v) for v in r] for r in df.itertuples(index=False)]
    return _md_table([md(c) for c in df.columns], rows)


def _md_value(v: Any) -> str:
    if v is None:
        return ""
    s = {"best": "**{}**", "second": "<u>{}</u>"}.get(v.mark or "", "{}").format(v.text())
    return s + (" †" if v.below_baseline else "")


def comparison_md(t: ComparisonTable) -> list[str]:
    header = ["dataset", "model"] + [f"{md(m)}: {md(meth)}" for m in t.metrics for meth in t.methods]
    rows = [[md(row[0]), md(row[1]) + (f" ⚠ {t.notes[row]}" if row in t.notes else "")]
            + [_md_value(v) for v in t.row_values(row)] for row in t.rows]
    return _md_table(header, rows)


def render_markdown(report: Report) -> str:
    """The whole markdown report as a string."""
    d = report.data
    run_dir, meta, summary, skipped, cells = d.run_dir, d.meta, d.summary, d.skipped, d.cells
    paired, figures, errors = report.paired, report.figures, report.errors
    lines = [f"# xaibench report: {md(meta.get('name', run_dir.name))}", ""]
    if meta.get("description"):
        lines += [md(meta["description"]), ""]
    lines += _run_facts(meta, cells)
    lines += findings_md(report, md, _md_table)
    failed = d.failed
    if not failed.empty:
        lines += ["", "## Failed cells", "", "These cells raised; they have no rows and are retried by "
                  "`xaibench run CONFIG --out RUN --resume`.", ""]
        lines += _md_table(["cell", "error"], [[md(k), md(e)] for k, e in zip(failed["cell_key"], failed["error"])])
    for t in comparison_tables(summary, row_notes(meta)):
        lines += ["", f"## Study {md(t.study)}", "", LEGEND, ""]
        lines += comparison_md(t)
        lines += ["", "Protocols (how each metric was measured):", ""]
        for p in protocols(summary[summary["study"] == t.study]):
            lines.append(f"- {md(p['metric'])} = {md(p['metric_key'])} ({md(p['category'])}, {p['direction']} is "
                         f"better): {md(protocol_text(p['protocol']))}")
    if not summary.empty:
        lines += ["", "## Samples per cell: n scored (n undefined)", ""] + _frame(counts_table(summary))
        lines += ["", "## Seconds per sample (ms, explain time / batch size)", ""] + _frame(seconds_table(summary))
    if not paired.empty:
        lines += ["", "## Methods against the best baseline (paired by sample)", "",
                  "diff > 0 means the method is better; sign-flip permutation p-value.", ""]
        p = paired.copy()
        p["diff [CI]"] = [f"{fmt(d)} [{fmt(lo)}, {fmt(hi)}]" for d, lo, hi in zip(p["diff"], p["ci_low"], p["ci_high"])]
        lines += _frame(p[["study", "dataset", "model", "metric", "explainer", "baseline", "diff [CI]", "p_value", "n"]], 3)
    lines += statistics_md(report, _frame, md)
    if not skipped.empty:
        lines += ["", "## Metrics skipped (not applicable)", ""] + _frame(skipped.drop(columns=["metric_key"]))
    if figures or errors:
        lines += ["", "## Figures", ""]
        for _, title, path in figures:
            rel = quote(Path(os.path.relpath(path, run_dir)).as_posix())
            lines += [f"### {md(title)}", "", f"![{md(title)}]({rel})", ""]
        for name, msg in errors:
            lines += [f"> **Warning:** figure {md(name)} failed: {md(msg.splitlines()[0])}", ""]
    return "\n".join(lines) + "\n"


def _run_facts(meta: dict[str, Any], cells: pd.DataFrame) -> list[str]:
    v = meta.get("versions", {})
    done = int((cells["status"] == "done").sum()) if not cells.empty else 0
    n_failed = int((cells["status"] == "failed").sum()) if not cells.empty else 0
    lines = [f"- config hash `{meta.get('config_hash')}`, seed {meta.get('seed')}, "
             f"{done}/{len(cells)} cells finished",
             f"- started {meta.get('started_at')}, finished {meta.get('finished_at') or '— (unfinished)'}"
             + (f", resumed {', '.join(meta['resumed_at'])}" if meta.get("resumed_at") else ""),
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items())]
    if done < len(cells):
        lines.append(f"- **incomplete run**: {len(cells) - done} cells not finished ({n_failed} failed); continue with "
                     "`xaibench run CONFIG --out RUN --resume`")
    return lines
