"""The ``xaibench`` command line (typer).

    xaibench list [explainers|metrics|datasets|models|zoo|baselines|benchmarks] [PATTERN] [--details]
    xaibench schema [--out FILE]
    xaibench run [CONFIG|NAME] [--out DIR] [--resume] [--force] [--n-samples N] [--quiet] [--device D]
                 [--executor local|ray [--address ADDR] [--workers N] [--gpus-per-worker G]]
    xaibench plan [CONFIG|NAME] [--from RUN] [--scale KEY=VALUE ...]
    xaibench report RUN
    xaibench baseline RUN [--out FILE] [--tolerance METRIC=TOL ...]
    xaibench regress RUN --baseline FILE [--allow-missing] [--allow-mismatch] [--significant]
    xaibench explain --model ZOO_NAME --method KEY [--dataset NAME] [--index I | --image PNG] [--out PNG|DIR]
                     [--option KEY=VALUE ...]   (MIL models: GeoJSON, graph HTML, attention JSON in DIR)
    xaibench shap --model ZOO_NAME [--dataset NAME] [--n N] [--out DIR] [--param KEY=VALUE ...]
    xaibench zoo list | xaibench zoo train NAME | --all

Errors print one line to stderr and exit 2 (set ``XAIBENCH_DEBUG=1`` for the traceback);
``regress`` exits 1 when a score dropped or a claim that held no longer holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer

from xaibench.errors import XaibenchError
from xaibench.util import did_you_mean

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="xaibench: benchmark explanation (XAI) methods on medical models.")
zoo_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The model zoo: list and train reference models.")
app.add_typer(zoo_app, name="zoo")

LIST_WHAT = ("explainers", "metrics", "datasets", "models", "zoo", "baselines", "benchmarks")


def _err(msg: str) -> None:
    typer.echo(f"xaibench: error: {msg}", err=True)


@contextlib.contextmanager
def _handled() -> Iterator[None]:
    """Report errors on stderr and exit 2: xaibench's own errors (and bad input: ValueError,
    FileNotFoundError) by their message, anything else with its type, as a possible bug."""
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except (XaibenchError, ValueError, FileNotFoundError) as exc:  # the message says what and how to fix
        if os.environ.get("XAIBENCH_DEBUG"):
            raise
        for line in (str(exc) or type(exc).__name__).splitlines():
            _err(line.strip())
        raise typer.Exit(2) from None
    except Exception as exc:  # unexpected: named with its type, never swallowed
        if os.environ.get("XAIBENCH_DEBUG"):
            raise
        _err(f"{type(exc).__name__}: {' '.join(str(exc).split())} (unexpected; rerun with XAIBENCH_DEBUG=1 for "
             "the traceback)")
        raise typer.Exit(2) from None


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...] | None = None) -> None:
    rows = [tuple(str(x) for x in r) for r in rows]
    allr = ([head] if head else []) + rows
    if not allr:
        return
    widths = [max(len(r[i]) for r in allr) for i in range(len(allr[0]))]
    for r in allr:
        typer.echo("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())


# ----------------------------------------------------------------------------- list

def _registry(what: str) -> Any:
    from xaibench.baselines import BASELINES
    from xaibench.data import DATASETS
    from xaibench.explainers import EXPLAINERS
    from xaibench.metric import METRICS
    return {"explainers": EXPLAINERS, "metrics": METRICS, "datasets": DATASETS, "baselines": BASELINES}.get(what)


def _details(what: str, pattern: Optional[str]) -> None:
    """Each plugin's summary and every setting: type, default and doc, from its settings model."""
    import inspect

    from xaibench.settings import describe
    reg = _registry(what)
    if reg is None:
        raise ValueError(f"--details lists settings of explainers, metrics, datasets or baselines, not {what!r}")
    for name in reg.names(pattern):
        doc = (inspect.getdoc(reg.get(name)) or "").split("\n")[0]
        typer.echo(f"{name}: {doc}")
        model = reg.settings(name)
        docs = describe(model) if model is not None else []
        if not docs:
            typer.echo("    (no settings)")
        for d in docs:
            typer.echo(f"    {d.name}: {d.type} = {d.default!r}")
            if d.doc:
                typer.echo(f"        {d.doc}")


def _list_rows(what: str, pattern: Optional[str]) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    import xaibench
    from xaibench.explainers import EXPLAINERS
    from xaibench.metric import METRICS
    from xaibench.runner import list_benchmarks

    if what == "explainers":
        return ("explainer", "kind", "summary"), [
            (k, EXPLAINERS.info(k).kind, EXPLAINERS.info(k).summary) for k in xaibench.list_explainers(pattern)]
    if what == "metrics":
        return ("metric", "direction", "category", "kinds"), [
            (k, METRICS.info(k).direction + " is better", METRICS.info(k).category, ",".join(METRICS.info(k).kinds))
            for k in xaibench.list_metrics(pattern)]
    if what == "datasets":
        return ("dataset",), [(k,) for k in xaibench.list_datasets(pattern)]
    if what == "models":
        return ("model",), [(k,) for k in xaibench.list_models(pattern)]
    if what == "zoo":
        return _zoo_rows(pattern)
    if what == "baselines":
        return ("baseline",), [(k,) for k in xaibench.list_baselines(pattern)]
    return ("benchmark", "description"), [(k, _bench_description(k)) for k in list_benchmarks(pattern)]


def _bench_description(name: str) -> str:
    import tomllib
    from xaibench.runner.config import BENCHMARKS_DIR
    try:
        return str(tomllib.loads((BENCHMARKS_DIR / f"{name}.toml").read_text()).get("description", ""))
    except Exception as exc:  # a broken file is listed with its problem
        return f"(unreadable: {exc})"


@app.command("list")
def list_cmd(
    what: Optional[str] = typer.Argument(None, help=f"one of {', '.join(LIST_WHAT)} (default: all)"),
    pattern: Optional[str] = typer.Argument(None, help="glob filter, e.g. 'cnn.*'"),
    details: bool = typer.Option(False, "--details", help="each setting's type, default and doc"),
) -> None:
    """List registered explainers, metrics, datasets, models, zoo entries, baselines or benchmarks."""
    with _handled():
        if what is not None and what not in LIST_WHAT:
            raise ValueError(f"cannot list {what!r}; choose one of {', '.join(LIST_WHAT)}"
                             + did_you_mean(what, LIST_WHAT, n=1))
        if details:
            if what is None:
                raise ValueError("--details needs what to list: explainers, metrics, datasets or baselines")
            _details(what, pattern)
            return
        for i, w in enumerate([what] if what else LIST_WHAT):
            head, rows = _list_rows(w, pattern)
            if not what:
                typer.echo(("\n" if i else "") + f"[{w}]")
            _table(rows, head)


# ----------------------------------------------------------------------------- run / report

@app.command("run")
def run_cmd(
    config: Optional[str] = typer.Argument(None, help="benchmark TOML file or built-in name (default: 'default')"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default: reports/<benchmark name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out (finished cells are kept)"),
    force: bool = typer.Option(False, "--force", help="delete earlier results in --out first"),
    n_samples: Optional[int] = typer.Option(None, "--n-samples", help="override every study's n_samples"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    executor: str = typer.Option("local", "--executor", help="local (in this process) or ray (cells as Ray tasks)"),
    report: bool = typer.Option(True, "--report/--no-report", help="build the report files at the end"),
    device: Optional[str] = typer.Option(None, "--device",
                                         help="auto, cpu, cuda, cuda:N or mps (default: the file's device, else cpu)"),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="ray: a running cluster (auto, host:6379, ray://host:10001); "
                                               "default: start a local Ray"),
    workers: Optional[int] = typer.Option(None, "--workers", help="ray: worker processes (default: one per CPU)"),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="ray: GPUs each worker reserves"),
) -> None:
    """Run a benchmark and write its report (results.db, results.csv, summary.csv, report.html)."""
    from xaibench.runner import run_benchmark

    with _handled():
        if resume and force:
            raise ValueError("--resume and --force exclude each other: resume keeps results, force deletes them")
        options = {k: v for k, v in (("address", address), ("workers", workers),
                                     ("gpus_per_worker", gpus_per_worker or None)) if v is not None}
        if options and executor != "ray":
            raise ValueError(f"--{'/--'.join(k.replace('_', '-') for k in options)} only apply to --executor ray")
        res = run_benchmark(config, out, resume=resume, force=force, n_samples=n_samples, quiet=quiet,
                            executor=executor, report=report, device=device, executor_options=options)
        typer.echo(f"{res.config.name}: {res.n_run} cells run, {res.n_resumed} already done, "
                   f"{res.seconds:.1f} s; results in {res.run_dir / 'results.db'}")
        if report:
            typer.echo(f"report: {res.report['report.html']}")
    if res.failed:
        for key, why in res.failed.items():
            _err(f"cell {key} failed: {' '.join(why.split())}")
        _err(f"{res.n_failed} of {res.n_cells} cells failed (recorded in the report); fix the cause and rerun with "
             "--resume: only failed and missing cells run again")
        raise typer.Exit(1)


@app.command("plan")
def plan_cmd(
    config: Optional[str] = typer.Argument(None, help="benchmark TOML file or built-in name (default: 'default')"),
    from_run: Optional[Path] = typer.Option(None, "--from", help="price cells by this run's measured costs"),
    scale: List[str] = typer.Option([], "--scale", "-s",
                                    help="KEY=VALUE: n_samples, workers, speed, seconds_per_forward, setup_seconds"),
    device: Optional[str] = typer.Option(None, "--device", help="label the hours as this device's (cpu, cuda, ...)"),
) -> None:
    """Estimate a grid's cost before running it: cells, forward passes, CPU/GPU hours, wall time."""
    from xaibench.plan import plan_benchmark

    with _handled():
        typer.echo(plan_benchmark(config, from_run=from_run, scale=scale, device=device).format())


@app.command("report")
def report_cmd(run: Path = typer.Argument(..., help="run folder written by `xaibench run`")) -> None:
    """Rebuild every report file of a run folder from its database."""
    from xaibench.report import build_report

    with _handled():
        paths = build_report(run, quiet=False, lock=True)
        typer.echo(f"report: {paths['report.html']}")


@app.command("schema")
def schema_cmd(out: Optional[Path] = typer.Option(None, "--out", "-o", help="write to this file (default: stdout)")) -> None:
    """Print the JSON Schema of benchmark TOML files, with every registered plugin's settings.

    Editors complete and check a benchmark with it: put ``#:schema ./benchmark.schema.json``
    on the first line of the TOML (taplo / Even Better TOML).
    """
    from xaibench.runner import benchmark_schema

    with _handled():
        text = json.dumps(benchmark_schema(), indent=1, sort_keys=True) + "\n"
        if out is None:
            typer.echo(text, nl=False)
        else:
            from xaibench.util import atomic_write_text
            atomic_write_text(out, text)
            typer.echo(f"schema: {out}")


# ----------------------------------------------------------------------------- regression

def _tolerances(items: List[str]) -> tuple[Optional[float], dict[str, float]]:
    default, per = None, {}
    for it in items:
        k, sep, v = it.partition("=")
        try:
            if sep:
                per[k.strip()] = float(v)
            else:
                default = float(k)
        except ValueError:
            raise ValueError(f"--tolerance expects METRIC=NUMBER or NUMBER, got {it!r}") from None
    return default, per


@app.command("baseline")
def baseline_cmd(
    run: Path = typer.Argument(..., help="run folder"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="baseline file (default: RUN/baseline.json)"),
    tolerance: List[str] = typer.Option([], "--tolerance", "-t",
                                        help="METRIC=TOL per metric (label or key), or TOL for the default"),
) -> None:
    """Write a regression baseline (JSON) from a run's summary (real methods only)."""
    from xaibench.regress import DEFAULT_TOLERANCE, write_baseline

    with _handled():
        default, per = _tolerances(tolerance)
        path = write_baseline(run, out, default_tolerance=DEFAULT_TOLERANCE if default is None else default,
                              tolerances=per)
        n = len(json.loads(path.read_text())["entries"])
        typer.echo(f"baseline: {path} ({n} entries)")


@app.command("regress")
def regress_cmd(
    run: Path = typer.Argument(..., help="run folder"),
    baseline: Path = typer.Option(..., "--baseline", "-b", help="baseline JSON written by `xaibench baseline`"),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="entries missing from the run do not fail"),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch",
                                        help="entries measured with another protocol or n do not fail (never compared)"),
    significant: bool = typer.Option(False, "--significant",
                                     help="a drop beyond tolerance fails only if significant (paired bootstrap over "
                                          "the same samples; needs a baseline with per-sample scores)"),
) -> None:
    """Compare a run with a baseline; exit 1 when a score dropped beyond its tolerance, a claim that held no
    longer holds, or nothing was compared. Entries are matched by what was measured, not by label."""
    from xaibench.regress import regress_run

    with _handled():
        rep = regress_run(run, baseline, allow_missing=allow_missing, allow_mismatch=allow_mismatch,
                          significant=significant)
    typer.echo(rep.format())
    raise typer.Exit(0 if rep.passed else 1)


# ----------------------------------------------------------------------------- explain

def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


@app.command("explain")
def explain_cmd(
    model: str = typer.Option(..., "--model", "-m", help="zoo model name (see `xaibench zoo list`)"),
    method: str = typer.Option(..., "--method", help="explainer key, e.g. cnn.gradcam"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="dataset (default: the zoo model's)"),
    index: int = typer.Option(0, "--index", "-i", help="sample index in the dataset's test split"),
    image: Optional[Path] = typer.Option(None, "--image", help="explain this PNG instead of a dataset sample"),
    size: Optional[int] = typer.Option(None, "--size", help="resize --image to SIZE×SIZE (default: the dataset's size)"),
    target: Optional[int] = typer.Option(None, "--target", help="class to explain (default: predicted)"),
    param: List[str] = typer.Option([], "--param", "-p", help="explainer setting KEY=VALUE (JSON value)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output PNG (MIL models: output folder)"),
    option: List[str] = typer.Option([], "--option", "-O",
                                     help="output setting KEY=VALUE (JSON) of MIL models: visualization_mode=all|geojson|"
                                          "graph, visualize_cell_types=true, color_scheme=[[r,g,b],[r,g,b]], k=6"),
) -> None:
    """Explain one input with one method and write a PNG of the map over the input.

    For MIL models (``mil_*``): the slide's GeoJSON (QuPath), interactive graph HTML and
    attention weights / statistics JSON in the ``--out`` folder (``-O visualization_mode=...``).
    """
    from xaibench.report.explain import explain_one

    with _handled():
        path, text = explain_one(model, method, dataset=dataset, index=index, image=image, size=size,
                                 target=target, params=_key_values(param, "--param"), out=out,
                                 options=_key_values(option, "--option"))
        typer.echo(text)
        typer.echo(f"{'overlay' if path.suffix == '.png' else 'outputs'}: {path}")


def _key_values(items: List[str], flag: str) -> dict[str, Any]:
    out = {}
    for p in items:
        k, sep, v = p.partition("=")
        if not sep:
            raise ValueError(f"{flag} expects KEY=VALUE, got {p!r}")
        out[k.strip()] = _parse_value(v)
    return out


@app.command("shap")
def shap_cmd(
    model: str = typer.Option(..., "--model", "-m", help="zoo model: a MIL model (mil_*) or the FCM ReluFormer"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="dataset (default: the zoo model's)"),
    n: int = typer.Option(20, "--n", help="slides (MIL) or samples (FCM) whose cells are pooled"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default: shap_<model>)"),
    param: List[str] = typer.Option([], "--param", "-p",
                                    help="analysis setting KEY=VALUE (JSON): num_bins, samples_per_bin, "
                                         "explainer_type=gradient|deep|kernel, background_percentage, ..."),
) -> None:
    """SHAP of the attention module: which cell features (markers) drive attention, over a dataset.

    Writes ``top_features.csv``, ``shap_values.safetensors`` and per head ``feature_importance_bar.png``,
    ``beeswarm_plot.png`` and ``feature_distribution_top20.html``; every setting of the analysis (the
    MIL toolkit's SHAPExplainerConfig) is a ``--param``.
    """
    from xaibench.analyses import run_analysis

    with _handled():
        folder, text = run_analysis("attention_shap", model, dataset=dataset, n=n, out=out,
                                    params=_key_values(param, "--param"))
        typer.echo(text)
        typer.echo(f"outputs: {folder}")


# ----------------------------------------------------------------------------- zoo

def _zoo_rows(pattern: Optional[str]) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    from xaibench.zoo import card_floor, get_entry, list_zoo

    rows = []
    for name in list_zoo(pattern):
        e = get_entry(name)
        fl = card_floor(e.card())
        score = f"{fl.metric} {fl.score:.3f}" if fl.score is not None else ("no weights" if not e.weights_path.exists()
                                                                             else "–")
        floor = "–" if fl.floor is None else f"{'≥' if fl.direction == 'higher' else '≤'} {fl.floor:.3f}"
        rows.append((name, e.dataset, score, floor, fl.status, e.description))
    return ("name", "dataset", "held-out score", "floor", "status", "description"), rows


@zoo_app.command("list")
def zoo_list(pattern: Optional[str] = typer.Argument(None, help="glob filter")) -> None:
    """Zoo models: name, dataset, held-out score and floor from the card (status ok / below floor / no floor)."""
    with _handled():
        head, rows = _zoo_rows(pattern)
        _table(rows, head)


@zoo_app.command("train")
def zoo_train(
    name: Optional[str] = typer.Argument(None, help="zoo model to train"),
    all_: bool = typer.Option(False, "--all", help="train every zoo model"),
    seed: Optional[int] = typer.Option(None, "--seed", help="training seed (default: the entry's)"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="write weights here instead of the package"),
) -> None:
    """Train zoo models reproducibly from their seed and save weights + card."""
    from xaibench import zoo

    with _handled():
        if bool(name) == all_:
            raise ValueError("give a zoo model NAME or --all (see `xaibench zoo list`)")
        for n in (zoo.list_zoo() if all_ else [name]):
            card = zoo.train(n, seed=seed, out_dir=out_dir)
            typer.echo(f"{n}: {json.dumps(card.get('metrics', {}), sort_keys=True)} "
                       f"({card.get('train_seconds')} s) -> {Path(out_dir or zoo.get_entry(n).weights_dir) / (n + '.safetensors')}")


def main() -> None:
    """Entry point of the ``xaibench`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
