"""The results store of a run folder: SQLite database, run lock, file manifest, example maps.

The runner writes it, the report and ``regress`` read it; neither imports the other.

Tables of ``<run>/results.db``:
    ``results``  the long table, one row per (study, dataset, model, explainer, metric, sample);
    ``cells``    one row per grid cell: status (``pending`` / ``done`` / ``failed``), the cell's
                 spec hash and data fingerprint (what its rows were measured on), the error of a
                 failed cell;
    ``skipped``  metrics not applicable to a cell (attribution kind, missing ground truth), with why;
    ``files``    the manifest: every file the run wrote into its folder (``--force`` deletes exactly
                 these);
    ``meta``     run metadata (format, versions, seed, config hash, the full config, times, host).

A cell's rows, its skips, its example files' manifest entries and its ``done`` mark are written in
ONE transaction (:meth:`Store.commit_cell`), so a process killed at any moment leaves either the
whole cell or nothing of it.

Example maps are stored as data that cannot carry code: one safetensors file of tensors plus a
JSON sidecar per cell (``examples/<cell>.safetensors`` / ``.json``), never pickles.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from .errors import DataError, RunLockedError, StoreError
from .stats import summarise
from .util import atomic_write_bytes, atomic_write_text

DB_NAME = "results.db"
LOCK_NAME = ".xaibench.lock"
EXAMPLES_DIR = "examples"
#: Version of the database layout; a database without it is not an xaibench run.
FORMAT = "xaibench-results/2"

#: Columns of the long results table, in order.
RESULT_COLUMNS: tuple[str, ...] = (
    "run", "study", "dataset", "model", "explainer", "explainer_key", "metric", "metric_key",
    "sample_index", "sample_id", "score", "undefined_reason", "seconds", "protocol", "explainer_params",
    "direction", "category", "is_baseline", "seed", "config_hash",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    cell_key TEXT PRIMARY KEY, cell_index INTEGER NOT NULL, study TEXT, dataset TEXT, model TEXT,
    explainer TEXT, is_baseline INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'pending',
    n_rows INTEGER, seconds REAL, finished_at TEXT, spec_hash TEXT, data_fp TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, cell_key TEXT NOT NULL,
    run TEXT, study TEXT, dataset TEXT, model TEXT, explainer TEXT, explainer_key TEXT, metric TEXT,
    metric_key TEXT, sample_index INTEGER, sample_id TEXT, score REAL, undefined_reason TEXT, seconds REAL,
    protocol TEXT, explainer_params TEXT, direction TEXT, category TEXT, is_baseline INTEGER, seed INTEGER,
    config_hash TEXT);
CREATE INDEX IF NOT EXISTS results_cell ON results (cell_key);
CREATE TABLE IF NOT EXISTS skipped (cell_key TEXT NOT NULL, study TEXT, dataset TEXT, model TEXT,
    explainer TEXT, metric TEXT, metric_key TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, cell_key TEXT);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class CellResult:
    """Everything one grid cell produced, committed at once by :meth:`Store.commit_cell`.

    Args:
        key: the cell key ``study/dataset/model/explainer``.
        rows: dicts with the :data:`RESULT_COLUMNS`.
        skipped: dicts ``{metric, metric_key, reason}`` for metrics that do not apply.
        seconds: wall time of the cell.
        examples: the example maps to save next to the database (or None).
        spec_hash: digest of the cell's resolved spec (what resumability is keyed on).
        data_fp: fingerprint of the user data the cell read (``""`` for generators).
        error: for a failed cell, what went wrong (then ``rows`` is empty).
        device: the torch device the cell ran on (``cpu``, ``cuda:0``); dtype: the model's dtype.
        forwards: samples passed through the model's forward (a lower bound; None if not counted).
    """

    key: str
    index: int
    study: str
    dataset: str
    model: str
    explainer: str
    is_baseline: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    examples: dict[str, Any] | None = None
    spec_hash: str = ""
    data_fp: str = ""
    error: str | None = None
    device: str = ""
    dtype: str = ""
    forwards: int | None = None


# ----------------------------------------------------------------------------- lock

class RunLock:
    """An exclusive OS lock on a run folder, held for a whole run.

    ``flock`` on ``<run>/.xaibench.lock``: released by the kernel when the process exits, even
    after SIGKILL, so a stale lock never blocks the next run. The file records the holder's pid
    and start time for the message a second writer gets.

    Raises:
        RunLockedError: another live process holds the folder.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is in use by a live run ({holder}); wait for it to "
                                 "finish or stop it, then try again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {now()}".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------- store

class Store:
    """The SQLite results database of one run folder.

    Args:
        path: the database file (``<run>/results.db``); created with its tables if missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)

    @classmethod
    def open(cls, run_dir: str | Path) -> "Store":
        """The store of an existing run folder, for reading.

        Raises:
            StoreError: no ``results.db``, an empty file, not an SQLite database, or one without
                xaibench run metadata (nothing is created or changed in that case).
        """
        path = Path(run_dir) / DB_NAME
        if not path.is_file():
            raise StoreError(f"no results database at {path}; is {str(run_dir)!r} a run folder written by "
                             "`xaibench run`?")
        if path.stat().st_size == 0:
            raise StoreError(f"{path} is empty (0 bytes): not an xaibench results database; nothing was changed")
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                meta = dict(conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not an SQLite database ({exc}); nothing was changed") from None
        if not {"meta", "cells", "results"} <= tables or "config_hash" not in meta:
            raise StoreError(f"{path} has no xaibench run metadata (tables {sorted(tables)}): not a results "
                             "database written by `xaibench run`; nothing was changed")
        return cls(path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ meta
    def get_meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values: Any) -> None:
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                          [(k, json.dumps(v, default=str)) for k, v in values.items()])

    # ------------------------------------------------------------------ cells
    def plan(self, cells: Iterable[Any]) -> None:
        """Record every cell of the grid (``pending`` unless it is already there)."""
        rows = [(c.key, c.index, c.study.name, c.dataset.label, c.model.label, c.explainer.label,
                 int(c.baseline is not None)) for c in cells]
        with self.transaction() as c:
            c.executemany(
                "INSERT OR IGNORE INTO cells (cell_key, cell_index, study, dataset, model, explainer, is_baseline) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            c.executemany("UPDATE cells SET cell_index = ? WHERE cell_key = ?", [(r[1], r[0]) for r in rows])

    def done_cells(self) -> dict[str, tuple[str, str]]:
        """``cell_key -> (spec_hash, data_fp)`` of every finished cell."""
        return {r[0]: (r[1] or "", r[2] or "") for r in
                self.conn.execute("SELECT cell_key, spec_hash, data_fp FROM cells WHERE status = 'done'")}

    def forget_cells(self, keys: Iterable[str]) -> None:
        """Delete the rows of cells that must be recomputed (their settings changed)."""
        keys = list(keys)
        with self.transaction() as c:
            for k in keys:
                c.execute("DELETE FROM results WHERE cell_key = ?", (k,))
                c.execute("DELETE FROM skipped WHERE cell_key = ?", (k,))
                c.execute("UPDATE cells SET status = 'pending', n_rows = NULL, error = NULL WHERE cell_key = ?", (k,))

    def prune_cells(self, keep: Iterable[str]) -> None:
        """Drop cells (and their rows) that are no longer part of the grid."""
        keep = set(keep)
        gone = [r[0] for r in self.conn.execute("SELECT cell_key FROM cells") if r[0] not in keep]
        with self.transaction() as c:
            for k in gone:
                c.execute("DELETE FROM results WHERE cell_key = ?", (k,))
                c.execute("DELETE FROM skipped WHERE cell_key = ?", (k,))
                c.execute("DELETE FROM cells WHERE cell_key = ?", (k,))

    def commit_cell(self, res: CellResult, files: Iterable[str] = ()) -> None:
        """Write a cell's rows, skips and files and mark it done (or failed), in one transaction."""
        cols = ", ".join(("cell_key",) + RESULT_COLUMNS)
        marks = ", ".join("?" * (len(RESULT_COLUMNS) + 1))
        values = [(res.key, *(r.get(c) for c in RESULT_COLUMNS)) for r in res.rows]
        status = "failed" if res.error else "done"
        with self.transaction() as c:
            c.execute("DELETE FROM results WHERE cell_key = ?", (res.key,))
            c.execute("DELETE FROM skipped WHERE cell_key = ?", (res.key,))
            c.executemany(f"INSERT INTO results ({cols}) VALUES ({marks})", values)
            c.executemany(
                "INSERT INTO skipped (cell_key, study, dataset, model, explainer, metric, metric_key, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(res.key, res.study, res.dataset, res.model, res.explainer, s["metric"], s["metric_key"], s["reason"])
                 for s in res.skipped])
            c.executemany("INSERT OR REPLACE INTO files (path, cell_key) VALUES (?, ?)", [(f, res.key) for f in files])
            c.execute(
                "INSERT INTO cells (cell_key, cell_index, study, dataset, model, explainer, is_baseline, status, "
                "n_rows, seconds, finished_at, spec_hash, data_fp, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(cell_key) DO UPDATE SET status = excluded.status, n_rows = excluded.n_rows, "
                "seconds = excluded.seconds, finished_at = excluded.finished_at, spec_hash = excluded.spec_hash, "
                "data_fp = excluded.data_fp, error = excluded.error",
                (res.key, res.index, res.study, res.dataset, res.model, res.explainer, int(res.is_baseline), status,
                 len(res.rows), res.seconds, now(), res.spec_hash, res.data_fp, res.error))

    # ------------------------------------------------------------------ manifest
    def record_files(self, paths: Iterable[str], cell_key: str | None = None) -> None:
        """Add run-folder-relative paths to the manifest of files this run wrote."""
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO files (path, cell_key) VALUES (?, ?)",
                          [(p, cell_key) for p in paths])

    def files(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT path FROM files ORDER BY path")]

    # ------------------------------------------------------------------ reading
    def results(self) -> pd.DataFrame:
        """The long results table in grid order (cell, then insertion order within it)."""
        cols = ", ".join(f"r.{c}" for c in RESULT_COLUMNS)
        df = pd.read_sql_query(
            f"SELECT {cols} FROM results r JOIN cells c ON c.cell_key = r.cell_key "
            "WHERE c.status = 'done' ORDER BY c.cell_index, r.id", self.conn)
        df["is_baseline"] = df["is_baseline"].astype(bool)
        df["score"] = df["score"].astype(float)
        return df

    def cells(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM cells ORDER BY cell_index", self.conn)

    def skipped(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT s.study, s.dataset, s.model, s.explainer, s.metric, s.metric_key, s.reason FROM skipped s "
            "JOIN cells c ON c.cell_key = s.cell_key ORDER BY c.cell_index, s.rowid", self.conn)

    def n_rows(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


# ----------------------------------------------------------------------------- example maps

def safe_name(key: str) -> str:
    """A file name for a cell key (readable part + short hash, so distinct keys never collide)."""
    readable = "".join(ch if ch.isalnum() or ch in "._@-" else "_" for ch in key.replace("/", "__"))
    return f"{readable[:120]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _flatten(obj: Any, path: str, tensors: dict[str, Any]) -> Any:
    import torch
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()  # safetensors refuses shared storage
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {str(k): _flatten(v, f"{path}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _unflatten(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_examples(run_dir: str | Path, key: str, examples: dict[str, Any]) -> list[str]:
    """Write a cell's example maps as ``examples/<cell>.safetensors`` + ``.json`` (atomically).

    Returns:
        the two paths, relative to the run folder (for the manifest).
    """
    from safetensors.torch import save

    base = Path(EXAMPLES_DIR) / safe_name(key)
    tensors: dict[str, Any] = {}
    tree = _flatten(examples, "x", tensors)
    atomic_write_bytes(Path(run_dir) / f"{base}.safetensors", save(tensors) if tensors else save({}))
    atomic_write_text(Path(run_dir) / f"{base}.json", json.dumps({"format": "xaibench-examples/1", "tree": tree}))
    return [f"{base}.safetensors", f"{base}.json"]


def load_examples(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every saved example dict of a run, in file-name order. Reads safetensors and JSON only:
    nothing in a run folder can execute code.

    Raises:
        DataError: an example file is unreadable (the message names it).
    """
    from safetensors.torch import load

    folder = Path(run_dir) / EXAMPLES_DIR
    if not folder.is_dir():
        return []
    out = []
    for meta in sorted(folder.glob("*.json")):
        tens = meta.with_suffix(".safetensors")
        try:
            tree = json.loads(meta.read_text())["tree"]
            tensors = load(tens.read_bytes())
            out.append(_unflatten(tree, tensors))
        except Exception as exc:
            raise DataError(f"{meta}: unreadable example file ({type(exc).__name__}: {exc}); rebuild the run "
                            "with --force or delete the examples folder") from None
    return out


# ----------------------------------------------------------------------------- reading a run

@dataclass
class RunData:
    """Everything a report is made of, read from a run folder's database."""

    run_dir: Path
    meta: dict[str, Any]
    results: pd.DataFrame
    summary: pd.DataFrame
    skipped: pd.DataFrame
    cells: pd.DataFrame

    @property
    def seed(self) -> int:
        return int(self.meta.get("seed", 0) or 0)

    @property
    def failed(self) -> pd.DataFrame:
        """The cells that raised (``cell_key``, ``error``, ...); retried by ``--resume``."""
        return self.cells[self.cells["status"] == "failed"]


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder: metadata, the long results table, its summary, skips and cells.

    Raises:
        StoreError: the folder has no (valid) results database.
    """
    run_dir = Path(run_dir)
    with Store.open(run_dir) as store:
        meta = store.get_meta()
        results = store.results()
        skipped = store.skipped()
        cells = store.cells()
    summary = summarise(results, seed=int(meta.get("seed", 0) or 0))
    return RunData(run_dir, meta, results, summary, skipped, cells)


__all__ = ["CellResult", "DB_NAME", "EXAMPLES_DIR", "FORMAT", "RESULT_COLUMNS", "RunData", "RunLock", "Store",
           "load_examples", "load_run", "now", "safe_name", "save_examples"]
