"""Localisation metrics: equal to independent references (skimage, brute force, Quantus where
it is right) and right where Quantus 0.6 is wrong."""

import math
import warnings

import numpy as np
import pytest
import torch

import xaibench
from xaibench import Attribution, Batch
from xaibench.metrics.localisation import binarise, otsu_threshold


def _batch(masks):
    return Batch(inputs=torch.zeros(masks.shape[0], 3, *masks.shape[-2:]), masks=masks)


def _px(values):
    return Attribution(values=values, kind="pixel", method="t")


@pytest.fixture
def random_case():
    g = torch.Generator().manual_seed(0)
    maps = torch.nn.functional.avg_pool2d(torch.rand(12, 1, 40, 40, generator=g), 5, 1, 2)[:, 0]
    masks = torch.zeros(12, 40, 40, dtype=torch.bool)
    for i in range(12):
        y, x = torch.randint(0, 30, (2,), generator=g).tolist()
        masks[i, y:y + 6 + i % 4, x:x + 5] = True
    return maps, masks


def test_otsu_equals_skimage(random_case):
    from skimage.filters import threshold_otsu

    maps, _ = random_case
    ours = otsu_threshold(maps)
    ref = torch.tensor([threshold_otsu(m.numpy()) for m in maps])
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_pointing_game_tolerance_equals_brute_force(random_case):
    maps, masks = random_case
    for tol in (0, 2, 4.5, 15):
        got = xaibench.create_metric("pointing_game", tolerance=tol)(_px(maps), _batch(masks))
        for i in range(len(maps)):
            y, x = divmod(int(maps[i].argmax()), maps.shape[-1])
            ys, xs = torch.nonzero(masks[i], as_tuple=True)
            d = torch.sqrt((ys - y).float() ** 2 + (xs - x).float() ** 2)
            hit = bool((d == 0).any()) if tol == 0 else bool((d < tol).any())
            assert got[i] == float(hit), (tol, i)


def test_empty_mask_is_nan_with_reason_not_a_hit():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[1, 2:4, 2:4] = True
    m = torch.rand(2, 8, 8)
    for name in ("pointing_game", "iou", "relevance_mass", "relevance_rank"):
        res = xaibench.create_metric(name).evaluate(_px(m), _batch(masks))
        assert math.isnan(float(res.scores[0])) and res.reasons[0] == "empty mask"
        assert not math.isnan(float(res.scores[1])) and res.reasons[1] is None


def test_quantus_pointing_game_scores_empty_mask_as_hit_we_do_not():
    quantus = pytest.importorskip("quantus")
    g = np.random.default_rng(0)
    a = g.random((3, 1, 16, 16)).astype(np.float32)
    s = np.zeros((3, 1, 16, 16), np.float32)
    s[1:, :, 4:8, 4:8] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantus.PointingGame(disable_warnings=True)(model=None, x_batch=np.zeros((3, 3, 16, 16), np.float32),
                                                        y_batch=np.zeros(3, int), a_batch=a, s_batch=s)
    assert bool(q[0]) is True  # Quantus' bug: nothing to point at, yet a hit
    ours = xaibench.create_metric("pointing_game")(_px(torch.from_numpy(a[:, 0])), _batch(torch.from_numpy(s[:, 0] > 0)))
    assert math.isnan(float(ours[0]))
    assert [float(v) for v in ours[1:]] == [float(bool(v)) for v in q[1:]]  # equal where Quantus is right


def test_relevance_mass_and_rank_equal_quantus_on_positive_maps(random_case):
    quantus = pytest.importorskip("quantus")
    maps, masks = random_case
    a = maps[:, None].numpy()
    s = masks[:, None].float().numpy()
    kw = dict(model=None, x_batch=np.zeros((len(a), 3, 40, 40), np.float32), y_batch=np.zeros(len(a), int), a_batch=a, s_batch=s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qm = np.array(quantus.RelevanceMassAccuracy(disable_warnings=True)(**kw), dtype=np.float64)
        qr = np.array(quantus.RelevanceRankAccuracy(disable_warnings=True)(**kw), dtype=np.float64)
    b = _batch(masks)
    np.testing.assert_allclose(xaibench.create_metric("relevance_mass")(_px(maps), b).numpy(), qm, atol=1e-5)
    np.testing.assert_allclose(xaibench.create_metric("relevance_rank")(_px(maps), b).numpy(), qr, atol=1e-6)


def test_relevance_mass_stays_in_range_for_signed_maps(random_case):
    maps, masks = random_case
    signed = maps - maps.mean()
    s = xaibench.create_metric("relevance_mass")(_px(signed), _batch(masks))
    ok = s[~s.isnan()]
    assert ((ok >= 0) & (ok <= 1)).all()
    neg = xaibench.create_metric("relevance_mass").evaluate(_px(-maps.abs() - 1), _batch(masks))
    assert neg.scores.isnan().all() and set(neg.reasons) == {"no positive relevance"}


def test_binarisation_rules(random_case):
    maps, masks = random_case
    k = masks.flatten(1).sum(1)
    assert torch.equal(binarise(maps, masks, "gt_area").flatten(1).sum(1), k)
    q = binarise(maps, masks, 0.9).flatten(1).float().mean(1)
    assert ((q > 0.08) & (q <= 0.1001)).all()
    mean = binarise(maps, masks, "mean")
    assert torch.equal(mean, maps > maps.flatten(1).mean(1)[:, None, None])
    flat = torch.ones_like(maps)
    for rule in ("otsu", "mean", 0.5):
        assert not binarise(flat, masks, rule).any()
    with pytest.raises(ValueError, match="threshold"):
        binarise(maps, masks, "median")
    with pytest.raises(ValueError, match="threshold"):
        xaibench.create_metric("iou", threshold=1.5)(_px(maps), _batch(masks))


def test_iou_perfect_and_disjoint(random_case):
    _, masks = random_case
    for rule in ("otsu", "mean", "gt_area"):
        assert torch.allclose(xaibench.create_metric("iou", threshold=rule)(_px(masks.float()), _batch(masks)), torch.ones(len(masks)))
        assert (xaibench.create_metric("iou", threshold=rule)(_px((~masks).float()), _batch(masks)) == 0).all()


def test_low_resolution_maps_are_refused_and_scored_once_resampled_explicitly():
    # issue 9: a map at another resolution than the mask is not resampled silently
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 24:32, 24:32] = True
    low = torch.zeros(1, 4, 4)
    low[0, 3, 3] = 1.0
    with pytest.raises(ValueError, match=r"\(4, 4\) but the masks are \(32, 32\)"):
        xaibench.create_metric("pointing_game")(_px(low), _batch(masks))
    up = torch.nn.functional.interpolate(low[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert float(xaibench.create_metric("pointing_game")(_px(up), _batch(masks))[0]) == 1.0


def test_token_attributions_are_scored_through_their_pixel_map():
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, :8, :8] = True
    tok = torch.tensor([[1.0, 0, 0, 0]])
    pixel = torch.nn.functional.interpolate(tok.reshape(1, 1, 2, 2), size=(16, 16), mode="nearest")[:, 0]
    a = Attribution(values=tok, kind="token", method="t", extras={"grid": (2, 2), "pixel": pixel})
    assert float(xaibench.create_metric("iou", threshold="gt_area")(a, _batch(masks))[0]) == 1.0
