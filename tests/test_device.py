"""Devices: --device resolution, the TOML key, what a run records, regress flagging a device change,
and (when CUDA is present) a run on the GPU equal to the CPU run within tolerance."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from xaibench.errors import ConfigError
from xaibench.regress import regress_run, write_baseline
from xaibench.runner import Store, parse_config, run_benchmark
from xaibench.runner.work import batch_to, resolve_device
from xaibench.types import Batch

CFG = {
    "name": "dev", "seed": 4,
    "study": [{
        "name": "s", "datasets": ["lesions"], "models": [{"model": "cnn.small_resnet", "label": "r"}],
        "explainers": ["cnn.gradcam", "cnn.saliency"], "metrics": ["pointing_game", "relevance_mass"],
        "n_samples": 4, "batch_size": 4, "baselines": ["random"],
    }],
}


def test_resolve_device():
    # reference: torch's own availability flags
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        assert auto.type in ("cpu", "mps")
        with pytest.raises(ValueError, match=r"0 CUDA device\(s\).*--device cpu"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match=r"expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"):
        resolve_device("gpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"has {n} CUDA"):
        resolve_device(f"cuda:{n}")


def test_batch_to_moves_every_tensor():
    b = Batch(inputs=torch.rand(2, 3, 4, 4), targets=torch.tensor([0, 1]), masks=torch.zeros(2, 4, 4, dtype=torch.bool),
              boxes=[torch.zeros(1, 4), torch.zeros(0, 4)], meta={"w": torch.ones(2), "name": "x"})
    assert batch_to(b, torch.device("cpu")) is b
    dev = torch.device("meta")  # a device without data: shows every tensor moved, no GPU needed
    m = batch_to(b, dev)
    assert m.inputs.device == dev and m.targets.device == dev and m.masks.device == dev
    assert all(x.device == dev for x in m.boxes) and m.meta["w"].device == dev and m.meta["name"] == "x"


def test_toml_device_key_is_checked_and_not_hashed():
    base = parse_config(CFG)
    on_gpu = parse_config({**CFG, "device": "cuda:1"})
    assert on_gpu.device == "cuda:1" and base.device is None
    assert on_gpu.hash == base.hash  # the device is recorded with the run, not part of what is measured
    with pytest.raises(ConfigError, match=r"device"):
        parse_config({**CFG, "device": "gpu"})


def test_run_records_device_dtype_and_costs(tmp_path):
    res = run_benchmark(parse_config(CFG), tmp_path / "r", quiet=True, report=False, device="cpu")
    assert res.n_failed == 0
    with Store.open(tmp_path / "r") as st:
        meta = st.get_meta()
    assert meta["device"] == "cpu" and meta["devices"] == ["cpu"] and meta["dtypes"] == ["float32"]
    costs = meta["cell_costs"]
    assert set(costs) == {"s/lesions/r/cnn.gradcam", "s/lesions/r/cnn.saliency", "s/lesions/r/baseline.random"}
    # reference: each explainer's own number of model calls — one forward per sample for gradcam and saliency
    assert costs["s/lesions/r/cnn.gradcam"]["forwards"] == 4
    assert costs["s/lesions/r/cnn.saliency"]["forwards"] == 4
    assert costs["s/lesions/r/baseline.random"]["forwards"] == 0  # shapes of gradcam's maps, computed in its cell
    assert all(c["n_samples"] == 4 and c["seconds"] > 0 for c in costs.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_fails_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="CUDA"):
        run_benchmark(parse_config(CFG), tmp_path / "r", quiet=True, report=False, device="cuda")
    assert not (tmp_path / "r").exists()


def test_regress_flags_a_device_change(tmp_path):
    run_benchmark(parse_config(CFG), tmp_path / "r", quiet=True, report=False)
    base = write_baseline(tmp_path / "r", tmp_path / "base.json")
    same = regress_run(tmp_path / "r", base)
    assert same.passed and "ENVIRONMENT CHANGED" not in same.format()
    data = json.loads(base.read_text())
    data["environment"]["devices"] = ["cuda:0"]  # as if the baseline had been measured on a GPU
    base.write_text(json.dumps(data))
    moved = regress_run(tmp_path / "r", base).format()
    assert "ENVIRONMENT CHANGED" in moved and "devices ['cuda:0'] -> ['cpu']" in moved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_run_equals_cpu_run(tmp_path):
    # reference: the same grid on the CPU
    cfg = parse_config(CFG)
    run_benchmark(cfg, tmp_path / "cpu", quiet=True, report=False, device="cpu")
    run_benchmark(cfg, tmp_path / "gpu", quiet=True, report=False, device="cuda")
    with Store.open(tmp_path / "gpu") as st:
        assert st.get_meta()["devices"] == ["cuda:0"]
        b = st.results()
    with Store.open(tmp_path / "cpu") as st:
        a = st.results()
    pd.testing.assert_frame_equal(a.drop(columns=["seconds", "score"]), b.drop(columns=["seconds", "score"]))
    # scores of continuous metrics within float tolerance (TF32 convolutions on GPUs)
    cont = a["metric"] == "relevance_mass"
    assert (a.loc[cont, "score"] - b.loc[cont, "score"]).abs().max() < 1e-2
