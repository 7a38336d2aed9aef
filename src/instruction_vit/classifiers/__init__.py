"""Classifier kinds, one module each in this package: a :class:`ClassifierKind` subclass registered under the name
``model.method`` takes, which builds its model from a run config.

Adding a kind is one new file here, e.g. ``my_kind.py``::

    from torch import nn
    from . import ClassifierKind, register_classifier

    @register_classifier("my_kind")                    # the name model.method takes
    class MyKind(ClassifierKind):
        \"\"\"What it is, in one line.\"\"\"
        reads_prompts = False                           # it reads no instruction prompts: prompts.kind must be none

        def build(self, cfg, class_names, prompt_dim=None, pretrained=None) -> nn.Module:
            return MyClassifier(...)

The model it builds follows :class:`~instruction_vit.model.ImageClassifier`: ``forward(images, prompts=None)``
returns an :class:`~instruction_vit.outputs.InstructionOutput`, ``bank_prompts()`` gives its stored prompts (or
``None``), ``backbone`` is its image tower (whose ``pretrained_cfg`` gives the transforms) and
``trainable_parameters(regime, train_prompt_features=False)`` says what each regime trains
(:func:`~instruction_vit.model.apply_regime`). Another distribution adds a kind through the entry-point group
``instruction_vit.classifiers`` (``my_kind = "my_pkg.kinds:MyKind"``). :func:`~instruction_vit.engine.model_from_config`
asks this registry; nothing else lists classifier kinds.

This layer sits above ``model`` and ``prompts``: a kind may load prompt encoders (CoOp builds on CLIP's).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn

from ..config import Config, typed
from ..errors import ConfigError
from ..registry import Registry

CLASSIFIERS: Registry[type[ClassifierKind]] = Registry("classifier kind", "instruction_vit.classifiers",
                                                       "instruction_vit.classifiers")
K = TypeVar("K", bound="type[ClassifierKind]")


class ClassifierKind(ABC):
    """One classifier kind (``model.method``): how its model is built from a run config, and which config keys it
    reads. The docstring's first line describes it (:attr:`summary`).

    Class attributes (the defaults fit a kind built on a timm backbone that reads instruction prompts):

    * ``name``: the registered name (``model.method``), set by :func:`register_classifier`;
    * ``reads_prompts``: it reads instruction prompts (``prompts.kind`` text, image or mixed); if not,
      ``prompts.kind`` must be ``none``;
    * ``timm_backbone``: it is built on the timm backbone ``model.backbone`` from the weights ``model.pretrained``
      (a run checkpoint included); if not, those keys are unused;
    * ``uses_encoder``: it is built on ``prompts.encoder`` itself, whatever ``prompts.kind`` says;
    * ``Options``: a dataclass of the kind's own options (``model.options.NAME=value``), or ``None`` for none. The
      config is validated against it: an unknown name or a value of the wrong type is a :class:`ConfigError`, and
      the defaults are filled in (the resolved config, and so each run folder and checkpoint, records them all).
      Read them in :meth:`build` with :meth:`options`.
    """

    name: str = ""
    reads_prompts: bool = True
    timm_backbone: bool = True
    uses_encoder: bool = False
    Options: type | None = None

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """``model.options`` checked against :attr:`Options`, with its defaults filled in."""
        if self.Options is None:
            if given:
                raise ConfigError(f"model.method={self.name} takes no model.options (got {', '.join(given)})")
            return {}
        return dataclasses.asdict(typed(self.Options, dict(given), "model.options"))

    def options(self, cfg: Config) -> Any:
        """The kind's :attr:`Options` as ``cfg.model.options`` sets them."""
        if self.Options is None:
            raise TypeError(f"classifier kind {self.name!r} declares no Options")
        return self.Options(**self.resolve_options(cfg.model.options))

    @abstractmethod
    def build(self, cfg: Config, class_names: Sequence[str], prompt_dim: Any = None,
              pretrained: Any = None) -> nn.Module:
        """The model ``cfg`` describes, classifying ``class_names``.

        Args:
            cfg: the run config.
            class_names: the classes, in label order.
            prompt_dim: the prompt bank's feature dim (``int``), one per prompt source (``{"text": 384, ...}``), or
                ``None`` when the run reads no prompts.
            pretrained: the backbone's weight source; ``None``: ``cfg.model.pretrained``. Otherwise ``False``
                (random init), ``True`` or ``"timm"`` (timm's sources), a weights file, or a state dict (a run
                checkpoint's backbone, as :func:`~instruction_vit.engine.model_from_config` passes it).
        """

    @property
    def summary(self) -> str:
        """The first line of the kind's docstring."""
        return ((type(self).__doc__ or "").strip().splitlines() or [""])[0]


def register_classifier(name: str) -> Callable[[K], K]:
    """Class decorator: register a :class:`ClassifierKind` subclass as ``model.method=name``."""
    if not name or name != name.strip():
        raise ConfigError(f"a classifier kind's name is a non-empty word, got {name!r}")

    return CLASSIFIERS.class_decorator(name, _check_kind)


def _check_kind(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, ClassifierKind)):
        raise TypeError(f"classifier kind {name!r}: register_classifier decorates a ClassifierKind subclass, "
                        f"not {cls!r}")


def classifier_kind(name: str) -> ClassifierKind:
    """The classifier kind called ``name``; an unknown name is a :class:`ConfigError` naming the closest ones."""
    return CLASSIFIERS.instance(name, _check_kind)


def list_classifiers() -> list[str]:
    """The names ``model.method`` accepts: this package's classifier kinds and those of installed entry points."""
    return CLASSIFIERS.names()


__all__ = ["CLASSIFIERS", "ClassifierKind", "classifier_kind", "list_classifiers", "register_classifier"]
