"""Regression tests of explanation quality: store a baseline, compare a run against it.

A baseline is a JSON file with the summary of a run's real methods (baselines rows are
not included): per (study, dataset, model, explainer, metric) the mean, CI, n, the metric's
direction and full protocol, an absolute ``tolerance``, what was measured and the per-sample
scores; plus the run's environment and the verdicts of its claims::

    {"version": 2, "config_hash": "...", "created": "...", "default_tolerance": 0.05,
     "environment": {"torch": "2.14.1", "devices": ["cpu"], "dtypes": ["float32"], ...},
     "entries": [{"study": ..., "dataset": ..., "model": ..., "explainer": ..., "metric": ...,
                  "direction": "higher", "mean": 0.81, "ci_low": ..., "ci_high": ..., "n": 48,
                  "tolerance": 0.05, "protocol": {"tolerance": 0.0},
                  "identity": {"dataset": {...}, "model": {...}, "weights": "sha256…", "explainer": {...},
                               "metric": {...}}, "fingerprint": "…", "measure": "…",
                  "samples": [0, 1, ...], "scores": [1.0, 0.0, null, ...]}, ...],
     "claims": [{"claim": "...", "identity": "...", "verdict": "holds", ...}]}

Entries are matched to the run by **what was measured**, not by label: first the full
fingerprint (dataset and its settings and seed, model builder, weights digest, explainer and
its resolved settings, metric and protocol), then the same measurement with other weights (a
retrained model: compared, noted), and only then by labels (what changed is noted). A renamed
label therefore cannot escape a comparison.

A *drop* is a score worse than the baseline mean by more than the entry's tolerance in the
metric's worse direction; with ``significant=True`` only a drop whose paired bootstrap CI
(run − baseline, same samples) lies wholly on the worse side fails. A protocol (or direction)
mismatch always fails: numbers measured differently are never compared. Entries of the baseline
missing from the run fail unless allowed. A claim that held in the baseline and does not hold in
the run fails (a flipped finding is a regression). A changed environment (torch, device, dtype)
is flagged in the output. Version-1 baselines (labels only, no samples) are still read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .claims import Finding, evaluate_claims
from .errors import BaselineError
from .stats import N_RESAMPLES, key_seed, paired_test
from .store import RunData, load_run
from .types import Direction
from .util import atomic_write_text

FORMAT_VERSION = 2
DEFAULT_TOLERANCE = 0.05
KEY = ("study", "dataset", "model", "explainer", "metric")
#: environment facts recorded in a baseline; a change is flagged (scores may move for that reason)
ENV_KEYS = ("python", "torch", "torchvision", "timm", "captum", "numpy", "devices", "dtypes", "cuda")


def _key(d: Any) -> tuple[str, ...]:
    return tuple(str(d[k]) for k in KEY)


def _protocol(p: Any) -> Any:
    if isinstance(p, str):
        try:
            return json.loads(p)
        except ValueError:
            return p
    return p


def _digest(obj: Any) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- what was measured

def identities(results: pd.DataFrame, meta: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Per summary key: what was measured, independent of labels (from the run's config record and rows).

    ``identity`` has ``dataset`` (registry name, settings, study seed and target, data fingerprint),
    ``model`` (builder or zoo name, settings), ``weights`` (content digest), ``explainer`` (key and
    resolved settings) and ``metric`` (key and protocol); ``fingerprint`` hashes all of it,
    ``measure`` all but the weights.
    """
    cfg = meta.get("config") or {}
    fps = meta.get("data_fingerprints") or {}
    studies = {s["name"]: s for s in cfg.get("studies", [])}
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    if results.empty:
        return out
    real = results[~results["is_baseline"].astype(bool)]
    for key, g in real.groupby(list(KEY), sort=False):
        st = studies.get(key[0], {})
        ds = next((d for d in st.get("datasets", []) if d.get("label") == key[1]), {})
        mo = next((m for m in st.get("models", []) if m.get("label") == key[2]), {})
        first = g.iloc[0]
        ident = {
            "dataset": {"name": ds.get("name", key[1]), "params": ds.get("params", {}), "seed": st.get("seed"),
                        "target": st.get("target"), "data_fp": fps.get(f"{key[0]}/{key[1]}", "")},
            "model": {"name": mo.get("name", key[2]), "source": mo.get("source", ""), "params": mo.get("params", {})},
            "weights": mo.get("weights_sha256"),
            "explainer": {"key": str(first["explainer_key"]), "params": _protocol(first.get("explainer_params", "{}"))},
            "metric": {"key": str(first["metric_key"]), "protocol": _protocol(first["protocol"])},
        }
        out[tuple(map(str, key))] = {"identity": ident, "fingerprint": _digest(ident),
                                     "measure": _digest({k: v for k, v in ident.items() if k != "weights"})}
    return out


def _samples(results: pd.DataFrame) -> dict[tuple[str, ...], pd.Series]:
    if results.empty:
        return {}
    real = results[~results["is_baseline"].astype(bool)]
    return {tuple(map(str, k)): g.set_index("sample_index")["score"].astype(float)
            for k, g in real.groupby(list(KEY), sort=False)}


def environment(meta: dict[str, Any]) -> dict[str, Any]:
    """The run's environment: library versions, devices and dtypes the cells ran with."""
    v = dict(meta.get("versions") or {})
    env = {k: v[k] for k in ENV_KEYS if k in v}
    env["devices"] = list(meta.get("devices") or [meta.get("device") or "cpu"])
    env["dtypes"] = list(meta.get("dtypes") or ["float32"])
    host = meta.get("host") or {}
    if "cuda" in host:
        env["cuda"] = bool(host["cuda"])
    return env


def run_findings(data: RunData) -> list[Finding]:
    """The run's claims evaluated on its results."""
    claims = (data.meta.get("config") or {}).get("claims") or []
    return evaluate_claims(claims, data.results, seed=data.seed) if claims else []


# ----------------------------------------------------------------------------- writing

def make_baseline(summary: pd.DataFrame, *, config_hash: str = "", default_tolerance: float = DEFAULT_TOLERANCE,
                  tolerances: dict[str, float] | None = None, results: pd.DataFrame | None = None,
                  meta: dict[str, Any] | None = None, findings: list[Finding] | None = None) -> dict[str, Any]:
    """A baseline dict from a run summary (real methods only).

    Args:
        default_tolerance: absolute tolerance of every entry without a per-metric one.
        tolerances: per-metric tolerance, keyed by metric label or registry key.
        results, meta: the run's long results and metadata: add what was measured (identity,
            fingerprints), the per-sample scores and the environment.
        findings: the run's evaluated claims (their verdicts are kept).
    """
    tolerances = dict(tolerances or {})
    ids = identities(results, meta or {}) if results is not None and meta is not None else {}
    samples = _samples(results) if results is not None else {}
    entries = []
    for r in summary[~summary["is_baseline"].astype(bool)].to_dict("records"):
        tol = tolerances.get(r["metric"], tolerances.get(r.get("metric_key", ""), default_tolerance))
        e = {
            **{k: r[k] for k in KEY}, "metric_key": r.get("metric_key", r["metric"]), "direction": r["direction"],
            "mean": _num(r["mean"]), "ci_low": _num(r["ci_low"]), "ci_high": _num(r["ci_high"]), "n": int(r["n"]),
            "tolerance": float(tol), "protocol": _protocol(r["protocol"]),
        }
        k = _key(r)
        if k in ids:
            e.update(ids[k])
        if k in samples:
            s = samples[k]
            e["samples"] = [int(i) for i in s.index]
            e["scores"] = [_num(float(x)) for x in s.to_numpy()]
        entries.append(e)
    base = {"version": FORMAT_VERSION, "xaibench_version": _version(), "config_hash": config_hash,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "default_tolerance": float(default_tolerance), "tolerances": tolerances, "entries": entries}
    if meta is not None:
        base["environment"] = environment(meta)
    if findings:
        base["claims"] = [{k: f.record()[k] for k in ("claim", "source", "identity", "verdict", "effect", "ci_low",
                                                        "ci_high", "p_adjusted", "metric")} for f in findings]
    return base


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
                         default_tolerance=default_tolerance, tolerances=tolerances, results=data.results,
                         meta=data.meta, findings=run_findings(data))
    path = Path(out) if out is not None else Path(run_dir) / "baseline.json"
    atomic_write_text(path, json.dumps(base, indent=1) + "\n")
    return path


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read and check a baseline file (format 1 or 2).

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


# ----------------------------------------------------------------------------- comparing

@dataclass
class Comparison:
    """One baseline entry against the run."""

    key: tuple[str, ...]
    direction: str
    baseline: float | None
    run: float | None
    tolerance: float
    status: str  # ok | drop | missing | protocol_mismatch | n_mismatch | new
    note: str = ""

    @property
    def change(self) -> float | None:
        """Signed change, positive = better."""
        if self.run is None or self.baseline is None:
            return None
        return Direction.parse(self.direction).sign * (self.run - self.baseline)


@dataclass
class ClaimCheck:
    """One claim of the baseline against the run: ``ok``, ``flipped`` (held, no longer holds),
    ``missing`` (not evaluated by the run) or ``new`` (not in the baseline)."""

    claim: str
    baseline: str | None
    run: str | None
    status: str
    note: str = ""


@dataclass
class RegressionReport:
    """The outcome of :func:`compare`: every comparison and whether the run passes."""

    comparisons: list[Comparison] = field(default_factory=list)
    allow_missing: bool = False
    allow_mismatch: bool = False
    notes: list[str] = field(default_factory=list)
    claims: list[ClaimCheck] = field(default_factory=list)
    significant: bool = False

    def of(self, status: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.status == status]

    def claims_of(self, status: str) -> list[ClaimCheck]:
        return [c for c in self.claims if c.status == status]

    @property
    def n_compared(self) -> int:
        """Entries whose scores were actually compared (ok or dropped)."""
        return len(self.of("ok")) + len(self.of("drop"))

    @property
    def passed(self) -> bool:
        if self.n_compared == 0 or self.of("drop") or self.claims_of("flipped"):
            return False
        if not self.allow_mismatch and (self.of("protocol_mismatch") or self.of("n_mismatch")):
            return False
        return self.allow_missing or not (self.of("missing") or self.claims_of("missing"))

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
        renamed = [c for c in self.comparisons if c.status in ("ok", "drop") and c.note]
        lines += [f"  note {'/'.join(c.key)}: {c.note}" for c in renamed if c not in bad]
        for c in self.claims:
            if c.status != "ok" or c.note:
                lines.append(f"claim {c.status}: {c.claim!r}: baseline {c.baseline or '–'}, run {c.run or '–'}"
                             + (f" ({c.note})" if c.note else ""))
        n_ok, n_new = len(self.of("ok")), len(self.of("new"))
        counts = (f"{n_ok} ok, {len(self.of('drop'))} drops"
                  + (" (significant only)" if self.significant else "")
                  + f", {len(self.of('protocol_mismatch'))} protocol "
                  f"mismatches, {len(self.of('n_mismatch'))} sample-count mismatches"
                  + (" (allowed)" if self.allow_mismatch else "")
                  + f", {len(self.of('missing'))} missing" + (" (allowed)" if self.allow_missing else "")
                  + f", {n_new} new (not in baseline)")
        if self.claims:
            counts += (f"; claims: {len(self.claims_of('ok'))} unchanged, {len(self.claims_of('flipped'))} flipped, "
                       f"{len(self.claims_of('missing'))} missing, {len(self.claims_of('new'))} new")
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


def _what_changed(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b:
        return ""
    names = {"dataset": "dataset or its settings", "model": "model builder or settings", "weights": "model weights",
             "explainer": "explainer or its settings", "metric": "metric or protocol"}
    diff = [names[k] for k in names if a.get(k) != b.get(k)]
    return ("changed since the baseline: " + ", ".join(diff)) if diff else ""


def _match_all(entries: list[dict[str, Any]], runs: dict[tuple[str, ...], dict[str, Any]]
               ) -> list[tuple[tuple[str, ...] | None, str]]:
    """For each baseline entry, the run key measuring what it measured and how it was matched.

    Three passes, each over every entry, so a looser match never takes a run row that a stricter
    one claims: the full fingerprint, then the same measurement with other weights, then labels.
    """
    out: list[tuple[tuple[str, ...] | None, str]] = [(None, "")] * len(entries)
    used: set[tuple[str, ...]] = set()
    passes = (("fingerprint", ""), ("measure", "model weights changed since the baseline (retrained?)"), ("label", ""))
    for field_, why in passes:
        for i, e in enumerate(entries):
            if out[i][0] is not None:
                continue
            k = _key(e)
            free = [rk for rk in runs if rk not in used]
            if field_ == "label":
                if k in free:
                    out[i] = (k, _what_changed(e.get("identity"), runs[k].get("identity")))
                    used.add(k)
                continue
            if not e.get(field_):
                continue
            hits = [rk for rk in free if runs[rk].get(field_) == e[field_]]
            if not hits:
                continue
            rk = k if k in hits else hits[0]
            notes = [why] if why else []
            if rk != k:
                notes.insert(0, f"renamed: baseline {'/'.join(k)} is {'/'.join(rk)} in this run")
            out[i] = (rk, "; ".join(notes))
            used.add(rk)
    return out


def _significance(e: dict[str, Any], run_scores: pd.Series | None, sign: float, seed: int) -> tuple[bool | None, str]:
    """Is the run worse than the baseline on the same samples (paired bootstrap CI wholly below 0)?"""
    if run_scores is None or not e.get("scores") or not e.get("samples"):
        return None, "no per-sample scores in the baseline: significance not testable, the tolerance decides"
    base = pd.Series([np.nan if x is None else float(x) for x in e["scores"]], index=[int(i) for i in e["samples"]])
    a, b = run_scores.align(base, join="inner")
    if a.empty:
        return None, "no common samples: significance not testable, the tolerance decides"
    r = paired_test(sign * a.to_numpy(float), sign * b.to_numpy(float), n_resamples=N_RESAMPLES, seed=seed)
    text = f"paired change {r.mean_diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}] over n={r.n}, p={r.p_value:.3g}"
    return bool(math.isfinite(r.ci_high) and r.ci_high < 0), text


def compare(summary: pd.DataFrame, baseline: dict[str, Any], *, allow_missing: bool = False,
            allow_mismatch: bool = False, config_hash: str | None = None, results: pd.DataFrame | None = None,
            meta: dict[str, Any] | None = None, findings: list[Finding] | None = None,
            significant: bool = False) -> RegressionReport:
    """Compare a run summary with a baseline, direction-aware per metric.

    Args:
        summary: the run's summary table (:func:`xaibench.stats.summarise`).
        baseline: a baseline dict (:func:`load_baseline`).
        allow_missing: entries (and claims) absent from the run do not fail.
        allow_mismatch: entries measured with another protocol or on another number of samples
            are reported but do not fail (they are never compared).
        config_hash: the run's config hash (a different one is noted, not failed).
        results, meta: the run's long results and metadata: match entries by what was measured
            (not by label), test significance, flag a changed environment.
        findings: the run's evaluated claims (a claim that held in the baseline must still hold).
        significant: a drop beyond tolerance fails only if significant on the same samples.
    """
    rep = RegressionReport(allow_missing=allow_missing, allow_mismatch=allow_mismatch, significant=significant)
    if config_hash and baseline.get("config_hash") and config_hash != baseline["config_hash"]:
        rep.notes.append(f"note: the run's config hash {config_hash} differs from the baseline's "
                         f"{baseline['config_hash']}; comparing the entries both have")
    if meta is not None and baseline.get("environment"):
        env, old = environment(meta), baseline["environment"]
        changed = [f"{k} {old.get(k)} -> {env.get(k)}" for k in ENV_KEYS if k in old and old.get(k) != env.get(k)]
        if changed:
            rep.notes.append("ENVIRONMENT CHANGED since the baseline (scores may move for that reason): "
                             + "; ".join(changed))
    default_tol = float(baseline.get("default_tolerance", DEFAULT_TOLERANCE))
    runs = {_key(r): dict(r) for r in summary[~summary["is_baseline"].astype(bool)].to_dict("records")}
    if results is not None and meta is not None:
        for k, ident in identities(results, meta).items():
            if k in runs:
                runs[k].update(ident)
    samples = _samples(results) if results is not None else {}
    matches = _match_all(baseline["entries"], runs)
    used = {rk for rk, _ in matches if rk is not None}
    for e, (rk, how) in zip(baseline["entries"], matches):
        k = _key(e)
        tol = float(e["tolerance"]) if e.get("tolerance") is not None else default_tol
        base_mean = None if e["mean"] is None else float(e["mean"])
        if rk is None:
            rep.comparisons.append(Comparison(k, e["direction"], base_mean, None, tol, "missing", "not in this run"))
            continue
        r = runs[rk]
        run_mean = _num(float(r["mean"]))
        c = Comparison(rk, e["direction"], base_mean, run_mean, tol, "ok", how)
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
            if significant:
                sig, text = _significance(e, samples.get(rk), Direction.parse(e["direction"]).sign,
                                          key_seed(0, *rk) % 2**63)
                if sig is False:
                    c.status = "ok"
                c.note = "; ".join(x for x in (how, ("significant: " if sig else "not significant: " if sig is False
                                                      else "") + text) if x)
        rep.comparisons.append(c)
    for k, r in runs.items():
        if k not in used:
            rep.comparisons.append(Comparison(k, r["direction"], None, _num(float(r["mean"])), default_tol, "new"))
    _compare_claims(rep, baseline.get("claims") or [], findings)
    return rep


def _compare_claims(rep: RegressionReport, base_claims: list[dict[str, Any]], findings: list[Finding] | None) -> None:
    run = {f.identity: f for f in findings or []}
    by_text = {f.claim: f for f in findings or []}
    seen: set[str] = set()
    for b in base_claims:
        f = run.get(b.get("identity", "")) or by_text.get(b.get("claim", ""))
        if f is None:
            rep.claims.append(ClaimCheck(b.get("claim", "?"), b.get("verdict"), None, "missing",
                                         "the run does not declare or evaluate this claim"))
            continue
        seen.add(f.identity)
        note = "" if f.identity == b.get("identity") else "claim definition changed since the baseline"
        if b.get("verdict") == "holds" and f.verdict != "holds":
            rep.claims.append(ClaimCheck(f.claim, "holds", f.verdict, "flipped",
                                         f"effect {f.effect:+.4f} [{f.ci_low:+.4f}, {f.ci_high:+.4f}], "
                                         f"Holm p {f.p_adjusted:.3g}" + (f"; {note}" if note else "")))
        else:
            if f.verdict != b.get("verdict"):
                note = "; ".join(x for x in (note, f"verdict {b.get('verdict')} -> {f.verdict}") if x)
            rep.claims.append(ClaimCheck(f.claim, b.get("verdict"), f.verdict, "ok", note))
    for f in findings or []:
        if f.identity not in seen:
            rep.claims.append(ClaimCheck(f.claim, None, f.verdict, "new"))


def regress_run(run_dir: str | Path, baseline: str | Path | dict[str, Any], *, allow_missing: bool = False,
                allow_mismatch: bool = False, significant: bool = False) -> RegressionReport:
    """Compare a run folder against a baseline file (or dict): scores, claims and environment."""
    base = baseline if isinstance(baseline, dict) else load_baseline(baseline)
    data = load_run(run_dir)
    return compare(data.summary, base, allow_missing=allow_missing, allow_mismatch=allow_mismatch,
                   config_hash=data.meta.get("config_hash"), results=data.results, meta=data.meta,
                   findings=run_findings(data), significant=significant)
