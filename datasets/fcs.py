"""Real-format flow-cytometry IO: read and write FCS files, and the ``fcs_folder`` dataset.

Reading (flowio + flowutils): ``$SPILL``/``$SPILLOVER`` compensation, scatter linear in units
of 2^15 (full range 8.0), fluorescence arcsinh(x / cofactor) (or logicle), TIME scaled to
[0, 1], and channel names mapped to marker names (``$PnS`` when set, e.g. ``PE-A`` → ``CD10``,
``Syto 41`` → ``SY41``). Per-event labels come from a CSV beside the file (``<stem>.csv``, one
``label`` column, one row per event). Writing inverts the scales, so synthetic samples
round-trip through real FCS 3.1 files.

The real St. Anna B-ALL MRD tube that ships in the fcsparser 0.2.8 wheel (83,411 events, the
panel of :mod:`xaibench.datasets.fcm_synthetic`) is found by :func:`example_fcs_path` when
installed (``pip install --no-deps fcsparser==0.2.8``).
"""

from __future__ import annotations

import csv
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import numpy as np
import torch
from pydantic import Field

from xaibench import SampleDataset, register_dataset
from xaibench.data import files_fingerprint
from xaibench.errors import DataError

from .fcm_synthetic import MARKERS

SCATTER_SCALE = 32768.0
COFACTOR = 150.0
#: marker spellings seen in panels -> canonical names
ALIASES = {"SYTO41": "SY41", "SYTO 41": "SY41", "SYTO-41": "SY41", "TIME": "TIME", "HLA-DR": "HLADR"}
#: detectors of the St. Anna tube, used as $PnN when writing
DETECTORS = {"FSC-A": "FSC-A", "FSC-W": "FSC-W", "SSC-A": "SSC-A", "CD20": "FITC-A", "CD10": "PE-A", "CD45": "PerCP-A",
             "CD34": "PE-Cy7-A", "SY41": "PacificBlue-A", "CD19": "APC-A", "CD38": "Alexa700-A", "TIME": "Time"}


def canonical_marker(pnn: str, pns: str = "") -> str:
    """The marker name of a channel: $PnS when it names one (``CD10``), else $PnN (``FSC-A``)."""
    name = (pns or "").strip()
    if not name or name.lower() in ("empty", "-", "none", "na"):
        name = pnn.strip()
    key = re.sub(r"\s+", " ", name.upper())
    return ALIASES.get(key, ALIASES.get(key.replace(" ", ""), key))


def _is_scatter(name: str) -> bool:
    return name.upper().startswith(("FSC", "SSC"))


@dataclass
class FCSSample:
    """Events of one FCS file on the model scale.

    ``events`` (N, m) float32, ``markers`` canonical names, ``channels`` the $PnN detector
    names, ``labels`` (N,) bool or None, ``meta`` text keywords kept for reference.
    """

    events: np.ndarray
    markers: tuple[str, ...]
    channels: tuple[str, ...]
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def example_fcs_path() -> Path | None:
    """Path of the St. Anna B-ALL tube inside an installed fcsparser 0.2.8, or None (found without importing it)."""
    spec = importlib.util.find_spec("fcsparser")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "tests/data/FlowCytometers/FACS_Diva/facs_diva_test.fcs"
    return p if p.exists() else None


def _spill(text: dict[str, str]) -> tuple[np.ndarray, list[str]] | None:
    for key in ("spill", "spillover", "$spill", "$spillover"):
        if key in text and text[key].strip():
            import flowutils
            return flowutils.compensate.get_spill(text[key])
    return None


def read_labels(path: str | Path, n: int) -> np.ndarray | None:
    """Per-event labels from ``<stem>.csv`` beside an FCS file (column ``label`` or the only one), or None."""
    csv_path = Path(path).with_suffix(".csv")
    if not csv_path.exists():
        return None
    with csv_path.open() as fh:
        rows = list(csv.reader(fh))
    header = [h.strip().lower() for h in rows[0]]
    col = header.index("label") if "label" in header else 0
    body = rows[1:] if not header[col].lstrip("-").isdigit() else rows
    labels = np.array([int(float(r[col])) for r in body]) > 0
    if len(labels) != n:
        raise ValueError(f"read_fcs: {csv_path} has {len(labels)} labels for {n} events; one row per event expected")
    return labels


def read_fcs(path: str | Path, *, markers: Sequence[str] | None = None, transform: str = "arcsinh",
             cofactor: float = COFACTOR, compensate: bool = True, scatter_scale: float = SCATTER_SCALE) -> FCSSample:
    """Read an FCS file onto the model scale.

    Args:
        path: the .fcs file; labels are read from ``<stem>.csv`` beside it when present.
        markers: canonical marker names to keep, in this order (default: every channel).
        transform: fluorescence transform: ``"arcsinh"`` (x / cofactor), ``"logicle"`` (flowutils
            defaults, T = 262144) or ``"none"``.
        cofactor: arcsinh cofactor (150 for this cytometer class).
        compensate: apply the file's spillover matrix.
        scatter_scale: scatter channels are divided by this (2^15: full range 8.0).

    Returns:
        :class:`FCSSample` with ``events`` (N, len(markers)) float32.

    Raises:
        ValueError: unknown transform, or a requested marker that the file lacks (the file's markers are listed).
    """
    import flowio
    import flowutils

    if transform not in ("arcsinh", "logicle", "none"):
        raise ValueError(f"read_fcs: transform must be 'arcsinh', 'logicle' or 'none', got {transform!r}")
    try:
        fd = flowio.FlowData(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: no such FCS file") from None
    except Exception as exc:  # flowio raises plain ValueErrors/struct errors on bad headers
        raise DataError(f"{path}: not a readable FCS file ({type(exc).__name__}: {exc})") from None
    x = np.asarray(fd.as_array(preprocess=True), dtype=np.float64)
    pnn, pns = list(fd.pnn_labels), list(fd.pns_labels)
    names = [canonical_marker(a, b) for a, b in zip(pnn, pns)]
    spill = _spill(fd.text) if compensate else None
    if spill is not None:
        matrix, chans = spill
        x = flowutils.compensate.compensate(x, matrix, [pnn.index(c) for c in chans])
    fluo = [i for i, n in enumerate(names) if not _is_scatter(n) and n != "TIME"]
    for i, n in enumerate(names):
        if _is_scatter(n):
            x[:, i] /= scatter_scale
        elif n == "TIME":
            x[:, i] /= max(float(x[:, i].max()), 1e-12)
    if transform == "arcsinh":
        x[:, fluo] = np.arcsinh(x[:, fluo] / cofactor)
    elif transform == "logicle" and fluo:
        x = flowutils.transforms.logicle(x, fluo)
    keep = list(range(len(names)))
    if markers is not None:
        missing = [m for m in markers if m not in names]
        if missing:
            raise ValueError(f"read_fcs: {path} has no channel for markers {missing}; its markers are {names}")
        keep = [names.index(m) for m in markers]
    return FCSSample(events=x[:, keep].astype(np.float32), markers=tuple(names[i] for i in keep),
                     channels=tuple(pnn[i] for i in keep), labels=read_labels(path, x.shape[0]),
                     meta={"n_events": int(x.shape[0]), "compensated": spill is not None, "transform": transform})


def write_fcs(path: str | Path, events: np.ndarray | torch.Tensor, markers: Sequence[str], *,
              labels: np.ndarray | torch.Tensor | None = None, cofactor: float = COFACTOR,
              scatter_scale: float = SCATTER_SCALE, detectors: dict[str, str] | None = None) -> Path:
    """Write model-scale events as an FCS 3.1 file (and ``<stem>.csv`` labels), inverting :func:`read_fcs`'s scales.

    Args:
        events: (N, m) events on the model scale (scatter / 2^15, arcsinh fluorescence, TIME in [0, 1]).
        markers: the m marker names (written as $PnS; $PnN from ``detectors``, default the St. Anna tube).
        labels: optional (N,) per-event labels, written beside the file.

    Returns:
        The path written.
    """
    import flowio

    ev = np.asarray(events.detach().cpu() if isinstance(events, torch.Tensor) else events, dtype=np.float64)
    if ev.ndim != 2 or ev.shape[1] != len(markers):
        raise ValueError(f"write_fcs: expected events (N, {len(markers)}), got {ev.shape}")
    det = {**DETECTORS, **(detectors or {})}
    raw = ev.copy()
    for i, m in enumerate(markers):
        if _is_scatter(m):
            raw[:, i] *= scatter_scale
        elif m == "TIME":
            raw[:, i] *= 1000.0
        else:
            raw[:, i] = np.sinh(raw[:, i]) * cofactor
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pnn = [det.get(m, m) for m in markers]
    with path.open("wb") as fh:
        flowio.create_fcs(fh, raw.astype(np.float32).flatten().tolist(), pnn, opt_channel_names=list(markers))
    if labels is not None:
        lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(int).reshape(-1)
        path.with_suffix(".csv").write_text("label\n" + "\n".join(map(str, lab.tolist())) + "\n")
    return path


def export_synthetic(out_dir: str | Path, n: int = 4, seed: int = 0, **params: Any) -> list[Path]:
    """Write ``n`` synthetic ``fcm_ball`` samples as FCS files with label CSVs; returns their paths."""
    from xaibench import create_dataset

    ds = create_dataset("fcm_ball", n=n, batch_size=1, seed=seed, **params)
    out = []
    for i in range(n):
        s = ds.sample(i)
        out.append(write_fcs(Path(out_dir) / f"fcm_ball_{seed}_{i:03d}.fcs", s["inputs"], ds.markers, labels=s["instance_labels"]))
    return out


@register_dataset("fcs_folder")
class FCSFolder(SampleDataset):
    """FCS files of a folder (sorted by name) as event sets, with labels from ``<stem>.csv`` when present.

    Yields :class:`~xaibench.Batch` like ``fcm_ball`` (``instance_labels`` only if every file has labels).
    """

    class Settings(SampleDataset.Settings):
        path: str | Path | None = None
        """The folder of FCS files. Required."""
        pattern: str = "*.fcs"
        """Glob of the files within ``path``."""
        markers: tuple[str, ...] = MARKERS
        """Markers to read, in model order (the St. Anna B-ALL panel)."""
        transform: Literal["arcsinh", "logicle", "none"] = "arcsinh"
        """Fluorescence transform (see :func:`read_fcs`)."""
        cofactor: Annotated[float, Field(gt=0)] = COFACTOR
        """Arcsinh cofactor (150 for this cytometer class)."""
        compensate: bool = True
        """Apply each file's spillover matrix."""
        n_events: Annotated[int, Field(ge=0)] | None = None
        """Subsample this many events per file (seeded); None (or 0) keeps all, and then files in
        one batch must have equal counts."""

    def __init__(self, n: int = 64, batch_size: int = 16, seed: int = 0, split: str = "test", **params: Any):
        super().__init__(n=n, batch_size=batch_size, seed=seed, split=split, **params)
        p = self.settings
        if not p.path:
            raise ValueError("fcs_folder: set path= to a folder of .fcs files")
        self.files = sorted(Path(p.path).glob(p.pattern))
        if not self.files:
            raise ValueError(f"fcs_folder: no files match {p.pattern!r} in {p.path}")
        self.n = min(self.n, len(self.files))

    def fingerprint(self) -> str:
        """Names, sizes and mtimes of the FCS files read and their label CSVs."""
        used = self.files[: self.n]
        return files_fingerprint([*used, *(f.with_suffix(".csv") for f in used)])

    def make_sample(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        p = self.settings
        s = read_fcs(self.files[index], markers=p.markers, transform=p.transform, cofactor=p.cofactor,
                     compensate=p.compensate)
        ev, lab = s.events, s.labels
        if p.n_events and p.n_events < len(ev):
            keep = np.sort(rng.choice(len(ev), p.n_events, replace=False))
            ev, lab = ev[keep], (lab[keep] if lab is not None else None)
        return {"inputs": ev, "instance_labels": lab, "targets": 1, "ids": self.files[index].name}

    def collate(self, samples: list[dict[str, Any]]):
        sizes = {len(s["inputs"]) for s in samples}
        if len(sizes) > 1:
            raise ValueError(f"fcs_folder: files in one batch have different event counts {sorted(sizes)}; "
                             "set n_events= (subsample) or batch_size=1")
        if any(s["instance_labels"] is None for s in samples):
            for s in samples:
                s["instance_labels"] = None
        batch = super().collate(samples)
        batch.meta["markers"] = self.settings.markers
        return batch
