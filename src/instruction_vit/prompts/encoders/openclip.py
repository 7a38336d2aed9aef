"""CLIP text and image towers through open_clip (the paper's prompt encoders).

Weights files are read as data, never through code they carry: OpenAI's TorchScript archives by
:mod:`.torchscript_archive` (``torch.jit.load`` would run the archive's code), state dicts with safetensors or
``torch.load(weights_only=True)``, then loaded into the model open_clip builds as its ``load_checkpoint`` would
(open_clip's own loader falls back to a full unpickling when ``weights_only`` raises a ``TypeError``).

The MLP activation follows the weights: OpenAI's CLIP (and several other releases) was trained with QuickGELU,
and open_clip's plain names (``ViT-B-16``) build GELU, so loading those weights into them only gives a warning
and features that are off. Here the activation comes from where the weights come from (see :class:`OpenCLIPEncoder`),
is read back from the built modules (:attr:`OpenCLIPEncoder.activation`) and is part of :func:`weights_id`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from ...errors import ConfigError, WeightsError, WeightsUnavailableError
from ...files import file_sha256
from ...state_dicts import torch_load
from .base import IMAGE, TEXT, ImagePreprocess, PromptEncoder
from .identity import (
    ACTIVATION_LABELS,
    GELU,
    QUICK_GELU,
    OpenCLIPSource,
    hf_hub_file,
    is_torchscript_archive,
    open_clip_source,
)
from .registry import register_encoder
from .torchscript_archive import read_archive_state_dict

log = logging.getLogger(__name__)

_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # in OpenAI's archives, not weights


@register_encoder("open_clip")
class OpenCLIPEncoder(PromptEncoder):
    """Any open_clip model. ``model_name`` and ``pretrained`` (the parts of ``open_clip:MODEL@PRETRAINED``):

    * a built-in name with a pretrained **tag** (``ViT-B-16`` + ``openai``): the weights come from open_clip's
      hub (offline: the Hugging Face cache) and the activation from the tag's pretrained config (``openai`` ->
      QuickGELU, whatever the name says);
    * any name with an **OpenAI TorchScript archive** (``ViT-B-16.pt`` as OpenAI released it; told by content):
      read as data (nothing in it runs) and built as ``open_clip.load_openai_model(jit=False)`` builds it
      (QuickGELU). The architecture comes from the archive; the name is a label, but where it is a built-in
      open_clip name its config must match the archive;
    * a built-in name with a plain **state dict** file (``.safetensors``/``.bin``/``.pt``): built as the name
      says, so QuickGELU weights need the ``-quickgelu`` name (``ViT-B-16-quickgelu``);
    * ``"local-dir:/path"`` / ``"hf-hub:org/repo"`` (``pretrained`` unused): the folder's or repo's
      ``open_clip_config.json`` (``"quick_gelu": true`` in its ``model_cfg``) with the weights beside it.

    Every weights file is read here as data (a TorchScript archive where a state dict is expected too); open_clip
    builds the model without weights. :attr:`activation` (``"quick_gelu"``/``"gelu"``, read from the built MLPs),
    :attr:`weights_source` and :meth:`describe` say what was built. The BPE tokenizer ships with open_clip: it
    works offline.
    """

    modalities = frozenset({TEXT, IMAGE})
    shared_space = True
    spec_help = ("open_clip:MODEL[@PRETRAINED] | open_clip:local-dir:/path/to/folder | open_clip:hf-hub:ORG/NAME  "
                 "joint: CLIP; PRETRAINED a tag, OpenAI's TorchScript .pt or a state dict file; a folder or Hugging "
                 "Face repo with open_clip_config.json")

    @classmethod
    def from_spec(cls, arg: str, device: str | torch.device = "cpu") -> OpenCLIPEncoder:
        """``arg``: ``MODEL[@PRETRAINED]``, or ``local-dir:/path`` / ``hf-hub:ORG/NAME`` (the whole rest, '@'
        included, is the folder or repo)."""
        if arg.startswith(("local-dir:", "hf-hub:")):
            return cls(arg, device=device)
        model_name, _, pretrained = _model_arg(arg).partition("@")
        return cls(model_name, pretrained or None, device=device)

    @classmethod
    def spec_weights_id(cls, arg: str) -> str:
        """The weights with the MLP activation they need, so that features computed with the wrong activation are
        never taken for the right ones: ``sha256:HEX+quick_gelu`` for a file or folder (``random-init+gelu`` for a
        folder without weights), ``open_clip:ViT-B-16@openai+quick_gelu`` for a pretrained tag or an ``hf-hub:``
        repo (and ``open_clip:MODEL+gelu`` for a model name alone: random init)."""
        source = open_clip_source(_model_arg(arg))
        if source.kind in ("torchscript", "state-dict", "folder"):
            weights = f"sha256:{file_sha256(source.checkpoint)}" if source.checkpoint else "random-init"
        else:  # a hub tag or repo names its weights
            weights = f"open_clip:{arg}"
        return f"{weights}+{source.activation}"

    def __init__(self, model_name: str, pretrained: str | None = None, device: str | torch.device = "cpu"):
        import open_clip

        schema = model_name.startswith(("local-dir:", "hf-hub:"))
        source = open_clip_source(model_name if schema else model_name + (f"@{pretrained}" if pretrained else ""))
        self.device = torch.device(device)
        if source.kind == "torchscript":
            model = self._load_openai_archive(source)
            self.weights_source = f"OpenAI TorchScript archive {source.checkpoint}"
        else:
            model = self._create(source)
        self.model = model.eval().requires_grad_(False)
        self.model_name, self.pretrained = model_name, (None if schema else pretrained)
        self.name = f"open_clip:{model_name}" + (f"@{pretrained}" if pretrained and not schema else "")
        self.activation = model_activation(self.model)
        if self.activation in (QUICK_GELU, GELU) and self.activation != source.activation:  # weights_id records it
            raise WeightsError(f"{self.name}: built with {self.activation} but the weights need {source.activation}")
        context_length = getattr(model, "context_length", None)
        if source.kind == "torchscript":  # OpenAI's BPE tokenizer; the name may be only a label
            self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        else:
            self.tokenizer = open_clip.get_tokenizer(model_name, context_length=context_length)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        self.preprocess = ImagePreprocess(size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])
        self._preprocess_cfg = cfg
        self.dim = _feature_dim(self.model) or int(self.encode_text(["a"]).shape[-1])
        log.info("prompt encoder: %s", self.describe())

    def _create(self, source: OpenCLIPSource) -> nn.Module:
        """open_clip's model for ``source`` with the weights :func:`read_state_dict` reads (open_clip builds it and
        sets its preprocessing from the name, tag, folder or repo, but loads no weights itself)."""
        import open_clip

        kwargs: dict = {}
        checkpoint: Path | None = None
        if source.kind == "tag":
            self.weights_source = f"tag {source.pretrained}" + (f" (hf-hub {source.hf_repo})" if source.hf_repo else "")
            checkpoint = self._resolve_tag(source)
            builtin_quick = bool(open_clip.get_model_config(source.model_name.replace("/", "-")).get("quick_gelu"))
            if source.activation == QUICK_GELU and not builtin_quick:
                kwargs["force_quick_gelu"] = True
            elif source.activation == GELU and builtin_quick:
                kwargs["quick_gelu"] = False  # a model kwarg: overrides the name's config
        elif source.kind == "hf-hub":
            self.weights_source = f"hf-hub {source.hf_repo}"
            # open_clip would go on from random init when only the config is there: a missing file is an error here.
            checkpoint = Path(hf_hub_file(source.hf_repo, "open_clip_pytorch_model.bin",
                                          "weights (open_clip_model.safetensors or .bin)"))
        elif source.kind == "folder":
            folder = source.model_name.removeprefix("local-dir:")
            self.weights_source = f"folder {folder}" + ("" if source.checkpoint else " (no weights: random init)")
            checkpoint = source.checkpoint
        elif source.kind == "state-dict":
            self.weights_source = f"state dict {source.checkpoint}"
            checkpoint = source.checkpoint
        else:
            self.weights_source = "random init (no weights)"
        if checkpoint is not None:  # loaded below: no tower's default weights, and no "initialized randomly" line
            kwargs.update(load_weights=False, pretrained_image=False, pretrained_text=False)
        pretrained = source.pretrained if source.kind == "tag" else None
        try:
            with _without_random_init_warning(checkpoint is not None):
                model = open_clip.create_model(source.model_name, pretrained=pretrained, device=self.device,
                                               **kwargs)
        except RuntimeError as err:
            raise WeightsUnavailableError(
                f"could not create open_clip model {source.model_name!r} with weights {source.pretrained!r}: "
                f"{_first_line(err)}. Offline, pass a local checkpoint file as the pretrained part, or a "
                "'local-dir:' folder.") from err
        if checkpoint is not None:
            self._load_checkpoint(model, checkpoint, source)
        return model

    def _load_checkpoint(self, model: nn.Module, checkpoint: Path, source: OpenCLIPSource) -> None:
        """The weights file ``checkpoint`` read as data and loaded into ``model`` as open_clip's ``load_checkpoint``
        would (its format conversions, position embeddings resized), every tensor required."""
        if checkpoint.suffix in (".npz", ".npy"):  # big_vision (SigLIP) weights: numpy arrays, read without pickle
            from open_clip.convert import load_big_vision_weights

            load_big_vision_weights(model, str(checkpoint))
            return
        state = read_state_dict(checkpoint)
        try:
            model.load_state_dict(_fit_state_dict(model, state), strict=True)
        except (RuntimeError, KeyError) as err:
            raise WeightsError(f"open_clip weights {self.weights_source} do not fit model {source.model_name!r} "
                               f"({_first_line(err)})") from err

    @staticmethod
    def _resolve_tag(source: OpenCLIPSource) -> Path:
        """The local file of a tag's weights, fetched (online) or found (in the cache); a miss is one clear error."""
        import open_clip
        from open_clip.pretrained import download_pretrained

        cfg = open_clip.get_pretrained_cfg(source.model_name.replace("/", "-"), source.pretrained)
        try:
            path = download_pretrained(cfg)
        except Exception as err:  # noqa: BLE001 - any failure here means: not cached and not downloadable
            where = (f"the Hugging Face cache has no {source.hf_repo} and it could not be downloaded"
                     if source.hf_repo else "they could not be downloaded")
            raise WeightsUnavailableError(
                f"could not create open_clip model {source.model_name!r} with weights {source.pretrained!r}: {where} "
                f"({type(err).__name__}). Offline, pass a local checkpoint file as the pretrained part, or a "
                "'local-dir:' folder, or fill the Hugging Face cache (HF_HOME/HF_HUB_CACHE) with "
                f"{source.hf_repo or 'the weights'} while online.") from err
        if not path:
            raise WeightsUnavailableError(f"open_clip tag {source.pretrained!r} of {source.model_name!r} names no "
                                          "weights file; pass a local checkpoint file as the pretrained part")
        return Path(path)

    def _load_openai_archive(self, source: OpenCLIPSource) -> nn.Module:
        """OpenAI's TorchScript release, read as data (nothing in the file runs) and rebuilt as a plain open_clip CLIP
        (QuickGELU) in fp32, as ``open_clip.load_openai_model`` does without ``jit``: the architecture from the
        tensor shapes (``build_model_from_openai_state_dict``), the weights through fp16 (lossless for OpenAI's
        files, which store them in fp16), then ``.float()``. The shapes are checked on the meta device first, so a
        file that does not fit allocates nothing."""
        import open_clip
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        from open_clip.model import build_model_from_openai_state_dict
        from open_clip.transform import PreprocessCfg

        state = read_archive_state_dict(source.checkpoint)
        try:
            with torch.device("meta"):
                build_model_from_openai_state_dict({k: v.to("meta") for k, v in state.items()}, cast_dtype=None)
            model = build_model_from_openai_state_dict(state, cast_dtype=None)
        except (RuntimeError, KeyError, AssertionError, ValueError, IndexError, TypeError, ZeroDivisionError) as err:
            raise WeightsError(f"{source.checkpoint} is a TorchScript archive but not an OpenAI CLIP one "
                               f"({_first_line(err)})") from err
        model = model.to(self.device).float()
        model.visual.image_mean, model.visual.image_std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        self._check_archive_name(source, model)
        size = model.visual.image_size  # OpenAI's preprocessing: open_clip's defaults (bicubic, OpenAI mean/std)
        size = size[0] if isinstance(size, tuple) else size
        open_clip.set_model_preprocess_cfg(model, asdict(PreprocessCfg(size=size)))
        return model

    @staticmethod
    def _check_archive_name(source: OpenCLIPSource, model: nn.Module) -> None:
        """A built-in name given with an archive must describe it (the architecture itself comes from the archive)."""
        import open_clip
        from open_clip.model import CLIP

        name = source.model_name.replace("/", "-")
        config = open_clip.get_model_config(name)
        if config is None:
            return  # not a built-in name: only a label
        expected = None
        if not config.get("custom_text") and "timm_model_name" not in config.get("vision_cfg", {}) \
                and "hf_model_name" not in config.get("text_cfg", {}):
            config = {k: v for k, v in config.items() if k in ("embed_dim", "vision_cfg", "text_cfg")}
            with torch.device("meta"):
                expected = {k: v.shape for k, v in CLIP(**config).state_dict().items()}
        got = {k: v.shape for k, v in model.state_dict().items() if k not in _OPENAI_EXTRA_KEYS}
        if expected != got:
            differing = sorted(k for k in set(got) | set(expected or {}) if (expected or {}).get(k) != got.get(k))
            raise WeightsError(
                f"{source.checkpoint} holds a different CLIP than open_clip's {name!r} (differing: "
                f"{', '.join(differing[:4])}{'...' if len(differing) > 4 else ''}); name the model it is, or any "
                "name that is not a built-in one (the archive defines the architecture)")

    def describe(self) -> str:
        """One line: model, activation and where the weights came from."""
        label = ACTIVATION_LABELS.get(self.activation, self.activation)
        return f"open_clip {self.model_name} ({label}) from {self.weights_source}"

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


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The state dict in the weights file ``path``, read as data: ``.safetensors``, a TorchScript archive (by
    content; its tensors, see :func:`read_archive_state_dict`) or a ``torch.save`` file unpickled with
    ``weights_only=True``; unwrapped from ``{"state_dict": ...}`` and a ``module.`` prefix as open_clip does."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors_rust.SafetensorError is not a stable class to catch
            raise WeightsError(f"{path}: cannot read it as .safetensors ({type(err).__name__})") from err
    elif is_torchscript_archive(path):
        state = read_archive_state_dict(path)
        for key in _OPENAI_EXTRA_KEYS:
            state.pop(key, None)
    else:
        state = torch_load(path)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not (isinstance(state, Mapping) and state and all(isinstance(k, str) and isinstance(v, Tensor)
                                                         for k, v in state.items())):
        raise WeightsError(f"{path}: holds no state dict (a mapping of names to tensors); save the model's alone: "
                           "torch.save(model.state_dict(), path) or safetensors")
    if next(iter(state)).startswith("module"):
        state = {k[7:]: v for k, v in state.items()}
    return dict(state)


def _fit_state_dict(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` adapted to ``model`` exactly as open_clip 3.3's ``load_checkpoint`` does before loading it: other
    releases' key layouts converted, scalar/1-d logit scale and bias matched, a missing logit bias zero, stale
    ``position_ids`` dropped, position embeddings resized to the model's grid and context."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and target is not None and target.ndim != state[key].ndim:
            state[key] = state[key].reshape(target.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state and not hasattr(model, position_ids):
        del state[position_ids]
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


@contextmanager
def _without_random_init_warning(active: bool) -> Iterator[None]:
    """While open_clip builds a model whose weights are loaded here afterwards (``load_weights=False``), its
    warning that the model was "initialized randomly" (logged on the root logger) would be false: it is held back
    for the duration of the call, and only that message."""
    def keep(record: logging.LogRecord) -> bool:
        return not (record.name == "root" and str(record.msg).startswith("No pretrained weights loaded"))

    root = logging.getLogger()
    if active:
        root.addFilter(keep)
    try:
        yield
    finally:
        if active:
            root.removeFilter(keep)


def model_activation(model: nn.Module) -> str:
    """``"quick_gelu"`` or ``"gelu"``: the class of the activation in the model's open_clip transformer MLPs
    (``*.mlp.gelu``); towers from timm or Hugging Face have their own, and are not counted. Mixed ones are listed."""
    from open_clip.transformer import QuickGELU

    found = {type(m) for name, m in model.named_modules() if name.endswith("mlp.gelu")}
    if found == {QuickGELU}:
        return QUICK_GELU
    if found == {nn.GELU}:
        return GELU
    return "+".join(sorted(cls.__name__ for cls in found)) or "none"


def _feature_dim(model: nn.Module) -> int | None:
    """The joint feature dimension from the text projection (``None``: not known without running the model)."""
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, nn.Parameter) and projection.ndim == 2:
        return int(projection.shape[1])
    if isinstance(projection, nn.Linear):
        return int(projection.out_features)
    return None


def _model_arg(arg: str) -> str:
    if not arg or arg.startswith("@"):
        raise ConfigError(f"prompt encoder 'open_clip:{arg}' names no model; use open_clip:MODEL[@PRETRAINED] "
                          "(e.g. open_clip:ViT-B-16@openai), open_clip:local-dir:/path or open_clip:hf-hub:ORG/NAME")
    return arg


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else type(err).__name__

