"""Benchmark configuration: TOML loading, validation, grid expansion and the config hash.

A benchmark is a TOML file with top-level ``name``, ``description``, ``seed`` (and optional
defaults for the study keys) and one or more ``[[study]]`` blocks::

    name = "demo"
    seed = 0
    [[study]]
    name = "lesions_cnn"
    datasets = ["lesions", {name="lesions", label="lesions_big", params={radius=[0.15, 0.25]}}]
    models = ["lesion_cnn", {model="cnn.small_resnet", label="random"}]
    explainers = ["cnn.gradcam", {name="cnn.hirescam", label="hirescam@layer3", params={layer="layer3"}}]
    metrics = ["pointing_game", {name="iou", params={threshold="otsu"}}]
    n_samples = 32
    batch_size = 16
    target = "label"            # "label" (batch.targets) or "predicted"
    baselines = ["random", "centre"]

Every name is checked against its registry (unknown ones raise :class:`ConfigError`
naming the exact key and the close matches), every setting against what the plugin
accepts, before anything runs.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .specs import (ConfigError, Spec, as_int, check_keys, check_registered, dataset_spec, explainer_spec, metric_spec,
                    model_spec, unique_labels)

#: Folder of the built-in benchmarks (``xaibench run NAME`` -> ``NAME.toml`` here).
BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"

TOP_KEYS = {"name", "description", "seed", "study", "n_samples", "batch_size", "target", "baselines"}
STUDY_KEYS = {"name", "description", "datasets", "models", "explainers", "metrics", "n_samples",
              "batch_size", "target", "baselines", "seed"}
STUDY_DEFAULTS: dict[str, Any] = {"n_samples": 32, "batch_size": 16, "target": "label",
                                  "baselines": ["random", "centre"]}
TARGETS = ("label", "predicted")


@dataclass(frozen=True)
class Study:
    """A validated ``[[study]]`` block (defaults filled in)."""

    name: str
    datasets: tuple[Spec, ...]
    models: tuple[Spec, ...]
    explainers: tuple[Spec, ...]
    metrics: tuple[Spec, ...]
    n_samples: int
    batch_size: int
    target: str
    baselines: tuple[str, ...]
    seed: int
    description: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description,
            "datasets": [s.record() for s in self.datasets], "models": [s.record() for s in self.models],
            "explainers": [s.record() for s in self.explainers], "metrics": [s.record() for s in self.metrics],
            "n_samples": self.n_samples, "batch_size": self.batch_size, "target": self.target,
            "baselines": list(self.baselines), "seed": self.seed,
        }


@dataclass(frozen=True)
class BenchmarkConfig:
    """A validated benchmark: name, seed and studies; ``hash`` identifies what is measured."""

    name: str
    description: str
    seed: int
    studies: tuple[Study, ...]
    source: str = ""

    def record(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON-able data (what the hash is taken of)."""
        return {"name": self.name, "seed": self.seed, "studies": [s.record() for s in self.studies]}

    @property
    def hash(self) -> str:
        blob = json.dumps(self.record(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One grid cell: a (study, dataset, model, explainer) whose rows are committed together.

    ``baseline`` is the baseline name for the pseudo-explainer cells (``explainer.label``
    is then ``baseline.<name>``). ``index`` is the cell's position in the grid.
    """

    index: int
    study: Study
    dataset: Spec
    model: Spec
    explainer: Spec
    baseline: str | None = None

    @property
    def key(self) -> str:
        return f"{self.study.name}/{self.dataset.label}/{self.model.label}/{self.explainer.label}"

    @property
    def group(self) -> tuple[str, str]:
        return (self.study.name, self.model.label)


# ----------------------------------------------------------------------------- loading

def resolve_config_path(config: str | Path | None) -> Path:
    """A path to a TOML file, or the name of a built-in benchmark (None = ``default``).

    Raises:
        ConfigError: neither a file nor a built-in benchmark.
    """
    if config is None:
        config = "default"
    p = Path(config)
    if p.is_file():
        return p
    if p.suffix == ".toml" or len(p.parts) > 1:
        raise ConfigError(f"benchmark file {str(p)!r} does not exist")
    builtin = BENCHMARKS_DIR / f"{config}.toml"
    if builtin.is_file():
        return builtin
    names = list_benchmarks()
    close = difflib.get_close_matches(str(config), names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; built-in: {names}"
    raise ConfigError(f"unknown benchmark {str(config)!r}: not a .toml file nor a built-in benchmark{hint}")


def list_benchmarks(pattern: str | None = None) -> list[str]:
    """Names of the built-in benchmarks (``xaibench/benchmarks/*.toml``)."""
    import fnmatch
    names = sorted(p.stem for p in BENCHMARKS_DIR.glob("*.toml"))
    return [n for n in names if not pattern or fnmatch.fnmatchcase(n, pattern)]


def load_config(config: str | Path | None = None, *, n_samples: int | None = None) -> BenchmarkConfig:
    """Read and validate a benchmark (a TOML path or a built-in name; None = ``default``).

    Args:
        n_samples: override every study's ``n_samples`` (changes the config hash).

    Raises:
        ConfigError: bad TOML, unknown key or registry name, bad setting (the message
            names the exact place, e.g. ``study[0].explainers[2].params.layr``).
    """
    path = resolve_config_path(config)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if n_samples is not None:
        if int(n_samples) < 1:
            raise ConfigError(f"--n-samples must be >= 1, got {n_samples}")
        raw = copy.deepcopy(raw)
        raw["n_samples"] = int(n_samples)
        for st in raw.get("study", []) or []:
            if isinstance(st, dict):
                st["n_samples"] = int(n_samples)
    return parse_config(raw, source=str(path), base_dir=path.parent)


def parse_config(raw: dict[str, Any], *, source: str = "<dict>", base_dir: Path | None = None) -> BenchmarkConfig:
    """Validate a benchmark given as a dict (the parsed TOML). See :func:`load_config`."""
    where = source
    check_keys(raw, TOP_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: top-level 'name' must be a non-empty string, got {name!r}")
    seed = as_int(raw.get("seed", 0), f"{where}: seed")
    studies_raw = raw.get("study")
    if not isinstance(studies_raw, list) or not studies_raw:
        raise ConfigError(f"{where}: needs at least one [[study]] block")
    defaults = {**STUDY_DEFAULTS, **{k: raw[k] for k in STUDY_DEFAULTS if k in raw}}
    studies: list[Study] = []
    for i, st in enumerate(studies_raw):
        studies.append(_parse_study(st, i, defaults, seed, where, base_dir))
    names = [s.name for s in studies]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: study names must be unique, repeated: {dup}")
    return BenchmarkConfig(name=name.strip(), description=str(raw.get("description", "")), seed=seed,
                           studies=tuple(studies), source=source)


def _parse_study(st: Any, i: int, defaults: dict[str, Any], seed: int, where: str, base_dir: Path | None) -> Study:
    at = f"{where}: study[{i}]"
    if not isinstance(st, dict):
        raise ConfigError(f"{at}: expected a table, got {type(st).__name__}")
    check_keys(st, STUDY_KEYS, at)
    name = st.get("name", f"study{i}")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{at}.name: expected a non-empty string without '/', got {name!r}")
    at = f"{where}: study[{i}] ({name})"
    s = {**defaults, **st}
    for key in ("datasets", "models", "explainers", "metrics"):
        if not isinstance(s.get(key), list) or not s[key]:
            raise ConfigError(f"{at}.{key}: expected a non-empty list, got {s.get(key)!r}")
    datasets = unique_labels([dataset_spec(d, f"{at}.datasets[{j}]") for j, d in enumerate(s["datasets"])], f"{at}.datasets")
    models = unique_labels([model_spec(m, f"{at}.models[{j}]", base_dir) for j, m in enumerate(s["models"])], f"{at}.models")
    explainers = unique_labels([explainer_spec(e, f"{at}.explainers[{j}]") for j, e in enumerate(s["explainers"])], f"{at}.explainers")
    metrics = unique_labels([metric_spec(m, f"{at}.metrics[{j}]") for j, m in enumerate(s["metrics"])], f"{at}.metrics")
    n = as_int(s["n_samples"], f"{at}.n_samples", minimum=1)
    bs = as_int(s["batch_size"], f"{at}.batch_size", minimum=1)
    target = s["target"]
    if target not in TARGETS:
        raise ConfigError(f"{at}.target: expected one of {TARGETS}, got {target!r}")
    baselines = s["baselines"]
    if not isinstance(baselines, list) or not all(isinstance(b, str) for b in baselines):
        raise ConfigError(f"{at}.baselines: expected a list of names, got {baselines!r}")
    from ..baselines import BASELINES
    for j, b in enumerate(baselines):
        check_registered(BASELINES, b, f"{at}.baselines[{j}]")
    return Study(name=name, datasets=datasets, models=models, explainers=explainers, metrics=metrics,
                 n_samples=n, batch_size=bs, target=target, baselines=tuple(dict.fromkeys(baselines)),
                 seed=as_int(st.get("seed", seed), f"{at}.seed"), description=str(st.get("description", "")))


# ----------------------------------------------------------------------------- grid

def expand(config: BenchmarkConfig) -> list[Cell]:
    """All grid cells in run order: study → model → dataset → explainers, then baselines.

    Cells sharing (study, model) run together so each model is loaded once per study.
    """
    cells: list[Cell] = []
    for st in config.studies:
        for model in st.models:
            for ds in st.datasets:
                for ex in st.explainers:
                    cells.append(Cell(len(cells), st, ds, model, ex))
                for b in st.baselines:
                    spec = Spec(name=f"baseline.{b}", label=f"baseline.{b}")
                    cells.append(Cell(len(cells), st, ds, model, spec, baseline=b))
    return cells
