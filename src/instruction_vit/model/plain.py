"""Any timm classifier as a baseline in the same engine (Table 1's CNNs and non-ViT transformers)."""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError
from ..outputs import Capabilities, Prompts
from .prompted_vit import InstructionOutput, WrapsBackbone


class PlainModel(WrapsBackbone, nn.Module):
    """A timm model with the :class:`InstructionViT` interface and no prompts (``scores`` is ``[B, 0]``).

    Regimes (:meth:`~.WrapsBackbone.trainable_parameters`): ``full`` trains everything, ``prompt`` and ``linear`` the
    classification head (it has no prompt parts).
    """

    capabilities = Capabilities()  # no prompts, its head's classes only

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def bank_prompts(self) -> None:
        return None

    def forward(self, images: Tensor, prompts: Prompts | None = None) -> InstructionOutput:
        if prompts is not None:
            raise ConfigError(f"{type(self.backbone).__name__} is not a ViT: it cannot read prompts; "
                              "use a ViT backbone for Instruction-ViT, or prompts.kind=none")
        logits = self.backbone(images)
        return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0))
