"""Issue 9, items 4 and 9: bad values are named, never scored.

The reproductions the issue lists, as plain tests: NaN/Inf inputs reach no explainer, a map with
NaN/Inf scores NaN with the reason "non-finite attribution" for that sample only, and wrong
channel counts, float or string targets, soft masks and masks of another resolution are refused
with a ValueError that says what was expected.
"""

import math

import pytest
import torch

import xaibench
from xaibench import Attribution, Batch, MetricScores
from xaibench.explainers import Explainer, class_indices, resolve_target
from xaibench.metric import NONFINITE
from xaibench.testing import get_fixture

LOCALISATION = [("pointing_game", {}), ("relevance_rank", {}), ("relevance_mass", {}), ("iou", {"threshold": "otsu"})]


@pytest.fixture(scope="module")
def cnn():
    return get_fixture("cnn")


def _masks(b=4, s=16):
    masks = torch.zeros(b, s, s, dtype=torch.bool)
    for i in range(b):
        masks[i, 2 + i:8 + i, 3:9] = True
    return masks


def _maps(masks, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(masks.shape, generator=g) + 2.0 * masks  # peaks in the mask, every score defined


def _batch(masks):
    return Batch(inputs=torch.zeros(masks.shape[0], 3, *masks.shape[-2:]), masks=masks)


# ------------------------------------------------------------------ explainers: non-finite inputs

@pytest.mark.parametrize("method", ["cnn.saliency", "cnn.gradcam"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_refused_naming_the_sample(cnn, method, bad):
    # issue: cnn.saliency gave a finite map from NaN logits (pointing_game scored it a hit),
    # cnn.gradcam an all-NaN map
    x = cnn.batch.inputs.clone()
    x[2, 1, 5, 7] = bad
    ex = xaibench.create_explainer(method, cnn.model)
    with pytest.raises(ValueError, match=rf"^{method}: inputs of samples \[2\] \(1 of 4\) contain NaN/Inf"):
        ex.explain(x, cnn.batch.targets)
    with pytest.raises(ValueError, match=r"samples \[2\]"):
        ex.explain_batch(Batch(inputs=x, targets=cnn.batch.targets), cnn.batch.targets)
    with pytest.raises(ValueError, match=r"samples \[2\]"):
        xaibench.explain(cnn.model, x, method)


def test_every_bad_sample_is_named(cnn):
    x = cnn.batch.inputs.clone()
    x[0, 0, 0, 0] = math.nan
    x[3, 2, 9, 9] = math.inf
    with pytest.raises(ValueError, match=r"samples \[0, 3\] \(2 of 4\)"):
        xaibench.create_explainer("cnn.saliency", cnn.model).explain(x)


def test_a_new_explainer_subclass_gets_the_check_and_non_tensor_inputs_are_left_alone():
    calls = []

    class Echo(Explainer):  # not registered: the base class alone gives the check
        kind = "event"

        def explain(self, inputs, target=None):
            calls.append(inputs)
            return self._attribution(torch.zeros(2, 3))

    ex = Echo(torch.nn.Identity())
    with pytest.raises(ValueError, match=r"Echo: inputs of samples \[1\]"):
        ex.explain(torch.tensor([[0.0, 1.0, 2.0], [0.0, math.inf, 1.0]]))
    assert calls == []
    ex.explain(["not", "a", "tensor"])
    ex.explain(torch.zeros(2, 3, dtype=torch.long))
    ex(torch.zeros(2, 3))
    assert len(calls) == 3


def test_mil_padding_rows_pass_but_other_nan_in_a_bag_is_refused():
    case = get_fixture("mil")
    ex = xaibench.create_explainer("mil.attention", case.model)
    x = case.batch.inputs
    padded = torch.cat([x, torch.full((x.shape[0], 5, x.shape[-1]), math.nan)], 1)  # all-NaN rows: padding
    assert torch.isfinite(ex.explain(padded).values).all()
    partial = padded.clone()
    partial[1, 0, 4] = math.nan  # one feature of a real cell
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        ex.explain(partial)
    only_padding = padded.clone()
    only_padding[2] = math.nan  # a bag without a single real cell
    with pytest.raises(ValueError, match=r"samples \[2\]"):
        ex.explain(only_padding)


# ------------------------------------------------------------------ explainers: channels and targets

@pytest.mark.parametrize("fixture, method", [("cnn", "cnn.saliency"), ("cnn", "cnn.gradcam"), ("vit", "vit.chefer")])
def test_wrong_channel_count_says_what_the_model_expects(fixture, method):
    case = get_fixture(fixture)
    grey = case.batch.inputs[:, :1]
    with pytest.raises(ValueError, match=r"model expects 3-channel inputs .*got 1 channels"):
        xaibench.create_explainer(method, case.model).explain(grey)


@pytest.mark.parametrize("target", [[0.7, 1.2, 0.0, 1.0], torch.tensor([0.5, 1.0, 1.0, 0.0]), 0.7, float("nan")])
def test_float_target_is_refused_not_truncated(cnn, target):
    with pytest.raises(ValueError, match="whole numbers"):
        xaibench.create_explainer("cnn.saliency", cnn.model).explain(cnn.batch.inputs, target)


@pytest.mark.parametrize("target", ["cat", ["a", "b", "c", "d"]])
def test_string_target_is_a_value_error(cnn, target):
    with pytest.raises(ValueError, match="map class names to their indices"):
        xaibench.create_explainer("cnn.saliency", cnn.model).explain(cnn.batch.inputs, target)


def test_whole_float_targets_mean_their_integers():
    logits = torch.zeros(2, 3)
    assert resolve_target(logits, [1.0, 2.0]).tolist() == [1, 2]
    assert resolve_target(logits, torch.tensor([2.0, 0.0])).tolist() == [2, 0]
    with pytest.raises(ValueError, match="expected None, an int"):
        resolve_target(logits, {"a": 1})
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        resolve_target(logits, [0, 3])


def test_class_indices_checks_explicit_targets_without_logits():
    assert class_indices(torch.tensor([1]), 3).tolist() == [1, 1, 1]
    assert class_indices(7, 2).tolist() == [7, 7]  # no class count given: any index
    with pytest.raises(ValueError, match="whole numbers"):
        class_indices([0.7, 1.2], 2)
    with pytest.raises(ValueError, match=r"\(2,\) tensor, got shape \(3,\)"):
        class_indices([0, 1, 1], 2)


# ------------------------------------------------------------------ metrics: non-finite maps

@pytest.mark.parametrize("name, params", LOCALISATION)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_non_finite_pixel_gives_nan_for_that_sample_only(name, params, bad):
    masks = _masks()
    maps = _maps(masks)
    metric = xaibench.create_metric(name, **params)
    clean = metric.evaluate(Attribution(values=maps, kind="pixel", method="t"), _batch(masks))
    assert torch.isfinite(clean.scores).all()
    poisoned = maps.clone()
    poisoned[1, 4, 5] = bad  # inside sample 1's mask
    res = metric.evaluate(Attribution(values=poisoned, kind="pixel", method="t"), _batch(masks))
    assert math.isnan(float(res.scores[1])) and res.reasons[1] == NONFINITE
    keep = [0, 2, 3]
    assert torch.equal(res.scores[keep], clean.scores[keep])
    assert [res.reasons[i] for i in keep] == [None, None, None]


@pytest.mark.parametrize("name, params", LOCALISATION)
def test_an_all_nan_map_is_nan_with_a_reason_not_a_crash(name, params):
    # issue: cnn.gradcam's all-NaN map scored 0 in pointing_game and crashed iou(otsu)
    masks = _masks()
    maps = _maps(masks)
    maps[0] = math.nan
    res = xaibench.create_metric(name, **params).evaluate(Attribution(values=maps, kind="pixel", method="t"), _batch(masks))
    assert math.isnan(float(res.scores[0])) and res.reasons[0] == NONFINITE
    assert torch.isfinite(res.scores[1:]).all()


def test_token_attribution_is_checked_through_its_pixel_map():
    masks = _masks()
    pixel = _maps(masks)
    pixel[3, 0, 0] = math.nan
    tokens = torch.ones(4, 4)  # finite: the NaN is only in the map that is scored
    a = Attribution(values=tokens, kind="token", method="t", extras={"grid": (2, 2), "pixel": pixel})
    res = xaibench.create_metric("relevance_mass").evaluate(a, _batch(masks))
    assert math.isnan(float(res.scores[3])) and res.reasons[3] == NONFINITE
    assert torch.isfinite(res.scores[:3]).all()


def test_relevance_mass_reasons_are_meaningful():
    masks = _masks()
    maps = _maps(masks)
    maps[0] = 0.0  # no positive relevance
    maps[1] = -1.0
    maps[2] = 0.0
    maps[2][masks[2]] = 3e38  # float32 sums of these overflow; the score is still all inside
    res = xaibench.create_metric("relevance_mass").evaluate(Attribution(values=maps, kind="pixel", method="t"), _batch(masks))
    assert res.reasons[:2] == ["no positive relevance", "no positive relevance"]
    assert float(res.scores[2]) == 1.0 and res.reasons[2] is None


def test_nan_without_a_reason_gets_the_registered_one_and_inf_scores_become_nan():
    metric = xaibench.create_metric("relevance_mass")

    def fake(attr, batch):
        return MetricScores(torch.tensor([math.nan, 0.5, math.inf, math.nan]), [None, None, None, "own reason"])

    fake.__xaibench_undefined__ = "registered reason"
    metric.fn = fake
    masks = _masks()
    res = metric.evaluate(Attribution(values=_maps(masks), kind="pixel", method="t"), _batch(masks))
    assert res.reasons[0] == "registered reason"
    assert res.reasons[1] is None and float(res.scores[1]) == 0.5
    assert math.isnan(float(res.scores[2])) and "infinite" in res.reasons[2]
    assert res.reasons[3] == "own reason"


# ------------------------------------------------------------------ metrics: mask rule

@pytest.mark.parametrize("name, params", LOCALISATION)
def test_soft_mask_is_refused(name, params):
    masks = _masks()
    soft = masks.float() * 0.8
    with pytest.raises(ValueError, match="masks must be binary .* soft"):
        xaibench.create_metric(name, **params)(Attribution(values=_maps(masks), kind="pixel", method="t"), _batch(soft))


@pytest.mark.parametrize("name, params", LOCALISATION)
def test_zero_one_number_masks_score_as_bool_masks(name, params):
    masks = _masks()
    a = Attribution(values=_maps(masks), kind="pixel", method="t")
    metric = xaibench.create_metric(name, **params)
    assert torch.equal(metric(a, _batch(masks.to(torch.uint8))), metric(a, _batch(masks)))
    assert torch.equal(metric(a, _batch(masks.float())), metric(a, _batch(masks)))


@pytest.mark.parametrize("name, params", LOCALISATION)
def test_mask_of_another_resolution_is_refused(name, params):
    masks = _masks(s=16)
    maps = _maps(_masks(s=32))
    with pytest.raises(ValueError, match=r"the map is \(32, 32\) but the masks are \(16, 16\)"):
        xaibench.create_metric(name, **params)(Attribution(values=maps, kind="pixel", method="t"), _batch(masks))
