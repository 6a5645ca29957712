"""FullGrad for CNNs (``cnn.fullgrad``): input-gradients plus the bias-gradients of every layer.

Srinivas & Fleuret (2019) write a ReLU network's output as the input-gradient term plus one
bias-gradient term per layer with a bias. The saliency map aggregates
ψ(|x ⊙ ∇ₓf|) + Σ_layers Σ_channels ψ(|b ⊙ ∇_z f|), where z is the layer's output, b its
bias (for batch norm in eval mode: β - μγ/√(σ²+ε)) and ψ takes the absolute value, rescales
to [0, 1] and resizes bilinearly to the input. The rescaling is part of the method (it
weighs the layers equally); the aggregated map is returned raw.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench import register_explainer
from xaibench.explainers import Explainer, Target, check_images, model_guard, resolve_target
from xaibench.types import Attribution


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The modules FullGrad takes bias-gradients of: every ``nn.Conv2d`` with a bias and every
    ``nn.BatchNorm2d`` with an affine bias (exact types, as pytorch-grad-cam)."""
    return [m for m in model.modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None]


def effective_bias(layer: nn.Module) -> Tensor:
    """The layer's bias as seen in eval mode (batch norm folds its running statistics in)."""
    if isinstance(layer, nn.BatchNorm2d) and layer.running_mean is not None:
        return layer.bias - layer.running_mean * layer.weight / torch.sqrt(layer.running_var + layer.eps)
    return layer.bias


def _rescale(t: Tensor, per_channel: bool) -> Tensor:
    """Min-max to [0, 1] per sample (over all channels) or per sample and channel, (B, C, h, w)."""
    flat = t.flatten(2) if per_channel else t.flatten(1)
    lo = flat.amin(-1, keepdim=True)
    flat = flat - lo
    flat = flat / (flat.amax(-1, keepdim=True) + 1e-7)
    return flat.view_as(t)


@register_explainer("cnn.fullgrad")
class FullGrad(Explainer):
    """FullGrad (Srinivas & Fleuret 2019): |input-gradient ⊙ input| plus every layer's
    |bias-gradient ⊙ bias|, each rescaled to [0, 1], upsampled and summed over channels.

    Returns:
        a ``pixel`` Attribution (B, H, W), non-negative, raw (not min-max scaled at the end);
        ``extras["target"]`` and ``extras["n_layers"]`` (bias layers used). A layer called
        several times per forward contributes one term per call.
    """

    kind = "pixel"

    class Settings(Explainer.Settings):
        normalise: Literal["layer", "channel"] = "layer"
        """How each term is rescaled to [0, 1]: ``"layer"`` (the paper's code: one min-max over all
        channels of a layer, per sample) or ``"channel"`` (pytorch-grad-cam: one min-max per channel)."""

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        check_images(inputs, self.name)
        per_channel = self.settings.normalise == "channel"
        layers = bias_layers(self.model)
        probes: list[tuple[int, Tensor]] = []  # (layer index, probe) per call, in call order

        def hook(idx: int, _m: nn.Module, _i: Any, out: Tensor) -> Tensor:
            z = torch.zeros_like(out, requires_grad=True)  # ∂f/∂z = ∂f/∂(layer output)
            probes.append((idx, z))
            return out + z

        x = inputs.detach().requires_grad_(True)
        with model_guard(self.model), torch.enable_grad():
            handles = [m.register_forward_hook(functools.partial(hook, i)) for i, m in enumerate(layers)]
            try:
                logits = self.model(x)
            finally:
                for h in handles:
                    h.remove()
            t = resolve_target(logits, target)
            grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), [x, *(z for _, z in probes)],
                                        allow_unused=True)
            with torch.no_grad():
                size = inputs.shape[-2:]
                total = _rescale((grads[0] * x).abs(), per_channel).sum(1)
                biases = [effective_bias(m) for m in layers]
                for g, (layer_idx, _) in zip(grads[1:], probes):
                    if g is None:  # the output does not depend on this call
                        continue
                    m = _rescale((g * biases[layer_idx][None, :, None, None]).abs(), per_channel).sum(1, keepdim=True)
                    total = total + F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0]
        return self._attribution(total.detach(), target=t, n_layers=len(layers))
