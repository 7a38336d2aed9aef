"""The Instruction-ViT model: receives prompt features as tensors, never the encoders."""

from .build import build_model
from .instruction_vit import InstructionOutput, InstructionViT, PromptEmbed, PromptInput
from .plain import PlainClassifier
from .regimes import REGIMES, apply_regime

__all__ = [
    "REGIMES",
    "InstructionOutput",
    "InstructionViT",
    "PlainClassifier",
    "PromptEmbed",
    "PromptInput",
    "apply_regime",
    "build_model",
]
