"""Instruction-ViT: multi-modal prompts (text, image, mixed) for instruction learning in ViT.

Layers, one direction of imports: ``data -> prompts -> model -> losses -> engine -> cli``.
"""

__version__ = "0.1.0"
