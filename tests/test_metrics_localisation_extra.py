"""Box, token-level and threshold-free localisation. References: brute-force loops, sklearn's
roc_auc_score, Quantus 0.6 AUC / TopKIntersection / RelevanceMassAccuracy on the rasterised boxes,
and the existing mask metrics on the same rasterised boxes."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from xaibench.metrics.localisation_extra import average_ranks, boxes_to_masks

import xaibench
from xaibench import Attribution, Batch


def px(v):
    return Attribution(values=v, kind="pixel", method="t")


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(0)
    b, s = 10, 32
    maps = F.avg_pool2d(torch.rand(b, 1, s, s, generator=g), 5, 1, 2)[:, 0]
    boxes = []
    for i in range(b):
        x0, y0 = torch.randint(0, 20, (2,), generator=g).tolist()
        k = [[x0, y0, x0 + 6 + i % 3, y0 + 5]] + ([[1.5, 2, 7.2, 9]] if i % 2 else [])
        boxes.append(torch.tensor(k))
    boxes[3] = torch.zeros(0, 4)
    batch = Batch(inputs=torch.zeros(b, 3, s, s), boxes=boxes)
    return maps, batch


def test_boxes_rasterise_by_hand(case):
    _maps, batch = case
    masks = boxes_to_masks(batch.boxes, (32, 32))
    for i, bx in enumerate(batch.boxes):
        ref = torch.zeros(32, 32, dtype=torch.bool)
        for x0, y0, x1, y1 in bx.tolist():
            for y in range(32):
                for x in range(32):
                    ref[y, x] |= (x0 <= x < x1) and (y0 <= y < y1)
        assert torch.equal(masks[i], ref), i


def test_box_metrics_equal_mask_metrics_on_rasterised_boxes_and_nan_without_box(case):
    maps, batch = case
    masks = boxes_to_masks(batch.boxes, (32, 32))
    mb = Batch(inputs=batch.inputs, masks=masks)
    for box, mask, kw in (("pointing_game_box", "pointing_game", {}), ("iou_box", "iou", {"threshold": "mean"}),
                          ("energy_pointing_game", "relevance_mass", {})):
        res = xaibench.create_metric(box, **kw).evaluate(px(maps), batch)
        ref = xaibench.create_metric(mask, **kw)(px(maps), mb)
        assert math.isnan(float(res.scores[3])) and res.reasons[3] == "no box"
        keep = [i for i in range(10) if i != 3]
        assert torch.allclose(res.scores[keep], ref[keep], atol=1e-6), box


def test_energy_pointing_game_equals_quantus_relevance_mass_on_boxes(case):
    quantus = pytest.importorskip("quantus")
    maps, batch = case
    keep = [i for i in range(10) if i != 3]
    s = boxes_to_masks(batch.boxes, (32, 32))[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantus.RelevanceMassAccuracy(disable_warnings=True)(
            model=None, x_batch=np.zeros((9, 3, 32, 32), np.float32), y_batch=np.zeros(9, int),
            a_batch=maps[keep][:, None].numpy(), s_batch=s[:, None].float().numpy())
    ours = xaibench.create_metric("energy_pointing_game")(px(maps[keep]), batch.select(keep))
    np.testing.assert_allclose(ours.numpy(), np.array(q, dtype=np.float64), atol=1e-5)


def test_auroc_and_top_k_equal_sklearn_and_quantus():
    quantus = pytest.importorskip("quantus")
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(1)
    maps = torch.rand(8, 24, 24, generator=g)
    maps[0] = (maps[0] * 4).round()  # heavy ties
    masks = torch.zeros(8, 24, 24, dtype=torch.bool)
    for i in range(8):
        masks[i, 3 + i:12 + i, 5:15] = True
    b = Batch(inputs=torch.zeros(8, 3, 24, 24), masks=masks)
    ours = xaibench.create_metric("auroc")(px(maps), b).double().numpy()
    ref = [roc_auc_score(masks[i].flatten().numpy(), maps[i].flatten().numpy()) for i in range(8)]
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    kw = {"model": None, "x_batch": np.zeros((8, 3, 24, 24), np.float32), "y_batch": np.zeros(8, int),
              "a_batch": maps[:, None].numpy(), "s_batch": masks[:, None].float().numpy()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qa = np.array(quantus.AUC(disable_warnings=True, normalise=False)(**kw), dtype=np.float64)
        qk = np.array(quantus.TopKIntersection(k=50, disable_warnings=True, normalise=False)(**kw), dtype=np.float64)
    np.testing.assert_allclose(ours, qa, atol=1e-6)
    top = xaibench.create_metric("top_k_intersection", k=50)(px(maps), b).double().numpy()
    np.testing.assert_allclose(top[1:], qk[1:], atol=1e-9)  # sample 0 has ties: Quantus' unstable sort picks any of them
    # ties are taken first in raster order: a stable sort of the flattened map
    ref0 = masks[0].flatten()[torch.argsort(maps[0].flatten(), descending=True, stable=True)[:50]].double().mean()
    assert math.isclose(float(top[0]), float(ref0), rel_tol=1e-6)
    # perfect, random, inverted; empty mask NaN
    for name in ("auroc", "top_k_intersection"):
        m = xaibench.create_metric(name, **({"k": 50} if name != "auroc" else {}))
        p, r, inv = (m(px(v), b) for v in (masks.float(), maps, -masks.float()))
        assert (p >= r).all() and (r.mean() > inv.mean()) and float(p.mean()) == 1.0
        em = b.select(list(range(8)))
        em.masks[2] = False
        res = m.evaluate(px(maps), em)
        assert math.isnan(float(res.scores[2])) and res.reasons[2] == "empty mask"


def test_average_ranks_equal_scipy():
    from scipy.stats import rankdata

    x = torch.tensor([[3.0, 1, 3, 2, 1, 5], [0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    np.testing.assert_allclose(average_ranks(x).numpy(), rankdata(x.numpy(), axis=1))


def test_token_level_on_the_patch_grid():
    # 4x4 grid of 8-px patches; the mask covers patch (1, 2) fully and (2, 2) by a quarter
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 8:16, 16:24] = True
    masks[:, 16:20, 16:20] = True
    b = Batch(inputs=torch.zeros(2, 3, 32, 32), masks=masks)
    tok = torch.zeros(2, 16)
    tok[0, 1 * 4 + 2] = 1.0  # the covered patch
    tok[1, 2 * 4 + 2] = 1.0  # the quarter-covered patch
    a = Attribution(values=tok, kind="token", method="t", extras={"grid": (4, 4)})
    pg = xaibench.create_metric("token_pointing_game")(a, b)
    assert pg.tolist() == [1.0, 0.0]
    assert xaibench.create_metric("token_pointing_game", cover=0.25)(a, b).tolist() == [1.0, 1.0]
    assert xaibench.create_metric("token_iou")(a, b).tolist() == [1.0, 0.0]
    # the upsampled pixel map scores the quarter-covered patch as a hit: the two readings differ
    up = tok.reshape(2, 1, 4, 4)
    up = F.interpolate(up, size=(32, 32), mode="nearest")[:, 0] + 1e-3 * torch.linspace(1, 0, 1024).reshape(32, 32)
    assert xaibench.create_metric("pointing_game")(px(up), b).tolist() == [1.0, 1.0]
    empty = b.select([0, 1])
    empty.masks[1] = False
    res = xaibench.create_metric("token_iou").evaluate(a, empty)
    assert math.isnan(float(res.scores[1])) and res.reasons[1] == "empty mask"
    with pytest.raises(ValueError, match="whole number"):
        xaibench.create_metric("token_iou")(a, Batch(inputs=torch.zeros(2, 3, 30, 30), masks=torch.ones(2, 30, 30, dtype=torch.bool)))


def test_token_perfect_beats_random_inverted_worst():
    from xaibench.metrics.localisation_extra import _token_example

    ex = _token_example()
    for name in ("token_pointing_game", "token_iou"):
        m = xaibench.create_metric(name)
        rnd = ex.perfect.replace(values=torch.rand(ex.perfect.values.shape, generator=torch.Generator().manual_seed(0)))
        p, r, inv = (m(a, ex.batch) for a in (ex.perfect, rnd, ex.perfect.replace(values=-ex.perfect.values)))
        assert float(p.mean()) == 1.0 and float(p.mean()) > float(r.mean()) >= float(inv.mean()) and float(inv.mean()) == 0.0
