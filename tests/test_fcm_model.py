"""ReluFormer: the linear attention equals the explicit N×N path (forward, input and parameter
gradients, float64), chunked == unchunked, batch == singles, permutation equivariance."""

import pytest
import torch

import xaibench
from xaibench.adapters.fcm.model import ReluFormer
from xaibench.testing.oracles import explicit_reluformer_forward as explicit_forward

GATES = [(0, 1), (5, 2), (7, 2), (5, 4)]


def _model(task="classify", chunk=64, **kw):
    torch.manual_seed(0)
    return xaibench.create_model("fcm.reluformer", n_markers=6 if task == "classify" else 10, d_model=16, n_heads=4,
                                 n_layers=2, task=task, gate_dims=GATES if task == "polygon" else (),
                                 chunk_size=chunk, **kw).double().eval()


def _events(b=2, n=300, m=6, seed=1):
    return torch.randn(b, n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 1.0


@pytest.mark.parametrize("task", ["classify", "polygon"])
def test_linear_attention_equals_explicit_forward(task):
    model = _model(task)
    e = _events(m=model.n_markers)
    with torch.no_grad():
        fast, ref = model(e), explicit_forward(model, e)
    assert fast.shape == ((2, 300, 2) if task == "classify" else (2, 4, 8, 2))
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("task", ["classify", "polygon"])
@pytest.mark.parametrize("chunk", [64, 10_000])  # chunk-recomputing autograd function vs plain autograd
def test_input_gradients_equal_explicit(task, chunk):
    model = _model(task, chunk)
    for p in model.parameters():
        p.requires_grad_(False)
    e = _events(m=model.n_markers)
    w = torch.randn(model(e).shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = []
    for fn in (model, lambda x: explicit_forward(model, x)):
        x = e.clone().requires_grad_(True)
        grads.append(torch.autograd.grad((fn(x) * w).sum(), x)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-10)


def test_parameter_gradients_through_chunked_layers_equal_explicit():
    model = _model("classify", chunk=50)
    e = _events(n=220)
    w = torch.randn(2, 220, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    params = list(model.parameters())
    a = torch.autograd.grad((model(e) * w).sum(), params)
    b = torch.autograd.grad((explicit_forward(model, e) * w).sum(), params)
    for ga, gb in zip(a, b):
        torch.testing.assert_close(ga, gb, atol=1e-12, rtol=1e-10)


def test_chunking_batch_and_order_do_not_change_outputs():
    e = _events(b=3, n=500)
    with torch.no_grad():
        whole = _model(chunk=100_000)(e)
        chunked = _model(chunk=37)(e)
        single = _model(chunk=37)(e[1:2])
        perm = torch.randperm(500, generator=torch.Generator().manual_seed(0))
        permuted = _model(chunk=37)(e[:, perm])
    torch.testing.assert_close(chunked, whole, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(single[0], whole[1], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(permuted, whole[:, perm], atol=1e-12, rtol=1e-10)  # a set model: equivariant


def test_hidden_and_inference_mode_agree():
    model = _model(chunk=64)
    e = _events()
    with torch.inference_mode():
        a = model(e)
    with torch.no_grad():
        b = model.head(model.norm(model.hidden(e)))
    torch.testing.assert_close(a, b)


def test_bad_inputs_and_settings_raise():
    model = _model()
    for bad in (torch.randn(300, 6), torch.randn(2, 300, 5), torch.ones(1, 10, 6, dtype=torch.long)):
        with pytest.raises(ValueError, match="expected"):
            model(bad)
    with pytest.raises(ValueError, match="divisible"):
        ReluFormer(6, d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="gate_dims"):
        ReluFormer(6, task="polygon")


def _slot_reference(model, events):
    """The slots head written out per sample: softmax assignments, slot means and shares, standardised
    features, per-gate linear + MLP, template + scale · output."""
    head = model.head
    out = []
    for e in events:
        h = model.norm(model.hidden(e[None]))[0]
        a = torch.softmax(head.assign(h), -1)  # (N, C)
        x = (e - head.event_mean) / head.event_sd
        means = (a.T @ x) / a.sum(0)[:, None]
        f = torch.cat([means.flatten(), torch.log(a.sum(0) / len(e) + 1e-4)])
        f = (f - head.feature_mean) / (head.feature_var + 1e-4).sqrt()
        polys = []
        for p in range(head.n_polygons):
            lin = head.linear.weight.view(head.n_polygons, -1, f.numel())[p] @ f + head.linear.bias.view(head.n_polygons, -1)[p]
            mlp = torch.nn.functional.gelu(f @ head.w1[p] + head.b1[p]) @ head.w2[p] + head.b2[p]
            polys.append(head.template[p] + head.scale[p] * (lin + mlp).view(-1, 2))
        out.append(torch.stack(polys))
    return torch.stack(out)


def _slot_model(chunk=64):
    model = _model("polygon", chunk, polygon_head="slots", n_slots=5)
    with torch.no_grad():  # non-trivial priors and running statistics
        g = torch.Generator().manual_seed(4)
        head = model.head
        head.set_priors(torch.randn(4, 8, 2, generator=g, dtype=torch.float64), torch.rand(4, generator=g, dtype=torch.float64) + 0.5,
                        torch.randn(10, generator=g, dtype=torch.float64), torch.rand(10, generator=g, dtype=torch.float64) + 0.5)
        head.feature_mean.normal_(0, 0.5, generator=g)
        head.feature_var.uniform_(0.5, 2.0, generator=g)
    return model


@pytest.mark.parametrize("chunk", [64, 10_000])
def test_slot_polygon_head_equals_reference_chunked_batched_and_permuted(chunk):
    model = _slot_model(chunk)
    e = _events(b=3, m=10)
    with torch.no_grad():
        fast, ref = model(e), _slot_reference(model, e)
        single = model(e[1:2])
        permuted = model(e[:, torch.randperm(300, generator=torch.Generator().manual_seed(0))])
    assert fast.shape == (3, 4, 8, 2)
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(single[0], fast[1], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(permuted, fast, atol=1e-10, rtol=1e-8)  # a set function: invariant


def test_slot_polygon_head_input_gradients_equal_reference():
    model = _slot_model(chunk=64)
    for p in model.parameters():
        p.requires_grad_(False)
    e = _events(m=10)
    w = torch.randn(2, 4, 8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = []
    for fn in (model, lambda x: _slot_reference(model, x)):
        x = e.clone().requires_grad_(True)
        grads.append(torch.autograd.grad((fn(x) * w).sum(), x)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-8)


def test_slot_polygon_head_settings():
    with pytest.raises(ValueError, match="polygon_head"):
        ReluFormer(10, task="polygon", gate_dims=GATES, polygon_head="bad")
    model = _slot_model().train()
    model(_events(b=1, m=10)).sum().backward()  # one sample trains (running statistics, no batch statistics)
    assert model.head.feature_seen.item() == 1
