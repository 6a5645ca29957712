"""Progress bars (rich) that stay quiet when output is not a terminal or XAIBENCH_QUIET is set."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator


def _enabled() -> bool:
    if os.environ.get("XAIBENCH_QUIET"):
        return False
    return sys.stderr.isatty() or bool(os.environ.get("XAIBENCH_PROGRESS"))


@contextlib.contextmanager
def progress_bar(total: int, desc: str = "") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a rich progress bar on a terminal, nothing otherwise."""
    if not _enabled():
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as prog:
        task = prog.add_task(desc, total=total)
        yield lambda n=1: prog.advance(task, n)
