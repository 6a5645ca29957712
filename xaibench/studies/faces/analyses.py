"""Analyses of the facial-CNN study (dysmorphology syndrome classifiers) on top of pixel attributions: patient-wise maps, syndrome-wise
(class-level) maps, composite faces, similarity maps of an embedding model, and the
class-imbalance study.

Explainers return raw maps; every normalisation here is an explicit, named step
(:func:`normalise_maps`) because class-level maps average maps of different scales.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench import Attribution, Batch, create_explainer
from xaibench.adapters.cnn.cam import default_cnn_layer
from xaibench.explainers import capture_layer, check_images, find_module, model_guard

#: landmarks used for alignment (indices into ``faces``' ``meta["landmarks"]``): eyes and mouth
ALIGN_POINTS = (0, 1, 3)


def patient_maps(model: nn.Module, batch: Batch, methods: dict[str, dict[str, Any]] | Iterable[str],
                 target: Tensor | int | None = None) -> dict[str, Attribution]:
    """Patient-wise maps: every method's explanation of every sample of ``batch``.

    Args:
        methods: explainer keys, or key/label -> settings (``{"cnn.gradcam": {"relu": False}}``;
            a label ``"name@x"`` runs explainer ``name``).
        target: classes to explain (default: ``batch.targets``, else the predicted class).
    Returns:
        label -> Attribution with (B, H, W) raw maps.
    """
    items = methods.items() if isinstance(methods, dict) else ((m, {}) for m in methods)
    t = batch.targets if target is None else target
    return {label: create_explainer(label.split("@")[0], model, **params).explain_batch(batch, t)
            for label, params in items}


def normalise_maps(maps: Tensor, how: str = "max_abs") -> Tensor:
    """Per-map normalisation of (B, H, W) maps, named so reports can say which was used.

    ``"max_abs"`` divides by the largest magnitude (keeps sign and zero, maps to [-1, 1]);
    ``"minmax"`` rescales to [0, 1]; ``"sum"`` divides by the total absolute relevance.
    A flat (all-zero) map stays zero.
    """
    flat = maps.flatten(1).float()
    if how == "max_abs":
        out = flat / flat.abs().amax(1, keepdim=True).clamp_min(1e-12)
    elif how == "minmax":
        lo = flat.amin(1, keepdim=True)
        out = (flat - lo) / (flat.amax(1, keepdim=True) - lo).clamp_min(1e-12)
    elif how == "sum":
        out = flat / flat.abs().sum(1, keepdim=True).clamp_min(1e-12)
    else:
        raise ValueError(f"normalise_maps: how must be 'max_abs', 'minmax' or 'sum', got {how!r}")
    return out.view_as(maps)


def similarity_transforms(landmarks: Tensor, template: Tensor) -> Tensor:
    """Least-squares similarity transforms (rotation, scale, shift) taking each sample's
    landmarks (B, K, 2) onto ``template`` (K, 2). Returns (B, 2, 3) matrices A with
    template ≈ A @ [x, y, 1]."""
    b, k, _ = landmarks.shape
    x, y = landmarks[..., 0], landmarks[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows = torch.cat([torch.stack([x, -y, one, zero], -1), torch.stack([y, x, zero, one], -1)], 1)  # (B, 2K, 4)
    rhs = torch.cat([template[:, 0].expand(b, k), template[:, 1].expand(b, k)], 1)[..., None]
    a, bb, tx, ty = torch.linalg.lstsq(rows.double(), rhs.double()).solution[..., 0].float().unbind(-1)
    return torch.stack([torch.stack([a, -bb, tx], -1), torch.stack([bb, a, ty], -1)], 1)


def align(images: Tensor, landmarks: Tensor, template: Tensor | None = None,
          points: tuple[int, ...] = ALIGN_POINTS) -> tuple[Tensor, Tensor]:
    """Warp images or maps (B, C, H, W) so that their landmarks land on ``template``.

    Args:
        landmarks: (B, K, 2) x, y in pixels (pixel (0, 0) spans [0, 1)²).
        template: (len(points), 2) target positions (default: the batch's mean landmarks).
        points: the landmark indices used (default: both eyes and the mouth).
    Returns:
        (aligned (B, C, H, W), template).
    """
    lm = landmarks[:, list(points)].float()
    tpl = lm.mean(0) if template is None else template.float()
    h, w = images.shape[-2:]
    fwd = similarity_transforms(lm, tpl)  # source pixels -> template pixels
    full = torch.cat([fwd, torch.tensor([0.0, 0.0, 1.0]).expand(len(fwd), 1, 3)], 1)
    inv = torch.linalg.inv(full)  # template pixels -> source pixels
    # affine_grid works in normalised coordinates (align_corners=False): u = 2x/W - 1
    to_norm = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]])
    from_norm = torch.linalg.inv(to_norm)
    theta = (to_norm @ inv @ from_norm)[:, :2]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False), tpl


@dataclass
class ClassMaps:
    """Syndrome-wise maps of one method: per class, the mean of normalised maps of its
    correctly classified samples, aligned, with the aligned mean face (composite face).

    ``maps`` (K, H, W), ``faces`` (K, C, H, W), ``counts`` (K,) samples used per class
    (0: the map is NaN), ``normalise`` the per-map rule, ``aligned`` whether landmarks were used.
    """

    method: str
    maps: Tensor
    faces: Tensor
    counts: Tensor
    classes: list[str] = field(default_factory=list)
    normalise: str = "max_abs"
    aligned: bool = True


def class_maps(model: nn.Module, batches: Iterable[Batch], method: str, params: dict[str, Any] | None = None,
               num_classes: int | None = None, normalise: str = "max_abs", only_correct: bool = True,
               align_faces: bool = True, classes: list[str] | None = None,
               maps: Iterable[Tensor] | None = None) -> ClassMaps:
    """Syndrome-wise maps and composite faces over a data set.

    Each sample is explained for its true class; with ``only_correct`` only correctly
    classified samples count (as in the facial-CNN study design). Maps are normalised per sample
    (``normalise``), aligned on the eyes and mouth when ``meta["landmarks"]`` exists and
    ``align_faces``, and averaged per class, as are the images (the composite face).

    ``maps``: optionally, each batch's (B, H, W) pixel maps already computed for its targets
    (``explain_batch(batch, batch.targets).pixel_map()``), in the order of ``batches``; then
    nothing is explained again (a sample's map does not depend on its batch neighbours, so
    the result is the same).
    """
    ex = create_explainer(method, model, **(params or {})) if maps is None else None
    given = iter(maps) if maps is not None else None
    sums: dict[int, list[Tensor]] = {}
    template = None
    aligned = False
    for batch in batches:
        full = next(given, None) if given is not None else None
        if given is not None and full is None:
            raise ValueError("class_maps: fewer maps than batches; pass one (B, H, W) map tensor per batch")
        with model_guard(model), torch.no_grad():
            pred = model(batch.inputs).argmax(1)
        keep = (pred == batch.targets) if only_correct else torch.ones_like(pred, dtype=torch.bool)
        if not keep.any():
            continue
        rows = torch.nonzero(keep).flatten()
        sub = batch.select(rows)
        pixel = ex.explain_batch(sub, sub.targets).pixel_map() if full is None else full[rows]
        normed = normalise_maps(pixel, normalise)[:, None]
        imgs = sub.inputs.float()
        lms = sub.meta.get("landmarks")
        if align_faces and lms is not None:
            lms = torch.as_tensor(lms) if not isinstance(lms, list) else torch.stack([torch.as_tensor(v) for v in lms])
            if template is None:
                template = lms[:, list(ALIGN_POINTS)].float().mean(0)
            stacked, _ = align(torch.cat([imgs, normed], 1), lms, template)
            imgs, normed = stacked[:, :-1], stacked[:, -1:]
            aligned = True
        for c in sub.targets.unique().tolist():
            sel = sub.targets == c
            acc = sums.setdefault(int(c), [torch.zeros_like(imgs[0]), torch.zeros_like(normed[0, 0]), torch.zeros(())])
            acc[0] += imgs[sel].sum(0)
            acc[1] += normed[sel, 0].sum(0)
            acc[2] += sel.sum()
    if not sums:
        raise ValueError(f"class_maps: no sample was {'correctly ' if only_correct else ''}classified; nothing to average")
    k = num_classes or (max(sums) + 1)
    like = next(iter(sums.values()))
    faces = torch.full((k, *like[0].shape), float("nan"))
    out = torch.full((k, *like[1].shape), float("nan"))
    counts = torch.zeros(k, dtype=torch.long)
    for c, (img, m, n) in sums.items():
        faces[c], out[c], counts[c] = img / n, m / n, int(n)
    return ClassMaps(method, out, faces, counts, list(classes or []), normalise, aligned)


def similarity_maps(model: nn.Module, a: Tensor, b: Tensor, layer: str | nn.Module | None = None,
                    relu: bool = False, rule: str = "gradcam") -> tuple[Tensor, Tensor]:
    """Which regions make two faces similar: GradCAM of the cosine similarity of embeddings.

    For pairs (a_i, b_i), s_i = cos(embed(a_i), embed(b_i)); each image's map is the
    GradCAM (channel weights = mean gradient of s_i) or HiResCAM (``rule="hirescam"``) of
    s_i at ``layer``, upsampled to the image. ``relu=False`` keeps regions that reduce the
    similarity (negative).

    Args:
        model: has ``embed(x) -> (B, d)`` (e.g. ``cnn.face_embedder``); else its forward output
            is taken as the embedding.
        a, b: (B, C, H, W) image pairs.
    Returns:
        (maps of a (B, H, W), maps of b (B, H, W)), raw.
    """
    check_images(a, "similarity_maps")
    check_images(b, "similarity_maps")
    if a.shape != b.shape:
        raise ValueError(f"similarity_maps: a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if rule not in ("gradcam", "hirescam"):
        raise ValueError(f"similarity_maps: rule must be 'gradcam' or 'hirescam', got {rule!r}")
    module = default_cnn_layer(model) if layer is None else find_module(model, layer)
    embed = getattr(model, "embed", model)
    n = len(a)
    with model_guard(model), capture_layer(module) as store, torch.enable_grad():
        e = F.normalize(embed(torch.cat([a, b])), dim=1)
        s = (e[:n] * e[n:]).sum(1)
        (g,) = torch.autograd.grad(s.sum(), store["act"])
        act = store["act"].detach()
    w = g.mean(dim=(2, 3), keepdim=True) if rule == "gradcam" else g
    cam = (w * act).sum(1)
    if relu:
        cam = cam.clamp_min(0)
    up = F.interpolate(cam[:, None], size=a.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return up[:n].detach(), up[n:].detach()
