"""The library's face: what ``import instruction_vit as ivit`` offers, and what the ``ivit`` command calls.

Each function is a thin, typed entry to the layer that does the work; see the README's "Python API". Those that
read, write or train (``train``, ``evaluate``, ``load_classifier``, ``build_prompts``, ``export_onnx``,
``save_pretrained``, ``push_to_hub``) show their one-line messages and long steps on stderr where nobody set up
logging (a notebook, a script): :func:`~instruction_vit.progress.shown_by_default`.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from . import config as _config
from .methods import list_methods, register_method
from .config import Config
from .data import LabelledImages, image_folder, list_datasets, register_dataset, template_set, training_split
from .training import train as _train
from .artifacts.classifier import Classifier
from .artifacts.export import OnnxExport
from .artifacts.export import export_onnx as _export_onnx
from .evaluation.results import evaluate as _evaluate
from .prompts.run_bank import read_descriptions
from .errors import ConfigError, InstructionViTError, UserError
from .model import build_model
from .outputs import Prompts
from .prompts import PromptBank, build_prompt_bank
from .prompts.encoders import PromptEncoder, list_encoders, load_encoder, register_encoder
from .progress import shown_by_default
from .resolve import resolve

RunConfig = Config | Mapping[str, Any] | str | Path | Sequence[str]
F = TypeVar("F", bound=Callable[..., Any])


def _shown(fn: F) -> F:
    """``fn`` run inside :func:`~instruction_vit.progress.shown_by_default`: its messages are seen in a notebook."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with shown_by_default():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def create_model(backbone: str, num_classes: int, *, prompt_dim: int | Mapping[str, int] | None = None,
                 pretrained: bool | str | Path | Mapping | None = False, **kwargs: Any) -> nn.Module:
    """An Instruction-ViT on the timm ``backbone`` reading prompts of ``prompt_dim`` features, or, with
    ``prompt_dim=None``, the plain timm model (ViT, VPT with ``vpt_tokens=``, or any CNN) as a classifier with the
    same interface. ``pretrained``: ``False`` (random init), ``True`` (timm's own sources), a weights file or a
    state dict; every backbone tensor must load (``model.weights_report`` says what did). ``kwargs`` go to
    ``timm.create_model`` (``img_size``, ``patch_size``, ...) or set ``score_scale``, ``vpt_tokens``, ``vpt_deep``."""
    return build_model(backbone, num_classes, prompt_dim, pretrained=pretrained, **kwargs)


@_shown
def build_prompts(class_names: Sequence[str], encoder: str | PromptEncoder = "conse", kind: str = "text", *,
                  templates: str | Sequence[str] = "simple", images: str | Path | LabelledImages | None = None,
                  image_encoder: str | PromptEncoder | None = None, per_class: int = 1, seed: int = 0,
                  cache_dir: str | Path | None = None, device: str = "cpu",
                  descriptions: str | Path | Mapping[str, Sequence[str]] | None = None) -> PromptBank:
    """The prompt bank of ``kind`` (``text``, ``image`` or ``mixed``) for ``class_names``: one feature per class
    from ``encoder`` (a spec such as ``"open_clip:ViT-B-16@openai"`` or an encoder object). ``templates`` is a named
    set (``simple``, ``openai_imagenet``, ``coop:oxford_pets``, ...), a file, or the templates themselves.
    ``images`` (image and mixed prompts): an image folder, one subfolder per class, whose training split the
    prompts are drawn from, or a labelled collection. ``descriptions`` (text prompts): a file or mapping of class name
    -> sentences encoded beside the templates (``prompts.descriptions``); names it lacks get the templates alone.
    Cached in ``cache_dir`` when given."""
    if isinstance(images, (str, Path)):
        images = training_split(images)
    template_list = template_set(templates) if isinstance(templates, str) else list(templates)
    if isinstance(descriptions, (str, Path)):
        descriptions = read_descriptions(descriptions)
    described = {name: list(descriptions[name]) for name in class_names if name in (descriptions or {})}
    return build_prompt_bank(kind, class_names, text_encoder=encoder, image_encoder=image_encoder or encoder,
                             templates=template_list, descriptions=described or None, images=images,
                             per_class=per_class, seed=seed,
                             cache_dir=cache_dir, device=device,
                             image_split="train" if images is not None else None)


@_shown
def load_classifier(path: str | Path, device: str = "auto", *, encoder: str | None = None,
                    image_encoder: str | None = None) -> Classifier:
    """A checkpoint file, run folder, model folder (``save_pretrained``) or ``hf-hub:ORG/NAME[@REVISION]`` (offline:
    from the Hugging Face cache) as a classifier: ``.classes``, ``.transform``, ``.model``, ``.predict(image)`` (one
    image: its ranked ``(class, probability)`` pairs) or ``.predict([images...])`` (one such list per image), with
    ``classes=[...]`` for new class names as in ``ivit predict --classes``.

    ``encoder`` (and ``image_encoder``): the prompt encoder to use where the model folder names its own by a file on
    the machine that wrote it (a folder's paths are not followed); it must be the weights the folder records."""
    return Classifier.load(path, device, encoder, image_encoder)


@_shown
def save_pretrained(run: str | Path, folder: str | Path, *, license: str = "mit", repo_id: str | None = None,
                    force: bool = False) -> Path:
    """Write a trained model (a run folder, checkpoint file or model folder) as a shareable model folder:
    ``model.safetensors`` (weights), ``prompts.safetensors`` + ``prompts.json`` (its prompt bank), ``config.json``
    (config, classes, preprocessing) and a ``README.md`` model card with the ``license``; what ``ivit save`` does.
    An existing model folder is replaced only with ``force``; the folder is written whole, then put in place.
    :func:`load_classifier` reads the folder back, locally or as ``hf-hub:ORG/NAME`` once pushed."""
    from .artifacts.sharing import save_pretrained as _save

    return _save(run, folder, license=license, repo_id=repo_id, force=force)


@_shown
def push_to_hub(run: str | Path, repo_id: str, *, private: bool = False, license: str = "mit",
                token: str | None = None) -> str:
    """Upload a trained model to the Hugging Face Hub repo ``repo_id`` (``ORG/NAME``, created if missing) as the
    folder :func:`save_pretrained` writes; returns the commit URL. Then ``load_classifier("hf-hub:ORG/NAME")``
    loads it anywhere (offline from the Hugging Face cache)."""
    from .artifacts.sharing import push_to_hub as _push

    return _push(run, repo_id, private=private, license=license, token=token)


@_shown
def export_onnx(run: str | Path, out: str | Path, *, prompts_input: bool = False, select_k: int | None = None,
                opset: int = 17, fmt: str = "onnx") -> OnnxExport:
    """Export a trained model (run folder or checkpoint) to the ONNX file ``out``: input ``image`` (preprocessed),
    outputs ``logits`` and ``scores``, dynamic batch; the checkpoint's prompts baked in, or with ``prompts_input``
    one ``[P, D]`` input per prompt source (new class names); ``select_k`` adds the input ``ranking`` and top-K+1
    selection in the graph. Class names and preprocessing go into the metadata. The file is written only if ONNX
    Runtime reproduces PyTorch (1e-4); returns what was written and the measured difference. Needs onnx and
    onnxruntime (the ``onnx`` extra: ``pip install -e '.[onnx]'`` in a checkout; the ``.venv`` ``make`` builds has
    them)."""
    return _export_onnx(run, out, prompts_input=prompts_input, select_k=select_k, opset=opset, fmt=fmt)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                base: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then ``base`` (a config as a dict) or the YAML file at ``path``, then ``section.key=value``
    ``overrides``; checked (every key, type and registered name) and resolved: ``model.options`` holds every option
    of the method ``model.method`` names."""
    return resolve(_config.load_config(path, overrides, dict(base) if base is not None else None)).config


def run_config(config: RunConfig) -> Config:
    """A resolved :class:`Config` from a Config, a dict of sections, a YAML file, or ``section.key=value``
    overrides."""
    if isinstance(config, Config):
        return resolve(config).config
    if isinstance(config, Mapping):
        return resolve(_config.from_dict(dict(config))).config
    if isinstance(config, (str, Path)):
        return load_config(config)
    if isinstance(config, Sequence):
        return load_config(None, list(config))
    raise ConfigError(f"a run config is a Config, a dict, a YAML path or a list of overrides, not {type(config)}")


@_shown
def train(config: RunConfig, out: str | Path, *, resume: bool = False, force: bool = False,
          stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train into run folder ``out`` (resolved config, metrics, checkpoints, ``results.json``); returns the test
    results of the best checkpoint. ``config``: see :func:`run_config`. Messages go to the ``instruction_vit``
    logger: what the run reads, each epoch's line, one line per long step; where nobody set up logging (a notebook),
    they are shown on stderr, and a logging set-up of your own decides otherwise."""
    return _train(run_config(config), out, resume=resume, force=force, stop_after_epochs=stop_after_epochs)


@_shown
def evaluate(checkpoint: str | Path, split: str = "test", select_k: int | None = None,
             overrides: Sequence[str] = (), *, encoder: str | None = None,
             image_encoder: str | None = None) -> dict[str, Any]:
    """A checkpoint's metrics on ``split`` of its data (per route; with ``select_k``, also with top-K+1 prompts),
    computed as at the end of training; ``overrides`` are ``data.*`` keys (other images of the same classes; a model
    folder needs ``data.root``: its paths are not followed). ``encoder``: as in :func:`load_classifier`."""
    return _evaluate(checkpoint, split, select_k, overrides, encoder, image_encoder)


def list_experiments() -> list[str]:
    """The packaged reproduction specs (``ivit reproduce NAME``)."""
    folder = importlib.resources.files("instruction_vit") / "experiments"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


__all__ = [
    "Classifier", "Config", "InstructionViTError", "PromptBank", "Prompts", "UserError", "build_prompts",
    "create_model", "evaluate", "export_onnx", "image_folder", "list_methods", "list_datasets", "list_encoders",
    "list_experiments", "load_classifier", "load_config", "load_encoder", "push_to_hub", "register_method",
    "register_dataset", "register_encoder", "run_config", "save_pretrained", "train",
]
