"""Synthetic B-ALL bone-marrow flow-cytometry samples with exact per-event labels and true gates.

Each sample is a set of N events × m markers of the St. Anna B-ALL MRD panel (FSC-A, FSC-W,
SSC-A, CD20, CD10, CD45, CD34, CD19, CD38, SY41; optional TIME) on the scale of
:func:`xaibench.datasets.fcs.read_fcs`: scatter linear in units of 2^15 (full range 8.0),
fluorescence arcsinh(x / 150). Population medians were read off the real St. Anna tube that
ships in fcsparser 0.2.8 (a 12-component Gaussian mixture after compensation); shares follow
normal-marrow donor studies. Populations: granulocytes (SSC saturating at 8.0), myeloid
precursors, monocytes, T/NK lymphocytes, mature B cells, hematogones along a maturation
continuum (CD34+CD10bright CD20− → CD34−CD10dim CD20+), CD45-negative erythroid cells,
CD19+ CD10bright CD45dim CD38dim blasts with a patient-specific phenotype, debris and
doublets. Every sample gets its own instrument effects (fluorescence offsets, scatter gains),
shared by all its populations; with ``population_shift_sd`` / ``population_gain_sd`` > 0 every
population also shifts on its own (as between centres, where voltages, compensation and
staining shift populations differently), and the true gates follow the populations they are
anchored on. Both default to 0: the default data are unchanged.

Labels are exact (1 = blast, 0 = anything else, doublets included); ``polygons`` hold the true
gates of a small hierarchy: singlets (FSC-A/FSC-W) → lymphoid (CD45/SSC-A) → CD19+
(CD19/SSC-A) → blasts (CD45/CD10), octagons anchored on the sample's (shifted) populations.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from xaibench import SampleDataset, register_dataset

#: The St. Anna B-ALL MRD panel, in the order of the model inputs (TIME is appended when asked).
MARKERS: tuple[str, ...] = ("FSC-A", "FSC-W", "SSC-A", "CD20", "CD10", "CD45", "CD34", "CD19", "CD38", "SY41")
SCATTER = ("FSC-A", "FSC-W", "SSC-A")
#: scatter saturates at 262143 / 2^15; fluorescence at arcsinh(262143 / 150)
SCATTER_MAX, FLUO_MAX = 262143 / 32768, float(np.arcsinh(262143 / 150))

# median and spread per population, columns as MARKERS; shares of the normal (non-blast) marrow
_POP: dict[str, tuple[list[float], list[float], float]] = {
    #                FSC-A FSC-W SSC-A CD20 CD10 CD45 CD34 CD19 CD38 SY41
    "granulocyte":  ([5.8, 2.05, 7.6, 1.5, 3.1, 4.55, 0.7, 2.5, 2.5, 5.6],
                     [1.0, 0.10, 0.9, 0.35, 0.7, 0.35, 0.8, 0.3, 0.9, 0.4], 0.53),
    "myeloid_precursor": ([4.6, 2.0, 5.4, 1.3, 1.6, 4.4, 0.9, 2.0, 3.0, 5.5],
                          [1.0, 0.12, 1.2, 0.45, 0.8, 0.45, 0.9, 0.35, 1.0, 0.6], 0.07),
    "monocyte":     ([4.0, 2.0, 3.2, 0.9, 0.6, 5.8, 0.5, 0.6, 3.5, 5.5],
                     [0.7, 0.08, 0.6, 0.4, 0.5, 0.3, 0.6, 0.5, 0.6, 0.4], 0.05),
    "t_nk_lymphocyte": ([2.4, 1.86, 1.1, 0.9, 0.4, 6.2, 0.35, 0.5, 2.3, 5.2],
                        [0.7, 0.06, 0.4, 0.45, 0.5, 0.27, 0.8, 0.6, 1.2, 0.45], 0.16),
    "mature_b":     ([2.2, 1.85, 0.8, 5.0, 0.5, 6.0, 0.35, 4.4, 1.9, 5.3],
                     [0.7, 0.06, 0.25, 0.43, 0.8, 0.28, 0.8, 0.4, 1.0, 0.4], 0.03),
    "erythroid":    ([1.7, 1.83, 1.3, 1.1, 0.85, 1.55, 0.3, 0.8, 0.75, 6.1],
                     [0.75, 0.1, 0.5, 0.5, 0.6, 0.8, 0.6, 0.45, 1.0, 0.5], 0.08),
}
# hematogones: stage I -> stage III (means), common spread
_HEMA_EARLY = [2.7, 1.88, 0.95, 0.8, 6.5, 4.9, 3.0, 4.2, 4.6, 5.2]
_HEMA_LATE = [2.3, 1.86, 0.85, 4.5, 4.4, 5.9, 0.4, 4.4, 3.6, 5.2]
_HEMA_SD = [0.6, 0.06, 0.25, 0.45, 0.45, 0.3, 0.5, 0.35, 0.45, 0.4]
# blasts: patient-specific medians drawn from these ranges (leukemia-associated immunophenotypes)
_BLAST_RANGE = {"FSC-A": (2.4, 3.6), "FSC-W": (1.88, 1.96), "SSC-A": (0.9, 1.8), "CD20": (0.8, 3.8),
                "CD10": (5.9, 7.0), "CD45": (4.2, 5.6), "CD34": (0.6, 3.3), "CD19": (4.0, 5.3),
                "CD38": (1.3, 4.1), "SY41": (4.7, 5.3)}
_BLAST_SD = [0.6, 0.05, 0.35, 0.5, 0.4, 0.35, 0.5, 0.4, 0.5, 0.3]
_DEBRIS = ([0.45, 1.5, 0.45, 0.8, 0.8, 1.2, 0.5, 0.7, 0.7, 3.0], [0.35, 0.35, 0.35, 0.8, 0.8, 1.0, 0.7, 0.7, 0.8, 1.2])

#: population codes in ``meta["population"]``
POPULATIONS: tuple[str, ...] = (*_POP, "hematogone", "blast", "debris", "doublet")

#: the gating hierarchy: (gate, x marker, y marker, parent)
GATES: tuple[tuple[str, str, str, str | None], ...] = (
    ("singlets", "FSC-A", "FSC-W", None),
    ("lymphoid", "CD45", "SSC-A", "singlets"),
    ("cd19", "CD19", "SSC-A", "lymphoid"),
    ("blasts", "CD45", "CD10", "cd19"),
)
N_VERTICES = 8


def octagon(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """(8, 2) vertices of an axis-aligned octagon around (cx, cy), counter-clockwise from 22.5°."""
    a = np.pi / 8 + np.arange(N_VERTICES) * np.pi / 4
    c = 1 / np.cos(np.pi / 8)
    return np.stack([cx + rx * c * np.cos(a), cy + ry * c * np.sin(a)], 1)


def regime_of(fraction: float) -> str:
    """The blast-fraction regime of a sample: MRD cut-offs 0.01% / 0.1% / 1% / 10%."""
    for hi, name in ((1e-3, "<0.1%"), (1e-2, "0.1-1%"), (1e-1, "1-10%")):
        if fraction < hi:
            return name
    return ">=10%"


REGIMES = ("<0.1%", "0.1-1%", "1-10%", ">=10%")


def _draw(rng: np.random.Generator, mean: np.ndarray, sd: np.ndarray, n: int) -> np.ndarray:
    """n events around ``mean`` with a shared size factor (FSC, SSC and autofluorescence co-vary)."""
    size = rng.standard_normal((n, 1))
    x = mean + sd * rng.standard_normal((n, len(mean)))
    x[:, [0, 2]] += 0.35 * sd[[0, 2]] * size
    x[:, 3:] += 0.08 * size
    return x


#: a share drawn log-uniformly: positive (its logarithm is taken)
_Share = Annotated[float, Field(gt=0)]


@register_dataset("fcm_ball")
class SyntheticBALL(SampleDataset):
    """Synthetic pediatric B-ALL bone marrow: (N, m) events with per-event blast labels.

    Yields :class:`~xaibench.Batch`: ``inputs`` (B, N, m) float32, ``instance_labels`` (B, N)
    bool (blast), ``targets`` (B,) = 1 (the blast class, for explainers), ``polygons`` a dict
    per sample (``names``, ``dims`` marker-index pairs, ``parents``, ``vertices`` (P, 8, 2)),
    ``meta["markers"]`` (tuple), ``meta["population"]`` (B, N) int8 codes of
    :data:`POPULATIONS`, ``meta["blast_fraction"]`` and ``meta["regime"]`` per sample.

    Example:
        >>> ds = xaibench.create_dataset("fcm_ball", n=4, batch_size=2, n_events=5000)
        >>> batch = next(iter(ds)); batch.inputs.shape
        torch.Size([2, 5000, 10])
    """

    class Settings(SampleDataset.Settings):
        n_events: Annotated[int, Field(ge=10)] = 20000
        """Events per sample (real tubes hold 50k–500k)."""
        blast_fraction: Annotated[float, Field(ge=0, lt=1)] | tuple[_Share, _Share] = (1e-4, 0.9)
        """A fixed share of blasts in [0, 1), or (low, high) to draw it log-uniformly per sample
        ((1e-4, 0.9): MRD 0.01% up to diagnosis)."""
        hematogones: tuple[_Share, _Share] = (0.003, 0.06)
        """(low, high) of the log-uniform share of hematogones (regenerating marrow)."""
        debris: tuple[float, float] = (0.01, 0.06)
        """(low, high) of the uniform share of debris."""
        doublets: tuple[float, float] = (0.01, 0.04)
        """(low, high) of the uniform share of doublets."""
        shift_sd: Annotated[float, Field(ge=0)] = 0.15
        """SD of the per-sample fluorescence offsets (instrument / batch effects), shared by all populations."""
        gain_sd: Annotated[float, Field(ge=0)] = 0.05
        """SD of the per-sample scatter gains (around 1), shared by all populations."""
        population_shift_sd: Annotated[float, Field(ge=0)] = 0.0
        """SD of an extra fluorescence offset per population and sample (each population shifts on its
        own, as in multi-centre data); 0 = one shared shift (the default data are unchanged)."""
        population_gain_sd: Annotated[float, Field(ge=0)] = 0.0
        """SD of an extra scatter gain (around 1) per population and sample; 0 = one shared gain."""
        include_time: bool = False
        """Append a TIME channel (acquisition order in [0, 1])."""

    @property
    def markers(self) -> tuple[str, ...]:
        return MARKERS + (("TIME",) if self.settings.include_time else ())

    def _fraction(self, rng: np.random.Generator) -> float:
        f = self.settings.blast_fraction
        if isinstance(f, (int, float)):
            return float(f)
        lo, hi = f
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        p = self.settings
        n = p.n_events
        frac = self._fraction(rng)
        shares = {"blast": frac, "debris": rng.uniform(*p.debris), "doublet": rng.uniform(*p.doublets)}
        h_lo, h_hi = p.hematogones
        hema = math.exp(rng.uniform(math.log(h_lo), math.log(h_hi)))
        normal = {k: v[2] * rng.uniform(0.7, 1.3) for k, v in _POP.items()} | {"hematogone": hema}
        rest = max(0.0, 1 - sum(shares.values()))
        tot = sum(normal.values())
        shares |= {k: rest * v / tot for k, v in normal.items()}
        names = list(POPULATIONS)
        nb = int(round(frac * n))  # the blast count is exact, the others multinomial
        others = np.array([0.0 if k == "blast" else shares[k] for k in names])
        counts = rng.multinomial(n - nb, others / others.sum())
        counts[names.index("blast")] = nb

        blast_mean = np.array([rng.uniform(*_BLAST_RANGE[m]) for m in MARKERS])
        means = {k: np.array(v[0]) + rng.normal(0, 0.08, 10) for k, v in _POP.items()}
        # per-population instrument effects (drawn only when asked: the default stream is unchanged)
        pop_gain, pop_off = np.ones((len(names), 3)), np.zeros((len(names), 7))
        if p.population_shift_sd > 0 or p.population_gain_sd > 0:
            pop_gain = rng.normal(1.0, p.population_gain_sd, (len(names), 3))
            pop_off = rng.normal(0.0, p.population_shift_sd, (len(names), 7))
        parts, codes = [], []
        for code, name in enumerate(names):
            c = int(counts[code])
            if c == 0 or name == "doublet":
                continue
            if name in _POP:
                x = _draw(rng, means[name], np.array(_POP[name][1]), c)
            elif name == "hematogone":
                t = rng.beta(1.3, 1.3, (c, 1))
                mu = (1 - t) * np.array(_HEMA_EARLY) + t * np.array(_HEMA_LATE)
                x = mu + np.array(_HEMA_SD) * rng.standard_normal((c, 10))
            elif name == "blast":
                x = _draw(rng, blast_mean, np.array(_BLAST_SD), c)
            else:
                x = _draw(rng, np.array(_DEBRIS[0]), np.array(_DEBRIS[1]), c)
            if p.population_shift_sd > 0 or p.population_gain_sd > 0:
                x[:, :3] *= pop_gain[code]
                x[:, 3:] += pop_off[code]
            parts.append(x)
            codes.append(np.full(c, code, np.int8))
        x = np.concatenate(parts) if parts else np.zeros((0, 10))
        code = np.concatenate(codes) if codes else np.zeros(0, np.int8)
        nd = int(counts[names.index("doublet")])
        if nd:
            cells = np.flatnonzero(code != names.index("debris"))
            a, b = x[rng.choice(cells, nd)], x[rng.choice(cells, nd)]
            d = np.empty_like(a)
            d[:, 0] = 0.85 * (a[:, 0] + b[:, 0])
            d[:, 1] = 1.3 * np.maximum(a[:, 1], b[:, 1]) + rng.normal(0, 0.08, nd)
            d[:, 2] = a[:, 2] + b[:, 2]
            d[:, 3:] = np.arcsinh(np.sinh(a[:, 3:]) + np.sinh(b[:, 3:]))
            x = np.concatenate([x, d])
            code = np.concatenate([code, np.full(nd, names.index("doublet"), np.int8)])

        # instrument / batch effects of this sample
        gain = rng.normal(1.0, p.gain_sd, 3)
        offset = rng.normal(0.0, p.shift_sd, 7)
        x[:, :3] *= gain
        x[:, 3:] += offset
        x[:, :3] = np.clip(x[:, :3], 0.0, SCATTER_MAX)
        x[:, 3:] = np.clip(x[:, 3:], -1.0, FLUO_MAX)

        order = rng.permutation(n)
        x, code = x[order], code[order]
        if p.include_time:
            x = np.concatenate([x, np.sort(rng.random(n))[:, None]], 1)
        labels = code == names.index("blast")

        def at(pop_mean: np.ndarray, marker: str, pop: str) -> float:
            i, j = MARKERS.index(marker), names.index(pop)
            return float(pop_mean[i] * (gain[i] * pop_gain[j, i]) if i < 3 else pop_mean[i] + (offset[i - 3] + pop_off[j, i - 3]))

        def g(i: int, pop: str) -> float:  # scatter gain of a population
            return float(gain[i] * pop_gain[names.index(pop), i])

        hema_mid = (np.array(_HEMA_EARLY) + np.array(_HEMA_LATE)) / 2
        tnk = "t_nk_lymphocyte"
        verts = np.stack([
            octagon(4.4 * g(0, tnk), at(means[tnk], "FSC-W", tnk) + 0.03, 3.6 * g(0, tnk), 0.3),
            octagon(at(means[tnk], "CD45", tnk) - 0.8, 1.35 * g(2, tnk), 1.75, 1.45 * g(2, tnk)),
            octagon(0.5 * (at(means["mature_b"], "CD19", "mature_b") + at(hema_mid, "CD19", "hematogone")) + 0.25,
                    1.25 * g(2, "mature_b"), 1.35, 1.35 * g(2, "mature_b")),
            octagon(at(blast_mean, "CD45", "blast"), at(blast_mean, "CD10", "blast"), 2.3 * _BLAST_SD[5], 2.3 * _BLAST_SD[4]),
        ]).astype(np.float32)
        idx = {m: i for i, m in enumerate(MARKERS)}
        polygons = {"names": tuple(g[0] for g in GATES), "parents": tuple(g[3] for g in GATES),
                    "dims": tuple((idx[g[1]], idx[g[2]]) for g in GATES), "vertices": torch.from_numpy(verts)}
        return {
            "inputs": x.astype(np.float32), "instance_labels": labels, "targets": 1, "polygons": polygons,
            "ids": f"fcm_ball/{self.split}/{self.seed}/{index}", "population": torch.from_numpy(code),
            "blast_fraction": frac, "regime": regime_of(frac), "blast_phenotype": blast_mean.round(3).tolist(),
        }

    def collate(self, samples: list[dict[str, Any]]):
        batch = super().collate(samples)
        batch.meta["population"] = torch.stack(batch.meta["population"])
        batch.meta["markers"] = self.markers  # a tuple: batch-level, never split per sample
        batch.meta["populations"] = POPULATIONS
        return batch
