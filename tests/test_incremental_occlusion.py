"""Exact incremental occlusion (adapters/cnn/incremental.py) against plain occlusion.

Reference: the plain batched forward of the occluded images, ``model(torch.where(mask,
baseline, image))`` (what ``cnn.occlusion`` with ``engine="plain"`` runs, itself tested
equal to captum's ``Occlusion`` in test_cnn_methods_equivalence.py).
"""

import importlib
import math

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xaibench
from xaibench.adapters.cnn.occlusion import window_masks

inc = importlib.import_module("xaibench.adapters.cnn.incremental")


def plain_logits(model, image, baseline, masks, bs=32):
    with torch.no_grad():
        return torch.cat([model(torch.where(masks[s:s + bs, None], baseline, image)) for s in range(0, len(masks), bs)])


def incremental_logits(model, image, baseline, masks, window, bs=17):
    with torch.no_grad():
        return inc.occlusion_logits(inc.plan(model), image, baseline, masks, window, bs)


class StridedDilated(nn.Module):
    """Strides, dilations, asymmetric kernels and paddings, both pools, a concat and a product."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, (5, 3), stride=(2, 1), padding=(2, 0), dilation=(1, 2))
        self.b = nn.Conv2d(8, 8, 3, stride=1, padding=2, dilation=2, bias=False)
        self.c = nn.Conv2d(8, 8, 1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, dilation=1)
        self.avg = nn.AvgPool2d(2, stride=2, padding=1)
        self.d = nn.Conv2d(16, 6, 3, stride=3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.a(x)))
        y = self.b(x) * torch.sigmoid(self.c(x))
        y = torch.cat([self.pool(y), self.pool(x)], 1)
        y = self.d(nn.functional.silu(self.avg(y)))
        return self.head(y.mean((2, 3)))


def _seeded_eval(model_cls):
    """A seeded model in eval mode whose batch norm has non-trivial running statistics."""
    torch.manual_seed(0)
    model = model_cls().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def _setup(shape, window, stride, seed=0, baseline=0.0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, *shape, generator=g)
    masks = window_masks(shape[1], shape[2], window, stride)
    return image, torch.full_like(image, baseline), masks


@pytest.mark.parametrize("window,stride", [((10, 10), (5, 5)), ((7, 4), (3, 6)), ((1, 1), (9, 9))])
def test_strided_dilated_model_equals_plain(window, stride):
    model = _seeded_eval(StridedDilated)
    image, base, masks = _setup((3, 37, 29), window, stride)
    ours = incremental_logits(model, image, base, masks, window)
    ref = plain_logits(model, image, base, masks)
    assert ours.shape == ref.shape == (len(masks), 4)
    plan = inc.Plan(inc.plan(model), image)
    plan.logits_for(inc.input_patches(image, base, masks[:5], window))
    assert any(h * w < hh * ww for h, w, hh, ww in plan.patch_sizes.values())  # some layers run on patches
    assert (ref - ref[:1]).abs().max() > 1e-4  # the windows do change the output
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_timm_resnet18_equals_plain():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    image, base, masks = _setup((3, 96, 80), (10, 10), (5, 5))
    masks = masks[::7]  # interior and border windows
    ours = incremental_logits(model, image, base, masks, (10, 10))
    plan = inc.Plan(inc.plan(model), image)
    plan.logits_for(inc.input_patches(image, base, masks[:4], (10, 10)))
    assert plan.patch_sizes["layer1_0_conv1"][:2] < plan.patch_sizes["layer1_0_conv1"][2:]
    torch.testing.assert_close(ours, plain_logits(model, image, base, masks), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["lesion_cnn", "face_cnn"])
def test_zoo_cnns_equal_plain(name):
    model = xaibench.zoo.load(name)
    image, base, masks = _setup((3, 64, 64), (10, 10), (5, 5), baseline=0.5)
    ours = incremental_logits(model, image, base, masks, (10, 10))
    ref = plain_logits(model, image, base, masks)
    torch.testing.assert_close(ours, ref, atol=2e-4 * ref.abs().max().item(), rtol=1e-4)


def test_explainer_engines_agree_and_record_the_engine():
    model = xaibench.zoo.load("lesion_cnn")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    attrs = {e: xaibench.create_explainer("cnn.occlusion", model, engine=e, baseline="mean").explain(x)
             for e in ("auto", "incremental", "plain")}
    assert attrs["auto"].extras["engine"] == attrs["incremental"].extras["engine"] == "incremental"
    assert attrs["plain"].extras["engine"] == "plain"
    torch.testing.assert_close(attrs["incremental"].values, attrs["plain"].values, atol=1e-4, rtol=1e-4)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            y = y.relu()
        return self.fc(y.mean((2, 3)))


def test_untraceable_model_falls_back_to_plain_with_a_note():
    model = Untraceable().eval()
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    attr = xaibench.create_explainer("cnn.occlusion", model, window=5, stride=5).explain(x, 1)
    note = attr.extras["engine"]
    assert note.startswith("plain (incremental: torch.fx cannot trace Untraceable") and "\n" not in note
    ref = xaibench.create_explainer("cnn.occlusion", model, window=5, stride=5, engine="plain").explain(x, 1)
    torch.testing.assert_close(attr.values, ref.values)


@pytest.mark.parametrize("shape,window,stride", [((37, 29), (10, 10), (5, 5)), ((32, 32, 32), (8, 8, 8), (4, 4, 4)),
                                                 ((17, 12, 9), (5, 4, 3), (4, 3, 5))])
def test_window_corners_are_the_masks_box_corners(shape, window, stride):
    from xaibench.adapters.cnn.occlusion import window_corners_nd, window_masks_nd

    masks = window_masks_nd(shape, window, stride)
    some = masks.flatten(1).any(1)  # stride > window can place a window past the border: it occludes nothing
    assert some.sum() >= len(masks) // 2
    torch.testing.assert_close(window_corners_nd(shape, window, stride)[some], inc.box_corners(masks, window)[some])


class Strided3d(nn.Module):
    """3-D: strided, dilated and grouped convolutions (the stride-1 ones run by linearity), both
    pools, batch norm, a residual sum and a channel concat, a global max and a linear head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv3d(2, 8, (3, 5, 3), stride=(2, 1, 2), padding=(1, 2, 0))
        self.b = nn.Conv3d(8, 8, 3, stride=1, padding=2, dilation=2, bias=False, groups=2)
        self.c = nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1))
        self.bn = nn.BatchNorm3d(8)
        self.pool = nn.MaxPool3d(3, stride=2, padding=1)
        self.avg = nn.AvgPool3d(2, stride=1)
        self.d = nn.Conv3d(16, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.a(x)))
        y = self.b(x) + self.c(x)
        y = torch.cat([self.pool(torch.relu(y)), self.pool(x)], 1)
        return self.head(self.d(self.avg(y)).amax(dim=(2, 3, 4)))


@pytest.mark.parametrize("window,stride", [((6, 6, 6), (3, 3, 3)), ((5, 3, 7), (4, 5, 2)), ((1, 1, 1), (7, 7, 7))])
def test_strided_3d_model_equals_plain(window, stride):
    from xaibench.adapters.cnn.occlusion import window_masks_nd

    model = _seeded_eval(Strided3d)
    image = torch.rand(1, 2, 15, 17, 14, generator=torch.Generator().manual_seed(1))
    base = torch.full_like(image, 0.3)
    masks = window_masks_nd((15, 17, 14), window, stride)
    ours = incremental_logits(model, image, base, masks, window, bs=23)
    ref = plain_logits(model, image, base, masks)
    plan = inc.Plan(inc.plan(model), image)
    plan.logits_for(inc.input_patches(image, base, masks[:6], window))
    sizes = plan.patch_sizes
    assert any(math.prod(v[:3]) < math.prod(v[3:]) for v in sizes.values())  # some layers run on patches
    assert "b" in sizes and "d" in sizes  # the stride-1 convolutions ran as patches (by linearity)
    assert (ref - ref[:1]).abs().max() > 1e-4
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_zoo_3d_cnn_incremental_equals_plain_and_records_the_engine():
    model = xaibench.zoo.load("volume_cnn3d")
    x = xaibench.create_dataset("volume_lesions", n=2, batch_size=2, seed=5).all().inputs
    attrs = {e: xaibench.create_explainer("cnn.occlusion", model, window=8, stride=(4, 6, 4), engine=e,
                                          baseline="mean").explain(x) for e in ("auto", "plain")}
    assert attrs["auto"].extras["engine"] == "incremental" and attrs["plain"].extras["engine"] == "plain"
    assert attrs["auto"].kind == "voxel" and attrs["auto"].values.shape == (2, 32, 32, 32)
    torch.testing.assert_close(attrs["auto"].values, attrs["plain"].values, atol=1e-4, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(nd=st.sampled_from([2, 3]), add=st.booleans(), data=st.data())
def test_paste_equals_a_loop_over_windows(nd, add, data):
    """paste (scattered or grouped, clipped at the borders) writes or adds exactly what a loop of
    per-window slice assignments does."""
    dims = tuple(data.draw(st.integers(2, 7)) for _ in range(nd))
    size = tuple(data.draw(st.integers(1, 5)) for _ in range(nd))
    p = data.draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    rel = torch.stack([torch.randint(-k + 1, n, (p,), generator=g) for n, k in zip(dims, size)], 1)
    corner = torch.randint(-3, 4, (p, nd), generator=g)
    out = torch.randn(p, 2, *dims, generator=g)
    patch = inc.Patch(torch.randn(p, 2, *size, generator=g), corner + rel)
    ref = out.clone()
    for i in range(p):
        dst, src = [], []
        for o, n, k in zip(rel[i].tolist(), dims, size):
            dst.append(slice(max(0, o), min(n, o + k)))
            src.append(slice(max(0, o) - o, min(n, o + k) - o))
        view = ref[(i, slice(None), *dst)]
        view += patch.values[(i, slice(None), *src)] if add else 0
        if not add:
            view.copy_(patch.values[(i, slice(None), *src)])
    inc.paste(out, patch, corner, add=add)
    torch.testing.assert_close(out, ref)


class MaxHeads(nn.Module):
    """Global-max heads the incremental engine reduces without pasting whole maps: a stride-1 3-D
    convolution by linearity feeding BN -> ReLU -> sigmoid -> ``torch.amax(dim=(-3, -2, -1),
    keepdim=True)``, a second branch through ``nn.AdaptiveMaxPool3d(1)``, and a convolution whose
    output has two readers (an in-place ReLU there would corrupt the difference)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv3d(1, 6, 3, stride=2, padding=1)
        self.b = nn.Conv3d(6, 6, 3, padding=1)
        self.bn = nn.BatchNorm3d(6)
        self.relu = nn.ReLU()
        self.c = nn.Conv3d(6, 6, 3, padding=1, bias=False)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool3d(1)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        x = self.relu(self.a(x))
        m1 = torch.amax(torch.sigmoid(self.relu(self.bn(self.b(x)))), dim=(-3, -2, -1), keepdim=True)
        y = self.c(x)
        m2 = self.pool(self.relu2(y) - y)  # max(-2y, 0): an in-place ReLU on y would give 0
        return self.head(torch.cat([m1, m2], 1).flatten(1))


class MaxHead2d(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.pool(self.relu(self.b(self.relu(self.a(x))))).flatten(1))


@pytest.mark.parametrize("window,stride", [((4, 4, 4), (2, 2, 2)), ((3, 5, 2), (5, 3, 4))])
def test_global_max_heads_equal_plain_3d(window, stride):
    from xaibench.adapters.cnn.occlusion import window_masks_nd

    torch.manual_seed(0)
    model = MaxHeads().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(-1.0, 1.0)  # negative scales too: a -inf past the border must not become +inf
    image = torch.rand(1, 1, 16, 14, 12, generator=torch.Generator().manual_seed(2))
    base = torch.zeros_like(image)
    masks = window_masks_nd((16, 14, 12), window, stride)
    ours = incremental_logits(model, image, base, masks, window, bs=13)
    ref = plain_logits(model, image, base, masks)
    plan = inc.Plan(inc.plan(model), image)
    bound = {n.name for n in plan._max_bound}
    assert {"b", "bn", "relu_1", "sigmoid", "sub"} <= bound and not {"a", "c", "relu2"} & bound
    plan.logits_for(inc.input_patches(image, base, masks, window))
    assert math.prod(plan.patch_sizes["b"][:3]) < math.prod(plan.patch_sizes["b"][3:])  # a box, not the map
    assert (ref - ref[:1]).abs().max() > 1e-4
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_global_max_head_equals_plain_2d():
    torch.manual_seed(0)
    model = MaxHead2d().eval()
    image, base, masks = _setup((3, 20, 17), (4, 4), (3, 3))
    ours = incremental_logits(model, image, base, masks, (4, 4))
    plan = inc.Plan(inc.plan(model), image)
    assert {n.name for n in plan._max_bound} == {"b", "relu_1"}
    torch.testing.assert_close(ours, plain_logits(model, image, base, masks), atol=1e-5, rtol=1e-4)
