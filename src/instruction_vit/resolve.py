"""The resolve step: a typed :class:`~instruction_vit.config.Config` checked against the registries, once.

:mod:`instruction_vit.config` is the schema (dataclasses and a typed loader) at the bottom of the layers; it knows
no registry. Here, above the registries, the names a config gives are looked up: the data set (``data.dataset``),
the method (``model.method``) and its own options (``model.options``, filled with its defaults so
that the config a run records holds every value). The result, :class:`Resolved`, carries the method it found, and is
what the layers above pass along instead of looking the method up again.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from .methods import Method, get_method
from .config import Config
from .data import list_datasets
from .errors import ConfigError


@dataclass(frozen=True)
class Resolved:
    """A config whose registry names were checked, with the method ``model.method`` names."""

    config: Config
    method: Method


def resolve(cfg: Config | Resolved) -> Resolved:
    """``cfg`` checked against the registries (a :class:`Resolved` is returned as it is): ``data.dataset`` is a
    registered data set, ``model.method`` a method whose options ``model.options`` are valid (filled with
    its defaults in the returned config), and a method that reads no instruction prompts has ``prompts.kind=none``.
    Errors name the closest valid name."""
    if isinstance(cfg, Resolved):
        return cfg
    datasets = list_datasets()
    if cfg.data.dataset not in datasets:
        close = difflib.get_close_matches(cfg.data.dataset, datasets, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"config key 'data.dataset' is {cfg.data.dataset!r}; choose one of {', '.join(datasets)}"
                          f"{hint}")
    method = get_method(cfg.model.method)
    model = dataclasses.replace(cfg.model, options=method.resolve_options(cfg.model.options))
    if not method.reads_prompts and cfg.prompts.kind != "none":
        raise ConfigError(f"model.method={cfg.model.method} reads no instruction prompts: set prompts.kind=none")
    return Resolved(dataclasses.replace(cfg, model=model), method)


__all__ = ["Resolved", "resolve"]
