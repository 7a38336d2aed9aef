"""Prompts: encoders, the prompt bank, and top-K+1 prompt selection."""

from .bank import KINDS, ImageSource, PromptBank, build_prompt_bank, choose_prompt_images, encode_class_texts
from .encoders import (
    ImagePreprocess,
    PromptEncoder,
    encoder_spec_help,
    joint_space,
    list_encoders,
    load_encoder,
    register_encoder,
    weights_id,
)
from ..outputs import Prompts
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
    "ImagePreprocess",
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
    "encoder_spec_help",
    "expand_scores",
    "forward_selected",
    "gather_prompts",
    "joint_space",
    "list_encoders",
    "load_encoder",
    "register_encoder",
    "select_top_k",
    "target_mask",
    "weights_id",
]
