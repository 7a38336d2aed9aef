"""Instruction-ViT: multi-modal prompts (text, image, mixed) for instruction learning in ViT.

The library's face (the functions are imported on first use, so ``import instruction_vit`` stays light)::

    import instruction_vit as ivit
    ivit.train([...overrides...], out="runs/x")       # or a Config, a dict, a YAML path
    classifier = ivit.load_classifier("runs/x")
    classifier.predict(["photo.jpg"], classes=["tabby cat", "lynx"])

Layers, one direction of imports: ``config -> data -> prompts -> model -> methods -> resolve -> losses ->
artifacts -> evaluation -> training -> studies -> api -> app -> cli`` (``pyproject.toml`` holds the contract).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .api import (Classifier, Config, InstructionViTError, PromptBank, Prompts, UserError, build_prompts,
                      create_model, evaluate, export_onnx, list_methods, list_datasets, list_encoders,
                      list_experiments, load_classifier, load_config, load_encoder, push_to_hub, register_method,
                      register_dataset, register_encoder, run_config, save_pretrained, train)


def __getattr__(name: str) -> Any:
    """The library's face is :mod:`instruction_vit.api`; it is imported on first use (torch, timm and open_clip with
    it), so ``import instruction_vit`` and ``ivit --help`` stay light."""
    if name not in __all__:
        raise AttributeError(f"module 'instruction_vit' has no attribute {name!r}")
    from . import api

    return getattr(api, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


__all__ = [
    "Classifier", "Config", "InstructionViTError", "PromptBank", "Prompts", "UserError", "build_prompts",
    "create_model", "evaluate", "export_onnx", "list_methods", "list_datasets", "list_encoders",
    "list_experiments", "load_classifier", "load_config", "load_encoder", "push_to_hub", "register_method",
    "register_dataset", "register_encoder", "run_config", "save_pretrained", "train",
]
