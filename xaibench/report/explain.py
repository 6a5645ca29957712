"""One input, one method, one PNG: what ``xaibench explain`` draws.

Models whose inputs are not images (bags of cells, event sets) write what their family
registers with :func:`register_explain_writer` under the family name (``"mil"``: GeoJSON,
an interactive graph, attention weights and statistics); the core imports no family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry, load_plugins
from .figures import _image, new_figure, overlay, save

#: ``fn(model, net, method, batch, attr, out, **options) -> (path, text)``: writes the explanation
#: of sample 0 of ``batch`` by a zoo model ``model`` (its module ``net``) to the folder ``out``
#: (None: the writer's default) and returns the folder and a one-line description. Keyed by the
#: family of the zoo model's registry key (``"mil"`` for ``mil.abmil``).
EXPLAIN_WRITERS: Registry[Any] = Registry("explain writer", settings=False)

#: ``@register_explain_writer("mil")``: decorator registering a family's explanation writer.
register_explain_writer = EXPLAIN_WRITERS.register


def read_image(path: str | Path, channels: int = 3, size: int | None = None) -> torch.Tensor:
    """A PNG (or any format matplotlib reads) as a (1, C, H, W) float tensor in [0, 1].

    Raises:
        FileNotFoundError: no such file.
    """
    from matplotlib import image as mpimg

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--image: no file at {p}")
    a = np.asarray(mpimg.imread(str(p)), dtype=np.float32)
    if a.max() > 1.0:  # 8-bit data from non-PNG readers
        a = a / 255.0
    if a.ndim == 2:
        a = a[..., None]
    a = a[..., :3] if a.shape[-1] >= 3 else a[..., :1]  # drop alpha
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1).contiguous()
    if size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def _in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def _dataset_size(name: str, params: dict[str, Any]) -> int | None:
    from ..data import DATASETS
    field = DATASETS.settings(name).model_fields.get("size")
    size = params["size"] if "size" in params else (field.default if field is not None else None)
    return int(size) if isinstance(size, (int, float)) else None


def explain_one(model: str, method: str, *, dataset: str | None = None, index: int = 0, image: str | Path | None = None,
                size: int | None = None, target: int | None = None, params: dict[str, Any] | None = None,
                out: str | Path | None = None, options: dict[str, Any] | None = None) -> tuple[Path, str]:
    """Explain one sample (a dataset sample or a user's image) with a zoo model; write the overlay PNG
    (or, for a family with a registered explanation writer, its files; ``options`` go to the writer).

    Returns:
        the PNG path (the writer's folder) and a one-line description (prediction, explained class).

    Raises:
        KeyError: unknown zoo model, method or dataset; ValueError: inputs are not images and the
        model's family registers no writer, or ``options`` without a writer.
    """
    from .. import create_dataset, create_explainer, zoo
    from ..types import Batch

    entry = zoo.get_entry(model)
    net = zoo.load(model)
    dataset = dataset or entry.dataset
    dparams = dict(entry.extra.get("dataset_params", {})) if dataset == entry.dataset else {}
    if index < 0:
        raise ValueError(f"--index must be >= 0, got {index}")
    if image is not None:
        x = read_image(image, _in_channels(net), size or (_dataset_size(dataset, dparams) if dataset else None))
        batch, label, what = Batch(inputs=x), None, Path(image).stem
    else:
        if not dataset:
            raise ValueError(f"zoo model {model!r} names no dataset; pass --dataset NAME or --image PNG")
        ds = create_dataset(dataset, n=index + 1, batch_size=1, seed=0, split="test", **dparams)
        batch = ds.collate([ds.sample(index)]) if hasattr(ds, "sample") and hasattr(ds, "collate") else list(ds)[index]
        label = int(batch.targets[0]) if batch.targets is not None else None
        what = f"{dataset} sample {index}"
    family = entry.model.split(".")[0]
    load_plugins()
    if batch.inputs.ndim != 4 and family in EXPLAIN_WRITERS.names():
        attr = create_explainer(method, net, **(params or {})).explain_batch(batch, target)
        path, text = EXPLAIN_WRITERS.get(family)(model, net, method, batch, attr, out, **(options or {}))
        return Path(path), f"{what}: {text}"
    if options:
        raise ValueError(f"explain: --option is for models that write files of their own (families "
                         f"{', '.join(EXPLAIN_WRITERS.names()) or 'none'}), not {model!r}")
    if batch.inputs.ndim != 4:
        raise ValueError(f"explain: {dataset!r} gives inputs of shape {tuple(batch.inputs.shape)}, not images "
                         "(B, C, H, W); overlays need images")
    with torch.no_grad():
        probs = net(batch.inputs).softmax(-1)[0]
    pred = int(probs.argmax())
    attr = create_explainer(method, net, **(params or {})).explain_batch(batch, target)
    heat = attr.pixel_map()[0].float().numpy()
    img = _image(batch.inputs[0])
    mask = batch.masks[0].numpy() if batch.masks is not None else None
    explained = pred if target is None else int(target)
    fig = new_figure(6.4, 3.4)
    ax = fig.subplots(1, 2)
    overlay(ax[0], img, None, mask)
    ax[0].set_title("input" + (" (mask outline)" if mask is not None else "") + (f", label {label}" if label is not None else ""), fontsize=8)
    overlay(ax[1], img, heat, mask)
    ax[1].set_title(f"{method} for class {explained}", fontsize=8)
    fig.suptitle(f"{model}: predicted {pred} (p = {float(probs[pred]):.3f}); map min-max scaled for display", fontsize=9)
    path = Path(out) if out is not None else Path(f"explain_{model}_{method}_{what.replace(' sample ', '_')}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path, dpi=110)
    text = (f"{model} on {what}: predicted class {pred} (p = {float(probs[pred]):.3f})"
            + (f", label {label}" if label is not None else "") + f"; {method} explains class {explained}")
    return path, text
