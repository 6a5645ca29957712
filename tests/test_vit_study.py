"""The ViT study benchmark: the built-in grid is valid, and a user's own image folder + own ViT run
through the same study in one call."""

import numpy as np
import torch
from PIL import Image

import xaibench
from xaibench.runner.config import expand, load_config


def test_builtin_vit_study_is_the_full_grid():
    cfg = load_config("vit_study")
    assert [s.name for s in cfg.studies] == ["vit_large", "vit_faint", "vit_thin", "vit_multi"]
    for st in cfg.studies:
        assert [m.label for m in st.models] == ["random", "supervised", "mae"]
        assert {"vit.gradcam", "vit.attention", "vit.chefer", "vit.rollout"} <= {e.name for e in st.explainers}
        assert {m.name for m in st.metrics} == {"pointing_game", "iou"}
    assert len(expand(cfg)) == 4 * 3 * (5 + 2)


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
