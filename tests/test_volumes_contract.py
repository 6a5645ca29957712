"""The contract suite over the ``voxel`` kind.

Explainers that explain volumes declare ``kinds = ("pixel", "voxel")`` with the ``cnn3d``
fixture for ``voxel`` (the zoo's 3-D CNN on ``volume_lesions``): the core contract suite
(``tests/test_contract.py``) runs every check on them once per kind. Here: that the
declarations match what the methods do, and the metric checks over a voxel example (cuboid
masks in 16³ volumes) for every metric that declares ``voxel``.
"""

from __future__ import annotations

import pytest
import torch

import xaibench
import xaibench.testing as xt
from xaibench import Attribution, Batch
from xaibench.explainers import EXPLAINERS
from xaibench.metric import METRICS
from xaibench.testing import MetricExample, explainer_cases, get_fixture

#: the issue's list (GradCAM, HiResCAM, occlusion, saliency, integrated gradients) and relatives
VOLUME_EXPLAINERS = ["cnn.gradcam", "cnn.hirescam", "cnn.occlusion", "cnn.saliency", "cnn.integrated_gradients",
                     "cnn.smoothgrad", "cnn.guided_backprop", "cnn.deconvolution", "cnn.guided_gradcam"]


def _voxel_metrics() -> list[str]:
    return [m for m in xaibench.list_metrics() if "voxel" in METRICS.info(m).kinds]


def _voxel_explainers() -> list[str]:
    return [n for n in xaibench.list_explainers() if "voxel" in EXPLAINERS.info(n).kinds]


def test_volume_explainers_declare_voxel_and_the_contract_suite_runs_them_on_volumes():
    assert set(VOLUME_EXPLAINERS) <= set(_voxel_explainers())
    cases = set(explainer_cases())
    for name in _voxel_explainers():
        info = EXPLAINERS.info(name)
        voxel_fixture = info.fixture if info.kind == "voxel" else dict(info.kind_fixtures)["voxel"]
        assert info.fixture_kind(voxel_fixture) == "voxel"
        assert {(name, info.fixture), (name, voxel_fixture)} <= cases  # once per kind
    assert dict(EXPLAINERS.info("cnn.gradcam").kind_fixtures) == {"voxel": "cnn3d"}


def test_registration_checks_declared_kinds():
    from xaibench.explainers import Explainer, _explainer_info

    class Two(Explainer):
        """Two kinds."""
        kinds = ("pixel", "voxel")
        kind_fixtures = {"voxel": "cnn3d"}

    info = _explainer_info("test.two", Two)
    assert info.kinds == ("pixel", "voxel") and info.kind_fixtures == (("voxel", "cnn3d"),)
    assert info.fixture_kind("test") == "pixel" and info.fixture_kind("cnn3d") == "voxel"

    class NoFixture(Explainer):
        kinds = ("pixel", "voxel")

    with pytest.raises(ValueError, match="kind_fixtures must name a contract fixture"):
        _explainer_info("test.nofixture", NoFixture)

    class MainNotFirst(Explainer):
        kinds = ("voxel", "voxel")

    with pytest.raises(ValueError, match="must be distinct kinds"):
        _explainer_info("test.bad", MainNotFirst)

    class OtherFirst(Explainer):
        kinds = ("voxel", "pixel")
        kind_fixtures = {"pixel": "cnn"}

    with pytest.raises(ValueError, match="the main kind 'pixel' first"):
        _explainer_info("test.bad2", OtherFirst)

    class Tokens(Two):  # another main kind: the parent's kinds do not apply
        kind = "token"

    assert _explainer_info("test.tokens", Tokens).kinds == ("token",)


@pytest.mark.parametrize("name", [n for n in xaibench.list_explainers("cnn.*") if n != "cnn.slicewise"])
def test_declared_kinds_match_what_a_volume_gives(name):
    # reference: calling the method on the 3-D fixture; an explainer that does not declare voxel
    # must refuse volumes with a ValueError (and one that declares it must return voxel maps)
    case = get_fixture("cnn3d")
    batch = case.batch.select([0])
    ex = xt._make(name, case)
    if "voxel" in EXPLAINERS.info(name).kinds:
        assert ex.explain_batch(batch, batch.targets).kind == "voxel"
    else:
        with pytest.raises(ValueError):
            ex.explain_batch(batch, batch.targets)


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
