"""The Instruction-ViT model: receives prompt features (:class:`Prompts`, tensors), never the encoders."""

from .build import build_model
from .instruction_vit import InstructionOutput, InstructionViT, PromptEmbed, Prompts
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
    "Prompts",
    "apply_regime",
    "build_model",
    "check_regime",
]
