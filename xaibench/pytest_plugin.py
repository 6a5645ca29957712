"""pytest plugin: assert explanation quality in your own test suite, as ``xaibench regress`` does.

Installed with xaibench (entry point ``pytest11``). The ``xai_quality`` fixture scores an
attribution and compares the mean with a stored baseline, direction-aware, with an
absolute tolerance, refusing to compare scores measured with a different protocol::

    def test_model_looks_at_the_lesion(xai_quality, model, batch):
        attr = xaibench.explain(model, batch.inputs, "cnn.gradcam", target=batch.targets)
        xai_quality.check(xaibench.create_metric("pointing_game"), attr, batch)

Record (or refresh) the baseline with ``pytest --xaibench-update`` (run it without xdist),
then plain ``pytest`` fails when the score drops by more than the tolerance. The baseline
file (``--xaibench-baseline PATH``, default ``xaibench_baseline.json`` in the rootdir) has
the format of ``xaibench baseline``. A whole benchmark run is checked with
``assert_no_regression(run_dir, baseline_path)``, which also fails when one of the benchmark's claims
that held in the baseline no longer holds; ``xai_quality.check_claim("a beats b", scores_a, scores_b)``
checks one claim of your own the same way.

Options: ``--xaibench-baseline PATH``, ``--xaibench-update``, ``--xaibench-tolerance TOL``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

DEFAULT_FILE = "xaibench_baseline.json"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xaibench", "explanation-quality regression (xaibench)")
    group.addoption("--xaibench-baseline", default=None, metavar="PATH",
                    help=f"baseline JSON for xai_quality checks (default: <rootdir>/{DEFAULT_FILE})")
    group.addoption("--xaibench-update", action="store_true", default=False,
                    help="record the current scores as the baseline instead of checking them")
    group.addoption("--xaibench-tolerance", type=float, default=None, metavar="TOL",
                    help="absolute tolerance for entries recorded with --xaibench-update (default 0.05)")


class _Session:
    """Per-session state: the baseline path, the mode and the entries recorded for update."""

    def __init__(self, config: pytest.Config) -> None:
        opt = config.getoption("--xaibench-baseline", default=None)
        self.path = Path(opt) if opt else Path(str(config.rootpath)) / DEFAULT_FILE
        self.update = bool(config.getoption("--xaibench-update", default=False))
        self.tolerance = config.getoption("--xaibench-tolerance", default=None)
        self.recorded: list[dict[str, Any]] = []
        self.recorded_claims: list[dict[str, Any]] = []
        self._baseline: dict[str, Any] | None = None

    def baseline(self) -> dict[str, Any]:
        if self._baseline is None:
            from .regress import load_baseline
            self._baseline = load_baseline(self.path)
        return self._baseline

    def write(self) -> None:
        """Merge the recorded entries into the baseline file (same key replaces)."""
        from .regress import FORMAT_VERSION, KEY, _key
        if not self.recorded and not self.recorded_claims:
            return
        base: dict[str, Any] = {"version": FORMAT_VERSION, "config_hash": "", "default_tolerance": 0.05, "entries": []}
        if self.path.is_file():
            base = json.loads(self.path.read_text())
        new = {_key(e): e for e in self.recorded}
        base["entries"] = [e for e in base.get("entries", []) if _key(e) not in new] + list(new.values())
        base["entries"].sort(key=lambda e: tuple(str(e[k]) for k in KEY))
        if self.recorded_claims:
            claims = {c["claim"]: c for c in self.recorded_claims}
            base["claims"] = [c for c in base.get("claims", []) if c.get("claim") not in claims] + list(claims.values())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(base, indent=2) + "\n")
        os.replace(tmp, self.path)


_SESSION_KEY = pytest.StashKey[_Session]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SESSION_KEY] = _Session(config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    st = session.config.stash.get(_SESSION_KEY, None)
    if st is not None and st.update:
        st.write()


class QualityChecker:
    """What the ``xai_quality`` fixture gives a test: :meth:`check` and :meth:`check_scores`."""

    def __init__(self, session: _Session, test_name: str) -> None:
        self.session = session
        self.test_name = test_name

    def check(self, metric: Any, attr: Any, batch: Any, *, name: str | None = None, model: Any = None,
              tolerance: float | None = None) -> float:
        """Score ``attr`` with ``metric`` (a :class:`xaibench.Metric`) and compare with the baseline.

        Args:
            name: the entry's name (default: the test's name); one test may check several.
            model: passed to metrics that need the model.
            tolerance: absolute tolerance when recording (``--xaibench-update``).

        Returns:
            the mean score (NaN scores ignored).
        """
        scores = metric.evaluate(attr, batch, model=model).scores
        return self.check_scores(scores, metric=metric.name, direction=metric.info.direction,
                                 explainer=attr.method, protocol=metric.protocol, name=name, tolerance=tolerance)

    def check_scores(self, scores: Any, *, metric: str, direction: str, explainer: str = "",
                     protocol: dict[str, Any] | None = None, name: str | None = None,
                     tolerance: float | None = None) -> float:
        """Compare the mean of per-sample ``scores`` with the baseline entry (or record it).

        Raises:
            pytest.fail: a drop beyond tolerance, a protocol mismatch, or no baseline entry.
        """
        import pandas as pd

        from .regress import DEFAULT_TOLERANCE, compare, make_baseline
        from .stats import bootstrap_ci, summarise

        vals = [float(s) for s in (scores.tolist() if hasattr(scores, "tolist") else scores)]
        mean, lo, hi = bootstrap_ci(vals)
        row = {"study": "pytest", "dataset": name or self.test_name, "model": "", "explainer": explainer,
               "explainer_key": explainer, "metric": metric, "metric_key": metric,
               "sample_index": range(len(vals)), "score": vals, "undefined_reason": None, "seconds": 0.0,
               "protocol": json.dumps(protocol or {}, sort_keys=True, default=repr), "direction": direction,
               "category": "", "is_baseline": False, "seed": 0}
        summary = summarise(pd.DataFrame(row))
        if self.session.update:
            tol = tolerance if tolerance is not None else (self.session.tolerance or DEFAULT_TOLERANCE)
            self.session.recorded += make_baseline(summary, default_tolerance=tol)["entries"]
            return mean
        if not self.session.path.is_file():
            pytest.fail(f"xaibench: no baseline file at {self.session.path}; record one with "
                        "`pytest --xaibench-update`", pytrace=False)
        base = self.session.baseline()
        key = tuple(summary.iloc[0][k] for k in ("study", "dataset", "model", "explainer", "metric"))
        entries = [e for e in base["entries"] if tuple(str(e[k]) for k in ("study", "dataset", "model", "explainer", "metric")) == key]
        if not entries:
            pytest.fail(f"xaibench: no baseline entry for {'/'.join(key)} in {self.session.path}; record it with "
                        "`pytest --xaibench-update`", pytrace=False)
        rep = compare(summary, {**base, "entries": entries})
        if not rep.passed:
            pytest.fail("xaibench: explanation quality regressed\n" + rep.format(), pytrace=False)
        return mean


    def check_claim(self, claim: str, a: Any, b: Any = None, *, value: float | None = None, direction: str = "higher",
                    op: str | None = None, source: str = "") -> str:
        """Check that a claim about per-sample scores still holds, as ``xaibench regress`` checks a study's claims.

        ``a`` beats ``b`` (the same samples, in ``direction``), or ``a`` is at least ``value`` (at most,
        with ``op="<="``): paired bootstrap CI, Wilcoxon signed-rank p (see :mod:`xaibench.claims`).
        With ``--xaibench-update`` the verdict is recorded; otherwise a claim that held in the
        baseline and no longer holds fails the test.

        Returns:
            the verdict now: ``holds``, ``refuted`` or ``inconclusive``.

        Raises:
            pytest.fail: the claim flipped, or the baseline has no verdict for it.
        """
        import pandas as pd

        from .claims import ClaimEntry, evaluate_claims

        cells = {"a": a} if b is None else {"a": a, "b": b}
        rows = [{"study": "pytest", "dataset": self.test_name, "model": "", "explainer": name, "explainer_key": name,
                 "metric": "score", "metric_key": "score", "sample_index": i, "score": float(x),
                 "direction": direction, "is_baseline": False}
                for name, xs in cells.items() for i, x in enumerate(xs.tolist() if hasattr(xs, "tolist") else xs)]
        spec = {"claim": claim, "source": source, "metric": "score", "a": "a"}
        spec.update({"b": "b"} if b is not None else {"value": value, "op": op})
        f = evaluate_claims([ClaimEntry.model_validate(spec).record()], pd.DataFrame(rows))[0]
        if self.session.update:
            self.session.recorded_claims.append({"claim": claim, "source": source, "identity": f.identity,
                                                 "verdict": f.verdict, "effect": f.effect, "ci_low": f.ci_low,
                                                 "ci_high": f.ci_high, "p_adjusted": f.p_adjusted})
            return f.verdict
        if not self.session.path.is_file():
            pytest.fail(f"xaibench: no baseline file at {self.session.path}; record one with "
                        "`pytest --xaibench-update`", pytrace=False)
        old = next((c for c in self.session.baseline().get("claims", []) if c.get("claim") == claim), None)
        if old is None:
            pytest.fail(f"xaibench: no baseline verdict for claim {claim!r} in {self.session.path}; record it with "
                        "`pytest --xaibench-update`", pytrace=False)
        if old.get("verdict") == "holds" and f.verdict != "holds":
            pytest.fail(f"xaibench: claim flipped: {claim!r} held in the baseline and is now {f.verdict} "
                        f"(effect {f.effect:+.4f} [{f.ci_low:+.4f}, {f.ci_high:+.4f}], p {f.p_adjusted:.3g}, "
                        f"n={f.n})", pytrace=False)
        return f.verdict


@pytest.fixture
def xai_quality(request: pytest.FixtureRequest) -> QualityChecker:
    """Check explanation quality against the stored baseline (see the module docstring)."""
    return QualityChecker(request.config.stash[_SESSION_KEY], request.node.name)


def assert_no_regression(run_dir: str | Path, baseline: str | Path, *, allow_missing: bool = False,
                         significant: bool = False) -> None:
    """Fail (AssertionError with the table of drops and flipped claims) when a run regressed against a
    baseline file: a score dropped beyond tolerance (``significant``: significantly, on the same samples)
    or a claim of the run's benchmark that held in the baseline no longer holds."""
    from .regress import regress_run

    rep = regress_run(run_dir, baseline, allow_missing=allow_missing, significant=significant)
    if not rep.passed:
        raise AssertionError("xaibench: explanation quality regressed\n" + rep.format())
