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
- a global max over every spatial axis (``x.amax(dim=...)``, ``torch.amax``,
  ``nn.AdaptiveMaxPool2d/3d(1)``): the larger of the patch's maximum and the cached map's maximum
  outside the box (once per distinct box corner). The per-element nodes that feed only such a max
  stay patches however large (never pasted into whole maps), and a stride-1 3-D convolution
  among them keeps the change's own box, which may hang past the border (the max skips it);
- an ``nn.ReLU`` whose input is a convolution's or batch norm's patch that nothing else reads
  runs in place;
- anything else (global pooling, flatten, linear, attention, ...): the patch is pasted into
  the full cached map and the node runs normally on the batch of windows.

References: Nakandala, Kumar, Papakonstantinou, "Incremental and Approximate Inference for
Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019 (only the exact variant here).
"""

from __future__ import annotations

import math
import operator
import warnings
import weakref
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
    """The changed box of one (1, C, *S) activation map for P windows (S: (H, W) or (D, H, W)).

    ``values`` (P, C, *s); ``corner`` (P, nd) long: each box's first index along every spatial
    axis, in map coordinates. Outside the box the map equals the cached, unoccluded one."""

    values: Tensor
    corner: Tensor

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.values.shape[2:])


def _ntuple(v: Any, nd: int) -> tuple[int, ...]:
    return (int(v),) * nd if isinstance(v, int) else tuple(int(i) for i in v)


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


def _on_axis(t: Tensor, a: int, nd: int) -> Tensor:
    """A (P, k) tensor viewed as (P, 1, ..., k, ..., 1), to broadcast along spatial axis ``a`` of ``nd``."""
    return t.view(t.shape[0], *([1] * a), t.shape[1], *([1] * (nd - a - 1)))


def gather_boxes(src: Tensor, corner: Tensor, size: tuple[int, ...], per_window: bool = False,
                 channels_last: bool = False) -> Tensor:
    """(P, C, *size) copies of the boxes of ``src`` whose first indices are ``corner`` (P, nd).

    ``src`` is one (C, *S) map shared by all windows, or with ``per_window`` a (P, *S) stack
    (then the result is (P, *size): each window's own box). A shared map is one ``index_select``
    of the boxes' flat spatial positions and one transpose (24 x 5³ boxes of 128 windows from an
    8³ map: 0.3 ms, where advanced indexing of a strided view of the boxes took 1.1 ms); a
    per-window stack is one strided view and one gather. ``channels_last``: a shared (C, *S) map's
    boxes in channels-last memory order (one ``index_select`` of rows of the transposed map)."""
    src = src.contiguous()
    nd = len(size)
    lead, dims = src.shape[:-nd], src.shape[-nd:]
    spatial = src.stride()[-nd:]
    if per_window:
        grid = tuple(n - k + 1 for n, k in zip(dims, size))
        idx = tuple(corner[:, a] for a in range(nd))
        blocks = src.as_strided((lead[0], *grid, *size), (src.stride(0), *spatial, *spatial))
        return blocks[(torch.arange(len(corner), device=corner.device), *idx)]
    flat = torch.zeros((len(corner),) + (1,) * nd, dtype=torch.long, device=corner.device)
    for a, (k, st) in enumerate(zip(size, spatial)):  # each box element's flat spatial position
        step = (corner[:, a, None] + torch.arange(k, device=corner.device)) * st
        flat = flat + _on_axis(step, a, nd)
    if channels_last:  # (P * box, L) rows of the transposed map, viewed as (P, L, *size)
        rows = src.reshape(math.prod(lead), -1).t().contiguous().index_select(0, flat.flatten())
        return rows.view(len(corner), *size, *lead).movedim(-1, 1)
    boxes = src.reshape(math.prod(lead), -1).index_select(1, flat.flatten())  # (L, P * box)
    return boxes.view(*lead, len(corner), *size).movedim(len(lead), 0).contiguous()


def paste(out: Tensor, patch: Patch, corner: Tensor, add: bool = False) -> None:
    """Write (``add``: add) each window's patch into ``out`` (P, C, *s), whose first indices are
    ``corner`` (P, nd), where they overlap.

    One ``scatter_`` (``scatter_add_``) of the patch elements to their flat positions, a (P, 1,
    patch) index broadcast over the channels, when every patch lies inside ``out`` (the rule, but
    at some borders) or when adding (elements outside ``out`` then add 0 to a clamped position);
    else one slice assignment per distinct offset. 343 windows of 24 x 5³ pasted into 8³ maps:
    0.2 ms scattered, 5.5 ms in 27 offset groups (2 cores)."""
    dims, sizes = out.shape[2:], patch.size
    dev = patch.corner.device
    rel = patch.corner - corner
    inside = bool((rel >= 0).all()) and bool((rel + torch.tensor(sizes, device=dev) <= torch.tensor(dims, device=dev)).all())
    if out.is_contiguous() and (inside or add):
        idx = torch.zeros(len(rel), device=dev, dtype=torch.long).view(-1, *([1] * len(dims)))
        keep = None
        for a, (k, n, st) in enumerate(zip(sizes, dims, out.stride()[2:])):  # flat positions, axis by axis
            pos = _on_axis(rel[:, a, None] + torch.arange(k, device=dev), a, len(dims))
            if not inside:
                ok = (pos >= 0) & (pos < n)
                keep = ok if keep is None else keep & ok
                pos = pos.clamp(0, n - 1)
            idx = idx + pos * st
        vals = patch.values if inside else patch.values * keep[:, None]
        flat = out.view(*out.shape[:2], -1)
        idx = idx.reshape(len(rel), 1, -1).expand(-1, out.shape[1], -1)
        vals = vals.reshape(*out.shape[:2], -1)
        flat.scatter_add_(2, idx, vals) if add else flat.scatter_(2, idx, vals)
        return
    offsets, group = torch.unique(rel, dim=0, return_inverse=True)
    for g, off in enumerate(offsets.tolist()):
        dst, src = [], []
        for o, n, k in zip(off, dims, sizes):
            a0, a1 = max(0, o), min(n, o + k)
            if a1 <= a0:
                break
            dst.append(slice(a0, a1))
            src.append(slice(a0 - o, a1 - o))
        else:
            view, vals = out[(slice(None), slice(None), *dst)], patch.values[(slice(None), slice(None), *src)]
            if len(offsets) == 1:
                view.add_(vals) if add else view.copy_(vals)
            else:  # index_copy_ on the box's view: ~1.5x faster than an advanced-index assignment
                sel = (group == g).nonzero()[:, 0]
                (view.index_add_ if add else view.index_copy_)(0, sel, vals.index_select(0, sel))


#: a convolution or pooling whose output box covers at least this fraction of its map runs on the
#: full maps (the patch pasted into copies of the cached input), unless only a global max reads
#: it: a box of 7³ in an 8³ map (``volume_cnn3d``'s last stage) took 37 ms per 343 windows as a
#: gathered box and a 9³ -> 7³ convolution, 29 ms as copies and the dense 8³ convolution (2
#: cores); by linearity into the global max, with no copy and no scatter, it is ~25% of the
#: whole explanation faster again
DENSE_FRACTION = 0.5

#: the spatial dims and patch-wise functional of each module type that can run on a patch
#: (its input already padded)
_CONV = {nn.Conv2d: (2, F.conv2d), nn.Conv3d: (3, F.conv3d)}
_MAXPOOL = {nn.MaxPool2d: (2, F.max_pool2d), nn.MaxPool3d: (3, F.max_pool3d)}
_AVGPOOL = {nn.AvgPool2d: (2, F.avg_pool2d), nn.AvgPool3d: (3, F.avg_pool3d)}


class Plan:
    """A traced model and the cached unoccluded activations of one image or volume.

    Args:
        graph: the traced model (:func:`plan`).
        image: (1, C, H, W) the unoccluded image, or (1, C, D, H, W) the volume.
    """

    def __init__(self, graph: torch.fx.GraphModule, image: Tensor) -> None:
        self.gm = graph
        self.nd = image.ndim - 2
        self.modules = dict(graph.named_modules())
        self.cache: dict[torch.fx.Node, Any] = {}
        self._padded: dict[tuple[torch.fx.Node, tuple[int, ...], float], Tensor] = {}
        #: node name -> (patch sides..., map sides...) of the last batch: what was recomputed
        self.patch_sizes: dict[str, tuple[int, ...]] = {}
        #: nodes whose output reaches a global max only through per-element ops (they stay patches)
        self._max_bound = _max_bound_nodes(graph, self.modules, self.nd)
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

    def _map_size(self, node: torch.fx.Node) -> tuple[int, ...]:
        return tuple(self.cache[node].shape[2:])

    # ------------------------------------------------------------------ patch algebra
    def _padded_map(self, node: torch.fx.Node, pad: tuple[int, ...], value: float) -> Tensor:
        """The cached (C, *(S + 2 pad)) map of ``node`` padded with ``value``, memoised."""
        key = (node, pad, value)
        if key not in self._padded:
            m = self.cache[node][0]
            widths = [w for p in reversed(pad) for w in (p, p)]
            self._padded[key] = (F.pad(m, widths, value=value) if any(pad) else m).contiguous()
        return self._padded[key]

    def region(self, node: torch.fx.Node, patch: Patch | None, corner: Tensor, size: tuple[int, ...],
               pad: tuple[int, ...] | None = None, value: float = 0.0) -> Tensor:
        """(P, C, *size): each window's current map of ``node`` over the box starting at ``corner``
        (P, nd) (map coordinates; up to ``pad`` outside the map, filled with ``value``): the
        patch where it lies, the cached map elsewhere."""
        if patch is not None and patch.size == tuple(size) and torch.equal(patch.corner, corner):
            return patch.values
        pad = pad or (0,) * self.nd
        src = self._padded_map(node, tuple(pad), value)
        out = gather_boxes(src, corner + torch.tensor(pad, device=corner.device), tuple(size))
        if patch is not None:
            paste(out, patch, corner)
        return out

    def _copies(self, node: torch.fx.Node, n: int) -> Tensor:
        """(n, C, *S) copies of the cached map of ``node`` (a copy: faster than a gather)."""
        cached = self.cache[node]
        return cached.expand(n, *cached.shape[1:]).clone()

    def dense(self, node: torch.fx.Node, patch: Patch) -> Tensor:
        """(P, C, *S): the patch pasted into the full cached map."""
        if patch.size == self._map_size(node):
            return patch.values
        out = self._copies(node, len(patch.values))
        paste(out, patch, torch.zeros_like(patch.corner))
        return out

    def _reach_box(self, node: torch.fx.Node, patch: Patch, k: tuple[int, ...], s: tuple[int, ...],
               p: tuple[int, ...], d: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...], Tensor, tuple[int, ...]]:
        """:func:`_reach` on every axis of a sliding-window ``node`` fed by ``patch``: the output box
        (corners (P, nd), size) and the input box it reads (corners, size)."""
        n_out = self._map_size(node)
        axes = [_reach(patch.corner[:, a], patch.size[a], k[a], s[a], p[a], d[a], n_out[a]) for a in range(self.nd)]
        return (torch.stack([a[0] for a in axes], 1), tuple(a[1] for a in axes),
                torch.stack([a[2] for a in axes], 1), tuple(a[3] for a in axes))

    def _sliding(self, node: torch.fx.Node, src: torch.fx.Node, patch: Patch, k: Any, s: Any, p: Any, d: Any,
                 value: float, fn: Callable[[Tensor], Tensor]) -> Patch:
        nd = self.nd
        k, s, p, d = _ntuple(k, nd), _ntuple(s, nd), _ntuple(p, nd), _ntuple(d, nd)
        out_corner, out_size, in_corner, in_size = self._reach_box(node, patch, k, s, p, d)
        if node not in self._max_bound and math.prod(out_size) >= DENSE_FRACTION * math.prod(self._map_size(node)):
            # the patch reaches (nearly) the whole map: the module itself on the full maps
            whole = self.dense(src, patch)
            return Patch(self.modules[node.target](whole), torch.zeros_like(patch.corner))
        return Patch(fn(self.region(src, patch, in_corner, in_size, p, value)), out_corner)

    def _conv_delta(self, node: torch.fx.Node, src: torch.fx.Node, patch: Patch, m: nn.Module,
                    conv: Callable[..., Tensor]) -> Patch:
        """A stride-1 convolution by linearity: the cached output plus the convolution of the
        change (the patch minus the cached input under it, zero elsewhere) with the kernel alone.

        The change is convolved with the layer's own zero padding widened to ``d(k-1)``, so every
        output it reaches comes out and the padded taps are skipped by the backend: for a 24-channel
        3³ convolution of 343 windows, a 5³ change took 9 ms against 22 ms for the 9³ input box
        of :meth:`_sliding` (2 cores). Volumes only: on 2-D images the box rule was measured
        and tuned. (Channels-last inputs halved this convolution alone in a micro-benchmark but
        changed nothing measurable in the whole explanation.)"""
        nd = self.nd
        k, p, d = _ntuple(m.kernel_size, nd), _ntuple(m.padding, nd), _ntuple(m.dilation, nd)
        n_out = self._map_size(node)
        delta = patch.values - gather_boxes(self.cache[src][0], patch.corner, patch.size)
        full = tuple(dd * (kk - 1) for dd, kk in zip(d, k))
        reach = torch.tensor(p, device=patch.corner.device) - torch.tensor(full, device=patch.corner.device)
        if node in self._max_bound:
            # only a global max reads this map: keep the change's own box, unclipped (the max skips
            # what lies past the border), so the cached box around it is one gather from the map
            # padded by d(k-1) and the change adds in place, with no scatter. Channels-last: the
            # backend then convolves without reordering into scratch buffers it maps fresh from the
            # OS on every call (24 -> 24 channels, 128 windows of 5³: 1163 page faults and 8.1 ms
            # per call contiguous, 256 and 4.4 ms channels-last)
            spread = conv(delta.contiguous(memory_format=torch.channels_last_3d), m.weight, None, 1, full,
                          m.dilation, m.groups)
            corner = patch.corner + reach
            cached = gather_boxes(self._padded_map(node, full, 0.0), corner + torch.tensor(full, device=corner.device),
                                  tuple(spread.shape[2:]), channels_last=True)
            return Patch(spread.add_(cached), corner)
        spread = conv(delta, m.weight, None, 1, full, m.dilation, m.groups)  # (P, C_out, q + d(k-1))
        corner, size, _, _ = self._reach_box(node, patch, k, (1,) * nd, p, d)
        if math.prod(size) >= DENSE_FRACTION * math.prod(n_out):
            # a copy of the whole map beats a gather
            corner, size = torch.zeros_like(corner), n_out
            out = self._copies(node, len(corner))
        else:
            out = gather_boxes(self.cache[node][0], corner, size)
        paste(out, Patch(spread, patch.corner + reach), corner, add=True)
        return Patch(out, corner)

    def _union(self, nodes: list[torch.fx.Node], patches: list[Patch]) -> tuple[Tensor, tuple[int, ...]]:
        full = self._map_size(nodes[0])
        lo = torch.stack([q.corner for q in patches]).amin(0)
        hi = torch.stack([q.corner + torch.tensor(q.size, device=q.corner.device) for q in patches]).amax(0)
        size = tuple(min(n, int(m)) for n, m in zip(full, (hi - lo).amax(0)))
        return torch.minimum(lo, torch.tensor(full, device=lo.device) - torch.tensor(size, device=lo.device)), size

    def _global_max(self, src: torch.fx.Node, patch: Patch, keepdim: bool) -> Tensor:
        """(P, C) (``keepdim``: (P, C, 1, ...)) maximum over the whole map of ``src`` for each
        window: the larger of the patch's maximum and the cached map's maximum outside the box,
        the latter computed once per distinct box corner. Exact (a max does not round). The box
        may hang past the map's border (:meth:`_conv_delta`): those elements are skipped."""
        cached = self.cache[src][0]  # (C, *S)
        dims = tuple(range(2, 2 + self.nd))
        vals, dev = patch.values, cached.device
        hangs = False
        for a, (k, n) in enumerate(zip(patch.size, self._map_size(src))):
            # a box hanging past the border (only :meth:`_conv_delta`'s, whose values no other node
            # reads): its planes outside the map become -inf in place, for the windows concerned
            first = patch.corner[:, a]
            below, above = int((-first).clamp_min(0).max()), int((first + k - n).clamp_min(0).max())
            for i in [*range(min(below, k)), *range(max(0, k - above), k)]:
                sel = torch.nonzero((first + i < 0) | (first + i >= n))[:, 0]
                vals.select(2 + a, i).index_fill_(0, sel, -math.inf)
                hangs = True
        inner = vals.amax(dim=dims)
        if patch.size != self._map_size(src) or hangs:
            corners, which = torch.unique(patch.corner, dim=0, return_inverse=True)
            inbox = torch.ones(len(corners), *self._map_size(src), dtype=torch.bool, device=cached.device)
            for a, (k, n) in enumerate(zip(patch.size, self._map_size(src))):
                pos = torch.arange(n, device=cached.device)
                ok = (pos >= corners[:, a, None]) & (pos < corners[:, a, None] + k)  # (U, n)
                inbox &= _on_axis(ok, a, self.nd)
            outside = torch.where(inbox[:, None], torch.full((), -math.inf, dtype=cached.dtype, device=cached.device),
                                  cached[None]).amax(dim=dims)  # (U, C)
            inner = torch.maximum(inner, outside[which])
        return inner.reshape(*inner.shape, *([1] * self.nd)) if keepdim else inner

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
                        self.patch_sizes[node.name] = (*env[node].size, *self._map_size(node))
        return result

    def _as_dense(self, node: torch.fx.Node, v: Any) -> Any:
        return self.dense(node, v) if isinstance(v, Patch) else v

    def _step(self, node: torch.fx.Node, inputs: list[torch.fx.Node], env: dict[torch.fx.Node, Any]) -> Any:
        if all(isinstance(env[n], Patch) for n in inputs):
            keepdim = _global_max(node, self.modules, self.nd)
            if keepdim is not None and len(inputs) == 1 and node.args[0] is inputs[0]:
                return self._global_max(inputs[0], env[inputs[0]], keepdim)
            out = self._rule(node, inputs, env)
            if out is not None:
                return out
        args, kwargs = torch.fx.node.map_arg(
            (node.args, node.kwargs), lambda n: self._as_dense(n, env[n]) if n in env else self.cache[n])
        return self._call(node, args, kwargs)

    def _module_rule(self, node: torch.fx.Node, m: nn.Module, p: Patch) -> Patch | None:
        first, nd = node.args[0], self.nd
        conv, maxpool, avgpool = (t.get(type(m), (0, None)) for t in (_CONV, _MAXPOOL, _AVGPOOL))
        if conv[0] == nd and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            if nd == 3 and all(st == 1 for st in _ntuple(m.stride, nd)):
                return self._conv_delta(node, first, p, m, conv[1])
            return self._sliding(node, first, p, m.kernel_size, m.stride, m.padding, m.dilation, 0.0,
                                 lambda r: conv[1](r, m.weight, m.bias, m.stride, 0, m.dilation, m.groups))
        if maxpool[0] == nd and not m.ceil_mode and not m.return_indices:
            return self._sliding(node, first, p, m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation,
                                 float("-inf"), lambda r: maxpool[1](r, m.kernel_size, m.stride, 0, m.dilation))
        if avgpool[0] == nd and not m.ceil_mode and (m.count_include_pad or not any(_ntuple(m.padding, nd))):
            return self._sliding(node, first, p, m.kernel_size, m.stride or m.kernel_size, m.padding, 1, 0.0,
                                 lambda r: avgpool[1](r, m.kernel_size, m.stride, 0, False, True, m.divisor_override))
        if _pointwise_module(m):
            if type(m) is nn.ReLU and self._fresh(first):  # no other reader: skip the allocation
                return Patch(torch.relu_(p.values), p.corner)
            return Patch(m(p.values), p.corner)
        return None

    def _fresh(self, node: torch.fx.Node) -> bool:
        """Whether ``node``'s patch values are a new tensor only its one user reads: the output of a
        convolution or batch norm module (never a view of the cache or of another node's value)."""
        return (len(node.users) == 1 and node.op == "call_module"
                and type(self.modules[node.target]) in (*_CONV, nn.BatchNorm2d, nn.BatchNorm3d))

    def _rule(self, node: torch.fx.Node, inputs: list[torch.fx.Node], env: dict[torch.fx.Node, Any]) -> Patch | None:
        """The patch-wise computation of ``node``, or None when it must run densely."""
        out_shape = getattr(self.cache[node], "shape", None)
        if out_shape is None or len(out_shape) != self.nd + 2:
            return None
        first = node.args[0] if node.args else None
        if node.op == "call_module":
            if len(inputs) != 1 or first is not inputs[0] or len(node.args) != 1 or node.kwargs:
                return None
            return self._module_rule(node, self.modules[node.target], env[first])
        if any(_spatial_tensor(self.cache.get(a), out_shape, self.nd) for a in node.all_input_nodes
               if a not in inputs):
            return None  # a constant that varies over space: run densely
        if _pointwise_call(node) and len(inputs) == 1 and first is inputs[0]:
            p = env[first]
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs),
                                                 lambda n: p.values if n is first else self.cache[n])
            return Patch(self._call(node, args, kwargs), p.corner)
        binary = (node.op == "call_function" and node.target in _BINARY_FUNCS) or \
                 (node.op == "call_method" and node.target in _BINARY_METHODS)
        cat = node.op == "call_function" and node.target is torch.cat and _cat_dim(node) == 1
        if not (binary or cat):
            return None
        if len({self._map_size(n) for n in inputs} | {tuple(out_shape[2:])}) != 1 \
                or any(self.cache[n].shape[0] != 1 for n in inputs):
            return None
        corner, size = self._union(inputs, [env[n] for n in inputs])
        vals = {n: self.region(n, env[n], corner, size) for n in inputs}
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs),
                                             lambda n: vals[n] if n in vals else self.cache[n])
        return Patch(self._call(node, args, kwargs), corner)


def _cat_dim(node: torch.fx.Node) -> int | None:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return dim if isinstance(dim, int) else None


def _spatial_tensor(v: Any, shape: torch.Size, nd: int) -> bool:
    return isinstance(v, Tensor) and v.ndim >= nd and v.shape[-nd:] == shape[-nd:] and v.shape[-nd:].numel() > 1


def _pointwise_call(node: torch.fx.Node) -> bool:
    """A per-element function or tensor method (``torch.relu(x)``, ``x.clamp(...)``)."""
    return (node.op == "call_function" and node.target in _POINTWISE_FUNCS) or \
        (node.op == "call_method" and node.target in _POINTWISE_METHODS)


def _pointwise_module(m: nn.Module) -> bool:
    if isinstance(m, _POINTWISE_MODULES):
        return True
    if type(m) in (nn.Dropout, nn.Dropout2d, nn.Dropout3d):
        return not m.training
    if type(m) in (nn.BatchNorm2d, nn.BatchNorm3d):
        return not m.training and m.running_mean is not None
    return False


_ADAPTIVE_MAX = {nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3}


def _global_max(node: torch.fx.Node, modules: dict[str, nn.Module], nd: int) -> bool | None:
    """None unless ``node`` takes the maximum of its first input over every spatial axis: then
    whether it keeps those axes (size 1). Recognised: ``x.amax(dim=...)`` / ``torch.amax`` over all
    spatial axes (as dims 2.. or -nd..), ``nn.AdaptiveMaxPool2d/3d(1)`` without indices."""
    spatial = set(range(2, 2 + nd))
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if _ADAPTIVE_MAX.get(type(m)) == nd and not m.return_indices and _ntuple(m.output_size, nd) == (1,) * nd:
            return True
        return None
    if not ((node.op == "call_method" and node.target == "amax") or (node.op == "call_function" and node.target is torch.amax)):
        return None
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    dims = (dim,) if isinstance(dim, int) else tuple(dim) if isinstance(dim, (tuple, list)) else ()
    if not all(isinstance(d, int) for d in dims) or {d % (nd + 2) for d in dims} != spatial or len(dims) != nd:
        return None
    return bool(keep)


def _max_bound_nodes(graph: torch.fx.GraphModule, modules: dict[str, nn.Module], nd: int) -> set[torch.fx.Node]:
    """Nodes whose only user is a global max (:func:`_global_max`) or a per-element module or
    function that is itself max-bound: their patches need not be pasted into whole maps."""
    bound: set[torch.fx.Node] = set()
    for node in reversed(graph.graph.nodes):
        if len(node.users) != 1:
            continue
        (user,) = node.users
        if user.args[:1] != (node,):
            continue
        per_element = _pointwise_call(user) or (user.op == "call_module"
                                                and _pointwise_module(modules[str(user.target)]))
        if _global_max(user, modules, nd) is not None or (per_element and user in bound):
            bound.add(node)
    return bound


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
    if not any(n.op == "call_module" and type(gm.get_submodule(n.target)) in {**_CONV, **_MAXPOOL, **_AVGPOOL}
               for n in gm.graph.nodes):
        raise Unsupported(f"{type(model).__name__} has no nn.Conv2d/3d or pooling module to run on a patch")
    return gm


_TRACED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], torch.fx.GraphModule]] = \
    weakref.WeakKeyDictionary()


def traced(model: nn.Module) -> torch.fx.GraphModule:
    """:func:`plan` of ``model``, memoised per model while its modules stay the same objects (a
    trace took 3.5-5.5 ms, more than the whole cached pass of a 32³ volume; the traced graph
    calls the model's own modules, so new weights are seen). A model whose modules were replaced
    is traced again."""
    key = tuple(id(m) for m in model.modules())
    hit = _TRACED.get(model)
    if hit is None or hit[0] != key:
        hit = (key, plan(model))
        _TRACED[model] = hit
    return hit[1]


def box_corners(masks: Tensor, window: tuple[int, ...]) -> Tensor:
    """(P, nd) long: the first index of each window's ``window``-sized box (shifted inside the
    image at the borders); masks (P, *S) bool. A box's first element in row-major order is its
    corner."""
    shape = masks.shape[1:]
    corner = torch.stack(torch.unravel_index(masks.flatten(1).to(torch.uint8).argmax(1), shape), 1)
    return torch.minimum(corner, torch.tensor(shape, device=corner.device) - torch.tensor(window, device=corner.device))


def input_patches(image: Tensor, baseline: Tensor, masks: Tensor, window: tuple[int, ...],
                  corners: Tensor | None = None) -> Patch:
    """The occluded input boxes: each window's (C, *window) box (shifted inside the image at the
    borders), ``where(mask, baseline, image)`` inside it. image, baseline (1, C, *S) for S = (H, W)
    or (D, H, W); masks (P, *S) bool, each inside a ``window``-sized box; ``corners`` (P, nd) the
    boxes' first indices when known (:func:`box_corners` otherwise)."""
    window = tuple(window)
    corner = box_corners(masks, window) if corners is None else corners
    m = gather_boxes(masks, corner, window, per_window=True)  # (P, *window)
    img, base = gather_boxes(image[0], corner, window), gather_boxes(baseline[0], corner, window)
    return Patch(torch.where(m[:, None], base, img), corner)


def occlusion_logits(graph: torch.fx.GraphModule, image: Tensor, baseline: Tensor, masks: Tensor,
                     window: tuple[int, ...], batch_size: int, corners: Tensor | None = None) -> Tensor:
    """Model outputs of ``where(mask_k, baseline, image)`` for every window k, incrementally.

    Args:
        graph: the traced model (:func:`plan`), in the mode to explain (eval).
        image, baseline: (1, C, H, W), or (1, C, D, H, W) for a volume.
        masks: (P, H, W) (or (P, D, H, W)) bool; window k lies inside a ``window``-sized box.
        window: (h, w) (or (d, h, w)) box size.
        batch_size: windows per pass.
        corners: (P, nd) the boxes' first indices, when the caller knows them (:func:`box_corners`).

    Returns:
        (P, K) outputs, equal to ``model(torch.where(masks[:, None], baseline, image))`` up to
        float rounding.

    Example:
        >>> logits = occlusion_logits(plan(model), x[:1], torch.zeros_like(x[:1]), masks, (10, 10), 64)
    """
    cached = Plan(graph, image)
    corners = box_corners(masks, tuple(window)) if corners is None else corners
    out = [cached.logits_for(input_patches(image, baseline, masks[s:s + batch_size], window,
                                           corners[s:s + batch_size]))
           for s in range(0, masks.shape[0], batch_size)]
    return torch.cat(out)


#: windows per incremental pass when the explainer's ``batch_size`` is not set (images; volumes:
#: :data:`VOLUME_BATCH_SIZE`; 343 windows of 32³ on ``volume_cnn3d``, 2 cores: 57-66 ms with 64
#: per pass, 44-60 ms with 128, 54-62 ms with 343)
BATCH_SIZE = 64
VOLUME_BATCH_SIZE = 128
#: images of at most this many pixels (96²) run their incremental passes on one torch thread:
#: hundreds of small patch kernels per image, where a second thread only adds fork/join waits,
#: and on a busy machine those dominate (64² faces of the default benchmark, load 17 on 2
#: cores: 0.26 s per face on one thread, 8.3 s on two); the thread count is restored after
SMALL_IMAGE = 96 * 96


def occlusion_drops(model: nn.Module, engine: str, inputs: Tensor, baseline: Tensor, masks: Tensor,
                    window: tuple[int, ...], target: Tensor, reference: Tensor, out: Tensor,
                    batch_size: int | None = None, corners: Tensor | None = None) -> str:
    """Fill ``out`` (B·P,) with the target-logit drops of every (sample, window), incrementally
    when ``engine`` allows it. Returns the engine that ran, as a one-line note for the
    attribution's extras: ``"incremental"``, ``"plain"``, or ``"plain (incremental: <why not>)"``
    (then ``out`` is untouched and the caller runs the plain batched forwards).

    Args:
        model: the model, already guarded (eval mode, frozen).
        engine: ``"auto"``, ``"incremental"`` or ``"plain"``.
        inputs, baseline: (B, C, H, W) images or (B, C, D, H, W) volumes.
        masks: (P, H, W) (or (P, D, H, W)) bool windows, each inside a ``window``-sized box.
        target, reference: (B,) explained classes and their unoccluded logits.
        corners: (P, nd) the windows' box corners when the caller knows them (else from ``masks``).
    """
    if engine == "plain":
        return "plain"
    threads = torch.get_num_threads()
    try:
        graph = traced(model)
        b, n = inputs.shape[0], masks.shape[0]
        if math.prod(inputs.shape[2:]) <= SMALL_IMAGE:
            torch.set_num_threads(1)
        corners = box_corners(masks, tuple(window)) if corners is None else corners
        for i in range(b):
            logits = occlusion_logits(graph, inputs[i:i + 1], baseline[i:i + 1], masks, tuple(window),
                                      batch_size or (VOLUME_BATCH_SIZE if inputs.ndim == 5 else BATCH_SIZE), corners)
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
