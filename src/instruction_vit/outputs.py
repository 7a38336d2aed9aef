"""The one output type every classifier of this package returns (a leaf module)."""

from typing import NamedTuple

from torch import Tensor


class InstructionOutput(NamedTuple):
    logits: Tensor  # [B, num_classes]: the classification head (CoOp: CLIP's scaled cosine to the class texts)
    scores: Tensor  # [B, P]: scaled cosine between the [CLS] output and each prompt output; [B, 0] without prompts
