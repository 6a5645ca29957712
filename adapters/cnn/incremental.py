"""Exact incremental occlusion (Krypton): recompute only the part of each layer a window changes.

An occluded image differs from the original only inside its window, so every activation map
differs from the unoccluded one only inside the window's receptive-field cone: a rectangle
that grows layer by layer with each convolution's or pooling's kernel, stride, padding and
dilation. Nakandala et al. (SIGMOD 2019) run the unoccluded image once, keep every
activation, and for a batch of windows recompute each layer only on that rectangle (the
*patch*), reading the cached activations around it, until the patch covers the whole map;
from there on the network runs normally on the batch. The result is exact: the same logits
as the plain forward of the occluded images, up to float rounding.

The model is traced with :mod:`torch.fx`; :func:`plan` raises :class:`Unsupported` when it
cannot be traced or holds nothing to save on (no convolution or pooling the patch can pass).
Patch rules:

- ``nn.Conv2d`` (zero padding), ``nn.MaxPool2d``, ``nn.AvgPool2d`` (no ``ceil_mode``): the
  output rows any patch row reaches, ``ceil((y + p - d(k-1)) / s) .. floor((y + h - 1 + p) / s)``
  (one size per batch, the largest, shifted inside the map at the borders), computed from the
  cached input padded once and the patch pasted in;
- per-pixel modules and functions (eval-mode batch norm, activations, identity, eval dropout):
  applied to the patch alone;
- ``+ - * /`` and ``torch.cat`` over channels of patches: on the union rectangle;
- anything else (global pooling, flatten, linear, attention, ...): the patch is pasted into
  the full cached map and the node runs normally on the batch of windows.

References: Nakandala, Kumar, Papakonstantinou, "Incremental and Approximate Inference for
Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019 (only the exact variant here).
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Unsupported", "Patch", "Plan", "plan", "occlusion_logits"]


class Unsupported(Exception):
    """The model cannot run incrementally (not traceable, or nothing to save); use plain occlusion."""


_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                      nn.Hardsigmoid, nn.Mish, nn.Identity)
_POINTWISE_FUNCS: set[Any] = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, F.sigmoid, torch.tanh,
                              F.leaky_relu, F.hardswish, F.hardsigmoid, F.elu, F.mish}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
                      "clamp_min_", "contiguous"}
_BINARY_FUNCS: set[Any] = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                           operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}


@dataclass
class Patch:
    """The changed rectangle of one (1, C, H, W) activation map for P windows.

    ``values`` (P, C, h, w); ``y``, ``x`` (P,) long: its top-left corner in map coordinates.
    Outside the rectangle the map equals the cached, unoccluded one."""

    values: Tensor
    y: Tensor
    x: Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.values.shape[-2]), int(self.values.shape[-1])


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _floor_div(a: Tensor, s: int) -> Tensor:
    return torch.div(a, s, rounding_mode="floor")


def _reach(pos: Tensor, size: int, k: int, s: int, p: int, d: int, n_out: int) -> tuple[Tensor, int, Tensor, int]:
    """One axis of a sliding-window op: the output rows a patch [pos, pos + size) reaches.

    Returns (first output row (P,), output rows, first input row (P,), input rows): one size
    for all windows (the largest, clipped to the map), each start shifted inside the map."""
    lo = (-_floor_div(-(pos + p - d * (k - 1)), s)).clamp_min(0)
    hi = (_floor_div(pos + size - 1 + p, s) + 1).clamp_max(n_out)
    out = max(1, min(n_out, int((hi - lo).max())))
    o0 = lo.clamp_max(n_out - out)
    return o0, out, o0 * s - p, (out - 1) * s + d * (k - 1) + 1


def paste(out: Tensor, patch: Patch, y0: Tensor, x0: Tensor) -> None:
    """Write each window's patch into ``out`` (P, C, h, w), whose top-left corners are (y0, x0),
    where they overlap. One slice assignment per distinct offset (one in the interior of the
    image, a few more at its borders)."""
    h, w = out.shape[-2:]
    ph, pw = patch.size
    dy, dx = patch.y - y0, patch.x - x0
    offsets, group = torch.unique(torch.stack([dy, dx], 1), dim=0, return_inverse=True)
    for g, (oy, ox) in enumerate(offsets.tolist()):
        a0, a1, c0, c1 = max(0, oy), min(h, oy + ph), max(0, ox), min(w, ox + pw)
        if a1 <= a0 or c1 <= c0:
            continue
        src = patch.values[..., a0 - oy:a1 - oy, c0 - ox:c1 - ox]
        if len(offsets) == 1:
            out[..., a0:a1, c0:c1] = src
        else:
            sel = (group == g).nonzero()[:, 0]
            out[sel, :, a0:a1, c0:c1] = src[sel]


class Plan:
    """A traced model and the cached unoccluded activations of one image.

    Args:
        graph: the traced model (:func:`plan`).
        image: (1, C, H, W) the unoccluded image.
    """

    def __init__(self, graph: torch.fx.GraphModule, image: Tensor) -> None:
        self.gm = graph
        self.modules = dict(graph.named_modules())
        self.cache: dict[torch.fx.Node, Any] = {}
        self._padded: dict[tuple[torch.fx.Node, int, int, float], Tensor] = {}
        #: node name -> (patch rows, columns, map rows, columns) of the last batch: what was recomputed
        self.patch_sizes: dict[str, tuple[int, int, int, int]] = {}
        self._run_cached(image)

    # ------------------------------------------------------------------ the unoccluded pass
    def _run_cached(self, image: Tensor) -> None:
        """Run the graph node by node and keep a copy of every output (in-place ops later
        in the graph must not change what a node produced)."""
        env: dict[torch.fx.Node, Any] = {}
        for node in self.gm.graph.nodes:
            if node.op == "output":
                continue
            if node.op == "placeholder":
                out = image
            else:
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
                out = self._call(node, args, kwargs)
            env[node] = out
            self.cache[node] = out.clone() if isinstance(out, Tensor) else out

    def _call(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            obj: Any = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        raise Unsupported(f"node op {node.op!r}")

    # ------------------------------------------------------------------ patch algebra
    def _padded_map(self, node: torch.fx.Node, py: int, px: int, value: float) -> Tensor:
        """The cached (C, H + 2py, W + 2px) map of ``node`` padded with ``value``, memoised."""
        key = (node, py, px, value)
        if key not in self._padded:
            m = self.cache[node][0]
            self._padded[key] = (F.pad(m, (px, px, py, py), value=value) if (py or px) else m).contiguous()
        return self._padded[key]

    def region(self, node: torch.fx.Node, patch: Patch | None, y0: Tensor, x0: Tensor, h: int, w: int,
               pad: tuple[int, int] = (0, 0), value: float = 0.0) -> Tensor:
        """(P, C, h, w): each window's current map of ``node`` over rows [y0, y0 + h) and
        columns [x0, x0 + w) (map coordinates; up to ``pad`` outside the map, filled with
        ``value``): the patch where it lies, the cached map elsewhere."""
        if patch is not None and patch.size == (h, w) and torch.equal(patch.y, y0) and torch.equal(patch.x, x0):
            return patch.values
        py, px = pad
        src = self._padded_map(node, py, px, value)
        c, hp, wp = src.shape
        blocks = src.as_strided((hp - h + 1, wp - w + 1, c, h, w), (wp, 1, hp * wp, wp, 1))
        out = blocks[y0 + py, x0 + px]  # (P, C, h, w): the cached map under each window's rectangle
        if patch is not None:
            paste(out, patch, y0, x0)
        return out

    def dense(self, node: torch.fx.Node, patch: Patch) -> Tensor:
        """(P, C, H, W): the patch pasted into the full cached map."""
        _, _, hh, ww = self.cache[node].shape
        if patch.size == (hh, ww):
            return patch.values
        zero = torch.zeros_like(patch.y)
        return self.region(node, patch, zero, zero, hh, ww)

    def _sliding(self, node: torch.fx.Node, src: torch.fx.Node, patch: Patch, k: Any, s: Any, p: Any, d: Any,
                 value: float, fn: Callable[[Tensor], Tensor]) -> Patch:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(k), _pair(s), _pair(p), _pair(d)
        _, _, ho, wo = self.cache[node].shape
        h, w = patch.size
        if (h, w) == tuple(self.cache[src].shape[-2:]):  # the patch is the whole map: the module itself
            return Patch(self.modules[node.target](patch.values), torch.zeros_like(patch.y), torch.zeros_like(patch.x))
        oy, oh, ry, rh = _reach(patch.y, h, kh, sh, ph, dh, ho)
        ox, ow, rx, rw = _reach(patch.x, w, kw, sw, pw, dw, wo)
        return Patch(fn(self.region(src, patch, ry, rx, rh, rw, (ph, pw), value)), oy, ox)

    def _union(self, nodes: list[torch.fx.Node], patches: list[Patch]) -> tuple[Tensor, Tensor, int, int]:
        _, _, hh, ww = self.cache[nodes[0]].shape
        y0 = torch.stack([p.y for p in patches]).amin(0)
        x0 = torch.stack([p.x for p in patches]).amin(0)
        y1 = torch.stack([p.y + p.size[0] for p in patches]).amax(0)
        x1 = torch.stack([p.x + p.size[1] for p in patches]).amax(0)
        h, w = min(hh, int((y1 - y0).max())), min(ww, int((x1 - x0).max()))
        return y0.clamp_max(hh - h), x0.clamp_max(ww - w), h, w

    # ------------------------------------------------------------------ one batch of windows
    def logits_for(self, patch: Patch) -> Any:
        """Model outputs (P, ...) of the image with each window's input patch pasted in."""
        env: dict[torch.fx.Node, Any] = {}  # changed nodes: a Patch, or a dense (P, ...) value
        result = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = patch
            elif node.op == "output":
                result = torch.fx.node.map_arg(node.args[0], lambda n: self._as_dense(n, env[n]) if n in env
                                               else self.cache[n])
            else:
                inputs = [n for n in node.all_input_nodes if n in env]
                if inputs:  # nodes that do not depend on the image keep their cached value
                    env[node] = self._step(node, inputs, env)
                    if isinstance(env[node], Patch):
                        self.patch_sizes[node.name] = (*env[node].size, *self.cache[node].shape[-2:])
        return result

    def _as_dense(self, node: torch.fx.Node, v: Any) -> Any:
        return self.dense(node, v) if isinstance(v, Patch) else v

    def _step(self, node: torch.fx.Node, inputs: list[torch.fx.Node], env: dict[torch.fx.Node, Any]) -> Any:
        if all(isinstance(env[n], Patch) for n in inputs):
            out = self._rule(node, inputs, env)
            if out is not None:
                return out
        args, kwargs = torch.fx.node.map_arg(
            (node.args, node.kwargs), lambda n: self._as_dense(n, env[n]) if n in env else self.cache[n])
        return self._call(node, args, kwargs)

    def _rule(self, node: torch.fx.Node, inputs: list[torch.fx.Node], env: dict[torch.fx.Node, Any]) -> Patch | None:
        """The patch-wise computation of ``node``, or None when it must run densely."""
        out_shape = getattr(self.cache[node], "shape", None)
        if out_shape is None or len(out_shape) != 4:
            return None
        first = node.args[0] if node.args else None
        if node.op == "call_module":
            m = self.modules[node.target]
            if len(inputs) != 1 or first is not inputs[0] or len(node.args) != 1 or node.kwargs:
                return None
            p = env[first]
            if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
                return self._sliding(node, first, p, m.kernel_size, m.stride, m.padding, m.dilation, 0.0,
                                     lambda r: F.conv2d(r, m.weight, m.bias, m.stride, 0, m.dilation, m.groups))
            if type(m) is nn.MaxPool2d and not m.ceil_mode and not m.return_indices:
                return self._sliding(node, first, p, m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation,
                                     float("-inf"), lambda r: F.max_pool2d(r, m.kernel_size, m.stride, 0, m.dilation))
            if type(m) is nn.AvgPool2d and not m.ceil_mode and (m.count_include_pad or not any(_pair(m.padding))):
                return self._sliding(node, first, p, m.kernel_size, m.stride or m.kernel_size, m.padding, 1, 0.0,
                                     lambda r: F.avg_pool2d(r, m.kernel_size, m.stride, 0, False, True,
                                                            m.divisor_override))
            if _pointwise_module(m):
                return Patch(m(p.values), p.y, p.x)
            return None
        if any(_spatial_tensor(self.cache.get(a), out_shape) for a in node.all_input_nodes if a not in inputs):
            return None  # a constant that varies over space: run densely
        unary = (node.op == "call_function" and node.target in _POINTWISE_FUNCS) or \
                (node.op == "call_method" and node.target in _POINTWISE_METHODS)
        if unary and len(inputs) == 1 and first is inputs[0]:
            p = env[first]
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs),
                                                 lambda n: p.values if n is first else self.cache[n])
            return Patch(self._call(node, args, kwargs), p.y, p.x)
        binary = (node.op == "call_function" and node.target in _BINARY_FUNCS) or \
                 (node.op == "call_method" and node.target in _BINARY_METHODS)
        cat = node.op == "call_function" and node.target is torch.cat and _cat_dim(node) == 1
        if not (binary or cat):
            return None
        if len({tuple(self.cache[n].shape[-2:]) for n in inputs} | {tuple(out_shape[-2:])}) != 1 \
                or any(self.cache[n].shape[0] != 1 for n in inputs):
            return None
        y0, x0, h, w = self._union(inputs, [env[n] for n in inputs])
        vals = {n: self.region(n, env[n], y0, x0, h, w) for n in inputs}
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs),
                                             lambda n: vals[n] if n in vals else self.cache[n])
        return Patch(self._call(node, args, kwargs), y0, x0)


def _cat_dim(node: torch.fx.Node) -> int | None:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return dim if isinstance(dim, int) else None


def _spatial_tensor(v: Any, shape: torch.Size) -> bool:
    return isinstance(v, Tensor) and v.ndim >= 2 and v.shape[-2:] == shape[-2:] and v.shape[-2:].numel() > 1


def _pointwise_module(m: nn.Module) -> bool:
    if isinstance(m, _POINTWISE_MODULES):
        return True
    if type(m) in (nn.Dropout, nn.Dropout2d):
        return not m.training
    if type(m) is nn.BatchNorm2d:
        return not m.training and m.running_mean is not None
    return False


def plan(model: nn.Module) -> torch.fx.GraphModule:
    """Trace ``model`` for incremental occlusion.

    Raises:
        Unsupported: torch.fx cannot trace it, or no convolution / pooling of it can run on a patch.
    """
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means: run the plain path
        first = str(e).splitlines()[0] if str(e) else ""
        raise Unsupported(f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {first[:120]})") from None
    if sum(1 for n in gm.graph.nodes if n.op == "placeholder") != 1:
        raise Unsupported(f"{type(model).__name__}.forward takes more than one input")
    if not any(n.op == "call_module" and type(gm.get_submodule(n.target)) in (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
               for n in gm.graph.nodes):
        raise Unsupported(f"{type(model).__name__} has no nn.Conv2d / pooling module to run on a patch")
    return gm


def input_patches(image: Tensor, baseline: Tensor, masks: Tensor, window: tuple[int, int]) -> Patch:
    """The occluded input rectangles: each window's (C, h, w) box (shifted inside the image at
    the borders), ``where(mask, baseline, image)`` inside it. image, baseline (1, C, H, W);
    masks (P, H, W) bool, each inside an (h, w) box."""
    p, hh, ww = masks.shape
    h, w = window
    y = masks.any(2).to(torch.int8).argmax(1).clamp_max(hh - h)
    x = masks.any(1).to(torch.int8).argmax(1).clamp_max(ww - w)
    rows = (y[:, None] + torch.arange(h, device=y.device))[:, :, None]
    cols = (x[:, None] + torch.arange(w, device=x.device))[:, None, :]
    m = masks[torch.arange(p, device=y.device)[:, None, None], rows, cols]  # (P, h, w)
    img = image[0][:, rows, cols].transpose(0, 1)  # (P, C, h, w)
    base = baseline[0][:, rows, cols].transpose(0, 1)
    return Patch(torch.where(m[:, None], base, img), y, x)


def occlusion_logits(graph: torch.fx.GraphModule, image: Tensor, baseline: Tensor, masks: Tensor,
                     window: tuple[int, int], batch_size: int) -> Tensor:
    """Model outputs of ``where(mask_k, baseline, image)`` for every window k, incrementally.

    Args:
        graph: the traced model (:func:`plan`), in the mode to explain (eval).
        image, baseline: (1, C, H, W).
        masks: (P, H, W) bool; window k lies inside a ``window``-sized box.
        window: (h, w) box size.
        batch_size: windows per pass.

    Returns:
        (P, K) outputs, equal to ``model(torch.where(masks[:, None], baseline, image))`` up to
        float rounding.

    Example:
        >>> logits = occlusion_logits(plan(model), x[:1], torch.zeros_like(x[:1]), masks, (10, 10), 64)
    """
    cached = Plan(graph, image)
    out = [cached.logits_for(input_patches(image, baseline, masks[s:s + batch_size], window))
           for s in range(0, masks.shape[0], batch_size)]
    return torch.cat(out)


#: windows per incremental pass when the explainer's ``batch_size`` is not set
BATCH_SIZE = 64
#: images of at most this many pixels (96²) run their incremental passes on one torch thread:
#: hundreds of small patch kernels per image, where a second thread only adds fork/join waits,
#: and on a busy machine those dominate (64² faces of the default benchmark, load 17 on 2
#: cores: 0.26 s per face on one thread, 8.3 s on two); the thread count is restored after
SMALL_IMAGE = 96 * 96


def occlusion_drops(model: nn.Module, engine: str, inputs: Tensor, baseline: Tensor, masks: Tensor,
                    window: tuple[int, ...], target: Tensor, reference: Tensor, out: Tensor,
                    batch_size: int | None = None) -> str:
    """Fill ``out`` (B·P,) with the target-logit drops of every (sample, window), incrementally
    when ``engine`` allows it. Returns the engine that ran, as a one-line note for the
    attribution's extras: ``"incremental"``, ``"plain"``, or ``"plain (incremental: <why not>)"``
    (then ``out`` is untouched and the caller runs the plain batched forwards).

    Args:
        model: the model, already guarded (eval mode, frozen).
        engine: ``"auto"``, ``"incremental"`` or ``"plain"``.
        inputs, baseline: (B, C, H, W).
        masks: (P, H, W) bool windows, each inside a ``window``-sized box.
        target, reference: (B,) explained classes and their unoccluded logits.
    """
    if engine == "plain":
        return "plain"
    threads = torch.get_num_threads()
    try:
        if inputs.ndim != 4:
            raise Unsupported("2-D images only")
        graph = plan(model)
        b, n = inputs.shape[0], masks.shape[0]
        if inputs.shape[-2] * inputs.shape[-1] <= SMALL_IMAGE:
            torch.set_num_threads(1)
        for i in range(b):
            logits = occlusion_logits(graph, inputs[i:i + 1], baseline[i:i + 1], masks, tuple(window),
                                      batch_size or BATCH_SIZE)
            if logits.ndim != 2:
                raise Unsupported(f"model output must be (P, classes), got {tuple(logits.shape)}")
            out[i * n:(i + 1) * n] = reference[i] - logits[:, int(target[i])]
    except Unsupported as e:
        if engine == "incremental":
            warnings.warn(f"cnn.occlusion: engine='incremental' fell back to plain occlusion: {e}", stacklevel=3)
        return f"plain (incremental: {e})"
    finally:
        torch.set_num_threads(threads)
    return "incremental"
