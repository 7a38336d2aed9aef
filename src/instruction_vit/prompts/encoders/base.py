"""The one small interface every prompt encoder implements."""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2

from .identity import weights_id

TEXT = "text"
IMAGE = "image"


@dataclass(frozen=True)
class ImagePreprocess:
    """What an image encoder expects: square ``size``, resize by the shorter side then centre crop."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"

    def transform(self) -> Callable:
        """PIL image or uint8 tensor ``[3, H, W]`` -> normalised float tensor ``[3, size, size]``."""
        mode = v2.InterpolationMode(self.interpolation)
        return v2.Compose([
            v2.ToImage(),
            v2.RGB(),
            v2.Resize(self.size, interpolation=mode, antialias=True),
            v2.CenterCrop(self.size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ])


class PromptEncoder(ABC):
    """Encodes texts and/or images into prompt features.

    Attributes:
        name: the spec that rebuilds this encoder with :func:`load_encoder` (part of cache keys).
        dim: feature dimension.
        modalities: subset of ``{"text", "image"}`` this encoder can encode.
        shared_space: whether text and image features live in one joint space (CLIP, ConSE), so that
            image features can be ranked against text features and mixed prompts averaged directly.
        preprocess: what :meth:`encode_images` expects (``None`` for text-only encoders).
    """

    name: str
    dim: int
    modalities: frozenset[str]
    shared_space: bool = False
    preprocess: ImagePreprocess | None = None

    def weights_id(self) -> str:
        """A string that changes whenever the weights change (file hash, tag or package version)."""
        return weights_id(self.name)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """``len(texts)`` strings -> ``[n, dim]`` float32 features (not necessarily normalised)."""
        raise ValueError(f"prompt encoder {self.name!r} does not encode text; use a text or joint encoder")

    def encode_images(self, images: Tensor) -> Tensor:
        """Preprocessed images ``[B, 3, H, W]`` (see :meth:`image_transform`) -> ``[B, dim]`` float32."""
        raise ValueError(f"prompt encoder {self.name!r} does not encode images; use an image or joint encoder")

    def image_transform(self) -> Callable:
        """The eval transform matching :attr:`preprocess` (PIL image -> normalised tensor)."""
        if self.preprocess is None:
            raise ValueError(f"prompt encoder {self.name!r} does not encode images")
        return self.preprocess.transform()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim}, modalities={sorted(self.modalities)})"
