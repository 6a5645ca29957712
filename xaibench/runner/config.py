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

Every name is checked against its registry (unknown ones are reported with close matches),
every setting value against the plugin's typed settings, and every problem of the file is
reported at once with its path, before anything runs. ``xaibench schema`` prints the file's
JSON Schema (editors such as taplo / Even Better TOML use it to complete and check).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
from pydantic import ValidationError

from ..baselines import BASELINES
from ..claims import StudyLabels, check_claim
from ..data import DATASETS, SampleDataset
from ..errors import ConfigError
from ..explainers import EXPLAINERS
from ..metric import METRICS
from ..util import did_you_mean
from .specs import (
    BenchmarkFile,
    Problems,
    Spec,
    StudyFile,
    digest,
    pydantic_problems,
    resolve_entry,
    resolve_model,
    unique_labels,
)

#: Folder of the built-in benchmarks (``xaibench run NAME`` -> ``NAME.toml`` here).
BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


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
    baselines: tuple[Spec, ...]
    seed: int
    description: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description,
            "datasets": [s.record() for s in self.datasets], "models": [s.record() for s in self.models],
            "explainers": [s.record() for s in self.explainers], "metrics": [s.record() for s in self.metrics],
            "n_samples": self.n_samples, "batch_size": self.batch_size, "target": self.target,
            "baselines": [s.record() for s in self.baselines], "seed": self.seed,
        }


@dataclass(frozen=True)
class BenchmarkConfig:
    """A validated benchmark: name, seed and studies; ``hash`` identifies what is measured."""

    name: str
    description: str
    seed: int
    studies: tuple[Study, ...]
    source: str = ""
    #: the file's ``device`` (None: the runner's default); not in ``record()``, so not in the hash
    device: str | None = None

    #: the claims to check (records of :class:`xaibench.claims.ClaimEntry`, study claims with ``where.study``)
    claims: tuple[dict[str, Any], ...] = ()

    def record(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON-able data (what the hash is taken of)."""
        rec = {"name": self.name, "seed": self.seed, "studies": [s.record() for s in self.studies]}
        if self.claims:  # absent when there are none: a file without claims keeps its hash
            rec["claims"] = list(self.claims)
        return rec

    @property
    def hash(self) -> str:
        return digest(self.record())


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
    baseline: Spec | None = None
    #: fingerprint of the user files the cell's dataset reads ("" for generated data)
    data_fp: str = ""

    def with_data_fp(self, fp: str) -> "Cell":
        return dataclasses.replace(self, data_fp=fp)

    @property
    def key(self) -> str:
        return f"{self.study.name}/{self.dataset.label}/{self.model.label}/{self.explainer.label}"

    def identity(self) -> dict[str, Any]:
        """Everything this cell's rows depend on (resolved settings, weights digests, sizes, seed),
        but not other cells: a changed setting elsewhere in the file leaves it valid."""
        st = self.study
        d: dict[str, Any] = {
            "key": self.key, "n_samples": st.n_samples, "batch_size": st.batch_size, "target": st.target,
            "seed": st.seed, "dataset": self.dataset.identity(), "model": self.model.identity(),
            "metrics": [{"label": m.label, **m.identity()} for m in st.metrics],
        }
        if self.baseline is None:
            d["explainer"] = self.explainer.identity()
        else:  # a baseline takes its kind and shape from the study's first explainer
            d["baseline"] = self.baseline.identity()
            d["shape_from"] = st.explainers[0].identity()
        return d

    @property
    def spec_hash(self) -> str:
        return digest(self.identity())

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
    hint = did_you_mean(config, names, n=3) or f"; built-in: {names}"
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
    """Validate a benchmark given as a dict (the parsed TOML). See :func:`load_config`.

    Every problem is collected — structure, unknown names, bad setting values of every plugin —
    and reported at once, each with its path (``study[1].metrics[0].params.threshold``).
    """
    problems = Problems(source)
    try:
        f = BenchmarkFile.model_validate(raw)
    except ValidationError as exc:
        pydantic_problems(exc, problems)
        problems.raise_if_any()
        raise  # unreachable
    studies = [_resolve_study(st, i, f, problems, base_dir) for i, st in enumerate(f.study)]
    names = [s.name for s in studies if s is not None]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.add("study", f"study names must be unique, repeated: {dup}")
    problems.raise_if_any()
    claims = _resolve_claims(f, [s for s in studies if s is not None], problems)
    problems.raise_if_any()
    return BenchmarkConfig(name=f.name.strip(), description=f.description, seed=f.seed,
                           studies=tuple(s for s in studies if s is not None), source=source, device=f.device,
                           claims=claims)


def _resolve_claims(f: BenchmarkFile, studies: list[Study], problems: Problems) -> tuple[dict[str, Any], ...]:
    """Every claim (study claims get ``where.study``), its names checked against the studies' labels."""
    labels = [StudyLabels(name=s.name, datasets=tuple(d.label for d in s.datasets),
                          models=tuple(m.label for m in s.models),
                          explainers=tuple((e.label, e.name) for e in s.explainers),
                          metrics=tuple((m.label, m.name) for m in s.metrics),
                          baselines=tuple(b.label if b.label != b.name else f"baseline.{b.name}" for b in s.baselines))
              for s in studies]
    items = [(c, f"claim[{j}]") for j, c in enumerate(f.claim)]
    for i, (st, s) in enumerate(zip(f.study, studies)):
        items += [(c.model_copy(update={"where": {**c.where, "study": s.name}}), f"study[{i}].claims[{j}]")
                  for j, c in enumerate(st.claims)]
    for c, at in items:
        for path, msg in check_claim(c, labels, at):
            problems.add(path, msg)
    return tuple(c.record() for c, _ in items)


def _resolve_study(st: StudyFile, i: int, f: BenchmarkFile, problems: Problems, base_dir: Path | None) -> Study | None:

    at = f"study[{i}]"
    before = len(problems.items)
    datasets = unique_labels([resolve_entry(DATASETS, e, f"{at}.datasets[{j}]", problems, "dataset",
                                            reserved=SampleDataset.RUN_ARGS) for j, e in enumerate(st.datasets)],
                             f"{at}.datasets", problems)
    models = unique_labels([resolve_model(m, f"{at}.models[{j}]", problems, base_dir) for j, m in enumerate(st.models)],
                           f"{at}.models", problems)
    explainers = []
    for j, e in enumerate(st.explainers):
        if e.name.startswith("baseline."):
            problems.add(f"{at}.explainers[{j}]", "baselines are not explainers; list them in the study's 'baselines'")
            continue
        explainers.append(resolve_entry(EXPLAINERS, e, f"{at}.explainers[{j}]", problems, "explainer"))
    explainers_t = unique_labels(explainers, f"{at}.explainers", problems)
    metrics = unique_labels([resolve_entry(METRICS, e, f"{at}.metrics[{j}]", problems, "metric")
                             for j, e in enumerate(st.metrics)], f"{at}.metrics", problems)
    base_entries = st.baselines if st.baselines is not None else f.baselines
    baselines = unique_labels([resolve_entry(BASELINES, e, f"{at}.baselines[{j}]", problems, "baseline")
                               for j, e in enumerate(base_entries)], f"{at}.baselines", problems)
    if len(problems.items) > before:
        return None
    return Study(name=st.name or f"study{i}", datasets=datasets, models=models, explainers=explainers_t,
                 metrics=metrics, n_samples=st.n_samples or f.n_samples, batch_size=st.batch_size or f.batch_size,
                 target=st.target or f.target, baselines=baselines,
                 seed=f.seed if st.seed is None else st.seed, description=st.description)


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
                    label = b.label if b.label != b.name else f"baseline.{b.name}"
                    spec = Spec(name=f"baseline.{b.name}", label=label, params=b.params, resolved=b.resolved)
                    cells.append(Cell(len(cells), st, ds, model, spec, baseline=b))
    return cells
