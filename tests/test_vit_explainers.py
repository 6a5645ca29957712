"""ViT explainers: Chefer vs a straightforward per-sample implementation, GradCAM vs pytorch-grad-cam,
rollout row-stochastic, attention vs the raw maps, batch == singles, settings validated."""

import copy

import numpy as np
import pytest
import timm
import torch

import xaibench
from xaibench.adapters.vit.capture import token_layout

NAMES = ["vit.attention", "vit.rollout", "vit.chefer", "vit.gradcam"]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4, num_classes=4).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))


TARGETS = torch.tensor([0, 2, 3])


def _chefer_reference(model, image, target, start_layer=0):
    """Chefer's generic rule for ONE image, the straightforward way: tensor hooks on each block's
    attention, a plain ``.backward()`` of the one-hot logit, then R += mean_h(relu(G ⊙ A)) @ R."""
    model = copy.deepcopy(model)
    attn, grads = {}, {}
    for i, blk in enumerate(model.blocks):
        blk.attn.fused_attn = False

        def hook(m, inp, out, i=i):
            attn[i] = out
            out.register_hook(lambda g, i=i: grads.__setitem__(i, g))
        blk.attn.attn_drop.register_forward_hook(hook)
    logits = model(image[None])
    one_hot = torch.zeros_like(logits)
    one_hot[0, target] = 1
    (logits * one_hot).sum().backward()
    t = attn[0].shape[-1]
    r = torch.eye(t)
    for i in range(len(model.blocks)):
        if i < start_layer:
            continue
        cam = (grads[i][0] * attn[i][0]).clamp(min=0).mean(dim=0)
        r = r + cam @ r
    return r[0, 1:].detach()


@pytest.mark.parametrize("start_layer", [0, 2])
def test_chefer_equals_straightforward_per_sample_implementation(vit, x, start_layer):
    ours = xaibench.explain(vit, x, "vit.chefer", target=TARGETS, start_layer=start_layer)
    ref = torch.stack([_chefer_reference(vit, x[i], int(TARGETS[i]), start_layer) for i in range(len(x))])
    torch.testing.assert_close(ours.values, ref, atol=1e-6, rtol=1e-5)  # batched
    single = xaibench.explain(vit, x[1:2], "vit.chefer", target=int(TARGETS[1]), start_layer=start_layer)
    torch.testing.assert_close(single.values[0], ref[1], atol=1e-6, rtol=1e-5)  # per sample


def test_chefer_is_class_specific(vit, x):
    a = xaibench.explain(vit, x, "vit.chefer", target=0).values
    b = xaibench.explain(vit, x, "vit.chefer", target=1).values
    assert not torch.allclose(a, b)


def _minmax(m):
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo + 1e-7)).reshape(m.shape)


def test_gradcam_equals_pytorch_grad_cam_with_reshape_transform(vit, x):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    lay = token_layout(vit, x)

    def reshape(t):
        return t[:, lay.num_prefix:].reshape(t.shape[0], *lay.grid, t.shape[-1]).permute(0, 3, 1, 2)

    lib_model = copy.deepcopy(vit)
    cam = GradCAM(model=lib_model, target_layers=[lib_model.blocks[-1].norm1], reshape_transform=reshape)
    try:
        tg = [ClassifierOutputTarget(int(t)) for t in TARGETS]
        scaled = torch.from_numpy(cam(input_tensor=x, targets=tg)).float()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = torch.from_numpy(np.asarray(cam.get_cam_image(x, None, tg, acts, grads, False))).float()
    finally:
        cam.activations_and_grads.release()
    ours = xaibench.explain(vit, x, "vit.gradcam", target=TARGETS, relu=False)
    torch.testing.assert_close(ours.extras["layer_map"], raw, atol=1e-5, rtol=1e-4)  # before its min-max
    ours = xaibench.explain(vit, x, "vit.gradcam", target=TARGETS)
    torch.testing.assert_close(ours.values, ours.extras["layer_map"].flatten(1))
    torch.testing.assert_close(_minmax(ours.extras["pixel"]), scaled, atol=2e-3, rtol=0)  # after it


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.5), ("min", 0.9)])
def test_rollout_rows_are_stochastic(vit, x, fusion, discard):
    ex = xaibench.create_explainer("vit.rollout", vit, head_fusion=fusion, discard_ratio=discard, start_layer=1)
    maps, _, _, lay = ex.capture(x, None)
    joint = ex.joint(maps, lay)
    torch.testing.assert_close(joint.sum(-1), torch.ones(joint.shape[:2]), atol=1e-5, rtol=0)
    assert bool((joint >= 0).all())
    fused = ex._fused(maps[0], lay.num_prefix)
    if discard:
        assert bool((fused[:, 0, 0] > 0).all())  # the class token's own entry is never discarded
        zeros = (fused == 0).flatten(1).sum(1)
        assert bool((zeros >= int(discard * fused[0].numel())).all())


def _attention_maps(model, images):
    """[(B, heads, T, T)] per block, read the plain way (not with our capture): the unfused
    attention path of a copy, a forward hook on each block's ``attn_drop``."""
    model = copy.deepcopy(model)
    maps = []
    for blk in model.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda m, inp, out: maps.append(out.detach()))
    with torch.no_grad():
        model(images)
    return maps


def test_rollout_equals_the_textbook_product(vit, x):
    # reference: Abnar & Zuidema's product of row-normalised (A + I)/2 over maps read by _attention_maps
    ex = xaibench.create_explainer("vit.rollout", vit)
    maps = _attention_maps(vit, x)
    assert len(maps) == len(vit.blocks)
    joint = torch.eye(maps[0].shape[-1])
    for a in maps:
        m = 0.5 * a.mean(1) + 0.5 * torch.eye(a.shape[-1])
        joint = (m / m.sum(-1, keepdim=True)) @ joint
    torch.testing.assert_close(ex.explain(x).values, joint[:, 0, 1:], atol=1e-6, rtol=1e-5)


def test_attention_is_the_last_layers_class_row(vit, x):
    # reference: the class token's row of the maps read by _attention_maps
    ex = xaibench.create_explainer("vit.attention", vit)
    maps = _attention_maps(vit, x)
    torch.testing.assert_close(ex.explain(x).values, maps[-1].mean(1)[:, 0, 1:])
    one = xaibench.explain(vit, x, "vit.attention", head=2, layer=1).values
    torch.testing.assert_close(one, maps[1][:, 2, 0, 1:])
    mx = xaibench.explain(vit, x, "vit.attention", head_fusion="max").values
    torch.testing.assert_close(mx, maps[-1].amax(1)[:, 0, 1:])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arch,size", [("deit_tiny_distilled_patch16_224", 64), ("vit_small_patch14_reg4_dinov2", 56)])
def test_batch_equals_singles_on_models_with_extra_tokens(name, arch, size):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, img_size=size, depth=2, num_classes=3).eval()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(4))
    attr = xaibench.explain(model, x, name, target=TARGETS.clamp_max(2))
    grid = tuple(model.patch_embed.grid_size)
    assert attr.kind == "token" and attr.values.shape == (3, grid[0] * grid[1]) and attr.extras["grid"] == grid
    assert attr.extras["pixel"].shape == (3, size, size) and bool(torch.isfinite(attr.values).all())
    for i in range(3):
        one = xaibench.explain(model, x[i:i + 1], name, target=int(TARGETS.clamp_max(2)[i]))
        torch.testing.assert_close(one.values[0], attr.values[i], atol=1e-5, rtol=1e-4)


def test_token_maps_are_scored_by_pixel_metrics(vit, x):
    attr = xaibench.explain(vit, x, "vit.chefer", target=TARGETS)
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[:, :16, :16] = True
    scores = xaibench.create_metric("pointing_game")(attr, xaibench.Batch(inputs=x, masks=masks))
    assert scores.shape == (3,)


@pytest.mark.parametrize("name,params", [
    ("vit.attention", {"head_fusion": "median"}), ("vit.attention", {"layer": 4}), ("vit.attention", {"head": 3.5}),
    ("vit.rollout", {"discard_ratio": 1.0}), ("vit.rollout", {"start_layer": -1}), ("vit.chefer", {"start_layer": 99}),
    ("vit.chefer", {"readout": "nope"}),
])
def test_bad_settings_raise_valueerror(vit, x, name, params):
    with pytest.raises(ValueError, match=next(iter(params))):  # names the bad setting
        xaibench.explain(vit, x, name, **params)


def test_gradcam_at_block_output_is_blank_and_warns_nothing_silently(vit, x):
    """The documented pitfall: at the last block's output, patch tokens get zero gradient."""
    attr = xaibench.explain(vit, x, "vit.gradcam", target=TARGETS, layer="blocks.3", relu=False)
    assert float(attr.values.abs().max()) == 0.0
