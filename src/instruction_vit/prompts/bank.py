"""The prompt bank: one prompt feature per class, built once and cached (paper §3.1).

* text: every template (and description) of a class encoded, L2-normalised, averaged, renormalised:
  the same numbers as open_clip's ``build_zero_shot_classifier``;
* image: one randomly chosen training image per class (seeded), or the normalised mean of ``per_class``;
* mixed: the mean of the normalised text and image prompts when the encoder has a joint space; otherwise
  both are kept (``{"text", "image"}``) and the model averages their projections.

What a model reads of a bank is :meth:`PromptBank.model_input`, one :class:`~instruction_vit.outputs.Prompts`.

A bank is keyed by everything its numbers depend on (kind, encoder specs and weight hashes, templates,
descriptions, class names, chosen images, seed), so a cache hit loads features and loads no encoder.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.templates import check_templates, class_text
from ..errors import ConfigError, DataError
from ..hub_source import bank_in_source
from ..outputs import Prompts
from ..progress import task
from .encoders import IMAGE, TEXT, PromptEncoder, load_encoder, weights_id
from .bank_files import load_bank_files, save_bank_files

KINDS = ("text", "image", "mixed")


class ImageSource(Protocol):
    """What image prompts are drawn from: a labelled image collection (a training set)."""

    labels: Sequence[int]

    def load_image(self, index: int) -> Any:  # PIL image or uint8 tensor [3, H, W]
        ...

    def image_id(self, index: int) -> str:  # stable identifier, e.g. a relative path
        ...


@dataclass
class PromptBank:
    """Prompt features for ``class_names``, in label order, with what produced them."""

    kind: str
    features: dict[str, Tensor]  # source -> [N, D]
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def key(self) -> str:
        return self.meta.get("key") or bank_key(self.meta)

    @property
    def prompt_dim(self) -> int | dict[str, int]:
        """What :func:`instruction_vit.create_model` takes as ``prompt_dim`` for this bank."""
        dims = {name: int(t.shape[-1]) for name, t in self.features.items()}
        return next(iter(dims.values())) if len(dims) == 1 else dims

    def model_input(self) -> Prompts:
        """The prompts a model reads: one source (whatever its name here) is ``Prompts.of(features)``, the
        ``"prompts"`` source of a model built with ``prompt_dim=bank.prompt_dim``; text and image features in
        different spaces are the sources ``"text"`` and ``"image"``."""
        if len(self.features) == 1:
            return Prompts.of(next(iter(self.features.values())))
        return Prompts(self.features)

    def closest_pairs(self, count: int = 5) -> list[tuple[str, str, float]]:
        """The ``count`` pairs of classes whose prompts are closest (cosine of the first source's features), closest
        first: the classes the prompts confuse most."""
        feats = torch.nn.functional.normalize(next(iter(self.features.values())).float(), dim=-1)
        sims = feats @ feats.T
        n = self.num_classes
        i, j = torch.triu_indices(n, n, offset=1)
        order = sims[i, j].argsort(descending=True)[:count]
        return [(self.class_names[i[k]], self.class_names[j[k]], float(sims[i[k], j[k]])) for k in order.tolist()]

    def save(self, path: str | Path) -> Path:
        return save_bank_files(path, self.features, {**self.meta, "key": self.key})

    @classmethod
    def load(cls, path: str | Path) -> PromptBank:
        """A bank file pair (``NAME.safetensors`` + ``NAME.json``), or the bank of a model folder that ``ivit save``
        wrote, local or ``hf-hub:ORG/NAME`` (see :mod:`instruction_vit.hub_source`)."""
        features, meta = load_bank_files(bank_in_source(path))
        return cls(meta["kind"], features, list(meta["class_names"]), meta)


def bank_key(meta: Mapping[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "key"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]


# -- building blocks ---------------------------------------------------------------------------
def class_texts(
    class_names: Sequence[str], templates: Sequence[str], descriptions: Mapping[str, Sequence[str]] | None = None
) -> list[list[str]]:
    """The sentences of each class: every template filled in with the class name's text (:func:`class_text`:
    underscores as spaces), then the class's own descriptions."""
    descriptions = descriptions or {}
    unknown = sorted(set(descriptions) - set(class_names))
    if unknown:
        raise ConfigError(f"descriptions given for classes not in the class list: {unknown[:5]}")
    texts = [[t.format(class_text(c)) for t in templates] + list(descriptions.get(c, ())) for c in class_names]
    empty = [c for c, ts in zip(class_names, texts) if not ts]
    if empty:
        raise ConfigError(f"no templates and no descriptions for classes {empty[:5]}: nothing to encode")
    return texts


def _batches(items: Sequence, batch_size: int, description: str):
    """``items`` in batches, reported as one task of ``len(items)`` (see :mod:`instruction_vit.progress`)."""
    with task(description, len(items)) as progress:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            yield batch
            progress.advance(len(batch))


def encode_class_texts(
    encoder: PromptEncoder, texts_per_class: Sequence[Sequence[str]], batch_size: int = 256
) -> Tensor:
    """``[N, D]``: per class, the normalised mean of its normalised sentence features, renormalised."""
    flat = [t for texts in texts_per_class for t in texts]
    batches = _batches(flat, batch_size, f"encoding {len(flat)} prompt texts ({encoder.name})")
    feats = F.normalize(torch.cat([encoder.encode_text(batch).float().cpu() for batch in batches]), dim=-1)
    out, start = [], 0
    for texts in texts_per_class:
        out.append(feats[start : start + len(texts)].mean(0))
        start += len(texts)
    return F.normalize(torch.stack(out), dim=-1)


def choose_prompt_images(labels: Sequence[int], num_classes: int, per_class: int = 1, seed: int = 0) -> list[list[int]]:
    """Seeded choice of ``per_class`` sample indices of each class (fewer if the class has fewer)."""
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, label in enumerate(labels):
        label = int(label)
        if not 0 <= label < num_classes:
            raise DataError(f"sample {index} has label {label}, outside the {num_classes} classes")
        by_class[label].append(index)
    missing = [c for c, idx in enumerate(by_class) if not idx]
    if missing:
        raise DataError(f"classes {missing[:10]} have no image to draw an image prompt from")
    rng = random.Random(seed)
    return [sorted(rng.sample(idx, min(per_class, len(idx)))) for idx in by_class]


def encode_class_images(
    encoder: PromptEncoder, source: ImageSource, chosen: Sequence[Sequence[int]], batch_size: int = 64
) -> Tensor:
    """``[N, D]``: per class, the normalised mean of its chosen images' normalised features."""
    transform = encoder.image_transform()
    flat = [i for idx in chosen for i in idx]
    feats = [encoder.encode_images(torch.stack([transform(source.load_image(i)) for i in batch])).float().cpu()
             for batch in _batches(flat, batch_size, f"encoding {len(flat)} prompt images ({encoder.name})")]
    feats = F.normalize(torch.cat(feats), dim=-1)
    out, start = [], 0
    for idx in chosen:
        out.append(feats[start : start + len(idx)].mean(0))
        start += len(idx)
    return F.normalize(torch.stack(out), dim=-1)


# -- the bank ----------------------------------------------------------------------------------
def build_prompt_bank(
    kind: str,
    class_names: Sequence[str],
    *,
    text_encoder: PromptEncoder | str | None = None,
    image_encoder: PromptEncoder | str | None = None,
    templates: Sequence[str] = ("a photo of a {}.",),
    descriptions: Mapping[str, Sequence[str]] | None = None,
    images: ImageSource | None = None,
    per_class: int = 1,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    image_split: str | None = None,
    loaded: dict[str, PromptEncoder] | None = None,
) -> PromptBank:
    """Build (or load from ``cache_dir``) the prompt bank of ``kind`` for ``class_names``.

    Encoders are objects or spec strings (see ``load_encoder``); a spec is loaded only on a cache miss, on
    ``device``. The same spec (or object) for text and image means one joint encoder. The encoding is reported
    as a task (:mod:`instruction_vit.progress`); ``image_split`` says which split ``images`` is (recorded with the
    image ids). ``loaded``: encoders already loaded on ``device``, by spec, which a spec is taken from instead of
    loading it again, and which the encoders this call loads are added to (a caller building many banks keeps one).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown prompt kind {kind!r}; choose one of {', '.join(KINDS)}")
    class_names = [str(c) for c in class_names]
    if not class_names:
        raise ConfigError("the class list is empty: a prompt bank needs at least one class name")
    dupes = sorted({c for c in class_names if class_names.count(c) > 1})
    if dupes:
        raise ConfigError(f"duplicate class names {dupes[:5]}: each class needs its own name")
    use_text, use_image = kind in ("text", "mixed"), kind in ("image", "mixed")
    if use_text and text_encoder is None:
        raise ConfigError(f"{kind} prompts need a text_encoder (a joint one such as 'conse' or 'open_clip:...')")
    if use_image and (image_encoder is None or images is None):
        raise ConfigError(f"{kind} prompts need an image_encoder and images (the training set) to draw from")

    meta: dict[str, Any] = {"kind": kind, "class_names": class_names}
    texts: list[list[str]] = []
    if use_text:
        templates = check_templates(templates)
        texts = class_texts(class_names, templates, descriptions)
        meta.update(text_encoder=_spec(text_encoder), text_weights=_weights(text_encoder), templates=list(templates),
                    descriptions={k: list(v) for k, v in (descriptions or {}).items()})
        if any(class_text(c) != c for c in class_names):  # in the key: a bank cached with the names as they are
            meta["class_texts"] = [class_text(c) for c in class_names]  # (before this rule) is not reused
    chosen: list[list[int]] = []
    if use_image:
        chosen = choose_prompt_images(images.labels, len(class_names), per_class, seed)
        meta.update(image_encoder=_spec(image_encoder), image_weights=_weights(image_encoder), per_class=per_class,
                    seed=seed, image_root=getattr(images, "location", ""),
                    image_ids=[[images.image_id(i) for i in idx] for idx in chosen])
        if image_split is not None:
            meta["image_split"] = image_split
    meta["key"] = bank_key(meta)

    cache_path = Path(cache_dir) / f"{kind}-{meta['key']}" if cache_dir is not None else None
    if cache_path is not None and cache_path.with_suffix(".safetensors").is_file():
        return PromptBank.load(cache_path)

    pool = loaded if loaded is not None else {}
    used: dict[str, PromptEncoder] = {}

    def encoder(e: PromptEncoder | str, modality: str) -> PromptEncoder:
        if isinstance(e, str):
            if e not in pool:
                pool[e] = load_encoder(e, device=device)
            e = used.setdefault(e, pool[e])
        if modality not in e.modalities:
            raise ConfigError(f"prompt encoder {e.name!r} cannot encode {modality}; it encodes {sorted(e.modalities)}")
        return e

    features: dict[str, Tensor] = {}
    if use_text:
        features[TEXT] = encode_class_texts(encoder(text_encoder, TEXT), texts)
    if use_image:
        features[IMAGE] = encode_class_images(encoder(image_encoder, IMAGE), images, chosen)
    if kind == "mixed":
        t_enc, i_enc = encoder(text_encoder, TEXT), encoder(image_encoder, IMAGE)
        if t_enc.name == i_enc.name and t_enc.shared_space:
            features = {"mixed": (features[TEXT] + features[IMAGE]) / 2}
        meta["joint_space"] = "mixed" in features
    meta["loaded"] = {name: e.describe() if hasattr(e, "describe") else repr(e) for name, e in used.items()}
    bank = PromptBank(kind, features, class_names, meta)
    if cache_path is not None:
        bank.save(cache_path)
    return bank


def _spec(encoder: PromptEncoder | str) -> str:
    return encoder if isinstance(encoder, str) else encoder.name


def _weights(encoder: PromptEncoder | str) -> str:
    return weights_id(encoder) if isinstance(encoder, str) else encoder.weights_id()
