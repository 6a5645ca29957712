"""Dataset-level analyses of a zoo model that families provide (``xaibench shap``), found by key.

An analysis is registered per model family as ``"<family>.<analysis>"`` (``"mil.attention_shap"``,
``"fcm.attention_shap"``) and called as ``fn(model, *, dataset, n, out, **params) -> (folder, text)``:
``model`` a zoo name, ``dataset`` a dataset name or None (the zoo model's), ``n`` how many
samples to pool, ``out`` the output folder or None (the analysis's default); it returns the
folder it wrote and a one-line summary. The core imports no family: the families register.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .registry import Registry, load_plugins
from .util import did_you_mean

AnalysisFn = Callable[..., "tuple[Path, str]"]
#: Analyses ``fn(model, *, dataset, n, out, **params) -> (folder, text)`` keyed ``family.analysis``.
ANALYSES: Registry[AnalysisFn] = Registry("analysis", settings=False)

#: ``@register_analysis("mil.attention_shap")``: decorator registering a family's analysis.
register_analysis = ANALYSES.register


def run_analysis(analysis: str, model: str, *, dataset: str | None = None, n: int = 20, out: str | Path | None = None,
                 params: dict[str, Any] | None = None) -> tuple[Path, str]:
    """Run ``analysis`` (e.g. ``"attention_shap"``) for the zoo model ``model``, by the model's family.

    Raises:
        KeyError: unknown zoo model; ValueError: the model's family has no such analysis, or ``n`` < 1.
    """
    from . import zoo

    if n < 1:
        raise ValueError(f"{analysis}: n must be >= 1, got {n}")
    family = zoo.get_entry(model).model.split(".")[0]
    load_plugins()
    key = f"{family}.{analysis}"
    if key not in ANALYSES.names():
        fams = sorted({k.split(".")[0] for k in ANALYSES.names(f"*.{analysis}")})
        raise ValueError(f"{analysis}: not available for {model!r} (family {family!r}); it is for the families "
                         f"{', '.join(fams) or 'none'}" + did_you_mean(key, ANALYSES.names()))
    return ANALYSES.get(key)(model, dataset=dataset, n=n, out=out, **(params or {}))
