"""Runner: config validation, grid expansion, config hash, rows, determinism, skips, executors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import xaibench
from xaibench.runner import (EXECUTORS, ConfigError, LocalExecutor, RESULT_COLUMNS, Store, expand, load_config,
                             parse_config, register_executor, run_benchmark)
from xaibench.stats import summarise

TINY = {
    "name": "tiny", "seed": 0,
    "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "rand"}],
        "explainers": ["cnn.gradcam", {"name": "cnn.hirescam", "label": "hires3", "params": {"layer": "layer3"}}],
        "metrics": ["pointing_game", {"name": "iou", "params": {"threshold": "otsu"}}],
        "n_samples": 10, "batch_size": 4, "target": "label", "baselines": ["random", "centre"],
    }],
}


def tiny(**study) -> dict:
    cfg = json.loads(json.dumps(TINY))
    cfg["study"][0].update(study)
    return cfg


def err(raw: dict) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(raw)
    return str(ei.value)


# ----------------------------------------------------------------------------- config

def test_default_benchmark_loads_with_the_lesion_study():
    cfg = load_config()
    assert cfg.name == "default"
    st = cfg.studies[0]
    assert [d.name for d in st.datasets] == ["lesions"] and st.n_samples == 48 and st.batch_size == 16
    assert [m.label for m in st.models] == ["lesion_cnn"] and st.models[0].source == "zoo"
    assert [e.label for e in st.explainers] == ["cnn.gradcam", "cnn.hirescam", "hirescam@layer3"]
    assert [m.label for m in st.metrics] == ["pointing_game", "pointing_game@tol3", "iou", "relevance_mass",
                                             "relevance_rank", "deletion_auc", "sparseness", "data_randomisation"]
    assert tuple(b.name for b in st.baselines) == ("random", "centre")


def test_unknown_names_and_keys_are_named_with_close_matches():
    assert "study[0].explainers[0].name" in err(tiny(explainers=["cnn.gradcan"])) and "'cnn.gradcam'" in err(
        tiny(explainers=["cnn.gradcan"]))
    assert "pointing_game" in err(tiny(metrics=["pointing_gme"]))
    assert "unknown key 'explainer'" in err(tiny(explainer=["cnn.gradcam"])) and "'explainers'" in err(
        tiny(explainer=["cnn.gradcam"]))
    msg = err(tiny(explainers=[{"name": "cnn.hirescam", "params": {"layr": "layer3"}}]))
    assert "explainers[0].params.layr" in msg and "'layer'" in msg
    assert "metrics[0].params.tolerence" in err(tiny(metrics=[{"name": "pointing_game", "params": {"tolerence": 3}}]))
    assert "datasets[0].params.sise" in err(tiny(datasets=[{"name": "lesions", "params": {"sise": 32}}]))
    assert "target" in err(tiny(target="labels"))
    assert "labels must be unique" in err(tiny(explainers=["cnn.gradcam", "cnn.gradcam"]))
    assert "weights: no file at" in err(tiny(models=[{"zoo": "lesion_cnn", "weights": "/nonexistent.safetensors"}]))
    assert "unknown zoo_model" in err(tiny(models=["lesion_cnm"]))
    assert "n_samples" in err(tiny(n_samples=0))
    bad = json.loads(json.dumps(TINY))
    bad["sed"] = 1
    assert "unknown key 'sed'" in err(bad) and "'seed'" in err(bad)


def test_bad_toml_and_unknown_benchmark(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text("name = 'x'\n[[study]\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="did you mean 'default'"):
        load_config("defualt")


def test_grid_expansion_order_and_baseline_cells():
    cfg = parse_config(tiny(datasets=["lesions", {"name": "lesions", "label": "big", "params": {"size": 48}}]))
    cells = expand(cfg)
    assert [c.key for c in cells] == [
        "s/lesions/rand/cnn.gradcam", "s/lesions/rand/hires3", "s/lesions/rand/baseline.random",
        "s/lesions/rand/baseline.centre", "s/big/rand/cnn.gradcam", "s/big/rand/hires3",
        "s/big/rand/baseline.random", "s/big/rand/baseline.centre"]
    assert [c.index for c in cells] == list(range(8))
    assert [c.baseline and c.baseline.name for c in cells[:4]] == [None, None, "random", "centre"]


def test_config_hash_is_stable_and_tracks_what_is_measured(tmp_path):
    a, b = parse_config(tiny()), parse_config(tiny())
    assert a.hash == b.hash
    assert parse_config(tiny(n_samples=11)).hash != a.hash
    assert parse_config(tiny(metrics=[{"name": "pointing_game", "params": {"tolerance": 3}}, "iou"])).hash != a.hash
    p = tmp_path / "t.toml"
    p.write_text('name = "tiny"\n[[study]]\nname = "s"\ndatasets = ["lesions"]\nmodels = [{model="cnn.small_resnet"}]\n'
                 'explainers = ["cnn.gradcam"]\nmetrics = ["iou"]\n')
    assert load_config(p, n_samples=5).studies[0].n_samples == 5
    assert load_config(p, n_samples=5).hash != load_config(p).hash


# ----------------------------------------------------------------------------- running

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = run_benchmark(parse_config(tiny()), out / "a", quiet=True, report=False)
    with Store.open(res.run_dir) as st:
        return res, st.results(), st.cells(), st.get_meta()


def test_rows_cover_the_grid_with_full_records(tiny_run):
    res, df, cells, meta = tiny_run
    assert list(df.columns) == list(RESULT_COLUMNS)
    assert res.n_cells == 4 and res.n_run == 4 and (cells["status"] == "done").all()
    # 4 cells x 2 metrics x 10 samples
    assert len(df) == 80
    assert set(df["explainer"]) == {"cnn.gradcam", "hires3", "baseline.random", "baseline.centre"}
    assert df.groupby(["explainer", "metric"]).size().eq(10).all()
    assert sorted(df["sample_index"].unique()) == list(range(10))
    assert df.loc[df["explainer"].str.startswith("baseline."), "is_baseline"].all()
    assert not df.loc[~df["explainer"].str.startswith("baseline."), "is_baseline"].any()
    hires = df[df["explainer"] == "hires3"].iloc[0]
    assert hires["explainer_key"] == "cnn.hirescam" and json.loads(hires["explainer_params"])["layer"] == "layer3"
    iou = df[df["metric"] == "iou"].iloc[0]
    assert json.loads(iou["protocol"]) == {"threshold": "otsu"} and iou["direction"] == "higher"
    assert (df["seconds"] > 0).all() and (df["config_hash"] == res.config.hash).all()
    assert meta["config_hash"] == res.config.hash and meta["seed"] == 0 and meta["finished_at"]
    assert {"python", "torch", "timm", "captum", "xaibench"} <= set(meta["versions"])
    assert meta["config"]["studies"][0]["name"] == "s"


def test_scores_equal_direct_library_calls(tiny_run):
    """The runner's scores are exactly what the public API gives for the same inputs."""
    import torch
    _, df, _, _ = tiny_run
    torch.manual_seed(0)
    model = xaibench.create_model("cnn.small_resnet").eval()
    batch = xaibench.create_dataset("lesions", n=10, batch_size=10, seed=0, split="test").all()
    attr = xaibench.create_explainer("cnn.gradcam", model).explain_batch(batch, batch.targets)
    want = xaibench.create_metric("iou", threshold="otsu")(attr, batch)
    got = df[(df["explainer"] == "cnn.gradcam") & (df["metric"] == "iou")].sort_values("sample_index")["score"]
    assert torch.allclose(torch.tensor(got.to_numpy()), want.double(), atol=1e-6)


def test_same_config_same_scores(tiny_run, tmp_path):
    _, df, _, _ = tiny_run
    res = run_benchmark(parse_config(tiny()), tmp_path / "b", quiet=True, report=False)
    with Store.open(res.run_dir) as st:
        df2 = st.results()
    cols = [c for c in df.columns if c != "seconds"]
    pd.testing.assert_frame_equal(df[cols], df2[cols])


def test_inapplicable_metric_is_skipped_and_recorded(tmp_path):
    @xaibench.register_metric("_test_events_only", direction="higher", category="test", kinds=("event",))
    def events_only(attr, batch):
        raise AssertionError("never called on pixel maps")

    try:
        cfg = parse_config(tiny(metrics=["iou", "_test_events_only"], n_samples=4, explainers=["cnn.gradcam"],
                                baselines=[]))
        res = run_benchmark(cfg, tmp_path / "r", quiet=True, report=False)
        with Store.open(res.run_dir) as st:
            df, skipped = st.results(), st.skipped()
    finally:
        xaibench.METRICS.remove("_test_events_only")
    assert set(df["metric"]) == {"iou"}
    assert skipped["metric"].tolist() == ["_test_events_only"] and "kind 'pixel'" in skipped["reason"].iloc[0]


def test_undefined_scores_are_null_with_reasons(tmp_path, monkeypatch):
    """Empty masks give NULL scores with the metric's reason, counted in the summary."""
    from xaibench.runner import work

    real = work.build_dataset

    def emptied(study, spec):
        batches = list(real(study, spec))
        batches[0].masks[:2] = False
        return batches

    monkeypatch.setattr(work, "build_dataset", emptied)
    res = run_benchmark(parse_config(tiny(n_samples=4, baselines=[])), tmp_path / "r", quiet=True, report=False)
    with Store.open(res.run_dir) as st:
        df = st.results()
    und = df[df["score"].isna()]
    assert set(und["sample_index"]) == {0, 1} and set(und["undefined_reason"]) == {"empty mask"}
    s = summarise(df)
    assert (s["n_undefined"] == 2).all() and (s["n"] == 2).all()
    assert s["undefined_reasons"].eq("empty mask: 2").all()


def test_model_weights_from_a_file(tmp_path):
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(123)
    net = xaibench.create_model("cnn.small_resnet")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "b.toml").write_text(
        'name = "w"\n[[study]]\nname = "s"\ndatasets = ["lesions"]\n'
        'models = [{model="cnn.small_resnet", weights="w.safetensors", label="mine"}]\n'
        'explainers = ["cnn.gradcam"]\nmetrics = ["iou"]\nn_samples = 2\nbatch_size = 2\nbaselines = []\n')
    cfg = load_config(tmp_path / "b.toml")
    assert cfg.studies[0].models[0].weights == str((tmp_path / "w.safetensors").resolve())
    from xaibench.runner.work import load_model
    loaded = load_model(cfg.studies[0].models[0], seed=0)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))


def test_executors_are_pluggable(tmp_path):
    calls = []

    @register_executor("_test_recording")
    class Recording(LocalExecutor):
        def run(self, jobs, work, on_result, on_batch):
            calls.append([len(j.cells) for j in jobs])
            super().run(jobs, work, on_result, on_batch)

    try:
        cfg = parse_config(tiny(n_samples=2, models=[{"model": "cnn.small_resnet", "label": "a"},
                                                     {"model": "cnn.small_resnet", "label": "b",
                                                      "params": {"channels": [8, 16, 32, 48]}}]))
        res = run_benchmark(cfg, tmp_path / "r", quiet=True, report=False, executor="_test_recording")
    finally:
        EXECUTORS.remove("_test_recording")
    assert calls == [[4, 4]]  # one job per (study, model)
    assert res.n_run == 8
    with pytest.raises(KeyError, match="did you mean 'local'"):
        run_benchmark(cfg, tmp_path / "r2", quiet=True, report=False, executor="locale")


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    """A cell that raises is stored as failed with its reason; the other cells finish; resume
    retries only the failed cell."""
    from xaibench.explainers import Explainer

    @xaibench.register_explainer("test.boom", fixture="cnn")
    class Boom(Explainer):
        """Always fails (test only)."""
        calls = 0

        def explain(self, inputs, target=None):
            Boom.calls += 1
            raise RuntimeError("boom: simulated failure")

    try:
        cfg = parse_config(tiny(n_samples=2, explainers=["cnn.gradcam", "test.boom"]))
        res = run_benchmark(cfg, tmp_path / "r", quiet=True, report=False)
        assert list(res.failed) == ["s/lesions/rand/test.boom"] and "boom: simulated failure" in res.failed[
            "s/lesions/rand/test.boom"]
        with Store.open(tmp_path / "r") as st:
            cells = st.cells().set_index("cell_key")
            df = st.results()
        assert cells.loc["s/lesions/rand/test.boom", "status"] == "failed"
        assert "boom" in cells.loc["s/lesions/rand/test.boom", "error"]
        assert (cells.drop("s/lesions/rand/test.boom")["status"] == "done").all()
        assert "test.boom" not in set(df["explainer"]) and {"cnn.gradcam", "baseline.random"} <= set(df["explainer"])
        ran = []
        res2 = run_benchmark(cfg, tmp_path / "r", resume=True, quiet=True, report=False, on_cell=lambda r: ran.append(r.key))
        assert ran == ["s/lesions/rand/test.boom"] and res2.n_failed == 1
    finally:
        xaibench.EXPLAINERS.remove("test.boom")
