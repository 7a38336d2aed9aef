"""A trained model as a classifier of images: the checkpoint's classes, or any new class names.

New class names reach each kind of model by its own route (the policy: :mod:`.new_classes`), and
:attr:`~.new_classes.ClassPrompts.how` says which in one line:

* Instruction-ViT, text prompts: text prompts for the new names from the run's encoder and templates (score head);
* image or mixed prompts: built from example images (``examples``: one subfolder per class) when given; otherwise,
  where the run's encoder embeds text and images in one space, text prompts stand in for them (said so);
* CoOp: its learned context before each new class name (CLIP's text tower, no head);
* a plain ViT (no prompts) cannot score new names: an error says so.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from PIL import Image

from ..data import DataError, image_folder, read_image, template_set
from ..data.images import DEFAULT_MAX_PIXELS, rgb_image
from ..data.loaders import transforms
from ..data.transforms import transform_side
from ..devices import resolve_device
from ..errors import ConfigError
from ..outputs import Prompts, capabilities, route_probabilities
from ..prompts import build_prompt_bank
from ..prompts.encoders import joint_space, weights_id
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .new_classes import ClassPrompts, check_class_names, prepare_new_classes, prepare_own_classes

#: One image as :meth:`Classifier.preprocess` reads it: a file path, a PIL image, a numpy array ``(H, W[, C])`` or a
#: tensor ``[[C, ]H, W]``.
OneImage = str | Path | Image.Image | np.ndarray | torch.Tensor
#: What a class ranking is: ``(class name, probability)`` pairs, best first.
Ranked = list[tuple[str, float]]


def is_one_image(images: Any) -> bool:
    """Whether ``images`` is one image (a path, a PIL image, an array or tensor of at most 3 dims) rather than a
    collection of them (a list, or a batch array or tensor ``[B, ...]`` of 4 dims)."""
    if isinstance(images, (str, Path, Image.Image)):
        return True
    return isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim <= 3


class Classifier:
    """A checkpoint (or run folder) ready to classify images; see :meth:`predict`."""

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device = "auto"):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.classes = checkpoint.class_names
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = checkpoint.build_model().eval().to(self.device)
        self.transform = transforms(self.config, self.model.backbone)[1]
        self.min_side = transform_side(self.transform)  # images far larger are reduced while decoding
        self._encoders: dict[str, Any] = {}  # prompt encoders loaded for new class names, by spec: loaded once

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", encoder: str | None = None,
             image_encoder: str | None = None) -> Classifier:
        """``encoder`` / ``image_encoder``: prompt encoder specs in place of the recorded ones (a model folder that
        names its encoder by a file on another machine needs them; checked against the recorded weights)."""
        return cls(load_checkpoint(path, encoder, image_encoder), device)

    @property
    def prompt_kind(self) -> str:
        return self.checkpoint.meta.get("bank_kind", self.config.prompts.kind)

    def __repr__(self) -> str:
        shown = ", ".join(self.classes[:5]) + (", ..." if len(self.classes) > 5 else "")
        return (f"Classifier({self.checkpoint.name!r}, method={self.config.model.method!r}, "
                f"classes={len(self.classes)} [{shown}], prompts={self._prompts_phrase()!r}, "
                f"device={str(self.device)!r})")

    def _prompts_phrase(self) -> str:
        """What the model reads beside the image, in a phrase (its repr)."""
        p = self.config.prompts
        encoders = p.encoder if p.image_encoder in (None, p.encoder) else f"{p.encoder} and {p.image_encoder}"
        if capabilities(self.model).reads_class_names:
            return f"class-name texts over {encoders}"
        if self.model.bank_prompts() is None:
            return "none"
        return f"{self.prompt_kind} from {encoders}"

    def class_prompts(self, classes: Sequence[str] | None = None, examples: str | Path | None = None, *,
                      cache: bool = True) -> ClassPrompts:
        """The prompts for ``classes`` (``None``: the checkpoint's own classes and prompts). New prompts are read
        from and written to ``prompts.cache_dir``; ``cache=False`` builds them without touching it (the demo page,
        whose visitors must not fill the disk, keeps them in memory)."""
        if classes is None and examples is None:
            return prepare_own_classes(self.model, self.classes)
        folder = image_folder(examples) if examples is not None else None
        names = check_class_names(classes) if classes is not None else folder.class_names
        if folder is not None and folder.class_names != names:
            raise DataError(f"the example folder {examples} has classes {folder.class_names[:4]}..., not the class "
                            f"names given ({names[:4]}...): name its subfolders after the classes, in the same order")
        return prepare_new_classes(self.model, self.config.model.method, names,
                           lambda: self._instruction_prompts(names, folder, cache))

    def _check_encoders(self, text_encoder: str, image_encoder: str) -> None:
        """New prompts must come from the encoder weights the model was trained with (recorded in the checkpoint)."""
        recorded = self.checkpoint.meta.get("bank_encoders") or {}
        for spec, key in ((text_encoder, "text_weights"), (image_encoder, "image_weights")):
            if recorded.get(key) and weights_id(spec) != recorded[key]:
                raise CheckpointError(
                    f"{self.checkpoint.name} was trained on prompts from encoder weights {recorded[key]!r}, but "
                    f"{spec!r} now gives {weights_id(spec)!r}: prompts for new classes would not match; point "
                    "prompts.encoder at the weights the run used")

    def _instruction_prompts(self, names: list[str], folder, cache: bool = True) -> tuple[Prompts, str]:
        self.checkpoint.require_encoders("prompts for new class names")
        p, kind = self.config.prompts, self.prompt_kind
        image_encoder = p.image_encoder or p.encoder
        self._check_encoders(p.encoder, image_encoder)
        common = dict(text_encoder=p.encoder, image_encoder=image_encoder, templates=template_set(p.templates),
                      cache_dir=p.cache_dir if cache else None, device=self.device, loaded=self._encoders)
        if kind == "text" or folder is not None:
            images = folder if kind != "text" else None  # a text run reads text prompts, examples or not
            bank = build_prompt_bank(kind, names, images=images, per_class=p.per_class, seed=p.seed,
                                     image_split="examples", **common)
            what = f"{kind} prompts from {p.encoder}" + (f" and the example images in {images.root}" if images else "")
            if folder is not None and images is None:
                what += " (a text run reads text prompts: the example images give only the class names)"
            return bank.model_input().to(self.device), what
        separate = len(self.model.bank_prompts().sources) > 1  # per-modality projections: no joint space
        if kind == "mixed" and separate:
            bank = build_prompt_bank("text", names, **common)
            prompts = Prompts({"text": bank.features["text"]})
        elif joint_space(p.encoder) and image_encoder == p.encoder:
            prompts = build_prompt_bank("text", names, **common).model_input()
        else:
            raise ConfigError(f"this checkpoint reads {kind} prompts and its encoder {image_encoder!r} has no text "
                             "side in the same space: give example images for the new classes (--examples FOLDER, "
                             "one subfolder per class)")
        how = (f"text prompts from {p.encoder} in place of the checkpoint's {kind} prompts (one image-text space); "
               f"give example images (--examples FOLDER) for {kind} prompts")
        return prompts.to(self.device), how

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, use: ClassPrompts) -> torch.Tensor:
        """``[B, N]`` class probabilities of preprocessed ``images`` through the route ``use`` names."""
        out = self.model(images.to(self.device), use.prompts)
        return route_probabilities(out.logits, out.scores, use.route)

    def preprocess(self, image: Any, max_pixels: int | None = None) -> torch.Tensor:
        """The model input ``[3, S, S]`` of one image: a file path (read under ``max_pixels``, width x height
        checked on its header before decoding; ``None``: the package default, 150 MP, never a model folder's
        setting), a PIL image, a numpy array ``(H, W[, C])`` or a tensor ``[[C, ]H, W]`` (uint8, uint16 or float
        in [0, 1]; see :mod:`instruction_vit.data.images`). Every source is converted and reduced as a file is:
        an in-memory image gives what the same image saved to a PNG gives."""
        if isinstance(image, (str, Path)):
            rgb = read_image(image, self.min_side, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
        else:
            rgb = rgb_image(image, self.min_side)
        return self.transform(rgb)

    @overload
    def predict(self, images: OneImage, classes: Sequence[str] | None = None, top_k: int = 5,
                examples: str | Path | None = None, batch_size: int = 64, max_pixels: int | None = None
                ) -> Ranked: ...

    @overload
    def predict(self, images: Sequence[OneImage], classes: Sequence[str] | None = None, top_k: int = 5,
                examples: str | Path | None = None, batch_size: int = 64, max_pixels: int | None = None
                ) -> list[Ranked]: ...

    def predict(self, images, classes=None, top_k=5, examples=None, batch_size=64, max_pixels=None):
        """The top ``min(top_k, N)`` classes with their probabilities, best first, ranked as ``ivit predict``
        ranks them: for one image (a path, PIL image, numpy array or tensor: see :meth:`preprocess`) its list of
        ``(class, probability)``; for a list of images (or a batch array or tensor ``[B, ...]``) one such list per
        image, in order. ``classes``: new class names (``None``: the checkpoint's own); ``examples``: their example
        images (one subfolder per class) for image or mixed prompts. ``max_pixels``: the largest file read (width x
        height; ``None``: 150 MP)."""
        use = self.class_prompts(classes, examples)
        ranked = list(self.iter_predict(images, use, top_k, batch_size, max_pixels=max_pixels))
        return ranked[0] if is_one_image(images) else ranked

    def iter_predict(self, images: OneImage | Sequence[OneImage], use: ClassPrompts, top_k: int = 5,
                     batch_size: int = 64, skip_unreadable: bool = False, max_pixels: int | None = None
                     ) -> Iterator[Ranked | DataError]:
        """Per image, in order, its ranked classes (one image is a list of one); with ``skip_unreadable``, the
        :class:`DataError` of an image that cannot be read stands in its place (the others are still predicted).
        Images are read one at a time and kept only as model inputs (:meth:`preprocess`): a batch never holds decoded
        images."""
        images = [images] if is_one_image(images) else images
        k = min(top_k, len(use.names))
        for start in range(0, len(images), batch_size):
            batch, errors = [], {}
            for j, img in enumerate(images[start:start + batch_size]):
                try:
                    batch.append(self.preprocess(img, max_pixels))
                except DataError as err:
                    if not skip_unreadable:
                        raise
                    errors[j] = err
            ranked = iter([])
            if batch:
                probs = self.probabilities(torch.stack(batch), use)
                values, index = probs.topk(k, dim=-1)
                ranked = iter([[(use.names[c], p) for c, p in zip(i, v)] for v, i in zip(values.tolist(), index.tolist())])
            for j in range(len(images[start:start + batch_size])):
                yield errors[j] if j in errors else next(ranked)
