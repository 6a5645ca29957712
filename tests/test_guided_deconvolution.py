"""cnn.guided_deconvolution against its definition (the facial-CNN thesis, after Selvaraju et al.
2017): the deconvnet backward (Zeiler & Fergus 2014: at every ReLU only positive gradients pass,
whatever the forward sign) times the bilinearly upsampled GradCAM map. References: the rule written
out by hand on a conv/ReLU/linear net, and captum's Deconvolution and LayerGradCam."""

import copy

import pytest
import torch
import torch.nn.functional as F

import xaibench
from xaibench.testing.oracles import ConvReluNet


def deconvnet_by_hand(net, x, target):
    """The deconvnet pass, layer by layer: a linear layer maps back by its transposed weight, a
    convolution by the transposed convolution, a ReLU passes max(signal, 0) (no forward switch).
    (B, C, H, W) double."""
    shapes, h = [], x
    for layer in net.layers:
        shapes.append(h.shape)
        h = layer(h)
    r = F.one_hot(target, 3).double()
    for layer, shape in zip(reversed(net.layers), reversed(shapes)):
        if isinstance(layer, torch.nn.Linear):
            r = r @ layer.weight.double()
        elif isinstance(layer, torch.nn.ReLU):
            r = r.clamp_min(0)
        elif isinstance(layer, torch.nn.Flatten):
            r = r.reshape(shape)
        else:  # Conv2d: the transposed convolution, sized back to the input (output_padding)
            size = [(n - 1) * s - 2 * p + k for n, s, p, k in
                    zip(r.shape[-2:], layer.stride, layer.padding, layer.kernel_size)]
            extra = tuple(want - got for want, got in zip(shape[-2:], size))
            r = F.conv_transpose2d(r, layer.weight.double(), stride=layer.stride, padding=layer.padding,
                                   output_padding=extra)
    return r


def gradcam_by_hand(net, x, target, layer_index):
    """Selvaraju et al.'s GradCAM at the output of ``net.layers[layer_index]``: ReLU(Σ_k mean(∂y/∂A_k) A_k),
    bilinearly upsampled to the input. (B, H, W)"""
    h = x
    for i, layer in enumerate(net.layers):
        h = layer(h if i else h.clone())
        if i == layer_index:
            acts = h
            acts.retain_grad()
    h.gather(1, target[:, None]).sum().backward()
    cam = (acts.grad.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True).clamp_min(0)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(2)
    return torch.rand(3, 3, 12, 12, generator=g), torch.tensor([2, 0, 1])


def test_guided_deconvolution_equals_its_definition_by_hand(data):
    net = ConvReluNet().double().eval()
    x, t = data[0].double(), data[1]
    ours = xaibench.explain(net, x, "cnn.guided_deconvolution", target=t, layer="layers.2")
    expected = (deconvnet_by_hand(net, x, t) * gradcam_by_hand(copy.deepcopy(net), x, t, 2)[:, None]).sum(1)
    torch.testing.assert_close(ours.values.double(), expected, rtol=1e-9, atol=1e-12)
    # the deconvnet rule, not guided backprop's: ReLU inputs are negative somewhere, so the maps differ
    guided = xaibench.explain(net, x, "cnn.guided_gradcam", target=t, layer="layers.2")
    assert not torch.allclose(ours.values, guided.values)


def test_guided_deconvolution_equals_captum_deconvolution_times_layer_gradcam(data):
    # reference: captum's own Deconvolution and LayerGradCam, upsampled bilinearly
    from captum.attr import Deconvolution, LayerAttribution, LayerGradCam

    torch.manual_seed(0)
    model = xaibench.create_model("cnn.small_resnet", num_classes=3, drop_rate=0.0).eval()
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([2, 0])
    ref_model = copy.deepcopy(model)
    for m in ref_model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False  # captum's hooks need non-in-place ReLUs
    deconv = Deconvolution(ref_model).attribute(x, target=t)
    cam = LayerGradCam(ref_model, ref_model.get_submodule("layer4")).attribute(x, target=t, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="bilinear")
    ours = xaibench.explain(model, x, "cnn.guided_deconvolution", target=t, layer="layer4")
    torch.testing.assert_close(ours.values, (deconv * cam).sum(1), rtol=1e-4, atol=1e-6)
