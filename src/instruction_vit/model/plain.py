"""Any timm classifier as a baseline in the same engine (Table 1's CNNs and non-ViT transformers)."""

from __future__ import annotations

from torch import Tensor, nn

from .instruction_vit import InstructionOutput, PromptEmbed, WrapsBackbone


class PlainClassifier(WrapsBackbone, nn.Module):
    """A timm model with the :class:`InstructionViT` interface and no prompts (``scores`` is ``[B, 0]``)."""

    vpt_tokens = 0
    visual_prompts = None

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.prompt_embed = PromptEmbed({}, 1)
        self.prompt_bank = nn.ParameterDict()

    def bank_prompts(self) -> None:
        return None

    def forward(self, images: Tensor, prompts=None) -> InstructionOutput:
        if prompts is not None:
            raise ValueError(f"{type(self.backbone).__name__} is not a ViT: it cannot read prompts; "
                             "use a ViT backbone for Instruction-ViT, or prompts.kind=none")
        logits = self.backbone(images)
        return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0))
