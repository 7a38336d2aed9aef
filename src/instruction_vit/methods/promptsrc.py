"""PromptSRC (Khattak et al., ICCV 2023): deep prompts in both CLIP towers that regularise themselves towards the
frozen CLIP.

* Prompts: independent deep vision and language prompts (IVLP): a language context after ``[SOS]`` (from "a photo
  of a") and new language prompts at the input of text layers 1..depth_text-1; vision prompts appended after the
  patches and replaced at the input of image layers 1..depth_vision-1 (see :mod:`.deep_prompts`).
* Self-regulating constraints, training only, in the output's ``aux`` (the loss adds them to the cross-entropy):
  ``scl_text`` = 25 * L1(prompted text features, frozen CLIP's text features averaged over a template ensemble, both
  normalised), ``scl_image`` = 10 * L1(prompted image features, frozen CLIP's image features, normalised), and
  ``scl_logits`` = 1 * KL(frozen zero-shot logits || prompted logits) at temperature 1 (official
  ``F.kl_div(log_softmax(logits), log_softmax(zs_logits), reduction="sum", log_target=True) / logits.numel()``).
* Gaussian prompt aggregation (GPA): after each epoch e (1-based) the prompts are added to a running sum with weight
  ``N(e; gpa_mean, gpa_std)`` (persistent buffers ``gpa_sum`` and ``gpa_weight``: a resumed run goes on with them);
  after the last epoch the prompts become the weighted mean, which is then validated, saved and tested (the model's
  ``final_model = "last"``: the run's result is its last epoch, as the official code evaluates it, not the best
  validation epoch).

Paper defaults (official ``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``): 4+4 tokens, depth 9 and
9, weights 25 / 10 / 1, GPA mean 15 std 1 over 20 epochs; SGD lr 0.0025, batch 4, 16 shots. The frozen text features
average the official code's 60 templates (``templates="promptsrc"``: the first 60 of OpenAI's 80 ImageNet templates).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..config import Config
from ..data import class_text, template_set
from ..errors import ConfigError
from ..outputs import Capabilities, InstructionOutput, Prompts
from ..prompts.encoders.openclip import OpenCLIPEncoder
from . import EncoderMethod, register_method
from .context import PHOTO_PHRASE, clean_phrase
from .deep_prompts import (ClassTexts, check_depth, clip_logits, encode_image, encode_text, frozen_clip, layers_of,
                           load_clip, phrase_context, prompt_regime_only, text_tower, vision_tower)

logger = logging.getLogger(__name__)

#: The official code's template ensemble for the frozen text features: the first 60 of OpenAI's 80 ImageNet templates
#: (``trainers/imagenet_templates.py`` of muzairkhattak/PromptSRC, in another order; the mean does not depend on it).
OFFICIAL_TEMPLATES = 60


def promptsrc_templates(name: str) -> list[str]:
    """The templates of the frozen text features: ``"promptsrc"`` (the official 60) or any template set name or file
    (:func:`~instruction_vit.data.template_set`)."""
    if name == "promptsrc":
        return template_set("openai_imagenet")[:OFFICIAL_TEMPLATES]
    return template_set(name)


def gauss(epoch: int, mean: float, std: float) -> float:
    """GPA's weight of (1-based) ``epoch``: the normal density, as the official code computes it."""
    return math.exp(-0.5 * ((epoch - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


class PromptSRCPrompts(nn.Module):
    """What PromptSRC trains: language context (text layer 0) and deep language prompts (layers 1..depth_text-1),
    vision prompts (image layer 0) and deep vision prompts (layers 1..depth_vision-1); deep ones and the vision ones
    start at ``N(0, 0.02)``."""

    def __init__(self, context: Tensor, depth_text: int, n_vision: int, depth_vision: int, vision_width: int):
        super().__init__()
        n, width = context.shape
        self.context = nn.Parameter(context.detach().clone().float())
        self.deep_text = nn.ParameterList([nn.Parameter(torch.randn(n, width) * 0.02) for _ in range(depth_text - 1)])
        self.vision = nn.Parameter(torch.randn(n_vision if depth_vision else 0, vision_width) * 0.02)
        self.deep_vision = nn.ParameterList([nn.Parameter(torch.randn(n_vision, vision_width) * 0.02)
                                             for _ in range(depth_vision - 1)])


class PromptSRCModel(nn.Module):
    """The model protocol (:class:`~instruction_vit.model.MethodModel`) over CLIP + PromptSRC's prompts
    (``scores`` is ``[B, 0]``; ``aux`` holds the regularisers in training); only ``regime=prompt``."""

    #: It classifies by the class names' text; CLIP's frozen weights are rebuilt from prompts.encoder, left out of
    #: checkpoints; after each epoch it aggregates its prompts, and its result is the last epoch's model (the prompt
    #: aggregate), not the best on validation.
    capabilities = Capabilities(reads_class_names=True, external_state=("clip.",), end_of_epoch=True,
                                final_model="last")
    weights_report = None  # no timm backbone: its towers are the encoder's, named by external_weights_id

    def __init__(self, encoder: OpenCLIPEncoder, class_names: Sequence[str], n_ctx_text: int = 4,
                 n_ctx_vision: int = 4, depth_text: int = 9, depth_vision: int = 9,
                 ctx_init: str | None = PHOTO_PHRASE, templates: Sequence[str] = ("a photo of a {}.",),
                 text_loss_weight: float = 25.0, image_loss_weight: float = 10.0, logits_loss_weight: float = 1.0,
                 gpa_mean: float = 15.0, gpa_std: float = 1.0):
        super().__init__()
        clip = frozen_clip(encoder)
        tower = text_tower(clip, "PromptSRC")
        check_depth(depth_text, layers_of(tower.transformer), "text", "model.options.depth_text")
        if depth_text < 1 or n_ctx_text < 1:
            raise ConfigError("PromptSRC needs language prompts: model.options.depth_text >= 1 and n_ctx_text >= 1")
        if depth_vision and n_ctx_vision:
            check_depth(depth_vision, layers_of(vision_tower(clip, "PromptSRC").transformer), "image",
                        "model.options.depth_vision")
        else:
            depth_vision = n_ctx_vision = 0  # no vision prompts (any image tower)
        if gpa_std <= 0:
            raise ConfigError(f"model.options.gpa_std must be > 0, got {gpa_std}")
        self.tokenizer = encoder.tokenizer
        self.ctx_init = clean_phrase(ctx_init)  # stays in the class texts after the context (the official prompt)
        context = phrase_context(tower, self.tokenizer, self.ctx_init, n_ctx_text, "model.options.n_ctx_text")
        width = clip.visual.transformer.width if depth_vision else 0
        self.prompt_learner = PromptSRCPrompts(context, depth_text, n_ctx_vision, depth_vision, width)
        self.clip = clip
        self.templates = list(templates)
        self.weights = {"scl_text": text_loss_weight, "scl_image": image_loss_weight, "scl_logits": logits_loss_weight}
        self.gpa_mean, self.gpa_std = gpa_mean, gpa_std
        size = sum(p.numel() for p in self.prompt_learner.parameters())
        self.register_buffer("gpa_sum", torch.zeros(size, dtype=torch.float64))  # persistent: resumed runs go on
        self.register_buffer("gpa_weight", torch.zeros((), dtype=torch.float64))
        self.set_classes(class_names)
        self.external_weights_id = encoder.weights_id()  # checked when a checkpoint is loaded into this model

    def set_classes(self, class_names: Sequence[str]) -> None:
        """Classify among ``class_names``: the learned prompts are class-agnostic, they go with any names."""
        self.class_names = list(class_names)
        self.texts = ClassTexts(text_tower(self.clip, "PromptSRC"), self.tokenizer,
                                self.prompt_learner.context.shape[0], class_names, self.ctx_init,
                                "model.options.n_ctx_text")
        self.num_classes = len(class_names)
        self._frozen_text: Tensor | None = None  # the template ensemble's features, computed when training needs them

    @property
    def backbone(self) -> nn.Module:
        return self.clip.visual  # not a second registered copy: the weights are saved once, under clip.*

    def trainable_parameters(self, regime: str, train_prompt_features: bool = False) -> list[nn.Parameter]:
        """``prompt``: the language and vision prompts, shallow and deep (all PromptSRC trains); other regimes are a
        :class:`ConfigError` (CLIP frozen, kept by reference)."""
        prompt_regime_only(regime, "PromptSRC")
        return [p for p in self.prompt_learner.parameters() if p.numel()]

    def bank_prompts(self) -> None:
        return None

    def text_features(self) -> Tensor:
        """``[N, D]`` CLIP text features of the class prompts with the language prompts."""
        learner = self.prompt_learner
        return encode_text(text_tower(self.clip, "PromptSRC"), self.texts.embeddings(learner.context),
                           self.texts.tokens, list(learner.deep_text))

    def image_features(self, images: Tensor) -> Tensor:
        """``[B, D]`` CLIP image features with the vision prompts."""
        learner = self.prompt_learner
        if learner.vision.shape[0] == 0:
            return self.clip.encode_image(images)
        return encode_image(self.clip.visual, images, learner.vision, list(learner.deep_vision))

    def frozen_text_features(self) -> Tensor:
        """``[N, D]`` the frozen CLIP's class text features, averaged over the templates, normalised (cached)."""
        device = self.clip.logit_scale.device
        if self._frozen_text is None or self._frozen_text.device != device:
            texts = [t.replace("{}", class_text(name)) for t in self.templates for name in self.class_names]
            with torch.no_grad():
                features = torch.cat([self.clip.encode_text(self.tokenizer(texts[i:i + 1024]).to(device)).float()
                                      for i in range(0, len(texts), 1024)])
            per_template = features.view(len(self.templates), len(self.class_names), -1)
            self._frozen_text = F.normalize(per_template.mean(0), dim=-1)
        return self._frozen_text

    def regularisers(self, images: Tensor, image: Tensor, text: Tensor, logits: Tensor) -> dict[str, Tensor]:
        """The self-regulating constraints (weighted): prompted features and logits against the frozen CLIP's."""
        frozen_text = self.frozen_text_features()
        with torch.no_grad():
            frozen_image = F.normalize(self.clip.encode_image(images).float(), dim=-1)
            zero_shot = self.clip.logit_scale.exp() * frozen_image @ frozen_text.T
        image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
        kl = F.kl_div(F.log_softmax(logits.float(), dim=1), F.log_softmax(zero_shot, dim=1), reduction="sum",
                      log_target=True) / logits.numel()
        terms = {"scl_text": F.l1_loss(text, frozen_text), "scl_image": F.l1_loss(image, frozen_image),
                 "scl_logits": kl}
        return {name: self.weights[name] * value for name, value in terms.items()}

    def forward(self, images: Tensor, prompts: Prompts | None = None) -> InstructionOutput:
        if prompts is not None:
            raise ConfigError("PromptSRC reads no instruction prompts (its prompts are learned); use prompts.kind=none "
                              "with model.method=promptsrc")
        image, text = self.image_features(images), self.text_features()
        logits = clip_logits(self.clip, image, text)
        aux = self.regularisers(images, image, text, logits) if self.training else None
        return InstructionOutput(logits, logits.new_zeros(logits.shape[0], 0), aux)

    @torch.no_grad()
    def end_epoch(self, epoch: int, epochs: int) -> None:
        """Gaussian prompt aggregation: add this epoch's prompts (``epoch`` 0-based) with its weight; after the last
        epoch, set the prompts to the weighted mean of all epochs' prompts."""
        params = [p for p in self.prompt_learner.parameters()]
        weight = gauss(epoch + 1, self.gpa_mean, self.gpa_std)
        self.gpa_sum += weight * parameters_to_vector(params).double()
        self.gpa_weight += weight
        if epoch + 1 == epochs:
            if self.gpa_weight.item() <= 0:
                raise ConfigError(f"the Gaussian aggregation weights of all {epochs} epochs vanish (gpa_mean "
                                  f"{self.gpa_mean}, gpa_std {self.gpa_std}): set model.options.gpa_mean within the "
                                  "epochs or a wider gpa_std")
            vector_to_parameters((self.gpa_sum / self.gpa_weight).to(params[0].dtype), params)
            logger.info("PromptSRC: prompts set to their Gaussian-weighted mean over %d epochs (mean %g, std %g)",
                        epochs, self.gpa_mean, self.gpa_std)


@dataclass
class PromptSRCOptions:
    """PromptSRC's own options (``model.options.NAME=value``)."""

    n_ctx_text: int = 4  # language prompt tokens per layer
    n_ctx_vision: int = 4  # vision prompt tokens per layer (0: none)
    depth_text: int = 9  # text layers with prompts
    depth_vision: int = 9  # image layers with prompts (0: none)
    text_loss_weight: float = 25.0  # L1 between prompted and frozen text features
    image_loss_weight: float = 10.0  # L1 between prompted and frozen image features
    logits_loss_weight: float = 1.0  # KL between frozen zero-shot and prompted logits
    gpa_mean: float = 15.0  # Gaussian prompt aggregation: mean epoch (1-based)
    gpa_std: float = 1.0  # and its std, in epochs
    templates: str = "promptsrc"  # the frozen text features' template ensemble (the official 60, or a template set)
    ctx_init: str | None = PHOTO_PHRASE  # the phrase whose first n_ctx_text tokens start the language context


@register_method("promptsrc")
class PromptSRCMethod(EncoderMethod):
    """PromptSRC: deep vision and language prompts regularised towards the frozen CLIP, aggregated over epochs."""

    Options = PromptSRCOptions

    def build(self, cfg: Config, class_names: Sequence[str], prompt_dim: Any = None,
              pretrained: Any = None) -> PromptSRCModel:
        o = self.options(cfg)
        epochs = cfg.train.epochs
        if not any(gauss(e, o.gpa_mean, o.gpa_std) > 0 for e in range(1, epochs + 1)) and o.gpa_std > 0:
            raise ConfigError(f"the Gaussian aggregation weights of all {epochs} epochs vanish (gpa_mean {o.gpa_mean}, "
                              f"gpa_std {o.gpa_std}): set model.options.gpa_mean within the epochs or a wider gpa_std")
        return PromptSRCModel(load_clip(cfg, "promptsrc"), class_names, o.n_ctx_text, o.n_ctx_vision,
                                   o.depth_text, o.depth_vision, o.ctx_init, promptsrc_templates(o.templates),
                                   o.text_loss_weight, o.image_loss_weight, o.logits_loss_weight, o.gpa_mean,
                                   o.gpa_std)
