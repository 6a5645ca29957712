"""A 2-D model on volumes: explain slice by slice (``cnn.slicewise``) and stack the maps."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from xaibench import register_explainer
from xaibench.explainers import EXPLAINERS, Explainer, Target, first_conv, model_guard, resolve_target
from xaibench.testing.fixtures import FixtureCase, register_fixture
from xaibench.types import Attribution, Batch


@register_explainer("cnn.slicewise", fixture="cnn_slices")
class SliceWise(Explainer):
    """Slice-wise explanation of a 2-D model on volumes: each axial slice (B, C, H, W) of a
    (B, C, D, H, W) volume is explained by a 2-D method for the volume's target class.

    Aggregation rule: the voxel map is the stack of the slice maps (slice d of the map is the
    2-D map of slice d, raw, never rescaled across slices); slices that are not explained
    (``slices="mask"``) are 0. ``extras["explained"]`` (B, D) bool says which were,
    ``extras["classes"]`` (B,) the explained classes (None: the highest mean logit over slices).
    """

    kind = "voxel"

    class Settings(Explainer.Settings):
        method: str = "cnn.gradcam"
        """The 2-D explainer run on every slice (a registry key returning ``pixel`` maps)."""
        params: dict[str, Any] = Field(default_factory=dict)
        """Settings of that explainer."""
        slices: Literal["all", "mask"] = "all"
        """Explain every slice, or only the slices the ground-truth mask touches (needs a batch with masks)."""

    def __init__(self, model: torch.nn.Module, **params: Any) -> None:
        super().__init__(model, **params)
        if EXPLAINERS.info(self.settings.method).kind != "pixel":
            raise ValueError(f"{self.name}: method must return pixel maps, {self.settings.method!r} returns "
                             f"{EXPLAINERS.info(self.settings.method).kind!r}")
        self.inner = EXPLAINERS.get(self.settings.method)(model, **self.settings.params)

    def _run(self, inputs: Tensor, target: Target, explained: Tensor) -> Attribution:
        if not isinstance(inputs, Tensor) or inputs.ndim != 5:
            raise ValueError(f"{self.name}: expected volumes (B, C, D, H, W), got "
                             f"{tuple(getattr(inputs, 'shape', ()))}; 2-D images go to the 2-D method itself")
        b, c, d, h, w = inputs.shape
        conv = first_conv(self.model, 4)
        if conv is not None and conv.in_channels != c:
            raise ValueError(f"{self.name}: the 2-D model expects {conv.in_channels}-channel slices (its first Conv2d has "
                             f"in_channels={conv.in_channels}), got volumes (B, C, D, H, W) = {tuple(inputs.shape)} with "
                             f"C={c}; " + (f"repeat the grey channel (x.expand(-1, {conv.in_channels}, -1, -1, -1))"
                                           if c == 1 else "convert the volumes to the model's channels"))
        with model_guard(self.model), torch.no_grad():  # None: the class with the highest mean logit over slices
            logits = self.model(inputs.transpose(1, 2).reshape(b * d, c, h, w)).view(b, d, -1).mean(1)
        t = resolve_target(logits, target)
        idx = torch.nonzero(explained.flatten()).flatten()
        values = torch.zeros(b * d, h, w, dtype=inputs.dtype, device=inputs.device)
        if len(idx):
            slices = inputs.transpose(1, 2).reshape(b * d, c, h, w)[idx]
            values[idx] = self.inner.explain(slices, t.repeat_interleave(d)[idx]).values
        return Attribution(values=values.view(b, d, h, w), kind="voxel", method=self.name,
                           params=self.settings.record(), extras={"classes": t, "explained": explained})

    def explain(self, inputs: Tensor, target: Target = None) -> Attribution:
        if self.settings.slices == "mask":
            raise ValueError(f"{self.name}: slices='mask' needs the batch's masks; call explain_batch(batch)")
        shape = getattr(inputs, "shape", ())
        full = torch.ones(shape[0], shape[2], dtype=torch.bool) if len(shape) == 5 else torch.ones(0, dtype=torch.bool)
        return self._run(inputs, target, full)

    def explain_batch(self, batch: Batch, target: Target = None) -> Attribution:
        if self.settings.slices == "all":
            return self.explain(batch.inputs, target)
        if batch.masks is None or batch.masks.ndim != 4:
            raise ValueError(f"{self.name}: slices='mask' needs (B, D, H, W) masks in the batch")
        return self._run(batch.inputs, target, batch.masks.flatten(2).any(2))


@register_fixture("cnn_slices")
def slices_fixture() -> FixtureCase:
    """A small 2-D ResNet (random, seeded) on the axial slices of 16³ ``volume_lesions`` volumes."""
    from xaibench import create_dataset, create_model

    torch.manual_seed(0)
    model = create_model("cnn.small_resnet", num_classes=2, in_chans=1).eval()
    batch = create_dataset("volume_lesions", n=3, batch_size=3, seed=11, size=16).all()
    # not differentiable for ``any.*`` methods: the 2-D model does not take the batch's volumes itself
    return FixtureCase(model=model, batch=batch, bad_inputs=[batch.inputs[:, :, 0], batch.inputs[0]],
                       differentiable=False)
