"""The results store: one SQLite database per run folder (stdlib ``sqlite3``).

Tables:
    ``results``  the long table, one row per (study, dataset, model, explainer, metric, sample);
    ``cells``    one row per grid cell: status (``pending`` / ``done``), n_rows, seconds, finished_at;
    ``skipped``  metrics not applicable to a cell (attribution kind, missing ground truth), with why;
    ``meta``     run metadata (versions, seed, config hash, the full config, times, host).

A cell's rows, its skips and its ``done`` mark are written in ONE transaction
(:meth:`Store.commit_cell`), so a process killed at any moment leaves either the whole
cell or nothing of it: a resumed run recomputes unfinished cells from scratch and never
loses or duplicates a row.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

DB_NAME = "results.db"

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
    n_rows INTEGER, seconds REAL, finished_at TEXT);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, cell_key TEXT NOT NULL,
    run TEXT, study TEXT, dataset TEXT, model TEXT, explainer TEXT, explainer_key TEXT, metric TEXT,
    metric_key TEXT, sample_index INTEGER, sample_id TEXT, score REAL, undefined_reason TEXT, seconds REAL,
    protocol TEXT, explainer_params TEXT, direction TEXT, category TEXT, is_baseline INTEGER, seed INTEGER,
    config_hash TEXT);
CREATE INDEX IF NOT EXISTS results_cell ON results (cell_key);
CREATE TABLE IF NOT EXISTS skipped (cell_key TEXT NOT NULL, study TEXT, dataset TEXT, model TEXT,
    explainer TEXT, metric TEXT, metric_key TEXT, reason TEXT);
"""


@dataclass
class CellResult:
    """Everything one grid cell produced, committed at once by :meth:`Store.commit_cell`.

    Args:
        key: the cell key ``study/dataset/model/explainer``.
        rows: dicts with the :data:`RESULT_COLUMNS`.
        skipped: dicts ``{metric, metric_key, reason}`` for metrics that do not apply.
        seconds: wall time of the cell.
        examples: the example maps to save next to the database (or None).
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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    def open(cls, run_dir: str | Path, *, must_exist: bool = True) -> "Store":
        """The store of a run folder.

        Raises:
            FileNotFoundError: no ``results.db`` in the folder (and ``must_exist``).
        """
        path = Path(run_dir) / DB_NAME
        if must_exist and not path.is_file():
            raise FileNotFoundError(f"no results database at {path}; is {str(run_dir)!r} a run folder "
                                    "written by `xaibench run`?")
        return cls(path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ meta
    def get_meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values: Any) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                  [(k, json.dumps(v, default=str)) for k, v in values.items()])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ cells
    def plan(self, cells: Iterable[Any]) -> None:
        """Record every cell of the grid as ``pending`` (finished cells are kept)."""
        rows = [(c.key, c.index, c.study.name, c.dataset.label, c.model.label, c.explainer.label,
                 int(c.baseline is not None)) for c in cells]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany(
                "INSERT OR IGNORE INTO cells (cell_key, cell_index, study, dataset, model, explainer, is_baseline) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self.conn.executemany("UPDATE cells SET cell_index = ? WHERE cell_key = ?", [(r[1], r[0]) for r in rows])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def done_cells(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT cell_key FROM cells WHERE status = 'done'")}

    def commit_cell(self, res: CellResult) -> None:
        """Write a cell's rows and skips and mark it done, all in one transaction."""
        cols = ", ".join(("cell_key",) + RESULT_COLUMNS)
        marks = ", ".join("?" * (len(RESULT_COLUMNS) + 1))
        values = [(res.key, *(r.get(c) for c in RESULT_COLUMNS)) for r in res.rows]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("DELETE FROM results WHERE cell_key = ?", (res.key,))
            self.conn.execute("DELETE FROM skipped WHERE cell_key = ?", (res.key,))
            self.conn.executemany(f"INSERT INTO results ({cols}) VALUES ({marks})", values)
            self.conn.executemany(
                "INSERT INTO skipped (cell_key, study, dataset, model, explainer, metric, metric_key, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(res.key, res.study, res.dataset, res.model, res.explainer, s["metric"], s["metric_key"], s["reason"])
                 for s in res.skipped])
            self.conn.execute(
                "INSERT INTO cells (cell_key, cell_index, study, dataset, model, explainer, is_baseline, status, "
                "n_rows, seconds, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'done', ?, ?, ?) "
                "ON CONFLICT(cell_key) DO UPDATE SET status = 'done', n_rows = excluded.n_rows, "
                "seconds = excluded.seconds, finished_at = excluded.finished_at",
                (res.key, res.index, res.study, res.dataset, res.model, res.explainer, int(res.is_baseline),
                 len(res.rows), res.seconds, now()))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ reading
    def results(self) -> pd.DataFrame:
        """The long results table in grid order (cell, then insertion order within it)."""
        cols = ", ".join(f"r.{c}" for c in RESULT_COLUMNS)
        df = pd.read_sql_query(
            f"SELECT {cols} FROM results r JOIN cells c ON c.cell_key = r.cell_key "
            "ORDER BY c.cell_index, r.id", self.conn)
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
