"""Instruction-ViT: multi-modal prompts (text, image, mixed) for instruction learning in ViT.

The library's face (the functions are imported on first use, so ``import instruction_vit`` stays light)::

    import instruction_vit as ivit
    ivit.train([...overrides...], out="runs/x")       # or a Config, a dict, a YAML path
    classifier = ivit.load_classifier("runs/x")
    classifier.predict(["photo.jpg"], classes=["tabby cat", "lynx"])

Layers, one direction of imports: ``data -> prompts -> model -> classifiers -> losses -> engine -> api -> cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_API = {
    "create_model": "api", "build_prompts": "api", "load_classifier": "api", "train": "api", "evaluate": "api",
    "run_config": "api", "list_experiments": "api", "save_pretrained": "api", "push_to_hub": "api",
    "export_onnx": "api",
    "load_encoder": "prompts.encoders", "list_encoders": "prompts.encoders", "register_encoder": "prompts.encoders",
    "list_datasets": "data", "register_dataset": "data",
    "list_classifiers": "classifiers", "register_classifier": "classifiers",
    "Config": "config", "load_config": "config",
    "PromptBank": "prompts", "Prompts": "outputs", "Classifier": "engine.classifier",
    "InstructionViTError": "errors", "UserError": "errors",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .api import (build_prompts, create_model, evaluate, export_onnx, list_experiments, load_classifier,
                      push_to_hub, run_config, save_pretrained, train)
    from .classifiers import list_classifiers, register_classifier
    from .config import Config, load_config
    from .data import list_datasets, register_dataset
    from .engine.classifier import Classifier
    from .errors import InstructionViTError, UserError
    from .outputs import Prompts
    from .prompts import PromptBank
    from .prompts.encoders import list_encoders, load_encoder, register_encoder


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'instruction_vit' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = [
    "Classifier", "Config", "InstructionViTError", "PromptBank", "Prompts", "UserError", "build_prompts",
    "create_model", "evaluate", "export_onnx", "list_classifiers", "list_datasets", "list_encoders",
    "list_experiments", "load_classifier", "load_config", "load_encoder", "push_to_hub", "register_classifier",
    "register_dataset", "register_encoder", "run_config", "save_pretrained", "train",
]
