"""``report.html``: self-contained (inline CSS, figures as base64 PNG, no external URL)."""

from __future__ import annotations

import base64
import io
import html
from pathlib import Path
from typing import Any

import pandas as pd

from .findings import findings_html, row_notes
from .parts import Report
from .statistics_section import statistics_html
from .tables import (ComparisonTable, comparison_tables, counts_table, fmt, protocol_text, protocols,
                     seconds_table)

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1400px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; }
.facts { color: #555; font-size: 0.9em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; text-align: center; }
td.key { text-align: left; font-weight: 600; background: #fafafa; }
td.best { font-weight: 700; background: #e6f4ea; }
td.second { text-decoration: underline; }
td.baseline, th.baseline { color: #666; font-style: italic; background: #f7f7f7; }
td.below { color: #a61b1b; }
td.below::after { content: " \\2020"; }
.legend { font-size: 0.85em; color: #444; }
.warn { border: 1px solid #e0a800; background: #fff8e1; padding: 0.6em 1em; margin: 1em 0; }
.warn pre { white-space: pre-wrap; font-size: 0.8em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
ul.protocols { font-size: 0.85em; }
span.floor { color: #a61b1b; font-weight: 400; font-size: 0.85em; }
"""

LEGEND = ("<b>bold / green</b> = best in the row for that metric (its better direction), <u>underlined</u> = "
          "second; <span style='color:#a61b1b'>red †</span> = a method that does not beat the best baseline "
          "(random map or centre prior) on that metric; <i>grey italic</i> columns are the baselines. "
          "Cells: mean [95% bootstrap CI].")


KEY_COLUMNS = {"study", "dataset", "model", "explainer", "metric", "baseline"}

def e(x: Any) -> str:
    return html.escape(str(x))


def comparison_html(t: ComparisonTable) -> str:
    """The ViT-study layout: rows (dataset, model), columns metric × method with a grouped header."""
    arrow = {"higher": "↑", "lower": "↓"}
    h1 = "<tr><th rowspan='2'>dataset</th><th rowspan='2'>model</th>" + "".join(
        f"<th colspan='{len(t.methods)}'>{e(m)} {arrow.get(t.directions[m], '')}</th>" for m in t.metrics) + "</tr>"
    h2 = "<tr>" + "".join(
        f"<th class='{'baseline' if meth in t.baselines else ''}'>{e(meth)}</th>"
        for _ in t.metrics for meth in t.methods) + "</tr>"
    body = []
    for row in t.rows:
        note = f" <span class='floor'>⚠ {e(t.notes[row])}</span>" if row in t.notes else ""
        tds = [f"<td class='key'>{e(row[0])}</td>", f"<td class='key'>{e(row[1])}{note}</td>"]
        for v in t.row_values(row):
            if v is None:
                tds.append("<td></td>")
                continue
            cls = [c for c in (v.mark, "baseline" if v.is_baseline else None, "below" if v.below_baseline else None) if c]
            tds.append(f"<td class='{' '.join(cls)}' title='n={v.n}, undefined={v.n_undefined}'>{e(v.text())}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<div class='scroll'><table class='comparison'><thead>{h1}{h2}</thead><tbody>{''.join(body)}</tbody></table></div>"


def frame_html(df: pd.DataFrame, digits: int = 2) -> str:
    head = "".join(f"<th>{e(c)}</th>" for c in df.columns)
    keys = [c in KEY_COLUMNS for c in df.columns]
    rows = []
    for r in df.itertuples(index=False):
        tds = [f"<td class='{'key' if k else ''}'>{e(fmt(v, digits) if isinstance(v, float) else v)}</td>"
               for v, k in zip(r, keys)]
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


#: Figures larger than this are embedded as JPEG (photo-like overlays compress ~5x; the PNG stays on disk).
EMBED_PNG_MAX_BYTES = 150_000
EMBED_MAX_WIDTH = 1600


def img_tag(path: Path, alt: str) -> str:
    """An ``<img>`` with the figure embedded: small ones as PNG, large (photo-like) ones as a
    downscaled JPEG, so the self-contained report stays light enough to open quickly."""
    raw = Path(path).read_bytes()
    mime = "png"
    if len(raw) > EMBED_PNG_MAX_BYTES:
        from PIL import Image
        with Image.open(io.BytesIO(raw)) as im:
            rgb = Image.new("RGB", im.size, "white")
            rgb.paste(im.convert("RGBA"), mask=im.convert("RGBA").split()[-1])
            if rgb.width > EMBED_MAX_WIDTH:
                rgb = rgb.resize((EMBED_MAX_WIDTH, round(rgb.height * EMBED_MAX_WIDTH / rgb.width)), Image.LANCZOS)
            buf = io.BytesIO()
            rgb.save(buf, "JPEG", quality=82, optimize=True)
        if buf.tell() < len(raw):
            raw, mime = buf.getvalue(), "jpeg"
    data = base64.b64encode(raw).decode("ascii")
    return f"<img alt='{e(alt)}' src='data:image/{mime};base64,{data}'>"


def render_html(report: Report) -> str:
    """The whole self-contained HTML report as a string."""
    d = report.data
    run_dir, meta, summary, skipped, cells = d.run_dir, d.meta, d.summary, d.skipped, d.cells
    paired, figures, errors = report.paired, report.figures, report.errors
    name = meta.get("name", run_dir.name)
    parts = [f"<h1>xaibench report: {e(name)}</h1>"]
    if meta.get("description"):
        parts.append(f"<p>{e(meta['description'])}</p>")
    parts.append(_facts(meta, cells))
    parts.append(findings_html(report))
    failed = d.failed
    if not failed.empty:
        rows = "".join(f"<tr><td>{e(k)}</td><td><pre>{e(err)}</pre></td></tr>"
                       for k, err in zip(failed["cell_key"], failed["error"]))
        parts.append("<div class='warn'><b>Failed cells</b>: they have no rows and are retried by "
                     f"<code>xaibench run CONFIG --out RUN --resume</code>.<table>{rows}</table></div>")
    for name_, msg in errors:
        parts.append(f"<div class='warn'><b>Warning:</b> figure <code>{e(name_)}</code> failed and is missing "
                     f"from this report.<pre>{e(msg)}</pre></div>")
    for t in comparison_tables(summary, row_notes(meta)):
        parts += [f"<h2>Study <code>{e(t.study)}</code></h2>", f"<p class='legend'>{LEGEND}</p>", comparison_html(t)]
        items = "".join(
            f"<li><code>{e(p['metric'])}</code> = <code>{e(p['metric_key'])}</code> ({e(p['category'])}, "
            f"{e(p['direction'])} is better): {e(protocol_text(p['protocol']))}</li>"
            for p in protocols(summary[summary["study"] == t.study]))
        parts.append(f"<p>Protocols (how each metric was measured):</p><ul class='protocols'>{items}</ul>")
    if not summary.empty:
        parts += ["<h2>Samples per cell: n scored (n undefined)</h2>", frame_html(counts_table(summary))]
        parts += ["<h2>Seconds per sample (ms, explain time / batch size)</h2>", frame_html(seconds_table(summary))]
    if not paired.empty:
        p = paired.copy()
        p["diff [CI]"] = [f"{fmt(d)} [{fmt(lo)}, {fmt(hi)}]" for d, lo, hi in zip(p["diff"], p["ci_low"], p["ci_high"])]
        parts += ["<h2>Methods against the best baseline (paired by sample)</h2>",
                  "<p class='legend'>diff &gt; 0 means the method is better than the baseline; "
                  "two-sided sign-flip permutation p-value.</p>",
                  frame_html(p[["study", "dataset", "model", "metric", "explainer", "baseline", "diff [CI]",
                                "p_value", "n"]], 3)]
    parts += statistics_html(report, frame_html)
    if not skipped.empty:
        parts += ["<h2>Metrics skipped (not applicable)</h2>", frame_html(skipped.drop(columns=["metric_key"]))]
    if figures:
        parts.append("<h2>Figures</h2>")
        for _, title, path in figures:
            if Path(path).is_file():
                parts.append(f"<figure>{img_tag(path, title)}<figcaption>{e(title)}</figcaption></figure>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>xaibench: {e(name)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def _facts(meta: dict[str, Any], cells: pd.DataFrame) -> str:
    v = meta.get("versions", {})
    done = int((cells["status"] == "done").sum()) if not cells.empty else 0
    items = [f"config hash <code>{e(meta.get('config_hash'))}</code>, seed {e(meta.get('seed'))}, "
             f"{done}/{len(cells)} cells finished",
             f"started {e(meta.get('started_at'))}, finished {e(meta.get('finished_at') or '— (unfinished)')}",
             "versions: " + e(", ".join(f"{k} {val}" for k, val in v.items())),
             "host: " + e(", ".join(f"{k}={val}" for k, val in (meta.get("host") or {}).items()))]
    if done < len(cells):
        items.append(f"<b>incomplete run</b>: {len(cells) - done} cells not finished; continue with "
                     "<code>xaibench run CONFIG --out RUN --resume</code>")
    return "<ul class='facts'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
