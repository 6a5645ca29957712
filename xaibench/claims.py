"""Claims: a study's findings as checked statements, with paired statistics and a verdict.

A benchmark file declares claims in ``[[claim]]`` blocks (or a study's ``claims = [...]``)::

    [[claim]]
    claim = "Chefer beats GradCAM on IoU"
    source = "Chung et al. 2024, Quantitative results"
    metric = "iou"
    a = "vit.chefer"                     # explainer label or registry key; "*" = every method
    b = "vit.gradcam"                    # or "best_baseline", "best_other", "worst_other"
    where = { dataset = "large", model = ["supervised", "mae"] }   # select rows (labels, globs)
    rows = "most"                        # "pooled" (default), "all" rows, "most" rows, or min_rows = k

Four forms, each reduced to per-sample differences ``d`` oriented so that ``d > 0`` favours
the claim (the metric's better direction):

* **beats** — ``a`` beats ``b`` on the same samples (paired by sample): ``d = ±(A − B) − margin``
  (``value`` is the margin, default 0). ``b = "best_baseline"`` is the best baseline of the row,
  ``best_other`` / ``worst_other`` the best / worst of the row's other real methods (by mean:
  the hardest opponent, so the selection never favours the claim).
* **contrast** — ``versus = {model = "random"}`` compares side ``a`` with the same method (or
  ``b``) in another row: another model on the same samples is paired; another dataset or study
  (other samples) is compared unpaired (Mann–Whitney U, independent bootstrap).
* **threshold** — ``value = 0.8`` with no ``b``: ``d = ±(A − value)`` (``op = ">="`` by default
  for higher-is-better metrics).
* **spread** — ``metric = [...]`` (several labels or a glob) and ``value = d``: the row's highest
  and lowest metric (chosen on even-indexed samples) differ by more than ``d`` on the odd-indexed
  samples (no selection bias): "some heads concentrate cancer cells while others don't".

Per row: mean of ``d`` with a seeded 95% bootstrap CI and a two-sided Wilcoxon signed-rank
p-value (Mann–Whitney U when unpaired). ``rows = "pooled"`` tests all rows' differences at once;
``"all"`` / ``"most"`` / ``min_rows = k`` test each row (Holm within the claim) and need k rows to
hold; the claim's p-value is then the k-th smallest adjusted row p-value. Across the claims of a
benchmark the p-values are Holm-adjusted. Verdict: **holds** when the adjusted p < alpha and the
CI lies above 0; **refuted** when the adjusted p < alpha and the CI lies below 0; otherwise
**inconclusive** (**not tested** when no results match).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .stats import N_RESAMPLES, bootstrap_ci, holm, key_seed, wilcoxon

ALPHA = 0.05
SPECIAL = ("best_baseline", "best_other", "worst_other")
ROW_KEYS = ("study", "dataset", "model", "explainer")
Verdict = Literal["holds", "refuted", "inconclusive", "not tested"]

OneOrMany = str | list[str]


class ClaimEntry(BaseModel):
    """A claim of a benchmark file (see the module docstring for the four forms)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    claim: str = Field(min_length=1, description="the statement, as the source makes it")
    source: str = Field("", description="document and section the claim comes from")
    kind: Literal["beats", "threshold", "spread"] | None = Field(
        None, description="beats (a vs b or versus), threshold (value), spread (several metrics); inferred if omitted")
    metric: OneOrMany = Field(description="metric label or key (several labels or a glob for 'spread')")
    a: OneOrMany = Field("*", description="explainer label/key, a glob, '*' (every method), 'best_other' or "
                                          "'worst_other'")
    b: str | None = Field(None, description="explainer label/key, 'best_baseline', 'best_other' or 'worst_other'")
    value: float | None = Field(None, description="threshold (threshold), margin (beats) or minimum spread (spread)")
    op: Literal[">=", "<="] | None = Field(None, description="threshold direction (default: the metric's better one)")
    where: dict[Literal["study", "dataset", "model"], OneOrMany] = Field(
        default_factory=dict, description="rows the claim is about: labels (or globs) of study / dataset / model")
    versus: dict[Literal["study", "dataset", "model", "explainer"], str] = Field(
        default_factory=dict, description="side b's row: these labels replace side a's (a contrast)")
    rows: Literal["pooled", "all", "most"] = Field(
        "pooled", description="pooled: one test over every row's samples; all / most: per row, k of n must hold")
    min_rows: int | None = Field(None, ge=1, description="at least this many rows must hold (per-row tests)")

    @model_validator(mode="after")
    def _form(self) -> "ClaimEntry":
        metrics = [self.metric] if isinstance(self.metric, str) else list(self.metric)
        kind = self.kind
        if kind is None:
            many = len(metrics) > 1 or any(ch in metrics[0] for ch in "*?[")
            kind = "spread" if many else ("threshold" if self.b is None and not self.versus else "beats")
            object.__setattr__(self, "kind", kind)
        if not metrics:
            raise ValueError("'metric' is empty")
        if kind == "beats" and self.b is None and not self.versus:
            raise ValueError("a 'beats' claim needs 'b' (the method it beats) or 'versus' (the row it beats)")
        if kind == "threshold" and (self.value is None or self.b is not None or self.versus):
            raise ValueError("a 'threshold' claim needs 'value' and takes no 'b' / 'versus'")
        if kind == "spread" and (self.b is not None or self.versus):
            raise ValueError("a 'spread' claim compares metrics of one method: no 'b' / 'versus'")
        if kind != "spread" and len(metrics) != 1:
            raise ValueError(f"a {kind!r} claim takes one metric, got {metrics}")
        if self.op is not None and kind != "threshold":
            raise ValueError("'op' applies to threshold claims only")
        if self.rows == "pooled" and self.min_rows is not None:
            object.__setattr__(self, "rows", "all")
        if isinstance(self.a, str) and self.a in SPECIAL and self.a != "best_baseline" and self.b in SPECIAL:
            raise ValueError("at most one side of a claim may be 'best_other' / 'worst_other'")
        if self.a == "best_baseline":
            raise ValueError("'best_baseline' is for 'b' (what a method must beat)")
        return self

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    def record(self) -> dict[str, Any]:
        """Plain JSON data (what the run stores and the report evaluates)."""
        return json.loads(self.model_dump_json(exclude_defaults=False))


def _many(v: OneOrMany | None) -> list[str]:
    return [] if v is None else ([v] if isinstance(v, str) else list(v))


def _is_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def _matches(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) if _is_glob(p) else value == p for p in patterns)


# ----------------------------------------------------------------------------- checking names

@dataclass(frozen=True)
class StudyLabels:
    """The labels of one study a claim may name: datasets, models, explainers, metrics, baselines.

    ``explainers`` / ``metrics`` are ``(label, registry key)`` pairs.
    """

    name: str
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    explainers: tuple[tuple[str, str], ...]
    metrics: tuple[tuple[str, str], ...]
    baselines: tuple[str, ...] = ()


def check_claim(c: ClaimEntry, studies: list[StudyLabels], at: str) -> list[tuple[str, str]]:
    """Problems ``(path, message)`` of a claim whose names do not exist in the studies it selects.

    Unknown names get close matches (``did you mean``); a name may be a label or a registry key.
    """
    from .util import did_you_mean

    out: list[tuple[str, str]] = []
    names = [s.name for s in studies]
    want = _many(c.where.get("study"))
    if "study" in c.versus:
        want_b = [c.versus["study"]]
    else:
        want_b = []
    for w, path in [(x, f"{at}.where.study") for x in want] + [(x, f"{at}.versus.study") for x in want_b]:
        if not any(_matches(n, [w]) for n in names):
            out.append((path, f"no study {w!r} in this benchmark{did_you_mean(w, names, n=3) or f'; studies: {names}'}"))
    sel = [s for s in studies if not want or _matches(s.name, want)]
    if not sel:
        return out
    for key, attr in (("dataset", "datasets"), ("model", "models")):
        labels = sorted({lb for s in sel for lb in getattr(s, attr)})
        all_labels = sorted({lb for s in studies for lb in getattr(s, attr)})
        for w in _many(c.where.get(key)):
            if not any(_matches(lb, [w]) for lb in labels):
                out.append((f"{at}.where.{key}", f"no {key} {w!r} in the selected studies"
                                                 f"{did_you_mean(w, labels, n=3) or f'; {key}s: {labels}'}"))
        if key in c.versus and c.versus[key] not in all_labels:
            w = c.versus[key]
            out.append((f"{at}.versus.{key}", f"no {key} {w!r} in this benchmark"
                                              f"{did_you_mean(w, all_labels, n=3) or f'; {key}s: {all_labels}'}"))
    methods = sorted({x for s in studies for pair in s.explainers for x in pair})
    sel_methods = sorted({x for s in sel for pair in s.explainers for x in pair})
    for side, vals in (("a", _many(c.a)), ("b", _many(c.b))):
        for w in vals:
            if w in SPECIAL or w == "*":
                continue
            pool = methods if (side == "b" and c.versus) else sel_methods
            if side == "b":  # a named baseline (``baseline.random``) is a fair opponent too
                pool = sorted(set(pool) | {b for s in (studies if c.versus else sel) for b in s.baselines})
            if not any(_matches(m, [w]) for m in pool):
                out.append((f"{at}.{side}", f"no explainer {w!r} in the selected studies"
                                            f"{did_you_mean(w, pool, n=3) or f'; explainers: {pool}'}"))
    if "explainer" in c.versus and c.versus["explainer"] not in methods:
        w = c.versus["explainer"]
        out.append((f"{at}.versus.explainer", f"no explainer {w!r}{did_you_mean(w, methods, n=3)}"))
    mlabels = sorted({lb for s in sel for lb, _ in s.metrics})
    mkeys = sorted({k for s in sel for _, k in s.metrics})
    for w in c.metrics:
        if _is_glob(w):
            if not any(_matches(lb, [w]) for lb in mlabels):
                out.append((f"{at}.metric", f"{w!r} matches no metric label; labels: {mlabels}"))
            continue
        if w in mlabels:
            continue
        if w in mkeys:
            for s in sel:
                labels = [lb for lb, k in s.metrics if k == w]
                if len(labels) > 1:
                    out.append((f"{at}.metric", f"{w!r} is the key of several metrics of study {s.name!r} "
                                                f"({labels}); name one by its label"))
                    break
            continue
        out.append((f"{at}.metric", f"no metric {w!r} in the selected studies"
                                    f"{did_you_mean(w, sorted(set(mlabels + mkeys)), n=3) or f'; metrics: {mlabels}'}"))
    if c.kind == "spread" and len(c.metrics) == 1 and not _is_glob(c.metrics[0]):
        out.append((f"{at}.metric", "a spread claim needs two or more metrics (a list or a glob)"))
    return out


# ----------------------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Test:
    """One test of ``d > 0``: mean effect, 95% bootstrap CI, two-sided p-value, n, the test used."""

    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    test: str


def paired_effect(d: np.ndarray, *, seed: int, n_resamples: int = N_RESAMPLES) -> Test:
    """Mean of per-sample differences ``d`` (NaN dropped), bootstrap CI, Wilcoxon signed-rank p."""
    d = np.asarray(d, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return Test(math.nan, math.nan, math.nan, math.nan, 0, "Wilcoxon signed-rank")
    mean, lo, hi = bootstrap_ci(d, n_resamples=n_resamples, seed=seed)
    d = np.where(np.abs(d) <= 1e-12, 0.0, d)  # float noise of equal scores is no difference
    return Test(mean, lo, hi, float(wilcoxon(d).p_value), int(d.size), "Wilcoxon signed-rank")


def unpaired_effect(x: np.ndarray, y: np.ndarray, *, seed: int, n_resamples: int = N_RESAMPLES) -> Test:
    """``mean(x) − mean(y)`` of two independent samples: bootstrap CI (each resampled on its own),
    two-sided Mann–Whitney U p-value."""
    from scipy.stats import mannwhitneyu

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if x.size == 0 or y.size == 0:
        return Test(math.nan, math.nan, math.nan, math.nan, 0, "Mann-Whitney U")
    rng = np.random.default_rng(seed)
    bx = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(1)
    by = y[rng.integers(0, y.size, size=(n_resamples, y.size))].mean(1)
    lo, hi = np.quantile(bx - by, [0.025, 0.975])
    if np.ptp(np.concatenate([x, y])) == 0:
        p = 1.0
    else:
        p = float(mannwhitneyu(x, y, alternative="two-sided").pvalue)
    return Test(float(x.mean() - y.mean()), float(lo), float(hi), p, int(min(x.size, y.size)), "Mann-Whitney U")


# ----------------------------------------------------------------------------- evaluation

@dataclass
class Unit:
    """One row of a claim: its label, and the oriented differences (paired) or two samples."""

    label: str
    d: np.ndarray | None = None           # paired / one-sample differences
    xy: tuple[np.ndarray, np.ndarray] | None = None  # unpaired: d = x − y


@dataclass
class Finding:
    """The verdict on one claim."""

    index: int
    claim: str
    source: str
    kind: str
    metric: str
    measured: str
    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float
    verdict: str
    n: int
    rows_holding: int
    rows_refuted: int
    rows_total: int
    rows_needed: int
    test: str
    note: str = ""
    definition: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        """What the claim says, independent of its wording (for regressions)."""
        import hashlib
        d = {k: v for k, v in self.definition.items() if k not in ("claim", "source")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["identity"] = self.identity
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


class _Data:
    """The results table indexed for claims: per (study, dataset, model, explainer, metric) scores."""

    def __init__(self, results: pd.DataFrame) -> None:
        self.r = results
        self.scores: dict[tuple[str, ...], pd.Series] = {}
        self.mean: dict[tuple[str, ...], float] = {}
        self.keys: dict[tuple[str, str], str] = {}  # (study, explainer label) -> registry key
        self.baseline: dict[tuple[str, str], bool] = {}
        self.direction: dict[tuple[str, str], str] = {}  # (study, metric label)
        self.metric_key: dict[tuple[str, str], str] = {}
        if results.empty:
            return
        for key, g in results.groupby(["study", "dataset", "model", "explainer", "metric"], sort=False):
            s = g.set_index("sample_index")["score"].astype(float)
            self.scores[key] = s
            self.mean[key] = float(np.nanmean(s.to_numpy())) if s.notna().any() else math.nan
            first = g.iloc[0]
            self.keys[(key[0], key[3])] = str(first["explainer_key"])
            self.baseline[(key[0], key[3])] = bool(first["is_baseline"])
            self.direction[(key[0], key[4])] = str(first["direction"])
            self.metric_key[(key[0], key[4])] = str(first["metric_key"])
        self.rows = list(dict.fromkeys((k[0], k[1], k[2]) for k in self.scores))

    def explainers(self, study: str, dataset: str, model: str, metric: str) -> list[str]:
        return [k[3] for k in self.scores if k[:3] == (study, dataset, model) and k[4] == metric]

    def metric_label(self, study: str, name: str) -> str | None:
        labels = [m for (s, m) in self.direction if s == study]
        if name in labels:
            return name
        by_key = [m for m in labels if self.metric_key[(study, m)] == name]
        return by_key[0] if len(by_key) == 1 else None

    def is_method(self, study: str, label: str, pattern: str) -> bool:
        if self.baseline.get((study, label), False):
            return pattern in (label, self.keys.get((study, label)))
        return pattern == "*" or _matches(label, [pattern]) or _matches(self.keys.get((study, label), ""), [pattern])


def _pair(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    x, y = a.align(b, join="inner")
    return x.to_numpy(float), y.to_numpy(float)


def _pick(data: _Data, row: tuple[str, str, str], metric: str, candidates: list[str], best: bool) -> str | None:
    means = [(data.mean[(*row, e, metric)], e) for e in candidates if math.isfinite(data.mean[(*row, e, metric)])]
    if not means:
        return None
    sign = 1.0 if data.direction[(row[0], metric)] == "higher" else -1.0
    return (max if best else min)(means, key=lambda t: sign * t[0])[1]


def _units(c: ClaimEntry, data: _Data) -> tuple[list[Unit], str]:
    """The claim's rows as units of oriented differences, and a text of what was compared."""
    where = {k: _many(v) for k, v in c.where.items()}
    rows = [r for r in data.rows if all(_matches(r[i], where[k]) for i, k in enumerate(("study", "dataset", "model"))
                                        if k in where)]
    units: list[Unit] = []
    what: list[str] = []
    margin = float(c.value or 0.0) if c.kind in ("beats", "spread") else 0.0
    for row in rows:
        study = row[0]
        if c.kind == "spread":
            labels = [lb for lb in dict.fromkeys(m for (s, m) in data.direction if s == study)
                      if _matches(lb, c.metrics) or any(data.metric_key[(study, lb)] == w for w in c.metrics)]
            if len(labels) < 2:
                continue
            for e in data.explainers(*row, labels[0]):
                if data.baseline[(study, e)] or not any(data.is_method(study, e, p) for p in _many(c.a)):
                    continue
                frame = pd.concat([data.scores[(*row, e, m)] for m in labels], axis=1, join="inner")
                arr = frame.to_numpy(float)
                even, odd = arr[0::2], arr[1::2]
                if odd.shape[0] == 0:
                    continue
                mu = np.nanmean(even, axis=0)
                hi, lo = int(np.nanargmax(mu)), int(np.nanargmin(mu))
                units.append(Unit(f"{'/'.join(row)}/{e}", d=odd[:, hi] - odd[:, lo] - margin))
                what.append(f"{labels[hi]} − {labels[lo]}")
            continue
        metric = data.metric_label(study, c.metrics[0])
        if metric is None:
            continue
        sign = 1.0 if data.direction[(study, metric)] == "higher" else -1.0
        present = data.explainers(*row, metric)
        real = [e for e in present if not data.baseline[(study, e)]]
        if c.kind == "threshold":
            op = c.op or (">=" if sign > 0 else "<=")
            s_op = 1.0 if op == ">=" else -1.0
            for e in real:
                if any(data.is_method(study, e, p) for p in _many(c.a)):
                    units.append(Unit(f"{'/'.join(row)}/{e}", d=s_op * (data.scores[(*row, e, metric)].to_numpy(float)
                                                                         - float(c.value))))
                    what.append(e)
            continue
        a_vals = _many(c.a)
        if a_vals[0] in ("best_other", "worst_other"):
            b_list = [e for e in real if data.is_method(study, e, c.b or "")]
            for b in b_list:
                a = _pick(data, row, metric, [e for e in real if e != b], best=a_vals[0] == "best_other")
                if a is None:
                    continue
                x, y = _pair(data.scores[(*row, a, metric)], data.scores[(*row, b, metric)])
                units.append(Unit(f"{'/'.join(row)}/{a}>{b}", d=sign * (x - y) - margin))
                what.append(f"{a} − {b}")
            continue
        for e in real:
            if not any(data.is_method(study, e, p) for p in a_vals):
                continue
            brow = tuple(c.versus.get(k, row[i]) for i, k in enumerate(("study", "dataset", "model")))
            if brow not in data.rows and "study" not in c.versus:
                alt = [r for r in data.rows if r[1:] == brow[1:]]
                brow = alt[0] if len(alt) == 1 else brow
            if brow not in data.rows:
                continue
            bmetric = data.metric_label(brow[0], c.metrics[0])
            if bmetric is None:
                continue
            bpresent = data.explainers(*brow, bmetric)
            b_name = c.versus.get("explainer", c.b if c.b is not None else e)
            if b_name == "best_baseline":
                cands = [x for x in bpresent if data.baseline[(brow[0], x)]]
                b = _pick(data, brow, bmetric, cands, best=True)
            elif b_name in ("best_other", "worst_other"):
                cands = [x for x in bpresent if not data.baseline[(brow[0], x)] and x != e]
                b = _pick(data, brow, bmetric, cands, best=b_name == "best_other")
            else:
                found = [x for x in bpresent if data.is_method(brow[0], x, b_name)]
                b = found[0] if found else None
            if b is None or (brow == row and b == e):
                continue
            sa, sb = data.scores[(*row, e, metric)], data.scores[(*brow, b, bmetric)]
            label = f"{'/'.join(row)}/{e} vs {'/'.join(brow) + '/' if brow != row else ''}{b}"
            if brow[:2] == row[:2]:
                x, y = _pair(sa, sb)
                units.append(Unit(label, d=sign * (x - y) - margin))
            else:
                units.append(Unit(label, xy=(sign * sa.to_numpy(float) - margin, sign * sb.to_numpy(float))))
            what.append(f"{e} − {b}" + (f" ({'/'.join(brow)})" if brow != row else ""))
    return units, _summarise_what(what)


def _summarise_what(what: list[str]) -> str:
    uniq = list(dict.fromkeys(what))
    return "; ".join(uniq[:4]) + (f"; … ({len(uniq)} comparisons)" if len(uniq) > 4 else "")


def _test(units: list[Unit], seed: int) -> Test:
    if all(u.d is not None for u in units):
        return paired_effect(np.concatenate([u.d for u in units]), seed=seed)
    xs = [u.d if u.d is not None else u.xy[0] for u in units]
    ys = [np.zeros_like(u.d) if u.d is not None else u.xy[1] for u in units]
    return unpaired_effect(np.concatenate(xs), np.concatenate(ys), seed=seed)


def _side(t: Test) -> int:
    """+1 if the CI lies above 0, −1 below, 0 if it straddles (or is undefined)."""
    if not (math.isfinite(t.ci_low) and math.isfinite(t.ci_high)):
        return 0
    return 1 if t.ci_low > 0 else (-1 if t.ci_high < 0 else 0)


def evaluate_claims(claims: list[dict[str, Any]], results: pd.DataFrame, *, seed: int = 0,
                    alpha: float = ALPHA) -> list[Finding]:
    """Evaluate a benchmark's claims on its long results table (see the module docstring).

    Args:
        claims: claim records (:meth:`ClaimEntry.record`, as the run stores them).
        results: the run's long results table.
        seed: bootstrap seed (combined with each claim's text).
        alpha: significance level after the Holm adjustment across the claims.

    Returns:
        one :class:`Finding` per claim, in order, with Holm-adjusted p-values and verdicts.
    """
    data = _Data(results)
    out: list[Finding] = []
    pending: list[tuple[Finding, int]] = []  # finding, sign of the side its p-value speaks for
    for i, rec in enumerate(claims):
        c = ClaimEntry.model_validate({k: v for k, v in rec.items() if k in ClaimEntry.model_fields})
        s = key_seed(seed, "claim", c.claim) % 2**63
        units, what = _units(c, data) if not results.empty else ([], "")
        f = Finding(index=i, claim=c.claim, source=c.source, kind=str(c.kind), metric=", ".join(c.metrics),
                    measured=what, effect=math.nan, ci_low=math.nan, ci_high=math.nan, p_value=math.nan,
                    p_adjusted=math.nan, verdict="not tested", n=0, rows_holding=0, rows_refuted=0,
                    rows_total=len(units), rows_needed=1, test="", definition=c.record())
        if not units:
            f.note = "no results match this claim (cells missing or failed?)"
            out.append(f)
            continue
        pooled = _test(units, s)
        f.effect, f.ci_low, f.ci_high, f.n, f.test = pooled.effect, pooled.ci_low, pooled.ci_high, pooled.n, pooled.test
        side = 0
        if c.rows == "pooled":
            f.p_value = pooled.p_value
            f.rows_needed = 1
            side = _side(pooled)
            f.rows_holding, f.rows_refuted = int(side > 0), int(side < 0)
            f.rows_total = 1
        else:
            per = [_test([u], key_seed(s, u.label) % 2**63) for u in units]
            adj = holm([t.p_value for t in per])
            n = len(per)
            k = n if c.rows == "all" else (n // 2 + 1)
            if c.min_rows is not None:
                k = min(c.min_rows, n)
            holds = [a for t, a in zip(per, adj) if a < alpha and _side(t) > 0]
            refs = [a for t, a in zip(per, adj) if a < alpha and _side(t) < 0]
            f.rows_holding, f.rows_refuted, f.rows_needed = len(holds), len(refs), k
            pos = sorted(a for t, a in zip(per, adj) if np.isfinite(a) and t.effect > 0)
            neg = sorted(a for t, a in zip(per, adj) if np.isfinite(a) and t.effect < 0)
            need_ref = n - k + 1
            if len(pos) >= k:
                f.p_value, side = float(pos[k - 1]), 1
            elif len(neg) >= need_ref:
                f.p_value, side = float(neg[need_ref - 1]), -1
            else:
                f.p_value, side = 1.0, 0
        out.append(f)
        pending.append((f, side))
    adj = holm([f.p_value for f, _ in pending])
    for (f, side), a in zip(pending, adj):
        f.p_adjusted = float(a)
        if not math.isfinite(a) or a >= alpha:
            f.verdict = "inconclusive"
        elif f.rows_total and f.definition.get("rows") != "pooled":
            f.verdict = ("holds" if side > 0 and f.rows_holding >= f.rows_needed
                         else "refuted" if side < 0 and f.rows_refuted >= f.rows_total - f.rows_needed + 1
                         else "inconclusive")
        else:
            f.verdict = "holds" if side > 0 else ("refuted" if side < 0 else "inconclusive")
    return out


def findings_frame(findings: list[Finding]) -> pd.DataFrame:
    """The findings as a table (one row per claim)."""
    cols = ["claim", "source", "kind", "metric", "measured", "effect", "ci_low", "ci_high", "p_value", "p_adjusted",
            "verdict", "n", "rows_holding", "rows_refuted", "rows_needed", "rows_total", "test", "note"]
    return pd.DataFrame([{k: getattr(f, k) for k in cols} for f in findings], columns=cols)


CORRECTION_NOTE = ("p-values: two-sided Wilcoxon signed-rank on the per-sample differences (Mann–Whitney U where "
                   "the two sides are different samples), Holm-adjusted across this benchmark's claims; "
                   "effect = mean difference in the claimed direction (positive favours the claim) with a 95% "
                   "bootstrap CI. holds: adjusted p < {alpha} and the CI above 0; refuted: adjusted p < {alpha} "
                   "and the CI below 0; otherwise inconclusive. Per-row claims (all / most / k rows) count rows "
                   "that hold after a Holm adjustment within the claim.")


__all__ = ["ALPHA", "ClaimEntry", "Finding", "StudyLabels", "Test", "check_claim", "evaluate_claims",
           "findings_frame", "holm", "paired_effect", "unpaired_effect"]
