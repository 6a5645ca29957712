"""vit.chefer_lrp: equals a per-sample, autograd-"gradprop" port of the reference rules; batched; guarded."""

import pytest
import timm
import torch
import torch.nn.functional as F

import xaibench


def _sd(a, b):
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def _gradprop(fn, xs, r):
    """RelPropSimple: z = fn(*xs); relevance of each x = x · ∂z/∂x · (r / z) (one autograd.grad)."""
    xs = [x.detach().requires_grad_(True) for x in xs]
    z = fn(*xs)
    cs = torch.autograd.grad(z, xs, _sd(r, z))
    return [x.detach() * c for x, c in zip(xs, cs)]


def _linear(x, w, r):
    x = x.detach()
    px, nx = x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)
    z1, z2 = F.linear(px, w.clamp(min=0)), F.linear(nx, w.clamp(max=0))
    s = _sd(r, z1 + z2)
    return px.detach() * torch.autograd.grad(z1, px, s)[0] + nx.detach() * torch.autograd.grad(z2, nx, s)[0]


def _add(x0, x1, r):
    a, b = _gradprop(lambda u, v: u + v, [x0, x1], r)
    fa = _sd(a.sum().abs(), a.sum().abs() + b.sum().abs()) * r.sum()
    fb = _sd(b.sum().abs(), a.sum().abs() + b.sum().abs()) * r.sum()
    return a * _sd(fa, a.sum()), b * _sd(fb, b.sum())


def _reference(model, image, target, start_layer=0):
    """One image, the reference's module-by-module relprop with tensor hooks for ∂y/∂A."""
    x = image[None]
    acts, grads = [], {}
    z = model._pos_embed(model.patch_embed(x))
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        h1 = blk.norm1(z)
        q, k, v = a.qkv(h1).reshape(1, -1, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        attn = torch.einsum("bhid,bhjd->bhij", q, k).mul(a.scale).softmax(-1)
        attn.register_hook(lambda g, i=i: grads.__setitem__(i, g))
        ctx = torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(1, -1, a.num_heads * a.head_dim)
        o = a.proj(ctx)
        mid = z + o
        h2 = blk.norm2(mid)
        g = blk.mlp.act(blk.mlp.fc1(h2))
        f2 = blk.mlp.fc2(g)
        acts.append(dict(z=z, h1=h1, q=q, k=k, v=v, attn=attn, ctx=ctx, o=o, mid=mid, h2=h2, g=g, f2=f2))
        z = mid + f2
    normed = model.norm(z)
    logits = model.head(normed[:, 0])
    logits[0, target].backward()
    r = _linear(normed[:, 0], model.head.weight, F.one_hot(torch.tensor([target]), logits.shape[1]).float())
    (r,) = _gradprop(lambda u: u[:, 0], [normed], r)
    cams = {}
    for i in reversed(range(len(model.blocks))):
        blk, s, a = model.blocks[i], acts[i], model.blocks[i].attn
        r1, r2 = _add(s["mid"], s["f2"], r)
        r2 = _linear(s["h2"], blk.mlp.fc1.weight, _linear(s["g"], blk.mlp.fc2.weight, r2))
        r = r1 + r2  # Clone: a shared input's relevance is the sum of its branches'
        r1, r2 = _add(s["z"], s["o"], r)
        rc = _linear(s["ctx"], a.proj.weight, r2).reshape(1, -1, a.num_heads, a.head_dim).transpose(1, 2)
        ra, rv = _gradprop(lambda u, w: torch.einsum("bhij,bhjd->bhid", u, w), [s["attn"], s["v"]], rc)
        ra, rv = ra / 2, rv / 2
        cams[i] = ra
        rq, rk = _gradprop(lambda u, w: torch.einsum("bhid,bhjd->bhij", u, w), [s["q"], s["k"]], ra)
        rqkv = torch.stack([rq / 2, rk / 2, rv]).permute(1, 3, 0, 2, 4).reshape(1, -1, 3 * a.num_heads * a.head_dim)
        r = r1 + _linear(s["h1"], a.qkv.weight, rqkv)
    t = acts[0]["attn"].shape[-1]
    joint = None
    for i in range(start_layer, len(model.blocks)):
        m = (grads[i][0] * cams[i][0]).clamp(min=0).mean(0) + torch.eye(t)
        joint = m if joint is None else m @ joint
    return joint[0, 1:]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=3, num_classes=4).eval()


@pytest.mark.parametrize("start_layer", [0, 1])
def test_equals_reference_rules_per_sample_and_batched(vit, start_layer):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 0, 3])
    ours = xaibench.explain(vit, x, "vit.chefer_lrp", target=targets, start_layer=start_layer)
    ref = torch.stack([_reference(vit, x[i], int(targets[i]), start_layer) for i in range(3)])
    torch.testing.assert_close(ours.values, ref, atol=1e-5, rtol=1e-4)
    one = xaibench.explain(vit, x[2:], "vit.chefer_lrp", target=3, start_layer=start_layer)
    torch.testing.assert_close(one.values[0], ref[2], atol=1e-5, rtol=1e-4)


def test_unsupported_models_raise_valueerror():
    m = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, depth=1)
    with pytest.raises(ValueError, match="vit.chefer"):
        xaibench.explain(m, torch.randn(1, 3, 64, 64), "vit.chefer_lrp")
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=1, init_values=1e-5)
    with pytest.raises(ValueError, match="layer scale"):
        xaibench.explain(m, torch.randn(1, 3, 64, 64), "vit.chefer_lrp")
