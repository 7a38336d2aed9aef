"""CoOp (Zhou et al., IJCV 2022): learned text context before each class name, the towers frozen; and the part of
the CoOp family (CoOp, CoCoOp, KgCoOp) that its methods share.

The prompt-learning baseline users compare Instruction-ViT with. Each class's text is
``[SOS] v_1 ... v_M <class name>. [EOS]`` where the M context vectors are learned (shared by all classes,
CoOp's unified context, class token at the end) and everything else is frozen: the text and image towers of CLIP
(``prompts.encoder=open_clip:...``), or offline MiniLM against ConSE image features (``prompts.encoder=conse``, see
:mod:`.towers`). The logits are the scaled cosine between image and class-text features.

Options (``model.options.NAME=value``, :class:`CoOpOptions`): ``n_ctx`` and ``ctx_init``. CoOp's default is its
paper's main setting and the official code's: 16 context vectors from N(0, 0.02). With a phrase
(``ctx_init="a photo of a"``, the official ``*_ctxv1`` configs) the context starts as the phrase's word embeddings,
one vector per word as the official code counts them (:mod:`.context`), and starts exactly at the zero-shot
classifier of the template ``"a photo of a {}."``.

:class:`CoOpFamily` owns what the methods share: the frozen towers (kept by reference in checkpoints, checked on
load), the context, the class prompts (:meth:`~CoOpFamily.set_classes`), :meth:`~CoOpFamily.text_features` for a
shared or per-image context, and what trains (the ``prompt`` regime only). Each method is a small subclass
with its own ``forward``, kind and options: :mod:`.cocoop`, :mod:`.kgcoop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..data.templates import class_text
from ..errors import CheckpointError, ConfigError
from ..outputs import Capabilities, InstructionOutput, Prompts
from ..prompts import load_encoder
from . import EncoderMethod, register_method
from .context import check_phrase_tokens, clean_phrase, context_length
from .deep_prompts import prompt_regime_only
from .towers import Towers, towers_from_encoder

#: Per-image prompts (CoCoOp) are encoded this many class texts at a time at most (images in chunks).
MAX_TEXTS_PER_PASS = 4096


class CoOpContext(nn.Module):
    """The learned context vectors (what CoOp trains): ``[M, text width]``."""

    def __init__(self, init: Tensor):
        super().__init__()
        self.context = nn.Parameter(init.detach().clone().float())
        self._register_load_state_dict_pre_hook(self._check_length)

    def _check_length(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        """A saved context of another length is refused in one line with the reason (not torch's size mismatch)."""
        held = state_dict.get(f"{prefix}context")
        if held is not None and held.shape != self.context.shape:
            raise CheckpointError(
                f"the saved context has {held.shape[0]} vectors, the model its config describes {self.context.shape[0]}"
                " (model.options.n_ctx): a checkpoint from before the official rule (one vector per word of "
                "model.options.ctx_init) learned one per token; build it with model.options.n_ctx="
                f"{held.shape[0]}, or train it again")


class CoOpFamily(nn.Module):
    """The model protocol (:class:`~instruction_vit.model.MethodModel`) over frozen towers and a learned
    text context (``scores`` is ``[B, 0]``), shared by the CoOp family. Only the ``prompt`` regime: the towers are
    kept by reference in checkpoints, so a tuned tower would be lost, and there is no classification head.

    Args:
        encoder: the prompt encoder whose towers the prompts are learned through (open_clip's CLIP or ConSE), or
            :class:`~.towers.Towers` already built from one.
        class_names: the classes, in label order.
        n_ctx: the number of context vectors; ``None``: the number of words of ``ctx_init``, or 16 without one.
        ctx_init: the phrase whose first ``n_ctx`` token embeddings start the context (the rest of it stays in the
            class texts as frozen words); ``None``: ``n_ctx`` random vectors (std 0.02). See :mod:`.context`.
    """

    #: It classifies by the class names' text (set_classes); the frozen towers' weights are rebuilt from
    #: prompts.encoder, left out of checkpoints (checked by weights id).
    capabilities = Capabilities(reads_class_names=True, external_state=("text_tower.", "image_tower."))
    weights_report = None  # no timm backbone: its towers are the encoder's, named by external_weights_id
    method = "CoOp"  # the method's name in messages

    def __init__(self, encoder: Any, class_names: Sequence[str], n_ctx: int | None = None,
                 ctx_init: str | None = None):
        super().__init__()
        towers = encoder if isinstance(encoder, Towers) else towers_from_encoder(encoder, type(self).method.lower())
        self.text_tower, self.image_tower = towers.text, towers.image
        self.register_buffer("logit_scale", torch.tensor(towers.logit_scale), persistent=False)
        self.register_buffer("logit_bias", torch.tensor(towers.logit_bias), persistent=False)
        self.ctx_init = clean_phrase(ctx_init)  # stays in the class texts after the context (the official prompt)
        self.prompt_embed = CoOpContext(self._start(context_length(n_ctx, self.ctx_init)))  # named like
        # Instruction-ViT's trainable prompt part
        self.external_weights_id = towers.weights_id  # checked when a checkpoint is loaded into this model
        self.set_classes(class_names)

    def _start(self, n: int) -> Tensor:
        """``[n, width]`` initial context: the embeddings of the phrase's first ``n`` tokens, or N(0, 0.02)."""
        with torch.no_grad():
            if not self.ctx_init:
                return torch.randn(n, self.text_tower.width) * 0.02
            embedded = self.text_tower.phrase_embeddings(self.ctx_init)
        check_phrase_tokens(n, embedded.shape[0], self.ctx_init)
        return embedded[:n]

    def set_classes(self, class_names: Sequence[str]) -> None:
        """Classify among ``class_names``: the learned context goes before each name, after it the rest of the
        initial phrase (the family's context is class-agnostic, so it transfers to new classes as it is)."""
        length = self.prompt_embed.context.shape[0]
        lead = self.ctx_init or " ".join(["X"] * length)
        tokens = self.text_tower.tokenize([f"{lead} {class_text(name)}." for name in class_names])
        self.text_tower.check_fits(tokens, "model.options.n_ctx")
        with torch.no_grad():
            embedded = self.text_tower.embed(tokens)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embedded[:, 1 + length:].clone(), persistent=False)
        self.class_names = list(class_names)
        self.num_classes = len(class_names)

    @property
    def backbone(self) -> nn.Module:
        """The image tower (its ``pretrained_cfg`` gives the engine's transforms)."""
        return self.image_tower

    def trainable_modules(self) -> list[nn.Module]:
        """What the method trains; the family's context, and a subclass's own parts after it."""
        return [self.prompt_embed]

    def trainable_parameters(self, regime: str, train_prompt_features: bool = False) -> list[nn.Parameter]:
        """``prompt``: what the method trains (:meth:`trainable_modules`). The towers stay frozen (checkpoints keep
        them by reference, so tuned towers would be lost): ``full`` is a :class:`ConfigError`, and so is ``linear``
        (no classification head: the classifier is the class texts)."""
        prompt_regime_only(regime, self.method)
        return [p for module in self.trainable_modules() for p in module.parameters()]

    def no_weight_decay(self) -> set[str]:
        return {"prompt_embed.context"}

    def bank_prompts(self) -> None:
        return None

    def image_features(self, images: Tensor) -> Tensor:
        """``[B, D]`` normalised image features of the frozen image tower."""
        with torch.no_grad():
            return F.normalize(self.image_tower(images).float(), dim=-1)

    def text_features(self, context: Tensor | None = None) -> Tensor:
        """Text-tower features of the class prompts: ``[N, D]`` for a ``[M, W]`` context (default: the learned one),
        ``[B, N, D]`` for per-image contexts ``[B, M, W]`` (not normalised)."""
        context = self.prompt_embed.context if context is None else context
        if context.dim() == 2:
            return self._encode(context.unsqueeze(0))[0]
        per_pass = max(1, MAX_TEXTS_PER_PASS // self.num_classes)
        if torch.onnx.is_in_onnx_export():  # one pass: a loop over chunks would fix the batch size in the graph
            return self._encode(context)
        return torch.cat([self._encode(chunk) for chunk in context.split(per_pass)])

    def _encode(self, context: Tensor) -> Tensor:
        """``[B, N, D]`` for ``[B, M, W]`` contexts: every class prompt with each context."""
        b, (n, m) = context.shape[0], (self.prefix.shape[0], context.shape[1])
        context = context.to(self.prefix.dtype).unsqueeze(1).expand(b, n, m, context.shape[-1])
        x = torch.cat([self.prefix.expand(b, *self.prefix.shape), context,
                       self.suffix.expand(b, *self.suffix.shape)], dim=2).flatten(0, 1)
        features = self.text_tower.encode(x, self.tokens.repeat(b, 1))
        return features.unflatten(0, (b, n))

    def scaled_cosine(self, image: Tensor, text: Tensor) -> Tensor:
        """Logits from normalised image features ``[B, D]`` and class-text features ``[N, D]`` or ``[B, N, D]``."""
        text = F.normalize(text.float(), dim=-1)
        cosine = image @ text.T if text.dim() == 2 else torch.einsum("bd,bnd->bn", image, text)
        return self.logit_scale * cosine + self.logit_bias

    def _check_no_prompts(self, prompts: Prompts | None) -> None:
        if prompts is not None:
            raise ConfigError(f"{self.method} reads no instruction prompts (its prompts are learned text context); "
                              f"use prompts.kind=none with model.method={self.method.lower()}")

    def forward(self, images: Tensor, prompts: Prompts | None = None) -> InstructionOutput:
        self._check_no_prompts(prompts)
        logits = self.scaled_cosine(self.image_features(images), self.text_features())
        return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0))


class CoOpModel(CoOpFamily):
    """CoOp: one learned context shared by all classes, over frozen towers."""


@dataclass
class CoOpOptions:
    """``model.options`` of ``model.method=coop`` (CoOp's defaults: 16 random context vectors, class token at the
    end); CoCoOp's and KgCoOp's extend it."""

    n_ctx: int | None = None  # context vectors; None: the number of words of ctx_init, or 16 without a phrase
    ctx_init: str | None = None  # the phrase whose first n_ctx tokens start the context; None: random (std 0.02)


class CoOpFamilyMethod(EncoderMethod):
    """Base of the CoOp family's methods: built on prompts.encoder's towers, reading no instruction prompts."""

    model_class: type[CoOpFamily] = CoOpModel
    Options: type[CoOpOptions] = CoOpOptions

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The options with ``n_ctx`` resolved (the phrase's number of words, or 16), so the config records the
        context length, and the phrase as the official code reads it (underscores as spaces)."""
        options = super().resolve_options(given)
        options["ctx_init"] = clean_phrase(options["ctx_init"])
        options["n_ctx"] = context_length(options["n_ctx"], options["ctx_init"])
        return options

    def load_towers(self, cfg: Config) -> Towers:
        """The towers ``prompts.encoder`` names, checked against ``data.img_size``."""
        encoder = load_encoder(cfg.prompts.encoder)
        towers = towers_from_encoder(encoder, self.name)
        size = encoder.preprocess.size
        if cfg.data.img_size != size:
            raise ConfigError(f"{cfg.prompts.encoder!r} reads {size} px images: set data.img_size={size}")
        return towers

    def build(self, cfg: Config, class_names: Sequence[str], prompt_dim: Any = None,
              pretrained: Any = None) -> CoOpFamily:
        options = self.options(cfg)
        return self.model_class(self.load_towers(cfg), class_names, options.n_ctx, options.ctx_init)


@register_method("coop")
class CoOpMethod(CoOpFamilyMethod):
    """CoOp: a learned text context before each class name, over the CLIP (or ConSE) that prompts.encoder names."""
