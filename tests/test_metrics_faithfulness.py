"""Faithfulness metrics. References: a linear classifier whose exact occlusion drops (w·x per
pixel, black baseline) are known in closed form, so the best and worst removal orders are known;
Quantus 0.6 RegionPerturbation / Selectivity on the same inputs; scipy's sparse solver for ROAD's
imputation; hand-computed set outputs for comprehensiveness / sufficiency."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from xaibench.metrics.faithfulness import auc, perturbation_curves
from xaibench.metrics.road import linear_impute

import xaibench
from xaibench import Attribution, Batch


def linear_case(b=6, c=3, s=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, s, s, generator=g)
    x.view(b, -1)[:, 0] = 0.0  # every image's minimum is 0: Quantus' "black" (the minimum) is our 0
    w = torch.randn(c, s, s, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1] = w.flatten()
        model[1].bias.zero_()
    model.eval()
    batch = Batch(inputs=x, targets=torch.ones(b, dtype=torch.long), ids=[f"lin{i}" for i in range(b)])
    drops = (w * x).sum(1)  # exact occlusion drop of each pixel's logit (all channels to 0)
    return model, batch, drops


def px(v):
    return Attribution(values=v, kind="pixel", method="t")


FAITH = {  # metric -> settings where the exact drops are provably the best order (logit of a linear model)
    "deletion_auc": {"output": "logit", "step": 0.1},
    "insertion_auc": {"output": "logit", "step": 0.1, "baseline": "black"},
    "deletion_gap": {"output": "logit", "step": 0.1},
    "region_perturbation": {"output": "logit", "patch": 3, "regions": 10},
}


@pytest.mark.parametrize("name", sorted(FAITH))
def test_exact_occlusion_beats_random_and_inverted_is_worst(name):
    model, batch, drops = linear_case()
    metric = xaibench.create_metric(name, **FAITH[name])
    info = metric.info
    rnd = torch.rand(drops.shape, generator=torch.Generator().manual_seed(5))
    perfect, random, inverted = (metric(px(v), batch, model=model) for v in (drops, rnd, -drops))
    # per sample: removing the k largest drops first is optimal for every k, the k smallest the worst
    for i in range(len(batch)):
        assert info.better(float(perfect[i]), float(random[i])), (name, i)
        assert info.better(float(random[i]), float(inverted[i])), (name, i)


def test_road_perfect_beats_random_beats_inverted():
    model, batch, drops = linear_case(b=4, s=16)
    for name, better in (("road", lambda a, b: a < b), ("road_gap", lambda a, b: a > b)):
        m = xaibench.create_metric(name, output="logit", percentages=(0.1, 0.3, 0.5))
        rnd = torch.rand(drops.shape, generator=torch.Generator().manual_seed(5))
        p, r, inv = (m(px(v), batch, model=model) for v in (drops, rnd, -drops))
        assert better(float(p.mean()), float(r.mean())) and better(float(r.mean()), float(inv.mean())), name


def test_curves_hand_computed_and_auc():
    model, batch, drops = linear_case(b=2, s=4)
    t = torch.ones(2, dtype=torch.long)
    curves, xs = perturbation_curves(model, batch.inputs, drops, t, mode="deletion", per_step=4, output="logit")
    assert torch.allclose(xs, torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    logit = drops.flatten(1).sum(1)
    for i in range(2):
        srt = drops[i].flatten().sort(descending=True).values
        ref = torch.stack([logit[i] - srt[:k].sum() for k in (0, 4, 8, 12, 16)])
        assert torch.allclose(curves[i], ref, atol=1e-5)
    ref_auc = np.trapezoid(curves.numpy(), xs.numpy(), axis=1)
    np.testing.assert_allclose(auc(curves, xs).numpy(), ref_auc, rtol=1e-6)
    ins, _ = perturbation_curves(model, batch.inputs, drops, t, mode="insertion", per_step=4, output="logit")
    assert torch.allclose(ins[:, 0], torch.zeros(2)) and torch.allclose(ins[:, -1], logit, atol=1e-5)


def _quantus_model_call(metric, model, batch, a):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(model=model, x_batch=batch.inputs.numpy(), y_batch=batch.targets.numpy(),
                      a_batch=a[:, None].numpy(), softmax=False, device="cpu", channel_first=True)


def test_region_perturbation_and_selectivity_curves_equal_quantus():
    quantus = pytest.importorskip("quantus")
    model, batch, drops = linear_case(b=4, s=12)
    a = drops + 0.01 * torch.rand(drops.shape, generator=torch.Generator().manual_seed(2))  # no ties in region sums
    t = batch.targets
    ours, _ = perturbation_curves(model, batch.inputs, a, t, mode="deletion", patch=4, per_step=1, n_steps=6, output="logit")
    q = np.array(_quantus_model_call(quantus.RegionPerturbation(patch_size=4, regions_evaluation=6, normalise=False,
                                                                abs=False, disable_warnings=True), model, batch, a))
    np.testing.assert_allclose((ours[:, :1] - ours[:, 1:]).numpy(), q, atol=1e-4)
    full, _xs = perturbation_curves(model, batch.inputs, a, t, mode="deletion", patch=4, per_step=1, output="logit")
    sel = quantus.Selectivity(patch_size=4, normalise=False, abs=False, disable_warnings=True)
    qs = np.array(_quantus_model_call(sel, model, batch, a))
    np.testing.assert_allclose(full[:, 1:].numpy(), qs, atol=1e-4)
    # AOPC of our registered metric = the mean of Quantus' drops with the k = 0 term (0) included
    aopc = xaibench.create_metric("region_perturbation", patch=4, regions=6, output="logit")(px(a), batch, model=model)
    np.testing.assert_allclose(aopc.numpy(), q.sum(1) / 7, atol=1e-4)
    # Quantus' AUC of those curves calls np.trapz, removed in numpy 2.x: it cannot score at all here
    if not hasattr(np, "trapz"):
        with pytest.raises(AttributeError, match="trapz"):
            sel.get_auc_score()


def test_road_imputation_equals_sparse_solve():
    from scipy.sparse import lil_matrix
    from scipy.sparse.linalg import spsolve

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 9, 11, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 9, 11, generator=g) < 0.6
    ours = linear_impute(x, removed, tol=1e-12)
    nbrs = [(-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6), (0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12)]
    for i in range(2):
        unk = [(y, z) for y in range(9) for z in range(11) if removed[i, y, z]]
        pos = {p: k for k, p in enumerate(unk)}
        for ch in range(2):
            A, rhs = lil_matrix((len(unk), len(unk))), np.zeros(len(unk))
            for k, (y, z) in enumerate(unk):  # ROAD: x_i = Σ_j w_ij x_j / Σ_j w_ij over in-image neighbours
                for dy, dz, wt in nbrs:
                    yy, zz = y + dy, z + dz
                    if 0 <= yy < 9 and 0 <= zz < 11:
                        A[k, k] += wt
                        if (yy, zz) in pos:
                            A[k, pos[(yy, zz)]] -= wt
                        else:
                            rhs[k] += wt * float(x[i, ch, yy, zz])
            sol = spsolve(A.tocsr(), rhs)
            got = torch.stack([ours[i, ch, y, z] for y, z in unk]).numpy()
            np.testing.assert_allclose(got, sol, atol=1e-8)
        assert torch.equal(ours[i][:, ~removed[i]], x[i][:, ~removed[i]])


def test_batch_composition_and_per_sample_noise():
    model, batch, drops = linear_case(b=5, s=12)
    rnd = torch.rand(drops.shape, generator=torch.Generator().manual_seed(1))
    idx = [4, 0, 2]
    for name, kw in (("road", {"percentages": (0.2, 0.6), "noise": 0.5, "batch_size": 3}), ("deletion_auc", {"baseline": "blur"}),
                     ("insertion_auc", {"batch_size": 7}), ("region_perturbation", {"patch": 5})):
        m = xaibench.create_metric(name, **kw)
        full = m(px(rnd), batch, model=model)
        sub = m(px(rnd[idx]), batch.select(idx), model=model)
        assert torch.allclose(sub, full[idx], atol=1e-5), name
    # ROAD's noise follows the sample id: a different id, a different score
    m = xaibench.create_metric("road", percentages=(0.5,), noise=0.5, output="logit")
    other = batch.select([0])
    other.ids = ["another"]
    assert not torch.allclose(m(px(rnd[:1]), other, model=model), m(px(rnd[:1]), batch.select([0]), model=model))


def test_token_maps_remove_whole_patches():
    model, batch, drops = linear_case(b=2, s=12)
    tok = drops.reshape(2, 4, 3, 4, 3).sum((2, 4)).flatten(1)  # 4x4 grid of 3-px patches: summed exact drops
    a = Attribution(values=tok, kind="token", method="t", extras={"grid": (4, 4)})
    up = tok.reshape(2, 4, 4).repeat_interleave(3, 1).repeat_interleave(3, 2)
    for name in ("deletion_auc", "insertion_auc"):
        m = xaibench.create_metric(name, output="logit", patch=3, step=1 / 16, baseline="black")
        assert torch.allclose(m(a, batch, model=model), m(px(up), batch, model=model))


# ------------------------------------------------------------------ instance sets

def set_case():
    from xaibench.metrics.faithfulness_sets import _example

    ex = _example()
    return ex.model, ex.batch, ex.perfect


@pytest.mark.parametrize("name", ["comprehensiveness", "sufficiency"])
def test_true_instances_beat_random_inverted_worst(name):
    model, batch, perfect = set_case()
    m = xaibench.create_metric(name)
    rnd = perfect.replace(values=torch.rand(perfect.values.shape, generator=torch.Generator().manual_seed(3)))
    p, r, inv = (m(a, batch, model=model) for a in (perfect, rnd, perfect.replace(values=-perfect.values)))
    assert m.info.better(float(p.mean()), float(r.mean())) and m.info.better(float(r.mean()), float(inv.mean()))


def test_comprehensiveness_sufficiency_hand_computed():
    model, batch, perfect = set_case()
    x = batch.inputs
    s = perfect.values + 1e-3 * torch.rand(perfect.values.shape, generator=torch.Generator().manual_seed(0))
    a = perfect.replace(values=s)

    def prob(v):
        return torch.sigmoid(4 * v[..., 0].mean() - 1.5)

    comp = xaibench.create_metric("comprehensiveness", ks=(0.05,))(a, batch, model=model)
    suff = xaibench.create_metric("sufficiency", ks=(0.05,))(a, batch, model=model)
    for i in range(len(batch)):
        top = torch.argsort(s[i], descending=True)[:10]  # ceil(0.05 * 200)
        rest = torch.ones(200, dtype=torch.bool)
        rest[top] = False
        assert math.isclose(float(comp[i]), float(prob(x[i]) - prob(x[i][rest])), abs_tol=1e-5)
        assert math.isclose(float(suff[i]), float(prob(x[i]) - prob(x[i][top])), abs_tol=1e-5)
    # heads are averaged: two identical heads score as the single map
    heads = Attribution(values=torch.stack([s, s], 1), kind="event_head", method="t")
    assert torch.allclose(xaibench.create_metric("comprehensiveness", ks=(0.05,))(heads, batch, model=model), comp)


def test_per_event_classifier_scores_the_predicted_fraction():
    # a per-event model (B, N, C) like the FCM ReluFormer: the set output is the mean class-1 probability
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 2, generator=g)
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
        model.bias.zero_()
    batch = Batch(inputs=x, ids=["a", "b", "c"])
    a = Attribution(values=x[..., 0], kind="event", method="t")
    comp = xaibench.create_metric("comprehensiveness", ks=(0.2,))(a, batch, model=model)
    with torch.no_grad():
        p1 = torch.softmax(model(x), -1)[..., 1]
    for i in range(3):
        keep = torch.argsort(x[i, :, 0], descending=True)[10:]
        assert math.isclose(float(comp[i]), float(p1[i].mean() - p1[i][keep].mean()), abs_tol=1e-6)
