"""Validation of the entries of a study: datasets, models, explainers, metrics.

Each entry is a registry name or a table ``{name=..., label=..., params={...}}`` (models:
``{zoo=...}`` or ``{model=..., params=..., weights=...}``). Names are checked against their
registry, settings against what the plugin accepts; errors name the exact place.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A benchmark configuration is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class Spec:
    """One entry of a study list: a registry ``name``, a display ``label`` and ``params``.

    For models, ``name`` is the zoo key (``source="zoo"``) or the model builder
    (``source="model"``); ``weights`` an optional safetensors path.
    """

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    weights: str | None = None
    digest: str | None = None

    def record(self) -> dict[str, Any]:
        """Plain data for the config record; weights enter by content digest, not by path."""
        d: dict[str, Any] = {"name": self.name, "label": self.label, "params": self.params}
        if self.source:
            d["source"] = self.source
        if self.digest:
            d["weights_sha256"] = self.digest
        return d


def _entry(x: Any, at: str, keys: set[str], name_key: str = "name") -> tuple[str, str | None, dict[str, Any], dict[str, Any]]:
    if isinstance(x, str):
        return x, None, {}, {}
    if not isinstance(x, dict):
        raise ConfigError(f"{at}: expected a name or a table {{name=..., label=..., params={{...}}}}, got {x!r}")
    check_keys(x, keys, at)
    name = x.get(name_key)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{at}: missing {name_key!r} (a registry name), got {x!r}")
    label = x.get("label")
    if label is not None and (not isinstance(label, str) or not label or "/" in label):
        raise ConfigError(f"{at}.label: expected a non-empty string without '/', got {label!r}")
    params = x.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{at}.params: expected a table, got {params!r}")
    return name, label, _plain(params), x


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """TOML values as JSON-able plain data (arrays stay lists)."""
    return json.loads(json.dumps(params, default=str))


def check_registered(reg: Any, name: str, at: str) -> Any:
    try:
        return reg.entry(name)
    except KeyError as exc:
        raise ConfigError(f"{at}: {exc.args[0]}") from None


def _check_settings(params: dict[str, Any], accepted: set[str] | None, at: str, who: str) -> None:
    if accepted is None:
        return
    for k in params:
        if k not in accepted:
            close = difflib.get_close_matches(k, sorted(accepted), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"{at}.params.{k}: {who} has no setting {k!r}{hint} (accepted: {sorted(accepted)})")


def _signature_keys(fn: Any) -> set[str] | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {k for k, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def dataset_spec(x: Any, at: str) -> Spec:
    from ..data import DATASETS
    name, label, params, _ = _entry(x, at, {"name", "label", "params"})
    obj = check_registered(DATASETS, name, at).obj
    reserved = {"n", "batch_size", "seed", "split"} & set(params)
    if reserved:
        raise ConfigError(f"{at}.params: {sorted(reserved)} are set by the runner (use the study's "
                          "n_samples / batch_size / seed); remove them")
    accepted = set(getattr(obj, "defaults", {})) if isinstance(obj, type) and hasattr(obj, "defaults") else _signature_keys(obj)
    _check_settings(params, accepted, at, f"dataset {name!r}")
    return Spec(name=name, label=label or name, params=params)


def model_spec(x: Any, at: str, base_dir: Path | None) -> Spec:
    from ..data import MODELS
    from ..zoo import ZOO
    if isinstance(x, str):
        x = {"zoo": x}
    if not isinstance(x, dict):
        raise ConfigError(f"{at}: expected a zoo name or a table {{zoo=...}} / {{model=..., params=...}}, got {x!r}")
    if ("zoo" in x) == ("model" in x):
        raise ConfigError(f"{at}: give exactly one of 'zoo' (a zoo model) or 'model' (a model builder), got {x!r}")
    weights = x.get("weights")
    if weights is not None:
        if not isinstance(weights, str):
            raise ConfigError(f"{at}.weights: expected a path string, got {weights!r}")
        wp = Path(weights)
        if not wp.is_absolute() and base_dir is not None:
            wp = base_dir / wp
        if not wp.is_file():
            raise ConfigError(f"{at}.weights: no file at {str(wp)!r}")
        weights = str(wp.resolve())
    if "zoo" in x:
        name, label, params, _ = _entry(x, at, {"zoo", "label", "weights"}, name_key="zoo")
        entry = check_registered(ZOO, name, at).obj
        if weights is None and not Path(entry.weights_path).is_file():
            raise ConfigError(f"{at}: zoo model {name!r} has no weights at {entry.weights_path}; "
                              f"train them with `xaibench zoo train {name}`")
        digest = _digest(Path(weights) if weights else Path(entry.weights_path))
        return Spec(name=name, label=label or name, source="zoo", weights=weights, digest=digest)
    name, label, params, _ = _entry(x, at, {"model", "label", "params", "weights"}, name_key="model")
    fn = check_registered(MODELS, name, at).obj
    _check_settings(params, _signature_keys(fn), at, f"model {name!r}")
    return Spec(name=name, label=label or name, params=params, source="model", weights=weights,
                digest=_digest(Path(weights)) if weights else None)


def _digest(path: Path) -> str:
    """Short sha256 of a weights file: a retrained model changes the config hash."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def explainer_spec(x: Any, at: str) -> Spec:
    from ..explainers import EXPLAINERS
    name, label, params, _ = _entry(x, at, {"name", "label", "params"})
    if name.startswith("baseline."):
        raise ConfigError(f"{at}: baselines are not explainers; list them in the study's 'baselines'")
    cls = check_registered(EXPLAINERS, name, at).obj
    _check_settings(params, set(getattr(cls, "defaults", {})), at, f"explainer {name!r}")
    return Spec(name=name, label=label or name, params=params)


def metric_spec(x: Any, at: str) -> Spec:
    from ..metric import _defaults
    from ..metric import METRICS
    name, label, params, _ = _entry(x, at, {"name", "label", "params"})
    fn = check_registered(METRICS, name, at).obj
    _check_settings(params, set(_defaults(fn)), at, f"metric {name!r}")
    return Spec(name=name, label=label or name, params=params)


def unique_labels(specs: list[Spec], at: str) -> tuple[Spec, ...]:
    labels = [s.label for s in specs]
    dup = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dup:
        raise ConfigError(f"{at}: labels must be unique, repeated: {dup}; give the entries distinct "
                          "label=\"...\" values")
    return tuple(specs)


def check_keys(d: dict[str, Any], allowed: set[str], at: str) -> None:
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(k, sorted(allowed), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"{at}: unknown key {k!r}{hint} (allowed: {sorted(allowed)})")


def as_int(v: Any, at: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{at}: expected an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ConfigError(f"{at}: must be >= {minimum}, got {v}")
    return int(v)
