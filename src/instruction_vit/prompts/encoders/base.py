"""The one small interface every prompt encoder implements, and the spec string that names one."""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2

from ...errors import ConfigError

TEXT = "text"
IMAGE = "image"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split an encoder spec into its registered name and the rest (``arg``), which the encoder class reads.

    The name ends at the first ``@`` or ``:``, whichever comes first; that separator is dropped and everything
    after it is ``arg``, untouched: ``"minilm"`` -> ``("minilm", "")``, ``"conse@64"`` -> ``("conse", "64")``,
    ``"open_clip:ViT-B-16@openai"`` -> ``("open_clip", "ViT-B-16@openai")``,
    ``"open_clip:local-dir:/w/clip"`` -> ``("open_clip", "local-dir:/w/clip")``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a prompt encoder spec must be a non-empty string such as 'conse' or "
                          f"'open_clip:ViT-B-16@openai', got {spec!r}")
    cut = min((i for i in (spec.find("@"), spec.find(":")) if i >= 0), default=len(spec))
    if cut == 0:
        raise ConfigError(f"prompt encoder spec {spec!r} has no encoder name before {spec[0]!r}")
    return spec[:cut], spec[cut + 1:]


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

    What a registered encoder declares on its class (read without building it; see ``register_encoder``):

    Attributes:
        modalities: subset of ``{"text", "image"}`` this encoder can encode.
        shared_space: whether text and image features live in one joint space (CLIP, ConSE), so that
            image features can be ranked against text features and mixed prompts averaged directly.
        spec_help: one line, ``"FORM  modality: what it is"`` (two spaces after the spec form), for messages and
            docs, e.g. ``"minilm  text: all-MiniLM-L6-v2 (offline, 384-d)"``.

    with the classmethods :meth:`from_spec` and :meth:`spec_weights_id`. What an instance has:

    Attributes:
        name: the spec that rebuilds this encoder with ``load_encoder`` (part of cache keys).
        dim: feature dimension.
        preprocess: what :meth:`encode_images` expects (``None`` for text-only encoders).
    """

    name: str
    dim: int
    modalities: frozenset[str]
    shared_space: bool = False
    spec_help: str
    preprocess: ImagePreprocess | None = None

    @classmethod
    def from_spec(cls, arg: str, device: str | torch.device = "cpu") -> PromptEncoder:
        """Build the encoder from the part of its spec after the name (``"64"`` of ``conse@64``; may be empty)."""
        raise NotImplementedError(f"{cls.__qualname__} does not define from_spec(arg, device)")

    @classmethod
    def spec_weights_id(cls, arg: str) -> str:
        """What identifies the weights behind the spec with this ``arg``, without building the encoder: a string
        that changes whenever the weights change (a file hash, a tag or a package version). Prompt-bank and
        feature caches are keyed by it."""
        raise NotImplementedError(f"{cls.__qualname__} does not define spec_weights_id(arg) (or weights_id())")

    def weights_id(self) -> str:
        """A string that changes whenever the weights change: :meth:`spec_weights_id` of this encoder's spec."""
        return type(self).spec_weights_id(parse_spec(self.name)[1])

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """``len(texts)`` strings -> ``[n, dim]`` float32 features (not necessarily normalised)."""
        raise ConfigError(f"prompt encoder {self.name!r} does not encode text; use a text or joint encoder")

    def encode_images(self, images: Tensor) -> Tensor:
        """Preprocessed images ``[B, 3, H, W]`` (see :meth:`image_transform`) -> ``[B, dim]`` float32."""
        raise ConfigError(f"prompt encoder {self.name!r} does not encode images; use an image or joint encoder")

    def image_transform(self) -> Callable:
        """The eval transform matching :attr:`preprocess` (PIL image -> normalised tensor)."""
        if self.preprocess is None:
            raise ConfigError(f"prompt encoder {self.name!r} does not encode images")
        return self.preprocess.transform()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim}, modalities={sorted(self.modalities)})"
