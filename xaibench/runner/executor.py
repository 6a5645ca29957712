"""Pluggable executors: where the jobs of a benchmark run.

A :class:`Job` is the cells sharing one (study, model), so the model is loaded once per
job. An executor calls ``work(job, on_batch)`` for every job — an iterator of
:class:`~xaibench.store.CellResult`, one per finished cell — and hands each result
to ``on_result`` *in the calling process*, which commits it to the store. Only a local,
in-process executor exists now; a distributed one (processes, a cluster queue) implements
the same :class:`Executor` protocol and registers with :func:`register_executor`. For
that, ``work`` is a module-level function bound with :func:`functools.partial` over
plain data, so it pickles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

from ..registry import Registry
from ..store import CellResult
from .config import Cell

#: ``on_batch(cell_key, batch_index, n_batches)`` progress callback.
BatchCallback = Callable[[str, int, int], None]
WorkFn = Callable[["Job", BatchCallback], Iterator[CellResult]]

#: Executors, constructed with keyword settings (``create_executor("ray", workers=4)``).
EXECUTORS: Registry[Any] = Registry("executor", settings=False)


@dataclass(frozen=True)
class Job:
    """Cells of one (study, model) in grid order; they share the loaded model."""

    study: str
    model: str
    cells: tuple[Cell, ...]


@runtime_checkable
class Executor(Protocol):
    """Runs jobs and passes every finished cell to ``on_result`` in the caller's process."""

    def run(self, jobs: Sequence[Job], work: WorkFn, on_result: Callable[[CellResult], None],
            on_batch: BatchCallback) -> None: ...


#: ``@register_executor("local")``: class decorator registering an :class:`Executor`.
register_executor = EXECUTORS.register


def create_executor(name: str = "local", **params: Any) -> Executor:
    """Build a registered executor (``"local"``)."""
    return EXECUTORS.get(name)(**params)


def make_jobs(cells: Sequence[Cell]) -> list[Job]:
    """Group cells by (study, model), keeping grid order."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.group, []).append(c)
    return [Job(study=k[0], model=k[1], cells=tuple(v)) for k, v in groups.items()]


@register_executor("local")
class LocalExecutor:
    """Run every job in this process, one after the other (deterministic order)."""

    def run(self, jobs: Sequence[Job], work: WorkFn, on_result: Callable[[CellResult], None],
            on_batch: BatchCallback) -> None:
        for job in jobs:
            for result in work(job, on_batch):
                on_result(result)
