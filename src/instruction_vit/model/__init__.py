"""The Instruction-ViT model: receives prompt features as tensors, never the encoders."""

from .build import build_model
from .instruction_vit import InstructionOutput, InstructionViT, PromptEmbed, PromptInput
from .plain import PlainClassifier
from .protocol import ImageClassifier
from .regimes import REGIMES, apply_regime, check_regime

__all__ = [
    "REGIMES",
    "ImageClassifier",
    "InstructionOutput",
    "InstructionViT",
    "PlainClassifier",
    "PromptEmbed",
    "PromptInput",
    "apply_regime",
    "build_model",
    "check_regime",
]
