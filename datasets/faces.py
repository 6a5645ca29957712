"""Synthetic frontal faces whose syndrome classes are defined by known facial regions.

Each face has a head outline, hair, ears, eyes, brows, a nose with its bridge and a mouth,
drawn with varied shape, skin tone, lighting, pose jitter and background clutter. A
syndrome class changes one or more facial regions, as dysmorphology describes them:

=========================  ======================================  ======================
class                      change                                  ground-truth region
=========================  ======================================  ======================
control                    none                                    (empty mask)
hypertelorism              eyes ~55% further apart, downslanting   eyes and periorbit
long_philtrum              nose-to-mouth distance doubled, thin    philtrum and lips
                           upper lip
broad_nasal_bridge         nasal bridge three times as wide        nasal bridge
low_set_ears               ears ~0.25 face heights lower, rotated  ears
                           back
hypertelorism_broad_bridge both of the above (optional class)      eyes + nasal bridge
=========================  ======================================  ======================

The masks are exact: drawn from the same geometry, under the same pose, as the face, and
covering each changed feature both where it is and where the face's control twin (the same
person drawn without the syndrome, :meth:`Faces.control_twin`) has it — so every pixel in
which a syndrome face differs from its twin lies inside its mask.
A shortcut variant adds a non-facial cue (a coloured background mark or a coloured image
border) whose colour follows the class in the train/val splits but is random in the test
split, with its own mask in ``batch.meta["shortcut_mask"]``; ``class_counts`` sets the
number of samples per class (the class-imbalance knob).
"""

from __future__ import annotations

import colorsys
import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from xaibench import Batch, SampleDataset, register_dataset, sample_rng

from ._image_tools import smooth_noise

#: syndrome -> facial regions whose change defines it
SYNDROMES: dict[str, tuple[str, ...]] = {
    "control": (),
    "hypertelorism": ("eyes",),
    "long_philtrum": ("philtrum",),
    "broad_nasal_bridge": ("nasal_bridge",),
    "low_set_ears": ("ears",),
    "hypertelorism_broad_bridge": ("eyes", "nasal_bridge"),
}
#: A syndrome name (a key of :data:`SYNDROMES`).
Syndrome = Literal["control", "hypertelorism", "long_philtrum", "broad_nasal_bridge", "low_set_ears",
                   "hypertelorism_broad_bridge"]
DEFAULT_CLASSES = ("control", "hypertelorism", "long_philtrum", "broad_nasal_bridge", "low_set_ears")
#: landmark order of ``meta["landmarks"]`` (x, y in pixels; pixel (0, 0) spans [0, 1)²)
LANDMARKS = ("left_eye", "right_eye", "nose_tip", "mouth", "left_ear", "right_ear")

SKIN_LIGHT, SKIN_DARK = np.array([0.96, 0.80, 0.69]), np.array([0.42, 0.28, 0.19])
HAIR = np.array([[0.10, 0.07, 0.05], [0.30, 0.20, 0.12], [0.75, 0.62, 0.38], [0.55, 0.25, 0.12],
                 [0.62, 0.62, 0.62], [0.03, 0.03, 0.03]])


def shortcut_colours(k: int) -> np.ndarray:
    """(k, 3) saturated colours, one per class, far apart in hue."""
    return np.array([colorsys.hsv_to_rgb(i / k, 0.9, 0.95) for i in range(k)])


class _Canvas:
    """Soft (anti-aliased) drawing in canonical face coordinates u (right), v (down).

    The image spans [-1, 1]² before the pose; pixels are mapped back through the pose, so
    every shape and every mask is drawn under the same transform.
    """

    def __init__(self, size: int, angle: float, scale: float, shift: tuple[float, float], zoom: float = 1.0):
        c = (np.arange(size) + 0.5 - size / 2) / (size / 2) / zoom
        py, px = np.meshgrid(c, c, indexing="ij")
        px, py = px - shift[0], py - shift[1]
        ca, sa = math.cos(angle), math.sin(angle)
        self.u = (ca * px + sa * py) / scale
        self.v = (-sa * px + ca * py) / scale
        self.px_per_unit = scale * zoom * size / 2
        self.size, self.angle, self.scale, self.shift, self.zoom = size, angle, scale, shift, zoom
        self.img = np.zeros((size, size, 3))

    def to_pixels(self, u: float, v: float) -> tuple[float, float]:
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        px = self.scale * (ca * u - sa * v) + self.shift[0]
        py = self.scale * (sa * u + ca * v) + self.shift[1]
        return (px * self.zoom + 1) * self.size / 2, (py * self.zoom + 1) * self.size / 2

    def ellipse(self, cu: float, cv: float, ru: float, rv: float, rot: float = 0.0) -> np.ndarray:
        """Coverage in [0, 1] of an ellipse (face coordinates), its u axis turned by ``rot`` radians."""
        pu, pv = self.u - cu, self.v - cv
        if rot:
            pu, pv = math.cos(rot) * pu + math.sin(rot) * pv, -math.sin(rot) * pu + math.cos(rot) * pv
        du, dv = pu / ru, pv / rv
        q = np.sqrt(du**2 + dv**2) + 1e-9
        grad = np.sqrt((du / ru) ** 2 + (dv / rv) ** 2) / q + 1e-9
        return np.clip(0.5 - (q - 1) / grad * self.px_per_unit, 0, 1)

    def rect(self, u0: float, v0: float, u1: float, v1: float) -> np.ndarray:
        k = self.px_per_unit
        return (np.clip(0.5 + (self.u - u0) * k, 0, 1) * np.clip(0.5 + (u1 - self.u) * k, 0, 1)
                * np.clip(0.5 + (self.v - v0) * k, 0, 1) * np.clip(0.5 + (v1 - self.v) * k, 0, 1))

    def paint(self, alpha: np.ndarray, colour: Any) -> None:
        a = alpha[..., None]
        self.img = self.img * (1 - a) + np.asarray(colour, dtype=np.float64) * a


#: class-dependent parameters: region -> parameter -> (normal range, syndrome range)
CHANGES: dict[str, dict[str, tuple[tuple[float, float], tuple[float, float]]]] = {
    "eyes": {"eye_sep": ((0.19, 0.22), (0.31, 0.34)), "eye_slant": ((-4, 4), (14, 20))},  # degrees: downslanting
    "nasal_bridge": {"bridge_w": ((0.025, 0.035), (0.085, 0.095))},
    "philtrum": {"philtrum": ((0.06, 0.09), (0.18, 0.21)), "upper_lip": ((0.04, 0.05), (0.014, 0.02))},
    "ears": {"ear_v": ((-0.1, -0.02), (0.2, 0.26)), "ear_rot": ((-5, 5), (22, 32))},  # degrees: rotated back
}


def _draw_geometry(rng: np.random.Generator) -> tuple[dict[str, float], dict[str, float]]:
    """The class-independent shape parameters, and one uniform draw per class-dependent one."""
    u = rng.uniform
    base = {"head_a": u(0.50, 0.57), "head_b": u(0.66, 0.73), "head_v": u(0.0, 0.04),
            "eye_v": u(-0.14, -0.07), "eye_ru": u(0.07, 0.08), "eye_rv": u(0.042, 0.055),
            "brow_sep": u(0.19, 0.25), "brow_dv": u(0.10, 0.13), "hairline": u(-0.44, -0.33),
            "tip_v": u(0.13, 0.18), "tip_ru": u(0.065, 0.085), "mouth_ru": u(0.12, 0.16),
            "lower_lip": u(0.045, 0.06), "ear_rv": u(0.12, 0.15)}
    draws = {k: u() for ch in CHANGES.values() for k in ch}
    return base, draws


def _geometry(base: dict[str, float], draws: dict[str, float], regions: tuple[str, ...]) -> dict[str, float]:
    """The face's geometry with the given regions changed; the same draws give its control twin."""
    g = dict(base)
    for region, params in CHANGES.items():
        for k, (normal, changed) in params.items():
            lo, hi = changed if region in regions else normal
            g[k] = lo + draws[k] * (hi - lo)
    g["eye_slant"], g["ear_rot"] = math.radians(g["eye_slant"]), math.radians(g["ear_rot"])
    g["base_v"] = g["tip_v"] + 0.055
    g["mouth_v"] = g["base_v"] + g["philtrum"]
    return g


def _region_masks(cv: _Canvas, g: dict[str, float]) -> dict[str, np.ndarray]:
    """Exact bool masks of the regions a syndrome can change (with a small margin)."""
    eyes = np.maximum(cv.ellipse(-g["eye_sep"], g["eye_v"], g["eye_ru"] + 0.05, g["eye_rv"] + 0.05, -g["eye_slant"]),
                      cv.ellipse(g["eye_sep"], g["eye_v"], g["eye_ru"] + 0.05, g["eye_rv"] + 0.05, g["eye_slant"]))
    bw = g["bridge_w"] + 0.045
    bridge = cv.rect(-bw, g["eye_v"] - 0.02, bw, g["tip_v"])
    mw = g["mouth_ru"] + 0.03
    philtrum = cv.rect(-mw, g["base_v"] - 0.01, mw, g["mouth_v"] + g["lower_lip"] + 0.03)
    inner = cv.ellipse(0, g["head_v"], g["head_a"] - 0.05, g["head_b"] - 0.05)
    ears = np.maximum(cv.ellipse(-g["head_a"], g["ear_v"], 0.115, g["ear_rv"] + 0.03, g["ear_rot"]),
                      cv.ellipse(g["head_a"], g["ear_v"], 0.115, g["ear_rv"] + 0.03, -g["ear_rot"])) * (1 - inner)
    return {k: m > 0.5 for k, m in {"eyes": eyes, "nasal_bridge": bridge, "philtrum": philtrum, "ears": ears}.items()}


def _draw_face(cv: _Canvas, rng: np.random.Generator, g: dict[str, float]) -> None:
    skin = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * rng.uniform() + rng.normal(0, 0.02, 3)
    hair = HAIR[rng.integers(len(HAIR))] * rng.uniform(0.85, 1.15)
    clothes = rng.uniform(0.1, 0.9, 3)
    a, b, hv = g["head_a"], g["head_b"], g["head_v"]
    cv.paint(cv.ellipse(0, 1.25, 0.95, 0.5), clothes)  # shoulders
    cv.paint(cv.rect(-0.2, 0.4, 0.2, 0.9), skin * 0.82)  # neck
    for side in (-1, 1):  # ears behind the head
        cv.paint(cv.ellipse(side * a, g["ear_v"], 0.085, g["ear_rv"], -side * g["ear_rot"]), skin * 0.93)
        cv.paint(cv.ellipse(side * (a + 0.025), g["ear_v"], 0.03, g["ear_rv"] * 0.6, -side * g["ear_rot"]), skin * 0.72)
    cv.paint(cv.ellipse(0, hv - 0.03, a + 0.04, b + 0.02) * (cv.v < hv), hair)  # hair volume
    cv.paint(cv.ellipse(0, hv, a, b), skin)
    cv.paint(cv.ellipse(0, hv, a + 0.01, b + 0.01) * np.clip((g["hairline"] - cv.v) * 12, 0, 1), hair)
    for side in (-1, 1):
        s, rot = side * g["eye_sep"], side * g["eye_slant"]
        cv.paint(cv.rect(side * g["brow_sep"] - 0.08, g["eye_v"] - g["brow_dv"] - 0.013,
                         side * g["brow_sep"] + 0.08, g["eye_v"] - g["brow_dv"] + 0.013), hair * 0.9)
        cv.paint(cv.ellipse(s, g["eye_v"], g["eye_ru"], g["eye_rv"], rot), (0.95, 0.95, 0.93))
        cv.paint(cv.ellipse(s, g["eye_v"], 0.036, 0.036) * cv.ellipse(s, g["eye_v"], g["eye_ru"], g["eye_rv"], rot),
                 rng.uniform(0.1, 0.45, 3))
        cv.paint(cv.ellipse(s, g["eye_v"], 0.016, 0.016), (0.02, 0.02, 0.02))
    bw = g["bridge_w"]
    for side in (-1, 1):  # the bridge: two side shadows around a lit ridge
        cv.paint(cv.rect(side * bw - 0.014, g["eye_v"] + 0.01, side * bw + 0.014, g["tip_v"] - 0.03), skin * 0.6)
    cv.paint(cv.rect(-bw + 0.014, g["eye_v"] + 0.01, bw - 0.014, g["tip_v"] - 0.03), np.minimum(skin * 1.1, 1))
    cv.paint(cv.ellipse(0, g["tip_v"], g["tip_ru"], 0.05), skin * 0.9)
    for side in (-1, 1):
        cv.paint(cv.ellipse(side * 0.038, g["tip_v"] + 0.03, 0.022, 0.013), skin * 0.35)
        cv.paint(cv.rect(side * 0.03 - 0.007, g["base_v"], side * 0.03 + 0.007, g["mouth_v"] - g["upper_lip"]),
                 skin * 0.85)  # philtral columns
    lips = np.array([0.72, 0.30, 0.32]) * rng.uniform(0.8, 1.1)
    mr, mv = g["mouth_ru"], g["mouth_v"]
    cv.paint(cv.ellipse(0, mv, mr, g["upper_lip"]) * (cv.v <= mv), lips)
    cv.paint(cv.ellipse(0, mv, mr * 0.9, g["lower_lip"]) * (cv.v > mv), lips * 1.08)
    cv.paint(cv.rect(-mr * 0.95, mv - 0.006, mr * 0.95, mv + 0.006), lips * 0.4)


def _lighting(cv: _Canvas, rng: np.random.Generator, g: dict[str, float]) -> np.ndarray:
    phi = rng.uniform(0, 2 * math.pi)
    shade = 1 + rng.uniform(0, 0.25) * (cv.u * math.cos(phi) + cv.v * math.sin(phi))
    r2 = (cv.u / g["head_a"]) ** 2 + ((cv.v - g["head_v"]) / g["head_b"]) ** 2
    roundness = 1 - 0.18 * np.clip(r2, 0, 1) ** 2
    return (shade * roundness * rng.uniform(0.8, 1.15))[..., None]


def _background(cv: _Canvas, rng: np.random.Generator, clutter: tuple[int, int]) -> None:
    s = cv.size
    base = rng.uniform(0.15, 0.85, 3)
    cv.img = base + 0.12 * smooth_noise(rng, s, 3)[..., None] * rng.uniform(0.5, 1.5, 3)
    for _ in range(int(rng.integers(clutter[0], clutter[1] + 1))):
        cu, cvv = rng.uniform(-1.1, 1.1, 2)
        if rng.uniform() < 0.5:
            cv.paint(cv.ellipse(cu, cvv, *rng.uniform(0.05, 0.3, 2)), rng.uniform(0, 1, 3))
        else:
            du, dv = rng.uniform(0.05, 0.35, 2)
            cv.paint(cv.rect(cu - du, cvv - dv, cu + du, cvv + dv), rng.uniform(0, 1, 3))


@register_dataset("faces")
class Faces(SampleDataset):
    """Synthetic frontal faces of syndrome classes with exact masks of the defining regions.

    Yields :class:`~xaibench.Batch` with ``inputs`` (B, 3, size, size) in [0, 1], ``targets``
    (B,), ``masks`` (B, size, size) bool (the defining regions; empty for control), ``ids``;
    ``meta``: ``shortcut_mask`` (B, size, size) bool, ``landmarks`` (B, 6, 2) float (x, y in
    pixels, order :data:`LANDMARKS`), ``region_masks`` (B, 4, size, size) bool (eyes,
    nasal_bridge, philtrum, ears, whatever the class), ``syndrome`` (names), ``cue_class``.

    Example:
        >>> batch = xaibench.create_dataset("faces", n=8, shortcut="mark", split="train").all()
    """

    REGIONS = ("eyes", "nasal_bridge", "philtrum", "ears")

    class Settings(SampleDataset.Settings):
        size: Annotated[int, Field(ge=32)] = 64
        """Image side in pixels (64-96 suits CPU models)."""
        classes: Annotated[tuple[Syndrome, ...], Field(min_length=1)] = DEFAULT_CLASSES
        """Syndrome names (keys of :data:`SYNDROMES`); the class index is the position."""
        class_counts: tuple[Annotated[int, Field(ge=0)], ...] | None = None
        """None (classes uniformly at random) or one count per class: the samples are laid out in
        cycles of ``sum(class_counts)`` with exactly these counts per cycle (seeded order), so a
        train set of that size has exactly these counts. A count of 0 leaves a class out (e.g. a
        test set of one class)."""
        shortcut: Literal["mark", "border"] | None = None
        """None, ``"mark"`` (a coloured square in the top-left background) or ``"border"`` (a
        coloured 2-pixel frame): a non-facial cue whose colour says the class."""
        shortcut_p: Annotated[float, Field(ge=0, le=1)] = 0.95
        """When correlated, the probability that the cue's colour is the class's."""
        shortcut_correlated: bool | None = None
        """Whether the cue follows the class; None = correlated in the train and val splits, random in test."""
        pose: Annotated[float, Field(ge=0)] = 1.0
        """Scale of the pose jitter (rotation ±6°, scale ±5%, shift ±2%); 0 gives frontal faces in the same place."""
        clutter: tuple[int, int] = (2, 6)
        """(min, max) number of background shapes."""
        zoom: Annotated[float, Field(gt=0)] = 1.3
        """How tightly the image crops the head (1.3: the head fills ~70% of the width, like the
        face crops a face-analysis pipeline feeds its CNN; 1.0 shows the shoulders)."""

        @model_validator(mode="after")
        def _counts_per_class(self) -> Faces.Settings:
            c = self.class_counts
            if c is not None and (len(c) != len(self.classes) or sum(c) == 0):
                raise ValueError(f"class_counts must give one count >= 0 per class ({len(self.classes)}) "
                                 f"with a positive total, got {c}")
            return self

    @property
    def correlated(self) -> bool:
        c = self.settings.shortcut_correlated
        return self.split in ("train", "val") if c is None else c

    def class_of(self, rng: np.random.Generator, index: int) -> int:
        counts = self.settings.class_counts
        if counts is None:
            return int(rng.integers(len(self.settings.classes)))
        total = sum(counts)
        layout = np.repeat(np.arange(len(counts)), counts)
        cycle_rng = np.random.default_rng([self.seed, sum(map(ord, self.split)), index // total, 7])
        return int(layout[cycle_rng.permutation(total)[index % total]])

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        return self._render(rng, index, as_control=False)

    def control_twin(self, index: int) -> Tensor:
        """Sample ``index`` drawn as a control face (3, H, W): the same person, pose, light,
        background and cue, with no region changed. Its difference to the sample lies
        inside the sample's mask (the counterfactual the masks are defined by)."""
        return torch.from_numpy(self._render(sample_rng(self.name, self.seed, self.split, index), index,
                                             as_control=True)["inputs"])

    def _render(self, rng: np.random.Generator, index: int, as_control: bool) -> dict[str, Any]:
        p = self.settings
        s, k = p.size, len(p.classes)
        cls = self.class_of(rng, index)
        regions = SYNDROMES[p.classes[cls]]
        jit = float(p.pose)
        cv = _Canvas(s, math.radians(rng.uniform(-6, 6) * jit), 1 + rng.uniform(-0.05, 0.05) * jit,
                     tuple(rng.uniform(-0.04, 0.04, 2) * jit), float(p.zoom))
        base, draws = _draw_geometry(rng)
        g = _geometry(base, draws, () if as_control else regions)
        twin = _geometry(base, draws, ())
        _background(cv, rng, p.clutter)
        bg = cv.img.copy()
        look = int(rng.integers(2**62))  # colours and light: the same for the face and its twin
        _draw_face(cv, np.random.default_rng(look), g)
        person = np.abs(cv.img - bg).sum(-1, keepdims=True) > 0
        cv.img = np.where(person, cv.img * _lighting(cv, np.random.default_rng(look + 1), twin), cv.img)
        # a region's mask covers the feature where it is and where the control twin has it
        rm = {r: m | _region_masks(cv, twin)[r] for r, m in _region_masks(cv, g).items()}
        mask = np.zeros((s, s), dtype=bool)
        for r in regions:
            mask |= rm[r]
        cue_mask, cue_class = self._shortcut(cv, rng, cls, k)
        cv.img += rng.normal(0, 0.012, cv.img.shape)
        lm = [cv.to_pixels(-g["eye_sep"], g["eye_v"]), cv.to_pixels(g["eye_sep"], g["eye_v"]),
              cv.to_pixels(0, g["tip_v"]), cv.to_pixels(0, g["mouth_v"]),
              cv.to_pixels(-g["head_a"] - 0.02, g["ear_v"]), cv.to_pixels(g["head_a"] + 0.02, g["ear_v"])]
        return {
            "inputs": np.clip(cv.img, 0, 1).transpose(2, 0, 1).astype(np.float32), "targets": cls, "masks": mask,
            "ids": f"faces/{self.split}/{self.seed}/{index}", "shortcut_mask": cue_mask,
            "landmarks": np.array(lm, dtype=np.float32), "syndrome": p.classes[cls], "cue_class": cue_class,
            "region_masks": np.stack([rm[r] for r in self.REGIONS]),
        }

    def _shortcut(self, cv: _Canvas, rng: np.random.Generator, cls: int, k: int) -> tuple[np.ndarray, int]:
        s, kind = cv.size, self.settings.shortcut
        # the draws happen whether or not a cue is drawn, so faces are identical across variants
        agree = rng.uniform() < float(self.settings.shortcut_p)
        random_cls = int(rng.integers(k))
        off = rng.integers(1, max(2, s // 16) + 1, 2)
        if kind is None:
            return np.zeros((s, s), dtype=bool), -1
        cue_cls = cls if (self.correlated and agree) else random_cls
        colour = shortcut_colours(k)[cue_cls]
        m = np.zeros((s, s), dtype=bool)
        if kind == "mark":
            w = max(4, s // 10)
            m[off[0]:off[0] + w, off[1]:off[1] + w] = True
        else:
            w = max(2, s // 32)
            m[:w], m[-w:], m[:, :w], m[:, -w:] = True, True, True, True
        cv.img[m] = colour
        return m, cue_cls

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        batch = super().collate(samples)
        for key in ("shortcut_mask", "landmarks", "region_masks", "cue_class"):
            batch.meta[key] = torch.as_tensor(np.stack([s[key] for s in samples]))
        return batch
