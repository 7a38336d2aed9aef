"""Run configuration: dataclasses layered as defaults -> YAML file -> ``key=value`` overrides, validated.

An unknown key or a value of the wrong type is an error that names it (and the closest valid key).
The resolved config is what a run folder and every checkpoint record.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .limits import DEFAULT_MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # a registered data set (ivit.list_datasets()): fashion_mnist | folder | ...
    root: str = "/usr/share/datasets/fashion-mnist"  # idx files, class folders, or images of a split file
    split_file: str | None = None  # CoOp split JSON (dataset=split_file)
    val_fraction: float = 0.1  # seeded train/val split when the data gives none
    split_seed: int = 0
    train_limit: int | None = None  # keep this many training samples (seeded, class-balanced); None: all
    eval_limit: int | None = None  # likewise for val and test
    shots: int | None = None  # few-shot (CoOp): this many training images per class, min(shots, 4) for val
    shots_seed: int = 1  # CoOp's few-shot seeds are 1, 2, 3
    classes: str = "all"  # all | base | novel: base-to-novel (CoOp): sorted labels, first ceil(N/2) are base
    img_size: int = 224
    randaugment: str | None = "rand-m9-mstd0.5"  # timm RandAugment config string; None: off
    hflip: float = 0.5
    crop_min_scale: float = 0.08  # RandomResizedCrop scale range (crop_min_scale, 1)
    color_jitter: float = 0.4  # timm's ColorJitter strength when RandAugment is off (timm's default); 0: none
    gpu_augment: bool = False  # decode once into a uint8 store; crop/flip/RandAugment batch-wise on the device
    store_size: int | None = None  # side of the stored images; None: img_size / 0.875 (256 for 224)
    store_dir: str = ".cache/instruction-vit/stores"
    num_workers: int | None = None  # loader processes; None: min(8, CPU count)
    bad_images: str = "error"  # error: an unreadable image stops the run | skip: logged once each, counted in results
    missing_eval_classes: str = "error"  # a class with no val or test images: error (stop) | allow (recorded)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # width x height above which a file is refused from its header,
    # before decoding (replaces Pillow's bomb check); predict takes --max-pixels, never a model folder's value


@dataclass
class PromptConfig:
    kind: str = "text"  # none | text | image | mixed
    encoder: str = "conse"  # a registered encoder spec: ivit.list_encoders(), prompts.encoders.encoder_spec_help()
    image_encoder: str | None = None  # None: the same as `encoder`
    templates: str | list[str] = "simple"  # a named set, a file (instruction_vit.data.templates), or the templates
    descriptions: str | dict[str, list[str]] | None = None  # YAML/JSON file {class name: [sentences]}, or that mapping
    per_class: int = 1  # images averaged per image prompt
    seed: int = 0  # which training images become image prompts
    select_k: int | None = None  # evaluation: top-K prompts + 1 averaged (paper §3.4); None: all N
    ranker: str = "zero_shot"  # zero_shot | prototype
    train_select_k: int | None = None  # training: shorten the sequence to K+1 (targets always kept)
    cache_dir: str = ".cache/instruction-vit/prompts"
    bank_file: str | None = None  # a bank saved by `ivit prompts build`, used instead of building one


@dataclass
class ModelConfig:
    method: str = "instruction_vit"  # a method (ivit.list_methods()): instruction_vit (also plain ViT,
    # VPT, linear probe, CNNs) | coop (CLIP + learned context) | cocoop | kgcoop (CoOp family: CLIP, or offline conse)
    options: dict[str, Any] = field(default_factory=dict)  # the method's own settings (its Options dataclass:
    # VPT's vpt_tokens/vpt_deep, the CLIP learners' n_ctx/ctx_init, ...); filled with the method's defaults when the
    # config is resolved, so the resolved config records every value
    backbone: str = "vit_tiny_patch16_224"
    pretrained: str | None = None  # None: random init; "timm": timm's sources; else a weights file
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # timm create_model kwargs, e.g. patch_size
    score_scale: float = 10.0  # cosine x scale; docs/decisions.md (100 stalls learning with a proper CE)
    regime: str = "full"  # full | prompt | linear
    train_prompt_features: bool = False


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    accum_steps: int = 1
    optimizer: str = "adamw"  # adam | adamw | sgd (momentum 0.9, Nesterov) | momentum (SGD, plain momentum 0.9: Dassl's)
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    grad_clip: float | None = None
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 0.1
    mixup_mode: str = "batch"  # timm's Mixup mode: batch (one draw per batch) | pair | elem (one per sample)
    label_smoothing: float = 0.1
    head_weight: float = 1.0
    score_weight: float = 1.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    compile: bool = False  # torch.compile the training forward
    log_every: int = 50  # optimizer steps between reads of the loss (the only host syncs of the step)
    deterministic: bool = False
    eval_every: int = 1
    tensorboard: bool = True  # when installed


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every key (``model.options`` as one value)."""
        return {f"{section}.{key}": value for section, values in self.to_dict().items() for key, value in values.items()}


def read_yaml_mapping(path: str | Path, what: str, shape: str = "a mapping") -> dict[str, Any]:
    """The mapping a YAML file holds; a missing file, invalid YAML or another top level is a :class:`ConfigError`
    naming ``what`` the file is."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: the top level must be {shape}, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                base: dict[str, Any] | None = None) -> Config:
    """Defaults, then ``base`` (a config as a dict) or the YAML file at ``path``, then ``section.key=value``
    overrides."""
    data: dict[str, Any] = copy.deepcopy(base) if base is not None else {}
    if path is not None:
        data = read_yaml_mapping(path, "config file", "a mapping of sections")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=3e-4")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return from_dict(data)


CHOICES = {
    "prompts.kind": ("none", "text", "image", "mixed"),
    "data.classes": ("all", "base", "novel"),
    "data.bad_images": ("error", "skip"),
    "data.missing_eval_classes": ("error", "allow"),
    "prompts.ranker": ("zero_shot", "prototype"),
    "model.regime": ("full", "prompt", "linear"),
    "train.optimizer": ("adam", "adamw", "sgd", "momentum"),
    "train.mixup_mode": ("batch", "pair", "elem"),
}
POSITIVE = ("data.img_size", "data.max_image_pixels", "train.epochs", "train.batch_size", "train.accum_steps",
            "prompts.per_class", "train.log_every")
#: Keys that are a count of at least 1, or null for all.
POSITIVE_OR_ALL = ("data.train_limit", "data.eval_limit")


def resolved_workers(cfg: DataConfig) -> int:
    """``data.num_workers``, with ``None`` resolved to what the machine has (at most 8)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


#: ``model.*`` keys of before every method's settings moved under ``model.options`` (#19): the option each became
#: and the methods that read it then (this package's methods of the time; no other method read them), with the value
#: every config of the time recorded when it was not set. A config that gives one (a YAML file, an override, the
#: saved config of an older checkpoint, run folder or model folder) is read with it moved, and a note names the new
#: key once.
MOVED_MODEL_KEYS: dict[str, tuple[str, tuple[str, ...], Any]] = {
    "coop_context": ("n_ctx", ("coop", "cocoop", "kgcoop"), 16),
    "coop_init": ("ctx_init", ("coop", "cocoop", "kgcoop", "maple", "promptsrc"), "a photo of a"),
    "vpt_tokens": ("vpt_tokens", ("instruction_vit",), 0),
    "vpt_deep": ("vpt_deep", ("instruction_vit",), False),
}


def moved_model_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config as a mapping of sections) with the old ``model.*`` keys of :data:`MOVED_MODEL_KEYS` moved
    to the ``model.options`` their method reads, as the old code read them: ``coop_context`` counted only for a random
    context (``coop_init: null``; a phrase set the length), and a key the method did not read is dropped (a note
    says so when it held another value than the old default). Giving a key both ways is a :class:`ConfigError`."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not any(key in model for key in MOVED_MODEL_KEYS):
        return data
    model, options = dict(model), model.get("options")
    options = dict(options) if isinstance(options, dict) else {} if options is None else options
    if not isinstance(options, dict):
        return data  # typed() names the malformed options
    method = model.get("method", ModelConfig.method)
    old = {key: model.pop(key) for key in MOVED_MODEL_KEYS if key in model}
    moved = []
    for key, value in old.items():
        new, readers, default = MOVED_MODEL_KEYS[key]
        if method not in readers or (key == "coop_context" and old.get("coop_init")):
            if value != default:
                why = "model.coop_init sets the context length" if method in readers else \
                    f"model.method={method} does not read it"
                _note_once(f"model.{key}={value!r} is ignored, as before ({why}); dropped")
            continue
        if new in options:
            raise ConfigError(f"model.{key} and model.options.{new} are one setting given twice: keep "
                              f"model.options.{new} (model.{key} is its old name)")
        options[new] = value
        moved.append(f"model.{key} as model.options.{new}")
    if moved:
        _note_once(f"old config keys read under their new names: {', '.join(moved)} (write the new ones)")
    model["options"] = options
    return {**data, "model": model}


@functools.lru_cache(maxsize=None)
def _note_once(text: str) -> None:
    """Log ``text`` as a warning, once per process (a config is read many times, e.g. once per reproduce cell)."""
    log.warning(text)


def from_dict(data: dict[str, Any]) -> Config:
    """A :class:`Config` from a mapping of sections: every key known, every value of its type, choices and ranges
    checked; old key names are read under their new ones (:func:`moved_model_keys`). Names that registries hold
    (``data.dataset``, ``model.method`` and its ``model.options``) are checked by the resolve step above the
    registries (:func:`instruction_vit.resolve.resolve`), not here: this module is the schema, at the bottom of the
    layers."""
    cfg = typed(Config, moved_model_keys(data), "")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"config key {key!r} is {value!r}; choose one of {', '.join(allowed)}{hint}")
    for key in POSITIVE:
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"config key {key!r} must be >= 1")
    for key in POSITIVE_OR_ALL:
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) is not None and getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"config key {key!r} must be >= 1 (or null: all images)")
    if cfg.data.num_workers is not None and cfg.data.num_workers < 0:
        raise ConfigError("config key 'data.num_workers' must be >= 0 (or null: min(8, CPU count))")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError("config key 'data.val_fraction' must be in [0, 1)")
    if cfg.data.dataset == "split_file" and not cfg.data.split_file:
        raise ConfigError("data.dataset=split_file needs data.split_file (a CoOp split JSON)")
    return cfg


def typed(cls: type, data: Any, where: str) -> Any:
    """``cls`` (a config dataclass) from the mapping ``data``: an unknown key is an error naming the closest valid
    one, a value of the wrong type an error naming the key (``where`` prefixes the names: ``model.options``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {where + '.' if where else ''}{close[0]}?" if close else ""
            raise ConfigError(f"unknown config key {name!r}{hint} (valid: {', '.join(fields)})")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = typed(hint_type, value or {}, name)
        else:
            kwargs[key] = _coerce(value, hint_type, name)
    return cls(**kwargs)


def _check_flow_mapping(value: dict, name: str) -> None:
    """A YAML flow mapping written without a space after a colon (``{patch_size:8}``) reads as the key
    ``"patch_size:8"`` with no value: a model quietly built without the setting. Such a key is refused with the fix."""
    glued = [str(k) for k, v in value.items() if v is None and isinstance(k, str) and ":" in k.strip(":")]
    if glued:
        fixed = ", ".join(f"{k.split(':', 1)[0].strip()}: {k.split(':', 1)[1].strip()}" for k in glued)
        raise ConfigError(f"config key {name!r}: {', '.join(repr(k) for k in glued)} reads as a key with no value "
                          f"(YAML needs a space after each colon); write {{{fixed}}}")


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {name!r} must be a list, got {value!r}")
        return [_coerce(item, args[0], f"{name}[{i}]") for i, item in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r} must be a mapping, got {value!r}")
        _check_flow_mapping(value, name)
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    type_name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config key {name!r} must be {type_name}, got {value!r} ({type(value).__name__})")
