"""CLIP text and image towers through open_clip (the paper's prompt encoders)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ...errors import WeightsUnavailableError
from .base import IMAGE, TEXT, ImagePreprocess, PromptEncoder


class OpenCLIPEncoder(PromptEncoder):
    """Any open_clip model: ``model_name`` is a built-in name (``"ViT-B-32"``) with ``pretrained`` a tag
    (downloads when online) or a local checkpoint file, or ``"local-dir:/path"`` / ``"hf-hub:org/repo"``
    (an ``open_clip_config.json`` beside the weights). The BPE tokenizer ships with open_clip: it works
    offline.
    """

    modalities = frozenset({TEXT, IMAGE})
    shared_space = True

    def __init__(self, model_name: str, pretrained: str | None = None, device: str | torch.device = "cpu"):
        import open_clip

        if model_name.startswith("local-dir:") and not Path(model_name.removeprefix("local-dir:")).is_dir():
            raise FileNotFoundError(f"open_clip model folder not found: {model_name.removeprefix('local-dir:')}")
        if pretrained and any(sep in pretrained for sep in "/\\.") and not Path(pretrained).is_file():
            raise FileNotFoundError(f"open_clip checkpoint file not found: {pretrained}")
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained or None, device=device)
        except RuntimeError as err:
            raise WeightsUnavailableError(
                f"could not create open_clip model {model_name!r} with weights {pretrained!r}: {err}. "
                "Offline, pass a local checkpoint file as the pretrained part, or a 'local-dir:' folder."
            ) from err
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = torch.device(device)
        self.model_name, self.pretrained = model_name, pretrained
        self.name = f"open_clip:{model_name}" + (f"@{pretrained}" if pretrained else "")
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        self.preprocess = ImagePreprocess(size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])
        self._preprocess_cfg = cfg
        self.dim = int(self.encode_text(["a"]).shape[-1])

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens).float()

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images.to(self.device)).float()

    def image_transform(self) -> Callable:
        """open_clip's own eval transform; uint8 tensors are turned into PIL images first."""
        from open_clip.transform import PreprocessCfg, image_transform_v2
        from torchvision.transforms import v2

        return v2.Compose([v2.ToPILImage(), image_transform_v2(PreprocessCfg(**self._preprocess_cfg), is_train=False)])
