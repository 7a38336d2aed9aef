"""The frozen towers the CoOp family learns its prompts through: a text tower that encodes token *embeddings*
(so learned context vectors can stand in for words) and an image tower.

Two pairs, built from a prompt encoder by :func:`towers_from_encoder`:

* ``open_clip:...``: CLIP's own text transformer (:class:`CLIPTextTower`) and image tower (:class:`CLIPImageTower`),
  with CLIP's learned logit scale: the methods as their papers define them;
* ``conse[@SIZE]`` (offline): MiniLM as the text tower (:class:`MiniLMTextTower`: the learned context goes into
  MiniLM's word-embedding space, through the BERT encoder, then the sentence-transformer's mean pooling) and
  ConSE's image embedding (:class:`ConSEImageTower`: EfficientNet-Lite0's ImageNet probabilities weighting the
  MiniLM embeddings of the ImageNet class texts), so images and texts share MiniLM's space without CLIP.

A text tower tokenizes to ``[N, L]`` ids whose first token is a start token ([SOS] / [CLS]) followed by the words:
the methods put their context vectors right after it, in place of placeholder words. Both towers stay in eval mode
(no dropout, no batch-norm statistics updates): they are frozen, and a checkpoint keeps them by reference.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..prompts.encoders.base import PromptEncoder
from .deep_prompts import TextTower as CLIPText
from .deep_prompts import encode_text

#: The fixed logit scale of the MiniLM/ConSE pair, which has no learned one: CLIP's trained value (exp(4.6052) =
#: 100), with which the CoOp family's learning rates were tuned. Measured on 200 Fashion-MNIST test images (conse,
#: 224 px, "a photo of a {}."): cosines 0.29-0.89, spread 0.18 per image, top-1/top-2 gap 0.04, so logits span
#: ~18 and the zero-shot top-1 probability averages 0.80 (0.49 at scale 30, 0.24 at 10).
MINILM_LOGIT_SCALE = 100.0


class TextTower(nn.Module, ABC):
    """A frozen text encoder that reads token embeddings. ``width`` is the token-embedding width (the width of a
    learned context vector), ``dim`` the feature dim, ``capacity`` the most tokens a text may have (start and end
    included): its tokenizer cuts longer ones."""

    width: int
    dim: int
    capacity: int

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """``[N, L]`` token ids, the start token first (on the tower's device)."""

    @abstractmethod
    def embed(self, tokens: Tensor) -> Tensor:
        """``[N, L, width]`` the token embeddings of ``tokens`` (before positions are added)."""

    @abstractmethod
    def encode(self, embeddings: Tensor, tokens: Tensor) -> Tensor:
        """``[N, dim]`` features of token embeddings; ``tokens`` gives the positions of the padding and end tokens."""

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        tokens = self.tokenize(texts)
        return self.encode(self.embed(tokens), tokens)

    def phrase_embeddings(self, phrase: str) -> Tensor:
        """``[M, width]`` the embeddings of a phrase's M tokens, without the start and end tokens."""
        tokens = self.tokenize([phrase])
        length = int(self.token_counts(tokens)[0]) - 2
        return self.embed(tokens)[0, 1:1 + length]

    @abstractmethod
    def token_counts(self, tokens: Tensor) -> Tensor:
        """``[N]``: how many tokens each row of ``[N, L]`` ids holds, start and end included (padding not)."""

    def check_fits(self, tokens: Tensor, key: str) -> None:
        """Refuse texts the tokenizer may have cut (a row filling :attr:`capacity`): a cut class prompt would lose
        the end of its name or its end token without a word. ``key`` names the setting that makes them long."""
        full = int((self.token_counts(tokens) >= self.capacity).sum())
        if full:
            raise ConfigError(f"{full} of {len(tokens)} class prompts (context, rest of the phrase, class name) fill "
                              f"the text tower's {self.capacity} tokens and would be cut: set a smaller {key}, or "
                              "shorter class names")

    def train(self, mode: bool = True) -> TextTower:
        return super().train(False)  # frozen: always in eval mode


class ImageTower(nn.Module):
    """A frozen image encoder; ``pretrained_cfg`` is its preprocessing, which the engine's transforms follow."""

    dim: int
    pretrained_cfg: dict[str, Any]

    def train(self, mode: bool = True) -> ImageTower:
        return super().train(False)  # frozen: always in eval mode


class CLIPTextTower(TextTower):
    """open_clip CLIP's text transformer (its modules, shared with the CLIP model), fed embeddings instead of ids."""

    def __init__(self, clip: nn.Module, tokenizer: Any):
        super().__init__()
        self.tokenizer = tokenizer
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.text_pool_type = clip.text_pool_type
        self.text_eos_id = getattr(clip, "text_eos_id", None)
        self.width = int(clip.token_embedding.weight.shape[-1])
        self.dim = _projected_dim(clip.text_projection, self.width)
        self.capacity = int(clip.positional_embedding.shape[0])  # CLIP's context length (77)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(texts)).to(self.positional_embedding.device)

    def embed(self, tokens: Tensor) -> Tensor:
        return self.token_embedding(tokens)

    def token_counts(self, tokens: Tensor) -> Tensor:
        return (tokens > 0).sum(-1)  # padding is id 0

    def encode(self, embeddings: Tensor, tokens: Tensor) -> Tensor:
        """open_clip's ``CLIP.encode_text`` from the embedding step on (the deep-prompt runner without deep
        prompts; its parts are this module's, so they follow it across devices)."""
        parts = CLIPText(self.token_embedding, self.positional_embedding, self.transformer, self.ln_final,
                         self.text_projection, self.attn_mask, self.text_pool_type, self.text_eos_id)
        return encode_text(parts, embeddings, tokens)


class CLIPImageTower(ImageTower):
    """open_clip CLIP's image tower; ``pretrained_cfg`` from CLIP's own preprocessing config."""

    def __init__(self, clip: nn.Module, preprocess: Any, dim: int):
        super().__init__()
        self.visual = clip.visual
        self.dim = dim
        # What timm's resolve_data_config reads, so the engine's transforms use CLIP's own preprocessing.
        self.pretrained_cfg = {"mean": preprocess.mean, "std": preprocess.std, "interpolation": preprocess.interpolation,
                               "input_size": (3, preprocess.size, preprocess.size), "crop_pct": 1.0}

    def forward(self, images: Tensor) -> Tensor:
        return self.visual(images)


class MiniLMTextTower(TextTower):
    """all-MiniLM-L6-v2 as a sentence-transformer computes it (BERT, mean pooling over the real tokens, L2
    normalisation), fed word embeddings: BERT adds its position and token-type embeddings and layer norm to them,
    as it does to the embeddings of ids."""

    def __init__(self, sentence_transformer: nn.Module):
        super().__init__()
        first = sentence_transformer[0]
        self.bert = first.auto_model
        self.tokenizer = first.tokenizer
        self.max_length = int(sentence_transformer.max_seq_length)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.width = int(self.bert.config.hidden_size)
        self.dim = self.width
        self.capacity = self.max_length

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        ids = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")["input_ids"]
        return ids.to(self.bert.device)

    def embed(self, tokens: Tensor) -> Tensor:
        return self.bert.embeddings.word_embeddings(tokens)

    def token_counts(self, tokens: Tensor) -> Tensor:
        return (tokens != self.pad_id).sum(-1)

    def encode(self, embeddings: Tensor, tokens: Tensor) -> Tensor:
        mask = (tokens != self.pad_id).to(embeddings.dtype)
        out = self.bert(inputs_embeds=embeddings, attention_mask=mask.long(),
                        token_type_ids=torch.zeros_like(tokens)).last_hidden_state
        pooled = (out * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


class ConSEImageTower(ImageTower):
    """ConSE's image embedding (:class:`~instruction_vit.prompts.encoders.conse.ConSEEncoder`) as a module: the
    probability-weighted mean of the MiniLM embeddings of EfficientNet-Lite0's top ImageNet classes."""

    def __init__(self, encoder: Any):
        super().__init__()
        self.net = encoder.classifier.net
        self.top = int(encoder.top)
        self.register_buffer("label_embeddings", encoder.label_embeddings.clone(), persistent=False)
        self.dim = int(encoder.dim)
        pre = encoder.preprocess
        self.pretrained_cfg = {"mean": pre.mean, "std": pre.std, "interpolation": pre.interpolation,
                               "input_size": (3, pre.size, pre.size), "crop_pct": 1.0}

    def forward(self, images: Tensor) -> Tensor:
        pooled = self.net.extract_features(images).mean(dim=(2, 3))
        probs = self.net._fc(pooled).float().softmax(dim=-1)
        top_p, top_i = probs.topk(self.top, dim=-1)
        weights = top_p / top_p.sum(dim=-1, keepdim=True)
        return torch.einsum("bt,btd->bd", weights, self.label_embeddings[top_i])


@dataclass
class Towers:
    """A text tower, an image tower and the logit scale (and bias) of their scaled cosine, from one encoder whose
    weights ``weights_id`` names."""

    text: TextTower
    image: ImageTower
    logit_scale: float
    logit_bias: float
    weights_id: str


def towers_from_encoder(encoder: PromptEncoder, method: str) -> Towers:
    """The towers the CoOp family ``method`` learns through, from ``encoder`` (open_clip's CLIP, or ConSE);
    another encoder is a :class:`ConfigError`."""
    from ..prompts.encoders.conse import ConSEEncoder
    from ..prompts.encoders.openclip import OpenCLIPEncoder

    if isinstance(encoder, OpenCLIPEncoder):
        clip = encoder.model
        if not hasattr(clip, "token_embedding"):
            raise ConfigError(f"model.method={method} needs an open_clip CLIP with its own text transformer; "
                              f"{encoder.name!r} has a different text tower")
        clip.requires_grad_(False)
        bias = getattr(clip, "logit_bias", None)
        text = CLIPTextTower(clip, encoder.tokenizer)
        return Towers(text, CLIPImageTower(clip, encoder.preprocess, text.dim),  # one joint space: one dim
                      float(clip.logit_scale.exp()), float(bias) if bias is not None else 0.0, encoder.weights_id())
    if isinstance(encoder, ConSEEncoder):
        text = MiniLMTextTower(encoder.text.model).requires_grad_(False)
        image = ConSEImageTower(encoder).requires_grad_(False)
        return Towers(text, image, MINILM_LOGIT_SCALE, 0.0, encoder.weights_id())
    raise ConfigError(f"model.method={method} learns its prompts through CLIP's text tower (prompts.encoder="
                      f"open_clip:...) or offline through MiniLM against ConSE image features (prompts.encoder="
                      f"conse[@SIZE]), not {getattr(encoder, 'name', encoder)!r}")


def _projected_dim(projection: Any, width: int) -> int:
    if projection is None:
        return width
    return int(projection.out_features if isinstance(projection, nn.Linear) else projection.shape[-1])
