"""ConSE (Norouzi et al., 2014): a joint image-text space without CLIP.

An image is embedded as the probability-weighted mean of the text embeddings of its top-T ImageNet
classes (classifier: EfficientNet-Lite0; class texts ``"a photo of a {name}."`` through MiniLM). Texts are
embedded by MiniLM directly, so images and texts share MiniLM's space: zero-shot ranking and mixed
prompts work offline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError
from .base import IMAGE, TEXT, PromptEncoder
from .efficientnet import EfficientNetLiteEncoder, size_option
from .minilm import MiniLMTextEncoder
from .registry import register_encoder

CLASS_TEMPLATE = "a photo of a {}."


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (first synonym of each WordNet label, as shipped by timm)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


@register_encoder("conse")
class ConSEEncoder(PromptEncoder):
    """Joint encoder: MiniLM for texts, the MiniLM embedding of EfficientNet-Lite0's top ImageNet classes for images."""

    modalities = frozenset({TEXT, IMAGE})
    shared_space = True
    spec_help = "conse[@SIZE]  joint: ConSE over MiniLM and EfficientNet-Lite0 (offline, 384-d)"

    @classmethod
    def from_spec(cls, arg: str, device: str | torch.device = "cpu") -> ConSEEncoder:
        return cls(device=device, image_size=size_option("conse", arg))

    @classmethod
    def spec_weights_id(cls, arg: str) -> str:
        """The weights of its two parts (the image size does not change them)."""
        return f"{MiniLMTextEncoder.spec_weights_id('')}+{EfficientNetLiteEncoder.spec_weights_id('')}"

    def __init__(self, device: str | torch.device = "cpu", image_size: int = 224, top: int = 10):
        if top < 1:
            raise ConfigError(f"ConSE top must be >= 1, got {top}")
        self.text = MiniLMTextEncoder(device=device)
        self.classifier = EfficientNetLiteEncoder(device=device, image_size=image_size)
        self.top = top
        self.dim = self.text.dim
        self.preprocess = self.classifier.preprocess
        self.name = "conse" if image_size == 224 else f"conse@{image_size}"
        if top != 10:
            self.name += f"+top{top}"
        self._label_embeddings: Tensor | None = None

    @property
    def label_embeddings(self) -> Tensor:
        """``[1000, dim]`` normalised text embeddings of the ImageNet classes (computed once)."""
        if self._label_embeddings is None:
            texts = [CLASS_TEMPLATE.format(c) for c in imagenet_class_names()]
            self._label_embeddings = F.normalize(self.text.encode_text(texts), dim=-1)
        return self._label_embeddings

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.text.encode_text(texts)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        probs = self.classifier.imagenet_logits(images).softmax(dim=-1).cpu()
        top_p, top_i = probs.topk(self.top, dim=-1)
        weights = top_p / top_p.sum(dim=-1, keepdim=True)
        return torch.einsum("bt,btd->bd", weights, self.label_embeddings[top_i])
