"""Prompts: encoders, the prompt bank, and top-K+1 prompt selection."""

from .bank import KINDS, ImageSource, PromptBank, build_prompt_bank, choose_prompt_images, encode_class_texts
from ..outputs import Prompts
from .encoders import PromptEncoder, load_encoder  # the rest of the encoder registry: instruction_vit.prompts.encoders
from .selection import (
    Selection,
    class_prototypes,
    cosine_scores,
    expand_scores,
    forward_selected,
    gather_prompts,
    select_top_k,
    target_mask,
)

__all__ = [
    "KINDS",
    "ImageSource",
    "PromptBank",
    "PromptEncoder",
    "Prompts",
    "Selection",
    "build_prompt_bank",
    "choose_prompt_images",
    "class_prototypes",
    "cosine_scores",
    "encode_class_texts",
    "expand_scores",
    "forward_selected",
    "gather_prompts",
    "load_encoder",
    "select_top_k",
    "target_mask",
]
