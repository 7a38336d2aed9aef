"""methods, one module each in this package: a :class:`Method` subclass registered under the name
``model.method`` takes, which builds its model from a run config.

Adding a method is one new file here, e.g. ``my_method.py``::

    from torch import nn
    from . import Method, register_method

    @register_method("my_method")                    # the name model.method takes
    class MyMethod(Method):
        \"\"\"What it is, in one line.\"\"\"
        reads_prompts = False                           # it reads no instruction prompts: prompts.kind must be none

        def build(self, cfg, class_names, prompt_dim=None, pretrained=None) -> nn.Module:
            return MyModel(...)

The model it builds follows :class:`~instruction_vit.model.MethodModel`: ``forward(images, prompts=None)``
returns an :class:`~instruction_vit.outputs.InstructionOutput`, ``bank_prompts()`` gives its stored prompts (or
``None``), ``backbone`` is its image tower (whose ``pretrained_cfg`` gives the transforms) and
``trainable_parameters(regime, train_prompt_features=False)`` says what each regime trains
(:func:`~instruction_vit.model.apply_regime`). Another distribution adds a method through the entry-point group
``instruction_vit.methods`` (``my_method = "my_pkg.methods:MyMethod"``). :func:`~instruction_vit.engine.model_from_config`
asks this registry; nothing else lists methods.

This layer sits above ``model`` and ``prompts``: a method may load prompt encoders (CoOp builds on CLIP's).
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

METHODS: Registry[type[Method]] = Registry("method", "instruction_vit.methods",
                                    "instruction_vit.methods")
M = TypeVar("M", bound="type[Method]")


class Method(ABC):
    """One method (``model.method``): how its model is built from a run config, and which config keys it
    reads. The docstring's first line describes it (:attr:`summary`).

    Class attributes (the defaults fit a method built on a timm backbone that reads instruction prompts):

    * ``name``: the registered name (``model.method``), set by :func:`register_method`;
    * ``reads_prompts``: it reads instruction prompts (``prompts.kind`` text, image or mixed); if not,
      ``prompts.kind`` must be ``none``;
    * ``timm_backbone``: it is built on the timm backbone ``model.backbone`` from the weights ``model.pretrained``
      (a run checkpoint included); if not, those keys are unused;
    * ``uses_encoder``: it is built on ``prompts.encoder`` itself, whatever ``prompts.kind`` says;
    * ``Options``: a dataclass of the method's own options (``model.options.NAME=value``), or ``None`` for none. The
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
        """The method's :attr:`Options` as ``cfg.model.options`` sets them."""
        if self.Options is None:
            raise TypeError(f"method {self.name!r} declares no Options")
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
        """The first line of the method's docstring."""
        return ((type(self).__doc__ or "").strip().splitlines() or [""])[0]


class EncoderMethod(Method):
    """A method built on the towers ``prompts.encoder`` names (CLIP's, or the offline MiniLM + ConSE), reading no
    instruction prompts: the CLIP prompt learners (the CoOp family, MaPLe, PromptSRC)."""

    reads_prompts = False
    timm_backbone = False
    uses_encoder = True


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` subclass as ``model.method=name``."""
    if not name or name != name.strip():
        raise ConfigError(f"a method's name is a non-empty word, got {name!r}")

    return METHODS.class_decorator(name, _check_method)


def _check_method(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"method {name!r}: register_method decorates a Method subclass, "
                        f"not {cls!r}")


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name is a :class:`ConfigError` naming the closest ones."""
    return METHODS.instance(name, _check_method)


def list_methods() -> list[str]:
    """The names ``model.method`` accepts: this package's methods and those of installed entry points."""
    return METHODS.names()


__all__ = ["METHODS", "EncoderMethod", "Method", "get_method", "list_methods", "register_method"]
