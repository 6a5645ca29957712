"""Helpers shared by the metrics that call the model or the explainer again (faithfulness,
randomisation, robustness): per-sample seeds, the explained target and output, and rebuilding
the explainer that made an attribution."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from xaibench import Attribution, Batch

#: the explained output, shared by the faithfulness metrics (documented once here)
Output = Annotated[Literal["probability", "logit"],
                   Field(description="the explained output: the target's softmax probability or its logit")]


def sample_seeds(batch: Batch, seed: int) -> list[int]:
    """One 63-bit seed per sample from ``seed`` and the sample's own id (its input bytes when the
    batch has no ids), so a sample's random draws never depend on the rest of the batch."""
    out = []
    for i in range(len(batch)):
        if batch.ids is not None:
            key = str(batch.ids[i]).encode()
        else:
            key = batch.inputs[i].detach().cpu().contiguous().numpy().tobytes()
        h = hashlib.blake2b(key, digest_size=8, key=str(int(seed)).encode()).digest()
        out.append(int.from_bytes(h, "little") & ((1 << 63) - 1))
    return out


def per_sample_randn(seeds: list[int], shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> Tensor:
    """(B, *shape) standard normal noise, sample i drawn from its own generator (a loop of B
    draws: B small calls, not on the per-step path)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=dtype)
                        for s in seeds]).to(device)


def per_sample_rand(seeds: list[int], shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Tensor:
    """(B, *shape) uniform [0, 1) noise, sample i from its own generator."""
    return torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(s), dtype=dtype)
                        for s in seeds]).to(device)


def resolve_target(attr: Attribution, batch: Batch, full_output: Tensor | None = None,
                   default: int | None = None) -> Tensor:
    """(B,) classes to score: the attribution's resolved target (``extras["target"]``), else
    ``batch.targets``, else ``default``, else the predicted class of ``full_output`` (B, C)."""
    b = len(batch)
    t = attr.extras.get("target")
    if isinstance(t, Tensor) and t.numel() == b:
        return t.reshape(b).long().cpu()
    if isinstance(batch.targets, Tensor) and batch.targets.ndim == 1:
        return batch.targets.long().cpu()
    if default is not None:
        return torch.full((b,), int(default), dtype=torch.long)
    if full_output is None or full_output.ndim != 2:
        raise ValueError("metric: cannot tell which class to score; give batch.targets or an attribution with "
                         "extras['target']")
    return full_output.argmax(1).cpu()


def select_output(out: Tensor, target: Tensor, output: Output) -> Tensor:
    """The explained output per row: (R, C) logits -> (R,) probability (softmax) or logit of
    class ``target`` (R,); (R, N, C) per-event logits -> the mean over events (the predicted
    fraction of the class for probabilities)."""
    target = target.to(out.device)
    vals = out.float().softmax(-1) if output == "probability" else out.float()
    if vals.ndim == 3:
        return vals.gather(2, target[:, None, None].expand(-1, vals.shape[1], 1))[..., 0].mean(1)
    if vals.ndim != 2:
        raise ValueError(f"metric: expected model outputs (B, C) or (B, N, C), got {tuple(out.shape)}")
    return vals.gather(1, target[:, None])[:, 0]


def remake_explainer(attr: Attribution, model: nn.Module, who: str):
    """The explainer that made ``attr`` (``attr.method`` with ``attr.params``), built on ``model``.

    None when ``attr.method`` is not a registered explainer (a baseline or hand-made map): the
    metric then scores NaN with :data:`NO_EXPLAINER` as the reason.
    """
    from xaibench.explainers import EXPLAINERS

    if attr.method not in EXPLAINERS.names():
        return None
    return EXPLAINERS.get(attr.method)(model, **attr.params)


#: The NaN reason of a metric that re-runs the explainer when the map names none.
NO_EXPLAINER = "the attribution's method is not a registered explainer (nothing to re-run)"


def saliency_example(n: int, size: int):
    """Contract example of a metric that re-explains with the attribution's model: a seeded tiny CNN,
    ``n`` random ``size``² images of class 0, and its ``cnn.saliency`` map as the perfect attribution."""
    from xaibench.explainers import EXPLAINERS
    from xaibench.testing import MetricExample

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    x = torch.rand(n, 3, size, size, generator=g)
    batch = Batch(inputs=x, targets=torch.zeros(n, dtype=torch.long), ids=[f"s{i}" for i in range(n)])
    return MetricExample(batch=batch, perfect=EXPLAINERS.get("cnn.saliency")(model).explain(x, batch.targets),
                         model=model)
