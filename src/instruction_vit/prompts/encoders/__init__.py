"""Prompt encoders, one file each, and the registry that builds one from its spec string.

A spec names a registered encoder and its option: ``minilm``, ``efficientnet-lite0[@SIZE]``, ``conse[@SIZE]``,
``open_clip:MODEL[@PRETRAINED]``, ``open_clip:local-dir:/path``, ``open_clip:hf-hub:ORG/NAME``
(:func:`encoder_spec_help` lists them all, plugins included). A new encoder is one new module here with a
:class:`PromptEncoder` subclass decorated with ``@register_encoder("name")``, or, from another distribution, an
entry point in the group ``instruction_vit.encoders``.
"""

from __future__ import annotations

from ...files import file_sha256
from .base import IMAGE, TEXT, ImagePreprocess, PromptEncoder, parse_spec
from .registry import (
    ENCODERS,
    encoder_class,
    encoder_spec_help,
    joint_space,
    list_encoders,
    load_encoder,
    register_encoder,
    weights_id,
)

__all__ = [
    "ENCODERS",
    "IMAGE",
    "TEXT",
    "ImagePreprocess",
    "PromptEncoder",
    "encoder_class",
    "encoder_spec_help",
    "file_sha256",
    "joint_space",
    "list_encoders",
    "load_encoder",
    "parse_spec",
    "register_encoder",
    "weights_id",
]
