"""Attention capture: the right probabilities, every block, and the caller's model left as it was."""

import pytest
import timm
import torch

import xaibench
from xaibench.adapters.vit.capture import attention_capture, attention_modules, token_layout
from xaibench.testing.oracles import hook_count, model_fingerprint


def _tiny(**kw):
    torch.manual_seed(0)
    return xaibench.create_model("vit.small", num_classes=3, img_size=32, embed_dim=32, depth=3, num_heads=2, **kw).eval()


def _manual_attention(model, x):
    """Softmax(q kᵀ · scale) recomputed from each block's norm1 output and qkv weights."""
    inputs = []
    hooks = [b.norm1.register_forward_hook(lambda m, i, o: inputs.append(o)) for b in model.blocks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for blk, z in zip(model.blocks, inputs):
        a = blk.attn
        b, t, _ = z.shape
        q, k, _v = a.qkv(z).reshape(b, t, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        out.append(((q * a.scale) @ k.transpose(-2, -1)).softmax(-1))
    return out


def test_captures_every_block_with_the_right_probabilities():
    model = _tiny()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), attention_capture(model) as store:
        model(x)
    store.check()
    assert len(store.maps) == 3
    for got, want in zip(store.maps, _manual_attention(model, x)):
        assert got.shape == (2, 2, 17, 17)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.sum(-1), torch.ones(2, 2, 17))


def test_gradients_with_one_backward_match_autograd_per_block():
    model = _tiny()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    with attention_capture(model, grad=True) as store:
        logits = model(x)
        grads = store.backward(logits[:, 1].sum())
    assert [g.shape for g in grads] == [m.shape for m in store.maps]
    # sample 0's gradient does not depend on the other samples
    x0 = x[:1].detach().requires_grad_(True)
    with attention_capture(model, grad=True) as s0:
        g0 = s0.backward(model(x0)[:, 1].sum())
    for a, b in zip(grads, g0):
        torch.testing.assert_close(a[:1], b, atol=1e-6, rtol=1e-5)


def test_context_leaves_the_model_exactly_as_found():
    model = _tiny()
    model.blocks[1].attn.fused_attn = False  # a user's mixed setting must come back as it was
    model.train()
    model.blocks[0].requires_grad_(False)
    before = model_fingerprint(model)
    grad_mode = torch.is_grad_enabled()
    with torch.no_grad():
        with attention_capture(model, grad=True) as store:
            assert torch.is_grad_enabled()
            assert all(not m.fused_attn for m in attention_modules(model))
            model(torch.randn(1, 3, 32, 32))
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled() == grad_mode
    assert model_fingerprint(model) == before
    with pytest.raises(RuntimeError, match="boom"):  # restored even when the body raises
        with attention_capture(model):
            raise RuntimeError("boom")
    assert model_fingerprint(model) == before
    assert hook_count(model) == 0 and store.maps[0] is not None


def test_explainers_leave_user_model_untouched():
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, depth=2).train()
    before = model_fingerprint(model)
    x = torch.randn(1, 3, 64, 64)
    for name in xaibench.list_explainers("vit.*"):
        if name == "vit.chefer_lrp":  # distillation heads are not covered: it must refuse, and still leave no trace
            with pytest.raises(ValueError, match="distillation"):
                xaibench.explain(model, x, name, target=0)
        else:
            xaibench.explain(model, x, name, target=0)
        assert model_fingerprint(model) == before, name


def test_missing_block_is_reported():
    model = _tiny()
    with attention_capture(model) as store:
        with torch.no_grad():
            model.blocks[0](model._pos_embed(model.patch_embed(torch.randn(1, 3, 32, 32))))
        with pytest.raises(ValueError, match="not captured"):
            store.check()


@pytest.mark.parametrize("arch,prefix,readout", [
    ("vit_tiny_patch16_224", 1, [0]),
    ("deit_tiny_distilled_patch16_224", 2, [0, 1]),
    ("vit_small_patch14_reg4_dinov2", 5, [0]),
])
def test_layout_of_timm_models(arch, prefix, readout):
    model = timm.create_model(arch, pretrained=False, img_size=56, depth=1)
    lay = token_layout(model, torch.zeros(1, 3, 56, 56))
    assert lay.num_prefix == prefix
    assert lay.grid == tuple(model.patch_embed.grid_size)
    assert torch.nonzero(lay.readout).flatten().tolist() == readout
    with pytest.raises(ValueError, match="expected inputs"):
        token_layout(model, torch.zeros(1, 3, 48, 48))


def test_layout_of_average_pooled_model_reads_the_patches():
    model = _tiny(global_pool="avg", class_token=False, reg_tokens=2)
    lay = token_layout(model, torch.zeros(1, 3, 32, 32))
    assert lay.num_prefix == 2 and float(lay.readout[:2].sum()) == 0 and abs(float(lay.readout.sum()) - 1) < 1e-6
    attr = xaibench.explain(model, torch.randn(2, 3, 32, 32), "vit.chefer", target=0)
    assert attr.values.shape == (2, 16)


def test_not_a_vit_raises_valueerror():
    cnn = xaibench.create_model("cnn.small_resnet")
    with pytest.raises(ValueError, match="timm"):
        xaibench.explain(cnn, torch.randn(1, 3, 32, 32), "vit.attention")
