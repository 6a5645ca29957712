"""Reports: files, self-contained HTML, best marks and baseline flags, figure hooks, examples."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import torch

from xaibench.report import build_report, load_run
from xaibench.report.figures import FIGURES, figure_path, load_examples, new_figure, register_figure, save
from xaibench.report.tables import comparison_tables
from xaibench.runner import parse_config, run_benchmark

CFG = {
    "name": "rep", "seed": 0,
    "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "rand"}],
        "explainers": ["cnn.gradcam", {"name": "cnn.hirescam", "label": "hires3", "params": {"layer": "layer3"}}],
        "metrics": ["pointing_game", {"name": "iou", "params": {"threshold": "mean"}}],
        "n_samples": 8, "batch_size": 4,
    }],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "run"
    run_benchmark(parse_config(CFG), out, quiet=True, report=True)
    return out


def test_report_files_exist_and_html_is_self_contained(run_dir):
    for name in ("results.csv", "results.parquet", "summary.csv", "report.md", "report.html", "results.db"):
        assert (run_dir / name).is_file(), name
    figs = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert "ci_s.png" in figs and any(f.startswith("overlays_s_lesions_rand") for f in figs)
    html = (run_dir / "report.html").read_text()
    assert not re.search(r"https?://", html)
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)  # nothing loaded from elsewhere
    assert len(re.findall(r"data:image/(?:png|jpeg);base64,", html)) == len(figs)  # every figure, PNG or downscaled JPEG
    assert "<style>" in html and "threshold=&#x27;mean&#x27;" in html
    csv = pd.read_csv(run_dir / "results.csv")
    pq = pd.read_parquet(run_dir / "results.parquet")
    assert len(csv) == len(pq) == 4 * 2 * 8
    summary = pd.read_csv(run_dir / "summary.csv")
    assert {"mean", "ci_low", "ci_high", "n", "n_undefined", "undefined_reasons", "seconds_per_sample",
            "direction", "category", "protocol", "is_baseline"} <= set(summary.columns)
    assert len(summary) == 4 * 2 and summary["is_baseline"].sum() == 2 * 2


def test_best_is_marked_and_methods_below_the_best_baseline_are_flagged(run_dir):
    data = load_run(run_dir)
    (t,) = comparison_tables(data.summary)
    assert t.methods == ["cnn.gradcam", "hires3", "baseline.random", "baseline.centre"]
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    for metric in t.metrics:
        vals = {m: t.get(t.rows[0], metric, m) for m in t.methods}
        top = max(v.mean for v in vals.values())
        assert all((v.mark == "best") == (abs(v.mean - top) < 1e-9) for v in vals.values())
        best_base = max(vals["baseline.random"].mean, vals["baseline.centre"].mean)
        for m in ("cnn.gradcam", "hires3"):
            assert vals[m].below_baseline == (not vals[m].mean > best_base)
        best_text = next(v.text() for v in vals.values() if v.mark == "best")
        assert f"**{best_text}**" in md
        assert re.search(r"<td class='best[^']*'[^>]*>" + re.escape(best_text) + "<", html)
    # reference: the flags checked above against the means; every flagged cell renders, no other
    flagged = sum(t.get(t.rows[0], metric, m).below_baseline for metric in t.metrics for m in t.methods)
    assert flagged > 0  # the random CNN here does not beat the centre prior: there are flags to render
    assert len(re.findall(r"<td class='[^']*\bbelow\b", html)) == flagged
    assert sum(line.count(" †") for line in md.splitlines() if line.startswith("|")) == flagged


def test_lower_is_better_metrics_mark_the_minimum():
    rows = []
    for meth, mean, base in (("a", 0.2, False), ("b", 0.1, False), ("baseline.random", 0.15, True)):
        rows.append({"study": "s", "dataset": "d", "model": "m", "explainer": meth, "metric": "err", "mean": mean,
                     "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n": 10, "n_undefined": 0, "is_baseline": base,
                     "direction": "lower"})
    (t,) = comparison_tables(pd.DataFrame(rows))
    v = {m: t.get(("d", "m"), "err", m) for m in t.methods}
    assert v["b"].mark == "best" and v["baseline.random"].mark == "second" and v["a"].mark is None
    assert v["a"].below_baseline and not v["b"].below_baseline


def test_registered_figures_are_embedded_and_failures_are_visible(run_dir):
    @register_figure("_test_ok")
    def ok(rd, results, summary):
        fig = new_figure(2, 2)
        fig.subplots().plot(results["score"].fillna(0).to_numpy())
        return [("test figure from a family", save(fig, figure_path(rd, "_test_ok")))]

    @register_figure("_test_broken")
    def broken(rd, results, summary):
        raise RuntimeError("no data for this family")

    @register_figure("_test_empty")
    def empty(rd, results, summary):
        return []

    try:
        with pytest.warns(UserWarning, match="_test_broken.*no data for this family"):
            build_report(run_dir)
    finally:
        for n in ("_test_ok", "_test_broken", "_test_empty"):
            FIGURES.remove(n)
    html = (run_dir / "report.html").read_text()
    assert "test figure from a family" in html
    assert "class='warn'" in html and "_test_broken" in html and "no data for this family" in html
    assert "_test_ok.png" in (run_dir / "report.md").read_text()


def test_examples_are_saved_per_cell_and_loadable(run_dir):
    exs = load_examples(run_dir)
    assert len(exs) == 4
    ex = next(e for e in exs if e["explainer"] == "cnn.gradcam")
    assert ex["kind"] == "pixel" and ex["values"].shape == (4, 64, 64) and ex["inputs"].shape == (4, 3, 64, 64)
    assert ex["masks"].dtype == torch.bool and ex["ids"][0].startswith("lesions/test/0/")
    assert {"study", "dataset", "model", "explainer", "extras", "is_baseline"} <= set(ex)


def test_overlays_skip_inputs_that_are_not_images(run_dir, tmp_path):
    """Event-set examples (B, N, m) do not get overlays; the report still builds."""
    d = tmp_path / "copy"
    shutil.copytree(run_dir, d)
    torch.save({"study": "s", "dataset": "events", "model": "rand", "explainer": "x.events", "is_baseline": False,
                "kind": "event", "values": torch.rand(2, 50), "extras": {}, "inputs": torch.rand(2, 50, 5),
                "masks": None, "targets": None, "ids": ["a", "b"]}, d / "examples" / "zz_events.pt")
    build_report(d)
    assert not list((d / "figures").glob("overlays_s_events*"))


def test_report_rebuilds_from_the_database_alone(run_dir, tmp_path):
    d = tmp_path / "db_only"
    d.mkdir()
    shutil.copy(run_dir / "results.db", d / "results.db")
    paths = build_report(d)
    assert all(p.is_file() for p in paths.values())
    pd.testing.assert_frame_equal(pd.read_csv(d / "summary.csv"), pd.read_csv(run_dir / "summary.csv"))


def test_large_figures_are_embedded_as_jpeg_small_ones_as_png(tmp_path):
    """report.html stays light: photo-like figures (noisy, large PNGs) are embedded as JPEG."""
    import base64
    import io as _io

    import numpy as np
    from PIL import Image

    from xaibench.report.html import EMBED_PNG_MAX_BYTES, img_tag

    noisy = tmp_path / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 2000, 3), dtype=np.uint8)).save(noisy)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (300, 200), "white").save(plain)
    assert noisy.stat().st_size > EMBED_PNG_MAX_BYTES > plain.stat().st_size
    big, small = img_tag(noisy, "n"), img_tag(plain, "p")
    assert "data:image/jpeg;base64," in big and "data:image/png;base64," in small
    payload = base64.b64decode(big.split("base64,")[1].split("'")[0])
    assert len(payload) < noisy.stat().st_size
    with Image.open(_io.BytesIO(payload)) as im:
        assert im.width == 1600 and im.height == round(700 * 1600 / 2000)


def test_figures_drawn_in_forked_processes_equal_those_drawn_here(run_dir, tmp_path):
    import shutil

    import multiprocessing

    from xaibench.report.figures import run_figures
    from xaibench.store import load_run

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform: figures are always drawn in-process")
    outs = {}
    for w in (1, 2):
        d = tmp_path / f"w{w}"
        shutil.copytree(run_dir, d, ignore=shutil.ignore_patterns("figures"))
        data = load_run(d)
        figs, errors = run_figures(d, data.results, data.summary, workers=w)
        assert not errors
        outs[w] = [(n, t, p.relative_to(d).as_posix(), p.read_bytes()) for n, t, p in figs]
    assert outs[1] and outs[1] == outs[2]


def test_a_figure_whose_process_dies_is_reported_and_the_others_are_drawn(run_dir, tmp_path):
    import multiprocessing
    import os
    import shutil

    from xaibench.report.figures import FIGURES, register_figure, run_figures
    from xaibench.store import load_run

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform: figures are always drawn in-process")

    @register_figure("_test_crash")
    def crash(rd, results, summary):
        os._exit(7)  # a native crash in a figure's process: no exception, no cleanup

    d = tmp_path / "run"
    shutil.copytree(run_dir, d, ignore=shutil.ignore_patterns("figures"))
    data = load_run(d)
    try:
        with pytest.warns(UserWarning, match="_test_crash.*died"):
            figs, errors = run_figures(d, data.results, data.summary, workers=2)
    finally:
        FIGURES.remove("_test_crash")
    assert [e[0] for e in errors] == ["_test_crash"]
    ref, _ = run_figures(d, data.results, data.summary, workers=1)
    assert [(n, t) for n, t, _ in figs] == [(n, t) for n, t, _ in ref] and ref
