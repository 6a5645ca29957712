"""3-D CNN explanations and localisation metrics on volumes.

Independent references: MONAI's ``GradCAM`` (``compute_map``, before its min-max scaling)
and ``OcclusionSensitivity`` on the same model and layer; explicit autograd for saliency;
integrated gradients' completeness; hand-built volumes for the 3-D metrics.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import xaibench
from xaibench import Attribution, Batch, zoo

monai_vis = pytest.importorskip("monai.visualize")


@pytest.fixture(scope="module")
def model():
    return zoo.load("volume_cnn3d")


@pytest.fixture(scope="module")
def batch():
    return xaibench.create_dataset("volume_lesions", n=2, batch_size=2, seed=7).all()


# ----------------------------------------------------------------------------- MONAI equivalence


@pytest.mark.parametrize("layer", ["stage4", "stage2"])
def test_gradcam_equals_monai_before_its_scaling(model, batch, layer):
    ours = xaibench.create_explainer("cnn.gradcam", model, layer=layer).explain(batch.inputs, batch.targets)
    cam = monai_vis.GradCAM(nn_module=copy.deepcopy(model), target_layers=layer)  # MONAI leaves its hooks on the model
    # one sample at a time with an int class: MONAI scores ``logits[:, class_idx]``, so a (B,) tensor of
    # classes would sum every listed class for every sample
    ref = torch.cat([cam.compute_map(batch.inputs[i:i + 1], class_idx=int(batch.targets[i]))[:, 0].detach()
                     for i in range(len(batch))])  # (B, d, h, w), ReLU'd, unscaled
    assert ours.kind == "voxel" and ours.values.shape == (2, 32, 32, 32)
    torch.testing.assert_close(ours.extras["layer_map"], ref, atol=1e-5, rtol=1e-4)
    up = F.interpolate(ref[:, None], size=(32, 32, 32), mode="trilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(ours.values, up, atol=1e-5, rtol=1e-4)
    assert ours.values.amax() > 0  # a trained model: the comparison is not between zeros


def test_gradcam_equals_monai_on_a_monai_resnet():
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = nets.resnet10(spatial_dims=3, n_input_channels=1, num_classes=3).eval()
    x = torch.rand(2, 1, 24, 24, 24)
    t = torch.tensor([2, 0])
    ours = xaibench.create_explainer("cnn.gradcam", net, layer="layer4").explain(x, t)
    cam = monai_vis.GradCAM(nn_module=net, target_layers="layer4")
    ref = torch.cat([cam.compute_map(x[i:i + 1], class_idx=int(t[i]))[:, 0].detach() for i in range(2)])
    torch.testing.assert_close(ours.extras["layer_map"], ref, atol=1e-6, rtol=1e-4)
    assert ours.values.shape == (2, 24, 24, 24)


def test_gradcam_equals_monai_on_a_monai_densenet():
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = nets.DenseNet(spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
                        block_config=(2, 2)).eval()  # a narrow DenseNet121 (in-place ReLUs, as MONAI builds them)
    x = torch.rand(2, 1, 16, 16, 16)
    t = torch.tensor([1, 0])
    ours = xaibench.create_explainer("cnn.gradcam", net, layer="class_layers.relu").explain(x, t)
    cam = monai_vis.GradCAM(nn_module=copy.deepcopy(net), target_layers="class_layers.relu")
    ref = torch.cat([cam.compute_map(x[i:i + 1], class_idx=int(t[i]))[:, 0].detach() for i in range(2)])
    torch.testing.assert_close(ours.extras["layer_map"], ref, atol=1e-6, rtol=1e-4)
    assert ours.kind == "voxel" and ours.values.shape == (2, 16, 16, 16)


@pytest.mark.parametrize("window,stride", [(8, 4), ((8, 16, 16), (4, 8, 8))])
def test_occlusion_equals_monai_occlusion_sensitivity(model, batch, window, stride):
    x = batch.inputs[:1]
    t = int(batch.targets[0])
    ours = xaibench.create_explainer("cnn.occlusion", model, window=window, stride=stride).explain(x, t)
    # MONAI: constant 0.0 occlusion, stride = window * (1 - overlap), logits (no activation).
    # (32 - window) is a multiple of the stride on every axis, so both place the same windows;
    # MONAI reports the mean occluded logit over the windows covering a voxel, we the mean drop.
    occ = monai_vis.OcclusionSensitivity(nn_module=copy.deepcopy(model), mask_size=window, n_batch=16, mode=0.0, overlap=0.5,
                                         activate=False, verbose=False)
    occ_map, _ = occ(x)
    with torch.no_grad():
        logit = model(x)[0, t]
    expected = logit - occ_map[0, t].as_tensor()
    assert ours.kind == "voxel"
    torch.testing.assert_close(ours.values[0], expected, atol=2e-5, rtol=1e-4)
    assert ours.values.abs().amax() > 1e-2


def test_occlusion_3d_equals_an_explicit_window_loop():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(2),
                              torch.nn.Flatten(), torch.nn.Linear(32, 2)).eval()
    x = torch.rand(1, 1, 7, 6, 5)
    w, s = (3, 2, 4), (2, 2, 3)
    ours = xaibench.create_explainer("cnn.occlusion", net, window=w, stride=s, baseline=0.5).explain(x, 1).values[0]
    # captum's placement: ceil((n - k) / s) + 1 starts per axis, the last window cut at the border
    starts = [[i * st for i in range(math.ceil((n - k) / st) + 1)] for n, k, st in zip(x.shape[2:], w, s)]
    total = torch.zeros(7, 6, 5)
    count = torch.zeros(7, 6, 5)
    with torch.no_grad():
        ref = net(x)[0, 1]
        for a in starts[0]:
            for b in starts[1]:
                for c in starts[2]:
                    occ = x.clone()
                    occ[..., a:a + w[0], b:b + w[1], c:c + w[2]] = 0.5
                    total[a:a + w[0], b:b + w[1], c:c + w[2]] += ref - net(occ)[0, 1]
                    count[a:a + w[0], b:b + w[1], c:c + w[2]] += 1
    torch.testing.assert_close(ours, total / count, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="2 sides but the inputs have 3 spatial dims"):
        xaibench.create_explainer("cnn.occlusion", net, window=(3, 3)).explain(x, 1)


# ----------------------------------------------------------------------------- gradient methods


def test_saliency_3d_is_the_input_gradient(model, batch):
    ours = xaibench.create_explainer("cnn.saliency", model, reduce="sum").explain(batch.inputs, batch.targets)
    x = batch.inputs.clone().requires_grad_(True)
    logits = model(x)
    (g,) = torch.autograd.grad(logits.gather(1, batch.targets[:, None]).sum(), x)
    assert ours.kind == "voxel"
    torch.testing.assert_close(ours.values, g[:, 0], atol=1e-7, rtol=1e-5)


def test_integrated_gradients_3d_completeness(batch):
    # a smooth 3-D net (softplus, average pool): the quadrature converges, so completeness is tight
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 6, 3, stride=2, padding=1), torch.nn.Softplus(),
                              torch.nn.Conv3d(6, 8, 3, stride=2, padding=1), torch.nn.Softplus(),
                              torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval()
    t = torch.tensor([0, 1])
    ours = xaibench.create_explainer("cnn.integrated_gradients", net, n_steps=32).explain(batch.inputs, t)
    with torch.no_grad():
        gap = (net(batch.inputs) - net(torch.zeros_like(batch.inputs))).gather(1, t[:, None])[:, 0]
    assert ours.kind == "voxel" and ours.values.shape == (2, 32, 32, 32)
    torch.testing.assert_close(ours.values.flatten(1).sum(1), gap, atol=1e-4 * float(gap.abs().max()) + 1e-6, rtol=0)
    assert ours.values.abs().amax() > 0


def test_hirescam_3d_is_gradients_times_activations(model, batch):
    ours = xaibench.create_explainer("cnn.hirescam", model, layer="stage3", relu=False).explain(batch.inputs, batch.targets)
    # explicit reference: a forward hook keeps the layer output, autograd gives its gradient
    store = {}
    h = model.stage3.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = model(batch.inputs)
        (g,) = torch.autograd.grad(logits.gather(1, batch.targets[:, None]).sum(), store["a"])
    finally:
        h.remove()
    torch.testing.assert_close(ours.extras["layer_map"], (g * store["a"]).sum(1).detach(), atol=1e-6, rtol=1e-4)
    # the global max-pool head makes the gradient sparse: HiResCAM and GradCAM differ even at the last stage
    grad = xaibench.create_explainer("cnn.gradcam", model, layer="stage4").explain(batch.inputs, batch.targets)
    hires = xaibench.create_explainer("cnn.hirescam", model, layer="stage4").explain(batch.inputs, batch.targets)
    assert (grad.values - hires.values).abs().max() > 1e-3 * hires.values.abs().max()


def test_image_only_methods_refuse_volumes(model, batch):
    with pytest.raises(ValueError, match="images only"):
        xaibench.create_explainer("cnn.deeplift", model).explain(batch.inputs, batch.targets)
    with pytest.raises(ValueError, match=r"expected inputs \(B, C, H, W\)"):
        xaibench.create_explainer("cnn.fullgrad", model).explain(batch.inputs, batch.targets)
    with pytest.raises(ValueError, match="'blur' baseline is for"):
        xaibench.create_explainer("cnn.occlusion", model, window=8, stride=8, baseline="blur").explain(batch.inputs, 0)


# ----------------------------------------------------------------------------- 3-D metrics


def _volume_case():
    masks = torch.zeros(3, 6, 6, 6, dtype=torch.bool)
    masks[:, 1:3, 1:3, 1:3] = True  # a 2x2x2 cube, 8 voxels
    vals = torch.zeros(3, 6, 6, 6)
    vals[0, 2, 2, 2] = 1.0  # maximum inside the cube
    vals[1, 4, 4, 4] = 1.0  # maximum at (4, 4, 4): nearest mask voxel (2, 2, 2), distance sqrt(12) = 3.46
    vals[2, 2, 2, 4] = 1.0  # maximum at (2, 2, 4): distance 2 along w
    vals[2, 1, 1, 1] = 0.5
    return Attribution(values=vals, kind="voxel", method="hand"), Batch(inputs=torch.zeros(3, 1, 6, 6, 6), masks=masks)


def test_pointing_game_3d_with_a_ball_tolerance():
    attr, batch = _volume_case()
    assert xaibench.create_metric("pointing_game")(attr, batch).tolist() == [1.0, 0.0, 0.0]
    assert xaibench.create_metric("pointing_game", tolerance=2.01)(attr, batch).tolist() == [1.0, 0.0, 1.0]
    assert xaibench.create_metric("pointing_game", tolerance=2.0)(attr, batch).tolist() == [1.0, 0.0, 0.0]  # strict <
    assert xaibench.create_metric("pointing_game", tolerance=3.47)(attr, batch).tolist() == [1.0, 1.0, 1.0]


def test_relevance_mass_and_iou_3d_hand_values():
    attr, batch = _volume_case()
    mass = xaibench.create_metric("relevance_mass")(attr, batch)
    assert mass.tolist() == pytest.approx([1.0, 0.0, 0.5 / 1.5])
    perfect = Attribution(values=batch.masks.float(), kind="voxel", method="perfect")
    assert xaibench.create_metric("iou", threshold="gt_area")(perfect, batch).tolist() == [1.0, 1.0, 1.0]
    # the top-8 voxels of sample 2 hold its two non-zero voxels (one in the cube) and six ties
    # broken in raster order: (0,0,0)...(0,0,5) -> none in the cube; IoU = 1 / (8 + 8 - 1)
    assert xaibench.create_metric("iou", threshold="gt_area")(attr, batch)[2].item() == pytest.approx(1 / 15)
    with pytest.raises(ValueError, match=r"expected attr and masks \(B, D, H, W\)"):
        xaibench.create_metric("iou")(attr, Batch(inputs=batch.inputs, masks=batch.masks[:, 0]))


# ----------------------------------------------------------------------------- 2-D models on volumes


def test_slicewise_stacks_the_2d_maps_of_each_slice():
    torch.manual_seed(0)
    net = xaibench.create_model("cnn.small_resnet", num_classes=2, in_chans=1).eval()
    b = xaibench.create_dataset("volume_lesions", n=2, batch_size=2, seed=4, size=16).all()
    t = torch.tensor([1, 0])
    allm = xaibench.create_explainer("cnn.slicewise", net, method="cnn.saliency").explain_batch(b, t)
    # reference: the 2-D method on slice d of sample i alone
    for i, d in [(0, 0), (0, 9), (1, 15)]:
        one = xaibench.create_explainer("cnn.saliency", net).explain(b.inputs[i:i + 1, :, d], int(t[i])).values[0]
        torch.testing.assert_close(allm.values[i, d], one, atol=1e-7, rtol=1e-5)
    masked = xaibench.create_explainer("cnn.slicewise", net, method="cnn.saliency", slices="mask").explain_batch(b, t)
    touched = b.masks.flatten(2).any(2)
    assert torch.equal(masked.extras["explained"], touched) and 0 < int(touched.sum()) < 32
    assert (masked.values[~touched] == 0).all()
    torch.testing.assert_close(masked.values[touched], allm.values[touched])
    with pytest.raises(ValueError, match="needs the batch's masks"):
        xaibench.create_explainer("cnn.slicewise", net, slices="mask").explain(b.inputs, t)


def test_slicewise_refuses_volumes_with_another_channel_count_than_the_2d_model():
    torch.manual_seed(0)
    net = xaibench.create_model("cnn.small_resnet", num_classes=2, in_chans=3).eval()
    b = xaibench.create_dataset("volume_lesions", n=1, batch_size=1, seed=4, size=16).all()  # 1-channel CT
    ex = xaibench.create_explainer("cnn.slicewise", net, method="cnn.saliency")
    with pytest.raises(ValueError, match=r"expects 3-channel slices .* C=1; repeat the grey channel"):
        ex.explain(b.inputs, 0)
    # the suggested fix works: the repeated grey channel gives a map per voxel
    assert ex.explain(b.inputs.expand(-1, 3, -1, -1, -1), 0).values.shape == (1, 16, 16, 16)


def test_occlusion_batches_volumes_by_the_voxel_budget(model):
    from xaibench.adapters.cnn.occlusion import VOXELS_PER_FORWARD, auto_volume_batch_size

    # reference: the documented rule as a property (voxels per forward <= VOXELS_PER_FORWARD,
    # 1..256 volumes, one more would exceed it), and the batch sizes the model actually sees
    for sizes in [(32, 32, 32), (16, 16, 16), (8, 200, 200), (128, 256, 256)]:
        bs = auto_volume_batch_size(*sizes)
        voxels = math.prod(sizes)
        assert 1 <= bs <= 256 and (bs == 1 or bs * voxels <= VOXELS_PER_FORWARD)
        assert bs == 256 or (bs + 1) * voxels > VOXELS_PER_FORWARD
    seen = []
    handle = model.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    try:
        x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
        xaibench.create_explainer("cnn.occlusion", model, window=16, stride=8, engine="plain").explain(x, 0)  # 27 windows
    finally:
        handle.remove()
    assert seen == [1, 27]  # the reference forward, then all 27 windows in one pass (budget: 48 of 32³)


def test_zoo_volume_cnn3d_keeps_its_floor_on_held_out_volumes(model):
    from xaibench.adapters.cnn.volumes import ACCURACY_FLOOR

    from xaibench.zoo import evaluate_accuracy

    card = zoo.get_entry("volume_cnn3d").card()
    assert card["metrics"]["test_accuracy"] >= ACCURACY_FLOOR == card["metrics"]["accuracy_floor"]
    # re-measured on held-out test volumes (split "test", never seen in training)
    test = xaibench.create_dataset("volume_lesions", n=96, batch_size=48, seed=0, split="test")
    assert evaluate_accuracy(model, test) >= ACCURACY_FLOOR


def test_centre_baseline_on_voxel_maps_is_the_3d_gaussian():
    from xaibench.baselines import centre_baseline

    like = Attribution(values=torch.zeros(2, 5, 6, 7), kind="voxel", method="x")
    c = centre_baseline(like, Batch(inputs=torch.zeros(2, 1, 5, 6, 7), ids=["a", "b"]), 0, sigma=0.3)
    assert c.kind == "voxel" and c.values.shape == (2, 5, 6, 7) and torch.equal(c.values[0], c.values[1])
    # reference: the closed form at voxel centres, coordinates as fractions of each side
    for z, y, x in [(0, 0, 0), (2, 3, 3), (4, 1, 6), (2, 2, 3)]:
        r2 = ((z + 0.5) / 5 - 0.5) ** 2 + ((y + 0.5) / 6 - 0.5) ** 2 + ((x + 0.5) / 7 - 0.5) ** 2
        assert c.values[0, z, y, x].item() == pytest.approx(math.exp(-r2 / (2 * 0.3 ** 2)), rel=1e-6)
    assert divmod(int(c.values[0].argmax()), 42)[0] == 2  # the central slice


def test_occlusion_spreads_drops_over_windows_as_the_mask_product():
    from xaibench.adapters.cnn.occlusion import spread_boxes, window_masks_nd

    # reference: the mean over covering windows written as the (P, voxels) mask product; windows cut
    # at the border (11 - 4 is not a multiple of 3) and uncovered voxels (stride > window on one axis)
    for shape, window, stride in [((11, 9, 10), (4, 3, 5), (3, 2, 2)), ((8, 8, 8), (2, 2, 2), (3, 2, 2))]:
        masks = window_masks_nd(shape, window, stride).view(-1, math.prod(shape)).double()
        drops = torch.randn(2, masks.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        ref = (drops @ masks) / masks.sum(0).clamp_min(1)
        torch.testing.assert_close(spread_boxes(drops, shape, window, stride).view(2, -1), ref, rtol=1e-12, atol=1e-12)
