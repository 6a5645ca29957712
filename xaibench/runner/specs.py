"""The benchmark file's schema (pydantic) and the resolution of study entries against the registries.

Each study entry is a registry name or a table ``{name=..., label=..., params={...}}`` (models:
``{zoo=...}`` or ``{model=..., params=..., weights=...}``). The file's structure is validated by
the pydantic models below (which also give the JSON Schema editors use); names are then checked
against their registries and ``params`` against each plugin's own settings model — every
problem is collected, with its path, before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from ..baselines import BASELINES
from ..claims import ClaimEntry
from ..data import DATASETS, MODELS
from ..errors import ConfigError, SettingsError, UnknownNameError
from ..explainers import EXPLAINERS
from ..metric import METRICS
from ..settings import validate
from ..util import did_you_mean
from ..zoo import ZOO

Label = Annotated[str, StringConstraints(min_length=1, pattern=r"^[^/]+$")]


def _name_to_table(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


def _zoo_to_table(v: Any) -> Any:
    return {"zoo": v} if isinstance(v, str) else v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginEntry(_Strict):
    """A dataset, explainer, metric or baseline of a study: a registry name, a label, settings."""

    name: str = Field(min_length=1, description="registry key")
    label: Label | None = Field(None, description="display label (default: the name); no '/'")
    params: dict[str, Any] = Field(default_factory=dict, description="the plugin's settings")


class ModelEntry(_Strict):
    """A model of a study: a zoo model, or a registered builder with settings and optional weights."""

    zoo: str | None = Field(None, description="zoo model name (`xaibench list zoo`)")
    model: str | None = Field(None, description="registered model builder (`xaibench list models`)")
    label: Label | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="builder settings (with `model`)")
    weights: str | None = Field(None, description="safetensors file, relative to the benchmark file")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelEntry":
        if (self.zoo is None) == (self.model is None):
            raise ValueError("give exactly one of 'zoo' (a zoo model) or 'model' (a model builder)")
        if self.zoo is not None and self.params:
            raise ValueError("a zoo model takes no 'params' (its settings are fixed by the zoo)")
        return self


Entry = Annotated[PluginEntry, BeforeValidator(_name_to_table)]
Model = Annotated[ModelEntry, BeforeValidator(_zoo_to_table)]


class StudyFile(_Strict):
    """A ``[[study]]`` block: datasets × models × explainers, scored by metrics, with baselines."""

    name: Label | None = None
    description: str = ""
    datasets: list[Entry] = Field(min_length=1)
    models: list[Model] = Field(min_length=1)
    explainers: list[Entry] = Field(min_length=1)
    metrics: list[Entry] = Field(min_length=1)
    n_samples: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    target: Literal["label", "predicted"] | None = None
    baselines: list[Entry] | None = None
    seed: int | None = None
    claims: list[ClaimEntry] = Field(default_factory=list, description="findings to check on this study's rows")


class BenchmarkFile(_Strict):
    """A benchmark TOML file: defaults for every study, and the studies."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="xaibench benchmark")
    name: Label
    description: str = ""
    seed: int = 0
    n_samples: int = Field(32, ge=1, description="samples per dataset (a study may override)")
    batch_size: int = Field(16, ge=1)
    target: Literal["label", "predicted"] = "label"
    baselines: list[Entry] = Field(default_factory=lambda: [PluginEntry(name="random"), PluginEntry(name="centre")])
    device: str | None = Field(None, pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
                               description="where models and batches run: auto, cpu, cuda, cuda:N or mps "
                                           "(`--device` overrides; not part of the config hash)")
    study: list[StudyFile] = Field(min_length=1)
    claim: list[ClaimEntry] = Field(default_factory=list,
                                    description="findings to check ([[claim]] blocks; `where.study` selects studies)")


@dataclass(frozen=True)
class Spec:
    """One resolved entry of a study list: a registry ``name``, a display ``label`` and ``params``.

    ``params`` are the settings as given (what the plugin is built with); ``resolved`` is the full
    settings record, defaults filled in (what the cell's identity is hashed from). For models,
    ``name`` is the zoo key (``source="zoo"``) or the builder (``source="model"``); ``weights``
    an optional safetensors path and ``digest`` its content hash.
    """

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    weights: str | None = None
    digest: str | None = None
    resolved: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """Plain data for the config record; weights enter by content digest, not by path."""
        d: dict[str, Any] = {"name": self.name, "label": self.label, "params": self.params}
        if self.source:
            d["source"] = self.source
        if self.digest:
            d["weights_sha256"] = self.digest
        return d

    def identity(self) -> dict[str, Any]:
        """What this entry measures, independent of its label (for cell keys and regressions)."""
        d: dict[str, Any] = {"name": self.name, "settings": self.resolved or self.params}
        if self.source:
            d["source"] = self.source
        if self.digest:
            d["weights_sha256"] = self.digest
        return d


def digest(obj: Any, n: int = 16) -> str:
    """Short sha256 of JSON data (sorted keys) or of bytes."""
    blob = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


class Problems:
    """Collects every problem of a configuration (path, message), to raise them all at once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append((path, msg))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = [f"{p}: {m}" if p else m for p, m in self.items]
        head = f"{self.source}: " if len(lines) == 1 else f"{self.source}: {len(lines)} problems:\n  "
        raise ConfigError(head + "\n  ".join(lines))


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """TOML values as JSON-able plain data (arrays stay lists)."""
    return json.loads(json.dumps(params, default=str))


def resolve_entry(reg: Any, e: PluginEntry, at: str, problems: Problems, who: str,
                  reserved: tuple[str, ...] = ()) -> Spec | None:
    """Check ``e`` against registry ``reg`` and its settings model; None (and problems) if bad."""
    try:
        entry = reg.entry(e.name)
    except UnknownNameError as exc:
        problems.add(f"{at}.name", str(exc))
        return None
    params = _plain(e.params)
    bad = sorted(set(reserved) & set(params))
    if bad:
        problems.add(f"{at}.params", f"{bad} are set by the runner (use the study's n_samples / batch_size / seed); "
                                     "remove them")
        return None
    resolved: dict[str, Any] = {}
    if entry.settings is not None:
        try:
            resolved = validate(entry.settings, params, f"{who} {e.name!r}", f"{at}.params").record()
        except SettingsError as exc:
            for path, msg in exc.problems:
                problems.add(path, msg)
            return None
    return Spec(name=e.name, label=e.label or e.name, params=params, resolved=resolved)


def resolve_model(m: ModelEntry, at: str, problems: Problems, base_dir: Path | None) -> Spec | None:
    weights = m.weights
    if weights is not None:
        wp = Path(weights)
        if not wp.is_absolute() and base_dir is not None:
            wp = base_dir / wp
        if not wp.is_file():
            problems.add(f"{at}.weights", f"no file at {str(wp)!r}")
            return None
        weights = str(wp.resolve())
    if m.zoo is not None:
        try:
            entry = ZOO.get(m.zoo)
        except UnknownNameError as exc:
            problems.add(f"{at}.zoo", str(exc))
            return None
        path = Path(weights) if weights else Path(entry.weights_path)
        if not path.is_file():
            problems.add(at, f"zoo model {m.zoo!r} has no weights at {path}; train them with "
                             f"`xaibench zoo train {m.zoo}`")
            return None
        return Spec(name=m.zoo, label=m.label or m.zoo, source="zoo", weights=weights,
                    digest=digest(path.read_bytes()))
    assert m.model is not None
    try:
        MODELS.entry(m.model)
    except UnknownNameError as exc:
        problems.add(f"{at}.model", str(exc))
        return None
    return Spec(name=m.model, label=m.label or m.model, params=_plain(m.params), source="model", weights=weights,
                digest=digest(Path(weights).read_bytes()) if weights else None)


def unique_labels(specs: list[Spec | None], at: str, problems: Problems) -> tuple[Spec, ...]:
    ok = [s for s in specs if s is not None]
    labels = [s.label for s in ok]
    dup = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dup:
        problems.add(at, f"labels must be unique, repeated: {dup}; give the entries distinct label=\"...\" values")
    return tuple(ok)


def pydantic_problems(exc: Any, problems: Problems) -> None:
    """Turn a pydantic ValidationError of a benchmark file into path-named problems."""
    for err in exc.errors():
        loc = err.get("loc", ())
        path = ""
        for part in loc:
            if isinstance(part, int):
                path += f"[{part}]"
            elif str(part).startswith("function-") or part in ("PluginEntry", "ModelEntry", "ClaimEntry"):
                continue
            else:
                path += ("." if path else "") + str(part)
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            known = {k for m in (BenchmarkFile, StudyFile, PluginEntry, ModelEntry, ClaimEntry) for k in m.model_fields}
            msg = f"unknown key {loc[-1]!r}{did_you_mean(loc[-1], known, n=3)} (see `xaibench schema` for the format)"
        elif "input" in err and err.get("type") != "missing":
            msg += f", got {err['input']!r}"
        problems.add(path, msg)


# ----------------------------------------------------------------------------- JSON Schema

def _hoist(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """Move a sub-schema's ``$defs`` into ``defs`` under unique names and rewrite its refs."""
    local = schema.pop("$defs", {})

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (f"#/$defs/{prefix}{v.rsplit('/', 1)[-1]}" if k == "$ref" and isinstance(v, str) else fix(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    for k, v in local.items():
        defs[f"{prefix}{k}"] = fix(v)
    return fix(schema)


def _entries_schema(reg: Any, what: str, defs: dict[str, Any]) -> dict[str, Any]:
    names = reg.names()
    options: list[dict[str, Any]] = [{"type": "string", "enum": names, "description": f"a registered {what}"}]
    for n in names:
        model = reg.settings(n)
        params = (_hoist(model.model_json_schema(), f"{n}.", defs) if model is not None
                  else {"type": "object"})
        params.pop("title", None)
        options.append({"type": "object", "additionalProperties": False, "required": ["name"],
                        "properties": {"name": {"const": n}, "label": {"type": "string", "pattern": "^[^/]+$"},
                                       "params": params}})
    return {"anyOf": options}


def benchmark_schema() -> dict[str, Any]:
    """The JSON Schema of a benchmark TOML file, with every registered plugin's settings.

    Point an editor at it (taplo / Even Better TOML: a ``#:schema path`` first line) to get
    completion and checking of names and ``params`` while writing a benchmark.
    """
    schema = BenchmarkFile.model_json_schema(mode="validation")
    defs = schema.setdefault("$defs", {})
    for reg, what in ((DATASETS, "dataset"), (EXPLAINERS, "explainer"), (METRICS, "metric"), (BASELINES, "baseline")):
        defs[f"{what}_entry"] = _entries_schema(reg, what, defs)
    model_obj = defs["ModelEntry"]
    defs["model_entry"] = {"anyOf": [{"type": "string", "enum": ZOO.names(), "description": "a zoo model"}, model_obj]}
    study = defs["StudyFile"]["properties"]
    for key, what in (("datasets", "dataset"), ("explainers", "explainer"), ("metrics", "metric")):
        study[key]["items"] = {"$ref": f"#/$defs/{what}_entry"}
    study["models"]["items"] = {"$ref": "#/$defs/model_entry"}
    study["baselines"] = {"anyOf": [{"type": "array", "items": {"$ref": "#/$defs/baseline_entry"}}, {"type": "null"}]}
    schema["properties"]["baselines"] = {"type": "array", "items": {"$ref": "#/$defs/baseline_entry"}}
    defs.pop("PluginEntry", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
