"""FCM explainers: head attention equals the materialised row-normalised A_viz summed over the
queries; gradients equal autograd through the explicit N×N model; selections, SmoothGrad and
polygon queries do what they say."""

import pytest
import torch
import torch.nn.functional as F

import xaibench
from xaibench.adapters.fcm.explainers import attention_received
from xaibench.adapters.fcm.fixture import fixture_batch
from xaibench.testing.oracles import explicit_reluformer_forward as explicit_forward


@pytest.fixture(scope="module")
def batch():
    return fixture_batch(n=2, n_events=600)


def _model(task="classify", gates=None, chunk=128):
    torch.manual_seed(0)
    return xaibench.create_model("fcm.reluformer", n_markers=10, d_model=16, n_heads=4, n_layers=2, task=task,
                                 gate_dims=gates or (), chunk_size=chunk).eval()


def _materialised_attention(model, events, layer, qmask):
    """Σ_{m ∈ queries} row-normalised ReLU(Q_m)ReLU(K)ᵀ per head, by building the (M, N) matrix."""
    x = events
    with torch.no_grad():
        x = model.embed(x)
        for blk in model.layers[:layer]:
            x = blk(x)
        blk = model.layers[layer]
        q, k = blk.queries(x), blk.keys(x)
    h, out = model.n_heads, []
    for i in range(x.shape[0]):
        qs = q[i][qmask[i]].reshape(-1, h, 4).transpose(0, 1).double()  # (H, M, dh)
        ks = k[i].reshape(-1, h, 4).transpose(0, 1).double()  # (H, N, dh)
        a = qs @ ks.transpose(1, 2)  # (H, M, N)
        a = a / a.sum(-1, keepdim=True).clamp_min(blk.eps)
        out.append(a.sum(1))
    return torch.stack(out)


@pytest.mark.parametrize("layer", [0, 1])
def test_attention_equals_materialised_a_viz(batch, layer):
    model = _model()
    attr = xaibench.create_explainer("fcm.attention", model, layer=layer, n_queries=40).explain_batch(batch)
    assert attr.kind == "event_head" and attr.values.shape == (2, 4, 600)
    q = attr.extras["queries"]
    assert (q.sum(1) == 40).all() and not (q & ~batch.instance_labels).any()  # 40 labelled blasts each
    ref = _materialised_attention(model, batch.inputs, layer, q)
    torch.testing.assert_close(attr.values.double(), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attr.values.sum(-1), torch.full((2, 4), 40.0), atol=1e-3, rtol=1e-4)


def test_attention_queries_as_mask_index_and_rules(batch):
    model = _model()
    idx = torch.tensor([[3, 7, 11], [0, 5, 599]])
    mask = torch.zeros(2, 600, dtype=torch.bool).scatter_(1, idx, True)
    by_idx = xaibench.create_explainer("fcm.attention", model, queries=idx).explain_batch(batch).values
    by_mask = xaibench.create_explainer("fcm.attention", model, queries=mask).explain(batch.inputs).values
    torch.testing.assert_close(by_idx, by_mask)
    every = xaibench.create_explainer("fcm.attention", model, queries="all", n_queries=None).explain(batch.inputs)
    assert every.extras["queries"].all()
    with pytest.raises(ValueError, match="labels"):
        xaibench.create_explainer("fcm.attention", model).explain(batch.inputs)  # positives need labels
    with pytest.raises(ValueError, match="out of range"):
        xaibench.create_explainer("fcm.attention", model, layer=5).explain_batch(batch)


def test_attention_received_identity_small():
    g = torch.Generator().manual_seed(0)
    q, k = F.relu(torch.randn(5, 8, generator=g)), F.relu(torch.randn(30, 8, generator=g))
    got = attention_received(q, k, heads=2)
    ref = []
    for h in range(2):
        a = q[:, 4 * h:4 * h + 4] @ k[:, 4 * h:4 * h + 4].T
        ref.append((a / a.sum(1, keepdim=True).clamp_min(1e-6)).sum(0))  # an all-zero query row adds nothing
    torch.testing.assert_close(got, torch.stack(ref))


def _explicit_grad(model, events, sel, cls=1):
    x = events.double().clone().requires_grad_(True)
    m = model.double()
    try:
        out = explicit_forward(m, x)[..., cls]
        return torch.autograd.grad((out * sel).sum(), x)[0].float()
    finally:
        model.float()


@pytest.mark.parametrize("selection", ["positive", "all", "predicted_positive", "false_negative"])
def test_gradient_equals_explicit_autograd(batch, selection):
    model = _model(chunk=100)
    attr = xaibench.create_explainer("fcm.gradient", model, selection=selection).explain_batch(batch)
    sel = attr.extras["selection"]
    lab, pred = batch.instance_labels, attr.extras["predicted"]
    expected = {"positive": lab, "all": torch.ones_like(lab), "predicted_positive": pred, "false_negative": lab & ~pred}
    assert torch.equal(sel, expected[selection])
    ref = _explicit_grad(model, batch.inputs, sel)
    torch.testing.assert_close(attr.values, ref, atol=1e-5, rtol=1e-3)


def test_gradient_explicit_mask_and_target(batch):
    model = _model()
    mask = torch.zeros(2, 600, dtype=torch.bool)
    mask[:, :5] = True
    attr = xaibench.create_explainer("fcm.gradient", model, selection=mask, output="probability").explain(batch.inputs, 0)
    x = batch.inputs.clone().requires_grad_(True)
    ref = torch.autograd.grad((model(x).softmax(-1)[..., 0] * mask).sum(), x)[0]
    torch.testing.assert_close(attr.values, ref)
    with pytest.raises(ValueError, match="needs per-event labels"):
        xaibench.create_explainer("fcm.gradient", model, selection="false_negative").explain(batch.inputs)


def test_smoothgrad_is_the_mean_of_noisy_gradients(batch):
    model = _model()
    sg = xaibench.create_explainer("fcm.smoothgrad", model, selection="positive", n_samples=3, noise=(0.0, 0.1), seed=4)
    attr = sg.explain_batch(batch)
    plain = xaibench.create_explainer("fcm.gradient", model, selection=attr.extras["selection"])
    total = torch.zeros_like(batch.inputs)
    # reference: fcm.gradient at noisy copies drawn here by the documented rule (copy k: U(0, 0.1)
    # as the paper's appendix, from a generator seeded seed * 100003 + k)
    for k in range(3):
        noise = 0.1 * torch.rand((1, 600, 10), generator=torch.Generator().manual_seed(4 * 100003 + k))
        total += plain.explain(batch.inputs + noise).values
    torch.testing.assert_close(attr.values, total / 3, atol=1e-6, rtol=1e-4)
    one = xaibench.create_explainer("fcm.smoothgrad", model, selection="positive", n_samples=1, noise=(0.0, 0.0))
    torch.testing.assert_close(one.explain_batch(batch).values,
                               xaibench.create_explainer("fcm.gradient", model, selection="positive").explain_batch(batch).values)


def test_polygon_gradient_equals_explicit_and_reports_query(batch):
    gates = [list(d) for d in batch.polygons[0]["dims"]]
    model = _model("polygon", gates, chunk=100)
    ex = xaibench.create_explainer("fcm.polygon_gradient", model, gate=1, shift=(0.3, -0.2))
    attr = ex.explain_batch(batch)
    assert attr.extras["dims"] == tuple(gates[1])
    torch.testing.assert_close(attr.extras["query"] - attr.extras["polygon"], torch.tensor([0.3, -0.2]).expand(2, 8, 2))
    x = batch.inputs.double().clone().requires_grad_(True)
    model.double()
    try:
        pred = explicit_forward(model, x)[:, 1]
        q = attr.extras["query"].double()
        ref = torch.autograd.grad((pred - q).norm(dim=-1).sum(), x)[0].float()
    finally:
        model.float()
    torch.testing.assert_close(attr.values, ref, atol=1e-5, rtol=1e-3)
    by_name = xaibench.create_explainer("fcm.polygon_gradient", model, gate="gate1", shift=(0.3, -0.2)).explain(batch.inputs)
    torch.testing.assert_close(by_name.values, attr.values)
    with pytest.raises(ValueError, match="polygons"):
        xaibench.create_explainer("fcm.polygon_gradient", _model()).explain(batch.inputs)
