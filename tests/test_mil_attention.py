"""mil.attention: normalisations against hand-computed values, rows against explicit recomputations
from the model's layers, GraphMIL random_walk against an explicit matrix product."""

import math

import numpy as np
import pytest
import torch

import xaibench
from xaibench.adapters.mil.explainers import attention_stats, normalize
from xaibench.adapters.mil.fixture import fixture_batch

V = torch.tensor([[1.0, 2.0, 3.0, 5.0]])


@pytest.mark.parametrize("rule,expected", [
    ("none", [1.0, 2.0, 3.0, 5.0]),
    ("min_max", [0.0, 0.25, 0.5, 1.0]),
    # mean 2.75, population std sqrt(8.75 / 4)
    ("z_score", [(x - 2.75) / math.sqrt(8.75 / 4) for x in (1, 2, 3, 5)]),
    # numpy-style quantiles of (1, 2, 3, 5): q25 1.75, median 2.5, q75 3.5 -> IQR 1.75
    ("robust", [(x - 2.5) / 1.75 for x in (1, 2, 3, 5)]),
    ("softmax", [math.exp(x) / sum(math.exp(y) for y in (1, 2, 3, 5)) for x in (1, 2, 3, 5)]),
    ("sigmoid", [1 / (1 + math.exp(-x)) for x in (1, 2, 3, 5)]),
])
def test_normalisations_hand_computed(rule, expected):
    assert torch.allclose(normalize(V, rule), torch.tensor([expected]), atol=1e-6)


@pytest.mark.parametrize("rule,constant,single", [
    ("min_max", [0.0] * 3, [0.0]), ("z_score", [0.0] * 3, [0.0]), ("robust", [0.0] * 3, [0.0]),
    ("softmax", [1 / 3] * 3, [1.0]), ("sigmoid", [1 / (1 + math.exp(-2))] * 3, [1 / (1 + math.exp(-2))]),
    ("none", [2.0] * 3, [2.0]),
])
def test_constant_attention_and_bag_of_one(rule, constant, single):
    # no division by zero: a constant row and a one-cell bag give finite, hand-computed values
    assert torch.allclose(normalize(torch.full((1, 3), 2.0), rule), torch.tensor([constant]), atol=1e-7)
    assert torch.allclose(normalize(torch.tensor([[2.0]]), rule), torch.tensor([single]), atol=1e-7)


def test_normalisation_ignores_padding():
    v = torch.tensor([[1.0, 3.0, 0.0, 0.0], [1.0, 2.0, 3.0, 5.0]])
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    out = normalize(v, "min_max", mask)
    assert out.tolist()[0] == [0.0, 1.0, 0.0, 0.0] and torch.allclose(out[1], torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert torch.allclose(normalize(v, "softmax", mask)[0], torch.tensor([1 / (1 + math.e ** 2), 1 / (1 + math.e ** -2), 0, 0]))
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize(v, "max")


def test_attention_stats_definitions():
    s = attention_stats(torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0]]))
    assert np.allclose(s["entropy"], [math.log(4), 0.0]) and np.allclose(s["sparsity"], [0.0, 0.75])
    assert np.allclose(s["normalized_entropy"], [1.0, 0.0]) and np.allclose(s["mean"], [0.25, 0.25])
    assert np.allclose(s["std"], [0.0, math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 4)])


@pytest.fixture(scope="module")
def batch():
    return fixture_batch(n=2, n_cells=40)


def fitted(name, batch, **kw):
    torch.manual_seed(1)
    m = xaibench.create_model(name, n_features=22, hidden=8, d_att=4, **kw)
    m.fit_transform(batch.inputs[..., 2:])
    return m.eval()


def explicit_gated_scores(model, feats):
    """a_h = w_hᵀ(tanh(V_h x) ⊙ σ(U_h x)) + b_h from the layers' weights, head by head. (n, H)"""
    x = (feats - model.feat_mean) / model.feat_std
    enc = model.encoder
    h = torch.relu(enc[2](torch.relu(enc[0](x))))
    att, d = model.att, model.att.d_att
    out = []
    for k in range(att.n_heads):
        v = torch.tanh(h @ att.V.weight[k * d:(k + 1) * d].T + att.V.bias[k * d:(k + 1) * d])
        u = torch.sigmoid(h @ att.U.weight[k * d:(k + 1) * d].T + att.U.bias[k * d:(k + 1) * d])
        out.append((v * u) @ att.w[k] + att.b[k])
    return torch.stack(out, -1)


def test_heads_equal_explicit_recomputation(batch):
    model = fitted("mil.abmil", batch, n_heads=3)
    heads = xaibench.create_explainer("mil.attention_heads", model).explain(batch.inputs).values
    for i in range(len(batch)):
        ref = torch.softmax(explicit_gated_scores(model, batch.inputs[i, :, 2:]), 0).T  # (H, N)
        assert torch.allclose(heads[i], ref, atol=1e-6)
    one = xaibench.create_explainer("mil.attention", model, attention_head=2).explain(batch.inputs).values
    assert torch.allclose(one, heads[:, 2], atol=1e-7)
    mean = xaibench.create_explainer("mil.attention", model).explain(batch.inputs).values
    assert torch.allclose(mean, heads.mean(1), atol=1e-7)
    with pytest.raises(ValueError, match="class_index"):
        xaibench.create_explainer("mil.attention", model, class_index=0).explain(batch.inputs)
    with pytest.raises(ValueError, match="out of range"):
        xaibench.create_explainer("mil.attention", model, attention_head=3).explain(batch.inputs)


def test_clam_mb_class_attention_equals_explicit_branch(batch):
    model = fitted("mil.clam", batch, multi_branch=True)
    for c in (0, 1):
        got = xaibench.create_explainer("mil.attention", model, class_index=c).explain(batch.inputs).values
        for i in range(len(batch)):
            ref = torch.softmax(explicit_gated_scores(model, batch.inputs[i, :, 2:])[:, c], 0)
            assert torch.allclose(got[i], ref, atol=1e-6)
    # default: the target class of each slide
    t = torch.tensor([1, 0])
    got = xaibench.create_explainer("mil.attention", model).explain(batch.inputs, t)
    for i, c in enumerate(t.tolist()):
        assert torch.allclose(got.values[i], torch.softmax(explicit_gated_scores(model, batch.inputs[i, :, 2:])[:, c], 0), atol=1e-6)
    assert got.extras["class_index"].tolist() == [1, 0]


def test_type_aware_rows_are_softmax_within_each_type(batch):
    model = fitted("mil.type_aware", batch)
    attr = xaibench.create_explainer("mil.attention_heads", model).explain(batch.inputs)
    types = batch.meta["cell_type"]
    for i in range(len(batch)):
        s = explicit_gated_scores(model, batch.inputs[i, :, 2:])
        for t in range(4):
            ref = torch.zeros(batch.inputs.shape[1])
            sel = types[i] == t
            ref[sel] = torch.softmax(s[sel, t], 0)
            assert torch.allclose(attr.values[i, t], ref, atol=1e-6)
    ev = xaibench.create_explainer("mil.attention", model).explain(batch.inputs).values
    assert torch.allclose(ev, attr.values.sum(1), atol=1e-7)


def explicit_gat_matrix(layer, h, nbr):
    """Dense A[i, j] = softmax_j∈N(i) LeakyReLU(a_dstᵀWh_i + a_srcᵀWh_j), cell by cell."""
    wh = h @ layer.W.weight.T
    n = h.shape[0]
    a = torch.zeros(n, n)
    for i in range(n):
        js = nbr[i].tolist()
        e = torch.stack([torch.nn.functional.leaky_relu(wh[i] @ layer.a_dst + wh[j] @ layer.a_src, 0.2) for j in js])
        a[i, js] = torch.softmax(e, 0)
    return a, h + torch.nn.functional.elu(a @ wh)


def test_random_walk_is_an_explicit_matrix_product():
    small = fixture_batch(n=1, n_cells=9)
    model = fitted("mil.graphmil", small, n_layers=2, k=3)
    x = small.inputs[0]
    d = torch.cdist(x[:, :2].double(), x[:, :2].double())
    nbr = d.argsort(1)[:, :3]  # itself and its 2 nearest cells
    with torch.no_grad():
        h = model.embed(x[:, 2:])
        mats = []
        for layer in model.gnn:
            a, h = explicit_gat_matrix(layer, h, nbr)
            mats.append(a.double())
        pool = torch.softmax(model.att(h)[:, 0], 0).double()
    eye = torch.eye(9, dtype=torch.float64)
    expected = pool @ (0.5 * (mats[1] + eye)) @ (0.5 * (mats[0] + eye))
    rw = xaibench.create_explainer("mil.attention", model, attention_aggregation="random_walk").explain(small.inputs)
    assert torch.allclose(rw.values[0].double(), expected, atol=1e-6)
    assert abs(float(rw.values.sum()) - 1) < 1e-5
    pooling = xaibench.create_explainer("mil.attention", model).explain(small.inputs).values[0]
    assert torch.allclose(pooling.double(), pool, atol=1e-6)
    layer0 = xaibench.create_explainer("mil.attention", model, attention_aggregation="gnn_layer",
                                       gnn_layer_index=0).explain(small.inputs).values[0]
    assert torch.allclose(layer0.double(), mats[0].sum(0) / 9, atol=1e-6)
    both = xaibench.create_explainer("mil.attention_heads", model, attention_aggregation="gnn_only").explain(small.inputs)
    assert torch.allclose(both.values[0].double(), torch.stack([m.sum(0) / 9 for m in mats]), atol=1e-6)


def test_padding_gets_zero_and_leaves_real_cells_unchanged(batch):
    model = fitted("mil.graphmil", batch, k=4)
    x = batch.inputs[:1]
    padded = torch.cat([x, torch.full((1, 7, x.shape[-1]), float("nan"))], 1)
    ex = xaibench.create_explainer("mil.attention", model, attention_aggregation="random_walk")
    a, b = ex.explain(x).values, ex.explain(padded).values
    assert torch.allclose(b[0, :40], a[0], atol=1e-6) and b[0, 40:].abs().max() == 0


def test_values_stay_raw_and_normalisation_is_recorded(batch):
    model = fitted("mil.abmil", batch)
    attr = xaibench.create_explainer("mil.attention", model, normalization="z_score").explain(batch.inputs)
    assert torch.allclose(attr.values.sum(-1), torch.ones(2), atol=1e-5)  # raw softmax weights
    assert torch.allclose(attr.extras["normalized"], normalize(attr.values, "z_score"), atol=1e-6)
    assert attr.params["normalization"] == "z_score"
    scored = xaibench.create_explainer("mil.attention", model, normalization="z_score", score_normalized=True)
    assert torch.allclose(scored.explain(batch.inputs).values, attr.extras["normalized"])
    off = xaibench.create_explainer("mil.attention", model, normalize_attention=False).explain(batch.inputs)
    assert torch.equal(off.extras["normalized"], off.values)
    with pytest.raises(ValueError, match="GraphMIL"):
        xaibench.create_explainer("mil.attention", model, attention_aggregation="random_walk").explain(batch.inputs)
