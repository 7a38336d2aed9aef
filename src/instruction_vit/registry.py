"""Extension points: one name -> one entry, for prompt encoders, data sets and methods.

A :class:`Registry` is complete whatever the caller imported: on its first lookup it imports every module of its
own package (so a new entry is one new file there) and then the entry points of its group, through which other
installed distributions add entries (``[project.entry-points."instruction_vit.encoders"]``). No result depends
on import order. These registries are the package's only module-level mutable state.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from contextlib import contextmanager
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    Args:
        kind: what an entry is, for messages ("prompt encoder", "data set", ...).
        package: the dotted package whose modules hold the built-in entries.
        group: the entry-point group third-party distributions register under.
    """

    def __init__(self, kind: str, package: str, group: str):
        self.kind, self.package, self.group = kind, package, group
        self._entries: dict[str, T] = {}
        self._loaded = False
        self._loading = False

    def register(self, name: str, entry: T | None = None) -> Any:
        """Add ``entry`` under ``name``; without ``entry``, a decorator that adds what it decorates."""
        if entry is None:
            return lambda obj: self.register(name, obj)
        known = self._entries.get(name)
        if known is not None and known is not entry:
            raise ConfigError(f"{self.kind} {name!r} is registered twice ({_where(known)} and {_where(entry)})")
        self._entries[name] = entry
        return entry

    def class_decorator(self, name: str, check: Callable[[str, Any], None]) -> Callable[[type], type]:
        """A class decorator registering a class as ``name`` after ``check(name, cls)`` (which raises when the
        class lacks what an entry must declare); the class gets ``name`` as its ``name`` attribute."""

        def add(cls: type) -> type:
            check(name, cls)
            self.register(name, cls)
            cls.name = name
            return cls

        return add

    def instance(self, name: str, check: Callable[[str, Any], None]) -> Any:
        """An instance of the class registered as ``name``, checked again (an entry point's class skipped the
        decorator) and carrying its ``name``."""
        entry = self.get(name)
        check(name, entry)
        obj = entry()
        obj.name = name
        return obj

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name is a :class:`ConfigError` naming the closest ones."""
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    @contextmanager
    def isolated(self, reload: bool = False) -> Iterator[Registry[T]]:
        """Entries registered inside the block are gone after it (for tests and notebooks). With ``reload``, the
        first lookup inside reads the package and the entry points again, as a new process would (the package's
        own modules register once per process, so their entries are kept)."""
        self._load()
        saved = dict(self._entries), self._loaded
        if reload:
            self._loaded = False
        try:
            yield self
        finally:
            self._entries, self._loaded = saved

    def _load(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
            for point in entry_points(group=self.group):
                loaded = point.load()
                if callable(loaded) and point.name not in self._entries:
                    self.register(point.name, loaded)
            self._loaded = True
        finally:
            self._loading = False


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
