"""The Instruction-ViT model: receives prompt features (:class:`Prompts`, tensors), never the encoders."""

from .build import build_model
from .prompted_vit import InstructionOutput, InstructionViT, PromptEmbed, Prompts
from .plain import PlainModel
from .protocol import MethodModel
from .regimes import REGIMES, apply_regime, check_regime

__all__ = [
    "REGIMES",
    "MethodModel",
    "InstructionOutput",
    "InstructionViT",
    "PlainModel",
    "PromptEmbed",
    "Prompts",
    "apply_regime",
    "build_model",
    "check_regime",
]
