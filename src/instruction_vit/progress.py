"""Progress of long steps (encoding prompts, decoding images, epochs), reported to whoever asked.

The library only says what it is doing (``with task("encoding 8160 prompt texts", 8160) as t: t.advance(256)``);
nothing is shown unless a caller installs a :class:`Reporter` for a block of work (``with reporting(r): ...``): the
``ivit`` command installs one that draws rich progress bars. No progress object is passed from function to
function; the reporter lives in a context variable, so threads and nested calls each see their own.

In a notebook or a script, where nobody set anything up, the library's entry points (``ivit.train``,
``ivit.evaluate``, ...) run inside :func:`shown_by_default`: its one-line messages and one line per long step go to
stderr, and a logging set-up of the caller's own is left as it is.
"""

from __future__ import annotations

import logging
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


#: The library's logger: every module logs under it (``instruction_vit.training.loop``, ...).
LIBRARY_LOGGER = "instruction_vit"


class LogLines:
    """A :class:`Reporter` of one log line per long step, as it starts (``encoding 30 prompt texts (minilm) ...``),
    on the ``instruction_vit.progress`` logger: for callers that installed no reporter of their own."""

    def __init__(self) -> None:
        self.logger = logging.getLogger(f"{LIBRARY_LOGGER}.progress")

    def start(self, description: str, total: int | None) -> None:
        self.logger.info("%s ...", description)

    def advance(self, handle: Any, amount: int = 1, description: str | None = None) -> None:
        pass

    def stop(self, handle: Any) -> None:
        pass


class _InfoLines(logging.StreamHandler):
    """Shows the library's INFO lines on stderr, one message a line; hands its warnings and errors to the root
    logger's handlers (or Python's last resort), where they went before this handler was attached."""

    def __init__(self) -> None:
        super().__init__()  # sys.stderr as it is now (a notebook's, pytest's capture)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            logging.getLogger().callHandlers(record)
        else:
            super().emit(record)


def _nobody_shows_info(library: logging.Logger) -> bool:
    """Whether the library's INFO lines would be dropped because nobody chose otherwise: the library logger has no
    level and no handler of its own, and no handler would receive its INFO records (the effective level is above
    INFO, as Python's default WARNING is, or there is no handler at all)."""
    if library.level != logging.NOTSET or library.handlers:
        return False
    return library.getEffectiveLevel() > logging.INFO or not library.hasHandlers()


@contextmanager
def shown_by_default() -> Iterator[None]:
    """Inside the block, the library's messages and long steps are shown even where nobody set anything up (a
    notebook, a script). Without a reporter installed, :class:`LogLines` reports the long steps. When the
    ``instruction_vit`` logger's INFO lines would be dropped because nobody chose otherwise (no level or handler on
    it, and Python's default level or no handler above it), they are shown on stderr for the block, by a handler of
    its own, not passed up to root handlers that another package may add meanwhile (open_clip's ``logging.info``
    calls ``basicConfig``): each line is shown once. Warnings still reach the root logger's handlers as before. A
    caller who set a level or a handler (``logging.basicConfig(level=logging.INFO)``, or
    ``logging.getLogger("instruction_vit").setLevel(logging.WARNING)`` to keep the library quiet) decides; what the
    block changed is restored after it."""
    library = logging.getLogger(LIBRARY_LOGGER)
    handler, propagate = (_InfoLines(), library.propagate) if _nobody_shows_info(library) else (None, None)
    if handler is not None:
        library.addHandler(handler)
        library.setLevel(logging.INFO)
        library.propagate = False
    token = _REPORTER.set(LogLines()) if _REPORTER.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _REPORTER.reset(token)
        if handler is not None:
            library.removeHandler(handler)
            library.setLevel(logging.NOTSET)
            library.propagate = propagate
