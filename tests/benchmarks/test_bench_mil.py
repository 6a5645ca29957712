"""SHAP of the attention module: the whole analysis at 5 bins × 10,000 cells with our vectorised
expected gradients, and, on the same cells, shap's DeepExplainer and GradientExplainer.

Groups:
- ``mil_shap_analysis_50k``: :func:`run_analysis` of the zoo 4-head ABMIL over ~100k cells of
  200 synthetic slides, 5 attention bins × 10,000 sampled cells (20% background, 40,000
  explained), gradient explainer, every head and the mean head, no plots. shap's DeepExplainer
  on the same 40,000 cells is measured on the first 400 of them and extrapolated linearly into
  ``extra_info`` (it loops over cells; all of them would take ~20 min here).
- ``mil_shap_400cells_deep`` / ``mil_shap_400cells_gradient``: the same 400 cells, mean head,
  ours next to shap's DeepExplainer (background: 1,000 of the sampled background cells) and
  next to shap's GradientExplainer (the same estimator, 50 samples per cell).
"""

from __future__ import annotations

import pytest
import torch

import xaibench
from xaibench import zoo
from xaibench.adapters.mil.shap_analysis import (
    MILAttentionModule, ShapSettings, run_analysis, shap_values, stratified_sample,
)

N_SLIDES, N_CELLS, BINS, PER_BIN, SUB = 200, 512, 5, 10_000, 400


@pytest.fixture(scope="module")
def setup():
    model = zoo.load("mil_abmil_mh")
    cells = xaibench.create_dataset("mil_slides", n=N_SLIDES, batch_size=50, n_cells=N_CELLS, seed=0).all().inputs[..., 2:]
    cells = cells.reshape(-1, cells.shape[-1])
    module = MILAttentionModule(model).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        att = module(cells).mean(1)
    idx = stratified_sample(att, num_bins=BINS, samples_per_bin=PER_BIN, seed=42)
    perm = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(43))]
    n_bg = int(round(0.2 * len(perm)))
    return {"module": module, "cells": cells, "bg": cells[perm[:n_bg]], "ex": cells[perm[n_bg:]]}


def _per_cell_deep(setup):
    s = ShapSettings(explainer_type="deep")
    return shap_values(setup["module"], setup["ex"][:SUB], setup["bg"][:1000], "mean", s)


def test_analysis_50k_gradient(benchmark, setup):
    import time

    benchmark.group = "mil_shap_analysis_50k"
    benchmark.extra_info.update(side="xaibench", cells=BINS * PER_BIN)
    res = benchmark.pedantic(lambda: run_analysis(setup["module"], setup["cells"], [f"f{i}" for i in range(22)],
                                                  num_bins=BINS, samples_per_bin=PER_BIN, create_summary_plots=False),
                             rounds=1, iterations=1)
    assert res.values["mean"].shape == (40_000, 22) and len(res.values) == 5
    # shap's DeepExplainer on the first SUB of the same explained cells (mean head only), scaled to all
    t0 = time.perf_counter()
    _per_cell_deep(setup)
    per_cell = (time.perf_counter() - t0) / SUB
    benchmark.extra_info.update(deep_explainer_measured_cells=SUB,
                                deep_explainer_extrapolated_s_mean_head=round(per_cell * len(setup["ex"]), 1),
                                deep_explainer_extrapolated_s_all_heads=round(5 * per_cell * len(setup["ex"]), 1))


def test_400_cells_ours(benchmark, setup):
    benchmark.group = "mil_shap_400cells_deep"
    benchmark.extra_info["side"] = "xaibench"
    s = ShapSettings()
    v = benchmark.pedantic(lambda: shap_values(setup["module"], setup["ex"][:SUB], setup["bg"], "mean", s), rounds=3, iterations=1)
    assert v.shape == (SUB, 22)


def test_400_cells_shap_deep(benchmark, setup):
    benchmark.group = "mil_shap_400cells_deep"
    benchmark.extra_info["side"] = "anchor"
    v = benchmark.pedantic(lambda: _per_cell_deep(setup), rounds=1, iterations=1)
    assert v.shape == (SUB, 22)


def test_400_cells_ours_vs_shap_gradient(benchmark, setup):
    benchmark.group = "mil_shap_400cells_gradient"
    benchmark.extra_info["side"] = "xaibench"
    s = ShapSettings()
    benchmark.pedantic(lambda: shap_values(setup["module"], setup["ex"][:SUB], setup["bg"], "mean", s), rounds=3, iterations=1)


def test_400_cells_shap_gradient(benchmark, setup):
    benchmark.group = "mil_shap_400cells_gradient"
    benchmark.extra_info["side"] = "anchor"
    s = ShapSettings(gradient_backend="shap")
    v = benchmark.pedantic(lambda: shap_values(setup["module"], setup["ex"][:SUB], setup["bg"], "mean", s), rounds=1, iterations=1)
    assert v.shape == (SUB, 22)
