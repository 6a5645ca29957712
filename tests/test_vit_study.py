"""The ViT study benchmark: the built-in grid is valid, and a user's own image folder + own ViT run
through the same study in one call."""

import numpy as np
import torch
from PIL import Image

import xaibench
from xaibench import zoo
from xaibench.adapters.vit.models import DATASETS, INITS
from xaibench.runner.config import expand, load_config


def trained_inits(dataset: str) -> list[str]:
    return [i for i in INITS if zoo.get_entry(f"vit_{dataset}_{i}").weights_path.exists()]


def test_builtin_vit_study_is_the_full_grid():
    assert all(trained_inits(d) == list(INITS) for d in DATASETS)  # random, supervised, dino, mae
    cfg = load_config("vit_study")
    assert [s.name for s in cfg.studies] == ["vit_large", "vit_faint", "vit_thin", "vit_multi"]
    for st in cfg.studies:
        # the seed's four initialisations
        assert [m.label for m in st.models] == list(INITS)
        assert {"vit.gradcam", "vit.attention", "vit.chefer", "vit.chefer_lrp", "vit.rollout"} == {e.name for e in st.explainers}
        # both Chefer methods, each labelled by its paper
        labels = {e.name: e.label for e in st.explainers}
        assert "ICCV'21" in labels["vit.chefer"] and "CVPR'21" in labels["vit.chefer_lrp"]
        # mask vs box vs token-level localisation side by side
        assert {m.name for m in st.metrics} >= {"pointing_game", "iou", "pointing_game_box", "iou_box",
                                                 "energy_pointing_game", "token_pointing_game", "token_iou"}
        # and faithfulness, randomisation and complexity (issue 11)
        assert {"deletion_auc", "insertion_auc", "model_randomisation", "sparseness"} <= {m.name for m in st.metrics}
    assert len(expand(cfg)) == sum(len(trained_inits(d)) for d in DATASETS) * (5 + 2)


def test_users_folder_and_vit_run_through_the_study(tmp_path):
    from safetensors.torch import save_file

    from xaibench.runner.run import run_benchmark

    b = xaibench.create_dataset("roi_multi", n=6, seed=9).all()
    for i in range(6):
        cls = f"class{int(b.targets[i])}"
        (tmp_path / "data" / "images" / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "masks" / cls).mkdir(parents=True, exist_ok=True)
        img = (b.inputs[i].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "data" / "images" / cls / f"{i}.png")
        Image.fromarray(b.masks[i].numpy().astype(np.uint8) * 255).save(tmp_path / "data" / "masks" / cls / f"{i}.png")
    torch.manual_seed(0)
    model = xaibench.create_model("vit.small", num_classes=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "mine.safetensors"))
    toml = f"""
name = "my_vit_study"
seed = 0
[[study]]
name = "mine"
datasets = [{{ name = "image_folder", label = "my_data", params = {{ root = "{(tmp_path / 'data').as_posix()}", size = 64 }} }}]
models = [{{ model = "vit.small", params = {{ num_classes = 2 }}, weights = "{(tmp_path / 'mine.safetensors').as_posix()}", label = "mine" }}]
explainers = ["vit.gradcam", "vit.attention", "vit.rollout", "vit.chefer"]
metrics = ["pointing_game", {{ name = "iou", params = {{ threshold = "otsu" }} }}]
n_samples = 6
batch_size = 6
"""
    (tmp_path / "my.toml").write_text(toml)
    res = run_benchmark(tmp_path / "my.toml", out=tmp_path / "run", quiet=True)
    assert res.n_run == res.n_cells == 4 + 2
    report = (tmp_path / "run" / "report.md").read_text()
    assert "pointing\\_game: vit.chefer" in report and "my\\_data" in report  # markdown-escaped labels
