"""Progress of long steps (encoding prompts, decoding images, epochs), reported to whoever asked.

The library only says what it is doing (``with task("encoding 8160 prompt texts", 8160) as t: t.advance(256)``);
nothing is shown unless a caller installs a :class:`Reporter` for a block of work (``with reporting(r): ...``): the
``ivit`` command installs one that draws rich progress bars. No progress object is passed from function to
function; the reporter lives in a context variable, so threads and nested calls each see their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol


class Reporter(Protocol):
    """What shows progress: ``start`` a task, ``advance`` it (optionally with a new description), ``stop`` it."""

    def start(self, description: str, total: int | None) -> Any: ...

    def advance(self, handle: Any, amount: int = 1, description: str | None = None) -> None: ...

    def stop(self, handle: Any) -> None: ...


_REPORTER: ContextVar[Reporter | None] = ContextVar("instruction_vit_progress", default=None)


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Show the progress of the work inside the block through ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)


class Task:
    """One long step; does nothing when no reporter is installed."""

    def __init__(self, description: str, total: int | None = None):
        self._reporter = _REPORTER.get()
        self._handle = self._reporter.start(description, total) if self._reporter is not None else None

    def advance(self, amount: int = 1, description: str | None = None) -> None:
        if self._reporter is not None:
            self._reporter.advance(self._handle, amount, description)

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._reporter is not None:
            self._reporter.stop(self._handle)


def task(description: str, total: int | None = None) -> Task:
    """A long step of ``total`` items (use as a context manager, and ``advance`` it as items are done)."""
    return Task(description, total)
