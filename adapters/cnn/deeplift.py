"""DeepLIFT for CNNs (``cnn.deeplift``): captum's rescale-rule DeepLift, run on a copy of the
model whose ReLUs are fresh, non-in-place modules, one per call.

captum's DeepLift stores each nonlinearity's input and output on the module during the
forward pass; timm's in-place ReLUs overwrite those inputs and reused modules keep only
their last call, which breaks it ("A Module ReLU() was detected that does not contain some
of the input/output attributes ..."). A deep copy per call leaves the caller's model alone.
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from xaibench import register_explainer
from xaibench.explainers import Target, model_guard

from ._common import BaselineRule, PixelExplainer, make_baseline, relus_swapped


@register_explainer("cnn.deeplift")
class DeepLift(PixelExplainer):
    """DeepLIFT (Shrikumar et al. 2017), rescale rule: contributions of (x - x') to
    f(x) - f(x'), which they sum to (summation-to-delta).

    The default signed ``"sum"`` over channels keeps that: a map sums to ≈ f(x) - f(x').
    ``extras["delta"]`` (B,) is captum's convergence delta (the summation error).
    """

    class Settings(PixelExplainer.Settings):
        baseline: BaselineRule = 0.0
        """The reference x': a number (a constant image; 0.0 = black), ``"mean"`` (each image's
        per-channel mean) or ``"blur"`` (the image blurred with a Gaussian of 5 px)."""

    def channels(self, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor, dict]:
        from captum.attr import DeepLift as CaptumDeepLift

        base = make_baseline(inputs, self.settings.baseline, self.name)
        t = self.targets(inputs, target)
        fresh = lambda _relu: nn.ReLU(inplace=False)  # noqa: E731
        with model_guard(self.model), relus_swapped(self.model, fresh, on_copy=True, probe=inputs[:1]) as copy:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module="captum")  # its hook notice
                attr, delta = CaptumDeepLift(copy).attribute(inputs.detach().requires_grad_(True), baselines=base,
                                                             target=t, return_convergence_delta=True)
        return attr.detach(), t, {"delta": delta.detach()}
