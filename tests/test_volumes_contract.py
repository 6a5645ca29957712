"""The contract suite over the ``voxel`` kind.

Explainers that explain volumes (``volumes = True`` on the CNN pixel methods, the CAMs and
occlusion) run through the contract checks on the ``cnn3d`` fixture (the zoo's 3-D CNN on
``volume_lesions``); metrics that declare ``voxel`` run through the metric checks on a voxel
example (cuboid masks in 16³ volumes). The registry records one kind per explainer
(``pixel`` for ``cnn.*``), so the output check here asks for ``voxel`` on volumes itself.
"""

from __future__ import annotations

import pytest
import torch

import xaibench
import xaibench.testing as xt
from xaibench import Attribution, Batch
from xaibench.metric import METRICS
from xaibench.testing import MetricExample, get_fixture
from xaibench.types import KIND_NDIM

VOLUME_EXPLAINERS = ["cnn.gradcam", "cnn.hirescam", "cnn.occlusion", "cnn.saliency", "cnn.integrated_gradients",
                     "cnn.smoothgrad", "cnn.guided_backprop", "cnn.deconvolution", "cnn.guided_gradcam"]


def _voxel_metrics() -> list[str]:
    return [m for m in xaibench.list_metrics() if "voxel" in METRICS.info(m).kinds]


@pytest.fixture(scope="module")
def case():
    return get_fixture("cnn3d")


@pytest.mark.parametrize("name", VOLUME_EXPLAINERS)
def test_voxel_output(name, case):
    attr = xt._make(name, case).explain_batch(case.batch, case.batch.targets)
    assert attr.kind == "voxel" and attr.values.ndim == KIND_NDIM["voxel"]
    assert tuple(attr.values.shape) == (len(case.batch), *case.batch.inputs.shape[2:])
    assert attr.values.is_floating_point() and bool(torch.isfinite(attr.values).all())
    assert not attr.values.requires_grad and attr.method == name
    assert attr.values.abs().amax() > 0, f"{name}: an all-zero map on a trained model"


@pytest.mark.parametrize("check", ["batch_equals_singles", "deterministic", "model_untouched", "bad_inputs",
                                   "target_formats", "dtype_float64"])
@pytest.mark.parametrize("name", VOLUME_EXPLAINERS)
def test_voxel_contract(name, check, case):
    fn = getattr(xt, f"check_{check}", None)
    if fn is None:
        pytest.skip(f"xaibench.testing has no check_{check}")
    fn(name, case)


def _voxel_example(b: int = 8, s: int = 16, seed: int = 0) -> MetricExample:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(b, s, s, s, dtype=torch.bool)
    for i in range(b):
        z, y, x = torch.randint(0, s - 6, (3,), generator=g).tolist()
        dz, dy, dx = torch.randint(2, 6, (3,), generator=g).tolist()
        masks[i, z:z + dz, y:y + dy, x:x + dx] = True
    batch = Batch(inputs=torch.rand(b, 1, s, s, s, generator=g), targets=torch.zeros(b, dtype=torch.long),
                  masks=masks, ids=[f"v{i}" for i in range(b)])
    model = None
    if any(METRICS.info(m).needs_model for m in _voxel_metrics()):
        from xaibench import zoo
        model = zoo.load("volume_cnn3d")  # convolutional with a global pool: takes 16³ volumes
    return MetricExample(batch, Attribution(values=masks.float(), kind="voxel", method="perfect"), model=model)


@pytest.mark.parametrize("name", _voxel_metrics())
def test_voxel_metric_contract(name, monkeypatch):
    example = _voxel_example()
    monkeypatch.setattr(xt, "get_metric_example", lambda _name: example)
    xt.check_metric(name)


def test_localisation_metrics_declare_voxel():
    assert {"pointing_game", "iou", "relevance_mass", "relevance_rank"} <= set(_voxel_metrics())
