"""Deep prompts in open_clip's CLIP towers: the text and image transformers run block by block, with learned prompt
tokens put in at the input and replaced by a new set at the input of each of the next layers.

What MaPLe (Khattak et al., CVPR 2023) and PromptSRC (Khattak et al., ICCV 2023) share, placed as their official code
places it (``clip/model.py`` of muzairkhattak/multimodal-prompt-learning and muzairkhattak/PromptSRC):

* text: the shallow prompts are the context token embeddings after ``[SOS]`` (``[SOS] p_1..p_n name . [EOS]``, with
  CLIP's positional embedding); at the input of block ``i`` (``1 <= i <= len(deep)``) the outputs at those positions
  are replaced by the deep prompts ``deep[i - 1]`` (no positional embedding);
* image: the shallow prompts are appended after the patch tokens, after the positional embedding and before
  ``ln_pre``; at the input of block ``i`` the last ``n`` tokens are replaced by ``deep[i - 1]``; they are dropped
  before the tower's pooling, so the output is pooled over ``[CLS]`` and the patches alone.

Without prompts both functions compute exactly ``clip.encode_text`` / ``clip.encode_image``. Nothing here is
registered as a module: the methods keep CLIP once, under ``clip.``, and saved by reference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..data.templates import class_text
from ..errors import ConfigError
from ..model import check_regime
from ..prompts import load_encoder
from ..prompts.encoders.openclip import OpenCLIPEncoder
from .context import check_phrase_tokens, clean_phrase

logger = logging.getLogger(__name__)


class TextTower(NamedTuple):
    """The parts of a CLIP text tower that ``encode_text`` reads (open_clip's ``CLIP`` holds them itself, a
    ``CustomTextCLIP`` in its ``text`` module)."""

    token_embedding: nn.Embedding
    positional_embedding: Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Any
    attn_mask: Tensor | None
    pool_type: str
    eos_id: int | None


def text_tower(clip: nn.Module, method: str) -> TextTower:
    """``clip``'s text tower; a :class:`ConfigError` if it is not a plain open_clip text transformer."""
    text = getattr(clip, "text", None)
    if hasattr(clip, "token_embedding") and hasattr(clip, "transformer"):
        return TextTower(clip.token_embedding, clip.positional_embedding, clip.transformer, clip.ln_final,
                         clip.text_projection, clip.attn_mask, clip.text_pool_type, getattr(clip, "text_eos_id", None))
    from open_clip.transformer import TextTransformer

    if isinstance(text, TextTransformer) and text.cls_emb is None and not text.use_pad_mask:
        return TextTower(text.token_embedding, text.positional_embedding, text.transformer, text.ln_final,
                         text.text_projection, text.attn_mask, text.pool_type, text.eos_id)
    raise ConfigError(f"{method} needs an open_clip CLIP whose text tower is open_clip's causal text transformer; "
                      f"this one has {type(text).__name__ if text is not None else 'none'} (a Hugging Face or CoCa "
                      "text tower has no prompt positions to learn): choose a CLIP with its own text transformer")


def vision_tower(clip: nn.Module, method: str) -> nn.Module:
    """``clip.visual`` if it is open_clip's ``VisionTransformer``; otherwise a :class:`ConfigError`."""
    from open_clip.transformer import VisionTransformer

    visual = clip.visual
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(f"{method}: deep vision prompts need a transformer image tower (open_clip's "
                          f"VisionTransformer); this CLIP's image tower is a {type(visual).__name__}: choose a ViT "
                          "CLIP (e.g. ViT-B-16)")
    return visual


def layers_of(tower: nn.Module) -> int:
    """The number of residual blocks of a tower's transformer."""
    return len(tower.resblocks)


def check_depth(depth: int, layers: int, what: str, key: str) -> None:
    """Prompts go into the first ``depth`` layers of a tower with ``layers`` blocks: ``0 <= depth <= layers``."""
    if not 0 <= depth <= layers:
        raise ConfigError(f"{key}={depth} does not fit: the {what} tower has {layers} layers (prompt depth "
                          f"1..{layers}; the papers use 9 of ViT-B's 12)")


def _run_blocks(transformer: nn.Module, x: Tensor, attn_mask: Tensor | None, deep: Sequence[Tensor],
                place: slice) -> Tensor:
    """``transformer``'s blocks on ``x`` (``[B, L, W]``), the tokens at ``place`` replaced by ``deep[i - 1]`` at the
    input of block ``i`` for ``1 <= i <= len(deep)``."""
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    for i, block in enumerate(transformer.resblocks):
        if 1 <= i <= len(deep):
            prompts = deep[i - 1].to(x.dtype)
            if transformer.batch_first:
                prompts = prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :place.start], prompts, x[:, place.stop:]], dim=1)
            else:
                prompts = prompts.unsqueeze(1).expand(-1, x.shape[1], -1)
                x = torch.cat([x[:place.start], prompts, x[place.stop:]], dim=0)
        x = block(x, attn_mask=attn_mask)
    return x if transformer.batch_first else x.transpose(0, 1)


def encode_text(tower: TextTower, embeddings: Tensor, tokens: Tensor, deep: Sequence[Tensor] = ()) -> Tensor:
    """Text features ``[N, D]`` of token embeddings ``[N, L, W]`` (the shallow prompts already at positions
    ``1..n``; ``tokens`` ``[N, L]`` are the ids that give the pooled position), with the deep prompts ``deep`` (each
    ``[n, W]``) replacing positions ``1..n`` at the input of layers ``1..len(deep)``."""
    from open_clip.transformer import text_global_pool

    cast = tower.transformer.get_cast_dtype()
    x = embeddings.to(cast) + tower.positional_embedding.to(cast)
    n = int(deep[0].shape[0]) if len(deep) else 0
    x = _run_blocks(tower.transformer, x, tower.attn_mask, deep, slice(1, 1 + n))
    x = tower.ln_final(x)
    x = text_global_pool(x, tokens, tower.pool_type, eos_token_id=tower.eos_id)
    projection = tower.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def encode_image(visual: nn.Module, images: Tensor, prompts: Tensor | None = None,
                 deep: Sequence[Tensor] = ()) -> Tensor:
    """Image features ``[B, D]`` of open_clip's ``VisionTransformer`` ``visual`` with ``prompts`` (``[n, W]``)
    appended after the patch tokens and the deep prompts ``deep`` (each ``[n, W]``) replacing them at the input of
    layers ``1..len(deep)``; pooled without them. ``prompts=None``: ``visual(images)`` (and so is ``[0, W]`` prompts,
    block by block)."""
    if prompts is None:
        if len(deep):
            raise ValueError("deep vision prompts need shallow ones of the same length")
        return visual(images)
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, patches, W]
    x = torch.cat([visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
    x = visual.patch_dropout(x + visual.positional_embedding.to(x.dtype))
    n = prompts.shape[0]
    x = torch.cat([x, prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    length = x.shape[1]
    x = _run_blocks(visual.transformer, x, None, deep, slice(length - n, length))
    pooled, _ = visual._pool(x[:, :length - n])  # the tower's own pooling (and final norm), over [CLS] + patches
    return pooled @ visual.proj if visual.proj is not None else pooled


def clip_logits(clip: nn.Module, image_features: Tensor, text_features: Tensor) -> Tensor:
    """CLIP's scaled cosine ``[B, N]`` between image and class-text features."""
    image = F.normalize(image_features.float(), dim=-1)
    text = F.normalize(text_features.float(), dim=-1)
    return clip.logit_scale.exp() * image @ text.T


def phrase_context(clip_tower: TextTower, tokenizer: Any, phrase: str | None, n: int, key: str) -> Tensor:
    """``[n, W]`` initial context: the embeddings of ``phrase``'s first ``n`` tokens (as the official MaPLe and
    PromptSRC code initialise from "a photo of a"), or ``N(0, 0.02)`` when ``phrase`` is ``None``; more tokens than the
    phrase has is refused with the fix (:func:`~.context.check_phrase_tokens`)."""
    width = clip_tower.token_embedding.weight.shape[-1]
    phrase = clean_phrase(phrase)
    if not phrase:
        return torch.randn(n, width) * 0.02
    tokens = tokenizer([phrase])
    check_phrase_tokens(n, int((tokens[0] > 0).sum()) - 2, phrase, key)  # without [SOS] and [EOS]
    with torch.no_grad():
        return clip_tower.token_embedding(tokens.to(clip_tower.token_embedding.weight.device))[0, 1:1 + n].float()


class ClassTexts(nn.Module):
    """The class prompts ``[SOS] <phrase> name. [EOS]`` whose first ``n`` tokens after ``[SOS]`` are the learned
    context: their token ids and the frozen embeddings around the context (non-persistent buffers: rebuilt from the
    names). As the official MaPLe and PromptSRC code: the phrase the context was initialised from stays in the text, so
    with 2 context tokens from "a photo of a" the prompt reads ``[SOS] v1 v2 of a name. [EOS]``; without a phrase
    (random init), ``n`` placeholders."""

    def __init__(self, tower: TextTower, tokenizer: Any, n: int, class_names: Sequence[str],
                 phrase: str | None = None, key: str = "model.options.n_ctx"):
        super().__init__()
        self.n = n
        lead = clean_phrase(phrase) or " ".join(["X"] * n)
        device = tower.token_embedding.weight.device
        tokens = tokenizer([f"{lead} {class_text(name)}." for name in class_names]).to(device)
        full = int(((tokens > 0).sum(-1) >= tokens.shape[-1]).sum())
        if full:  # the tokenizer cuts longer texts: a cut prompt would lose its name's end or its end token
            raise ConfigError(f"{full} of {len(class_names)} class prompts (context, rest of the phrase, class name) "
                              f"fill the text tower's {tokens.shape[-1]} tokens and would be cut: set a smaller {key}, "
                              "or shorter class names")
        with torch.no_grad():
            embedded = tower.token_embedding(tokens)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embedded[:, 1 + n:].clone(), persistent=False)

    def embeddings(self, context: Tensor) -> Tensor:
        """``[N, L, W]``: each class's token embeddings with ``context`` (``[n, W]``) after ``[SOS]``."""
        context = context.unsqueeze(0).expand(self.prefix.shape[0], -1, -1).to(self.prefix.dtype)
        return torch.cat([self.prefix, context, self.suffix], dim=1)


def load_clip(cfg: Config, method: str) -> OpenCLIPEncoder:
    """The open_clip CLIP ``prompts.encoder`` names, checked against the run (its image size)."""
    encoder = load_encoder(cfg.prompts.encoder)
    if not isinstance(encoder, OpenCLIPEncoder):
        raise ConfigError(f"model.method={method} needs an open_clip encoder (prompts.encoder=open_clip:...), "
                          f"not {cfg.prompts.encoder!r}")
    if cfg.data.img_size != encoder.preprocess.size:
        raise ConfigError(f"CLIP {cfg.prompts.encoder!r} reads {encoder.preprocess.size} px images: "
                          f"set data.img_size={encoder.preprocess.size}")
    return encoder


def frozen_clip(encoder: OpenCLIPEncoder) -> nn.Module:
    """``encoder``'s CLIP, frozen, with the preprocessing the engine's transforms read (timm's ``pretrained_cfg`` keys
    on the image tower, as CoOp sets them)."""
    clip = encoder.model.requires_grad_(False)
    pre = encoder.preprocess
    clip.visual.pretrained_cfg = {"mean": pre.mean, "std": pre.std, "interpolation": pre.interpolation,
                                  "input_size": (3, pre.size, pre.size), "crop_pct": 1.0}
    return clip


def prompt_regime_only(regime: str, method: str) -> None:
    """The CLIP prompt learners train prompts over frozen towers kept by reference in checkpoints (a tuned tower
    would be lost) and have no head: only ``regime=prompt``."""
    if check_regime(regime) != "prompt":
        raise ConfigError(f"regime {regime!r} does not fit {method}: it trains its prompts over frozen towers (no "
                          "head; the towers are kept by reference in checkpoints); use model.regime=prompt")


__all__ = ["ClassTexts", "TextTower", "check_depth", "clip_logits", "encode_image", "encode_text", "frozen_clip",
           "layers_of", "load_clip", "phrase_context", "prompt_regime_only", "text_tower", "vision_tower"]
