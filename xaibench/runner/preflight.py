"""Check a whole grid before its first cell runs, and fingerprint the data it reads.

Settings values are already validated when the config is parsed; this builds every dataset,
model and explainer of the grid once (no forward pass), so that problems only visible with
the objects themselves (a file that is not there, a layer the model does not have) are all
reported at once, each with its path in the benchmark file.
"""

from __future__ import annotations

from ..errors import XaibenchError
from ..explainers import EXPLAINERS
from .config import BenchmarkConfig
from .specs import Problems
from .work import build_dataset, load_model


def _why(exc: BaseException) -> str:
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return msg if isinstance(exc, (XaibenchError, ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {msg}"


def check_grid(cfg: BenchmarkConfig) -> dict[str, str]:
    """Build every dataset, model and explainer of ``cfg`` once.

    Returns:
        ``"study/dataset_label" -> data fingerprint`` (``""`` for generated data).

    Raises:
        ConfigError: every problem found, each with its path (``study[1].explainers[0].params``).
    """
    problems = Problems(cfg.source or cfg.name)
    fingerprints: dict[str, str] = {}
    for i, st in enumerate(cfg.studies):
        for j, ds in enumerate(st.datasets):
            try:
                fingerprints[f"{st.name}/{ds.label}"] = build_dataset(st, ds).fingerprint()
            except Exception as exc:  # reported with its path, with all the others
                problems.add(f"study[{i}].datasets[{j}] ({ds.label})", _why(exc))
        for j, ms in enumerate(st.models):
            try:
                model = load_model(ms, st.seed)
            except Exception as exc:
                problems.add(f"study[{i}].models[{j}] ({ms.label})", _why(exc))
                continue
            for k, es in enumerate(st.explainers):
                try:
                    EXPLAINERS.get(es.name)(model, **es.params)
                except Exception as exc:
                    problems.add(f"study[{i}].explainers[{k}] ({es.label}) on model {ms.label!r}", _why(exc))
    problems.raise_if_any()
    return fingerprints

