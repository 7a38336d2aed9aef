"""Zero-shot and prototype rankers: per-image class scores that choose the top-K prompts (paper §3.4).

Image features of a dataset are computed once per encoder and cached on disk (keyed by the encoder, its
weights and the image ids), so evaluation with selection costs almost nothing after the first time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader

from ..config import Config
from ..data import LabelledImages, TransformedImages
from ..devices import resolve_device
from ..errors import ConfigError
from ..files import atomic_write
from ..progress import task
from .encoders import PromptEncoder, joint_space, load_encoder, weights_id
from .run_bank import prompt_bank
from .selection import class_prototypes, cosine_scores


def image_features(encoder: PromptEncoder | str, data: LabelledImages, cache_dir: str | Path | None = None,
                   batch_size: int = 64, num_workers: int = 0, device="cpu") -> Tensor:
    """``[M, D]`` features of every image of ``data`` (in order) through ``encoder`` (an object or a spec,
    loaded only when the features are not cached)."""
    ids = [data.image_id(i) for i in range(len(data))]
    name, weights = (encoder, weights_id(encoder)) if isinstance(encoder, str) else (encoder.name, encoder.weights_id())
    key = hashlib.sha256(json.dumps([name, weights, data.location, ids]).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"features-{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        return load_file(str(path))["features"]
    if isinstance(encoder, str):
        encoder = load_encoder(encoder, device=device)
    loader = DataLoader(TransformedImages(data, encoder.image_transform()), batch_size=batch_size,
                        num_workers=num_workers)
    feats = []
    with task(f"ranker features of {len(data)} images ({encoder.name})", len(data)) as progress:
        for images, _ in loader:
            feats.append(encoder.encode_images(images).float().cpu())
            progress.advance(len(images))
    features = torch.cat(feats)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file({"features": features.contiguous()}, tmp))
    return features


def zero_shot_scores(image_feats: Tensor, text_bank: Tensor) -> Tensor:
    """``[M, N]`` cosine between joint-space image features and the text prompt bank."""
    return cosine_scores(image_feats, text_bank)


def prototype_scores(image_feats: Tensor, train_feats: Tensor, train_labels: Tensor, num_classes: int) -> Tensor:
    """``[M, N]`` cosine between image features and the per-class mean training features."""
    return cosine_scores(image_feats, class_prototypes(train_feats, train_labels, num_classes))


def ranker_scores(cfg: Config, train: LabelledImages, data: LabelledImages) -> Tensor:
    """``[M, N]`` ranker scores of every image of ``data`` for the top-K selection."""
    p = cfg.prompts
    if p.ranker == "zero_shot":
        if not joint_space(p.encoder):
            raise ConfigError(f"the zero-shot ranker needs a joint image-text encoder; {p.encoder!r} has none "
                             "(use prompts.encoder=conse or an open_clip model, or prompts.ranker=prototype)")
        text = prompt_bank(cfg, train, kind="text")
        feats = image_features(p.encoder, data, p.cache_dir, device=resolve_device(cfg.train.device))
        return zero_shot_scores(feats, text.features["text"])
    encoder = p.image_encoder or p.encoder
    device = resolve_device(cfg.train.device)
    train_feats = image_features(encoder, train, p.cache_dir, device=device)
    feats = image_features(encoder, data, p.cache_dir, device=device)
    return prototype_scores(feats, train_feats, torch.tensor(train.labels), train.num_classes)
