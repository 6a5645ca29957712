"""The MIL study benchmark: the built-in grid is valid, and a user's slide folder (cells CSV, GeoJSON,
metadata with FULL_PATH) with their own ABMIL weights runs through a study in one call."""

import json

import pandas as pd

import xaibench
from xaibench import zoo
from xaibench.datasets.mil_slides import CELL_TYPES, FEATURES
from xaibench.runner.config import expand, load_config


def test_builtin_mil_study_is_the_full_grid():
    cfg = load_config("mil_study")
    assert [s.name for s in cfg.studies] == ["mil_regimes", "mil_normalisations", "mil_graph", "mil_shap"]
    regimes = cfg.studies[0]
    assert [d.label for d in regimes.datasets] == ["<1%", "1-5%", "5-20%", ">=20%"]
    assert {m.label for m in regimes.models} == {"mil_abmil", "mil_abmil_mh", "mil_clam_sb", "mil_clam_mb",
                                                 "mil_type_aware", "mil_graphmil"}
    norms = {e.params.get("normalization") for e in cfg.studies[1].explainers}
    assert norms == {None, "min_max", "z_score", "robust", "softmax", "sigmoid"}
    aggs = {e.params.get("attention_aggregation", "pooling_only") for e in cfg.studies[2].explainers}
    assert aggs == {"pooling_only", "gnn_only", "gnn_layer", "random_walk"}
    # (explainers + random baseline) per dataset x model
    assert len(expand(cfg)) == 4 * 6 * 3 + 7 + 5 + 2 * 4 * 2


def test_users_slide_folder_and_weights_run_through_a_study(tmp_path):
    from xaibench.runner.run import run_benchmark

    b = xaibench.create_dataset("mil_slides", n=4, batch_size=4, seed=21, n_cells=150, positive_rate=1.0,
                                tumour_fraction=(0.05, 0.2)).all()
    rows = []
    for i in range(4):
        folder = tmp_path / "slides" / f"SLIDE_{i}"
        folder.mkdir(parents=True)
        cells = pd.DataFrame(b.inputs[i].numpy(), columns=["x", "y", *FEATURES])
        cells["tumour"] = b.instance_labels[i].numpy()
        cells["cell_type"] = [CELL_TYPES[t] for t in b.meta["cell_type"][i].tolist()]
        cells.to_csv(folder / "cells.csv", index=False)
        feats = [{"type": "Feature", "properties": {},
                  "geometry": {"type": "Polygon", "coordinates": [p.tolist() + [p[0].tolist()]]}}
                 for p in b.meta["cell_polygons"][i]]
        (folder / "cells.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        rows.append({"FULL_PATH": folder.name, "label": int(b.targets[i])})
    pd.DataFrame(rows).to_csv(tmp_path / "slides" / "metadata.csv", index=False)
    entry = zoo.get_entry("mil_abmil")
    params = ", ".join(f"{k} = {json.dumps(v).lower() if isinstance(v, bool) else json.dumps(v)}"
                       for k, v in entry.model_params.items())
    toml = f"""
name = "my_mil_study"
seed = 0
[[study]]
name = "mine"
datasets = [{{ name = "mil_folder", label = "my_slides", params = {{ root = "{(tmp_path / 'slides').as_posix()}" }} }}]
models = [{{ model = "mil.abmil", params = {{ {params} }}, weights = "{entry.weights_path.as_posix()}", label = "mine" }}]
explainers = ["mil.attention", {{ name = "mil.attention", label = "robust", params = {{ normalization = "robust" }} }}]
metrics = ["attention_auroc", "top_k_positive_fraction"]
n_samples = 4
batch_size = 4
target = "label"
baselines = []
"""
    (tmp_path / "my.toml").write_text(toml)
    res = run_benchmark(tmp_path / "my.toml", out=tmp_path / "run", quiet=True)
    assert res.n_run == res.n_cells == 2
    s = pd.read_csv(tmp_path / "run" / "summary.csv")
    auc = s[(s.metric == "attention_auroc") & (s.explainer == "mil.attention")]["mean"].item()
    # the same slides read back from the files score as the generator's batch does
    direct = xaibench.create_metric("attention_auroc")(
        xaibench.create_explainer("mil.attention", zoo.load("mil_abmil")).explain_batch(b), b)
    assert abs(auc - float(direct.mean())) < 1e-4 and auc > 0.8
