"""CoOp (Zhou et al., 2022): learned text context before each class name, CLIP frozen.

The prompt-learning baseline users compare Instruction-ViT with. Each class's text is
``[SOS] v_1 ... v_M <class name>. [EOS]`` where the M context vectors are learned (shared by all classes,
CoOp's unified context, class token at the end) and everything else is CLIP's frozen text and image towers;
the logits are CLIP's scaled cosine between image and class-text features. Initialised from a phrase
(default "a photo of a"), it starts exactly at CLIP's zero-shot classifier for that template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..errors import ConfigError
from ..model import check_regime
from ..outputs import InstructionOutput, Prompts
from ..prompts import load_encoder
from ..prompts.encoders.openclip import OpenCLIPEncoder
from . import ClassifierKind, register_classifier


class CoOpContext(nn.Module):
    """The learned context vectors (what CoOp trains): ``[M, text width]``."""

    def __init__(self, init: Tensor):
        super().__init__()
        self.context = nn.Parameter(init.detach().clone().float())


class CoOpClassifier(nn.Module):
    """The classifier protocol (:class:`~instruction_vit.model.ImageClassifier`) over CLIP + CoOp (``scores`` is
    ``[B, 0]``). Regimes: ``prompt`` trains the context alone, ``full`` the context and CLIP; it has no
    classification head, so ``linear`` is refused."""

    external_state = ("clip.",)  # CLIP's frozen weights: rebuilt from prompts.encoder, left out of checkpoints

    def __init__(self, encoder: OpenCLIPEncoder, class_names: Sequence[str], context_length: int = 16,
                 init: str | None = "a photo of a"):
        super().__init__()
        clip = encoder.model
        if not hasattr(clip, "token_embedding"):
            raise ConfigError(f"CoOp needs an open_clip CLIP with its own text transformer; {encoder.name!r} has a "
                              "different text tower")
        self.tokenizer = encoder.tokenizer
        if init:
            init_tokens = self.tokenizer([init])
            context_length = int((init_tokens[0] > 0).sum()) - 2  # without [SOS] and [EOS]
        with torch.no_grad():
            start = clip.token_embedding(init_tokens)[0, 1:1 + context_length] if init else \
                torch.randn(context_length, clip.token_embedding.weight.shape[-1]) * 0.02
        self.prompt_embed = CoOpContext(start)  # named like Instruction-ViT's trainable prompt part
        self.clip = clip.requires_grad_(False)
        self.set_classes(class_names)
        cfg = encoder.preprocess
        # What timm's resolve_data_config reads, so the engine's transforms use CLIP's own preprocessing.
        clip.visual.pretrained_cfg = {"mean": cfg.mean, "std": cfg.std, "interpolation": cfg.interpolation,
                                        "input_size": (3, cfg.size, cfg.size), "crop_pct": 1.0}
        self.external_weights_id = encoder.weights_id()  # checked when a checkpoint is loaded into this model

    def set_classes(self, class_names: Sequence[str]) -> None:
        """Classify among ``class_names``: the learned context goes before each name (CoOp's class-agnostic
        context transfers to new classes as it is)."""
        length = self.prompt_embed.context.shape[0]
        placeholder = " ".join(["X"] * length)
        tokens = self.tokenizer([f"{placeholder} {name}." for name in class_names]).to(self.clip.positional_embedding.device)
        with torch.no_grad():
            embedded = self.clip.token_embedding(tokens)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embedded[:, 1 + length:].clone(), persistent=False)
        self.num_classes = len(class_names)

    @property
    def backbone(self) -> nn.Module:
        return self.clip.visual  # not a second registered copy: the weights are saved once, under clip.*

    def trainable_parameters(self, regime: str, train_prompt_features: bool = False) -> list[nn.Parameter]:
        """``prompt``: the learned context, all CoOp trains. CLIP stays frozen (its checkpoints keep CLIP by
        reference, so a tuned CLIP would be lost): ``full`` is a :class:`ConfigError`, and so is ``linear`` (CoOp has
        no classification head: its classifier is the class texts)."""
        if check_regime(regime) != "prompt":
            raise ConfigError(f"regime {regime!r} does not fit CoOp: it trains its context over a frozen CLIP (no "
                              "head, CLIP kept by reference in checkpoints); use model.regime=prompt")
        return list(self.prompt_embed.parameters())

    def no_weight_decay(self) -> set[str]:
        return {"prompt_embed.context"}

    def bank_prompts(self) -> None:
        return None

    def text_features(self) -> Tensor:
        """``[N, D]`` CLIP text features of the N class prompts with the learned context (open_clip's encode_text,
        from embeddings instead of token ids)."""
        clip = self.clip
        cast = clip.transformer.get_cast_dtype()
        n = self.prefix.shape[0]
        context = self.prompt_embed.context.unsqueeze(0).expand(n, -1, -1)
        x = torch.cat([self.prefix, context.to(self.prefix.dtype), self.suffix], dim=1).to(cast)
        x = clip.transformer(x + clip.positional_embedding.to(cast), attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        from open_clip.transformer import text_global_pool

        x = text_global_pool(x, self.tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
        projection = clip.text_projection
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection

    def forward(self, images: Tensor, prompts: Prompts | None = None) -> InstructionOutput:
        if prompts is not None:
            raise ConfigError("CoOp reads no instruction prompts (its prompts are learned text context); "
                              "use prompts.kind=none with model.method=coop")
        image = F.normalize(self.clip.encode_image(images).float(), dim=-1)
        text = F.normalize(self.text_features().float(), dim=-1)
        logits = self.clip.logit_scale.exp() * image @ text.T
        return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0))


@register_classifier("coop")
class CoOpKind(ClassifierKind):
    """CoOp: a learned text context before each class name, over the CLIP that prompts.encoder names."""

    reads_prompts = False
    timm_backbone = False
    uses_encoder = True

    def build(self, cfg: Config, class_names: Sequence[str], prompt_dim: Any = None,
              pretrained: Any = None) -> CoOpClassifier:
        encoder = load_encoder(cfg.prompts.encoder)
        if not isinstance(encoder, OpenCLIPEncoder):
            raise ConfigError(f"model.method=coop needs an open_clip encoder (prompts.encoder=open_clip:...), "
                              f"not {cfg.prompts.encoder!r}")
        if cfg.data.img_size != encoder.preprocess.size:
            raise ConfigError(f"CLIP {cfg.prompts.encoder!r} reads {encoder.preprocess.size} px images: "
                              f"set data.img_size={encoder.preprocess.size}")
        return CoOpClassifier(encoder, class_names, cfg.model.coop_context, cfg.model.coop_init)
