"""Helpers for tests that kill a running ``xaibench run`` and resume it (local and Ray executors)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from ..store import DB_NAME


def done_cell_count(run_dir: str | Path) -> int:
    """Finished cells in a run folder's database, read-only (safe while the run writes it); 0 when
    the database or its tables do not exist yet."""
    db = Path(run_dir) / DB_NAME
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0])
        finally:
            con.close()
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def kill_after_first_cell(proc: subprocess.Popen, run_dir: str | Path, timeout: float) -> int:
    """SIGKILL ``proc`` (an ``xaibench run`` writing ``run_dir``) as soon as one cell is done and
    return the number of cells done after it died.

    Raises:
        AssertionError: the run ended by itself first (its stderr in the message, when piped), or
            no cell finished within ``timeout`` seconds.
    """
    deadline = time.time() + timeout
    try:
        while done_cell_count(run_dir) < 1:
            if proc.poll() is not None:
                why = f": {proc.stderr.read().decode()}" if proc.stderr else ""
                raise AssertionError(f"the run ended before it could be killed{why}")
            if time.time() >= deadline:
                raise AssertionError("no cell finished in time")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return done_cell_count(run_dir)
