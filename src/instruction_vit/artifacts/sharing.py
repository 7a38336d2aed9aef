"""Sharing a trained model: ``ivit save`` writes a model folder, ``ivit push`` uploads one to the Hugging Face Hub.

The folder (:mod:`instruction_vit.hub_source` names its files) holds the model's weights (``model.safetensors``:
the checkpoint's model state, no optimizer or RNG state), its prompt bank (``prompts.safetensors`` +
``prompts.json``, a bank file pair ``prompts.bank_file`` reads), ``config.json`` (the resolved run config, the
classes, the preprocessing and the checkpoint's record: prompt kind, encoder weights, weights kept by reference) and
a model card (``README.md``). :func:`~instruction_vit.artifacts.checkpoint.load_checkpoint` reads it back, local or as
``hf-hub:ORG/NAME``. The upload is a thin call of ``huggingface_hub`` (``create_repo`` then ``upload_folder``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from timm.data import resolve_data_config

from ..version import __version__
from ..errors import ConfigError, MissingFileError, RunFolderError, UserError
from ..data import template_set, template_set_names
from ..files import atomic_folder
from ..hub_source import (
    CARD_FILE,
    CONFIG_FILE,
    FOLDER_FILES,
    FOLDER_FORMAT,
    MODEL_FILE,
    PROMPTS_FILE,
    PROMPTS_META,
    is_model_folder,
)
from ..outputs import SINGLE_SOURCE
from ..prompts.bank import bank_key
from .checkpoint import Checkpoint, load_checkpoint
from .folder_config import portable_config, portable_spec, strip_paths
from ..prompts.run_bank import read_descriptions

log = logging.getLogger(__name__)

#: The paper, for the model card's citation.
CITATION = """@article{xiao2023instructionvit,
  title   = {Instruction-ViT: Multi-Modal Prompts for Instruction Learning in ViT},
  author  = {Xiao, Zhenxiang and Chen, Yuzhong and Zhang, Lu and Yao, Junjie and Wu, Zihao and Yu, Xiaowei and
             Pan, Yi and Zhao, Lin and Ma, Chong and Liu, Xinyu and Liu, Wei and Li, Xiang and Yuan, Yixuan and
             Shen, Dinggang and Zhu, Dajiang and Liu, Tianming and Jiang, Xi},
  journal = {arXiv preprint arXiv:2305.00201},
  year    = {2023}
}"""


class HubUploadError(UserError, RuntimeError):
    """The Hugging Face Hub refused or could not be reached for an upload; the message says what to do."""


def save_pretrained(run: str | Path, folder: str | Path, *, license: str = "mit", repo_id: str | None = None,
                    force: bool = False) -> Path:
    """Write ``run`` (a run folder, a checkpoint file or a model folder) as a model folder in ``folder``; returns it.

    ``folder`` must be new or empty; a model folder written before is replaced only with ``force`` (any other
    non-empty folder is refused, ``force`` or not). The folder is written whole beside ``folder`` and then swapped
    in: a kill leaves the old folder or the new one, never a mix. Saving the same run twice gives the same bytes.
    ``license`` goes to the model card's front matter; ``repo_id`` (``ORG/NAME``) names the model in the card's
    usage snippet."""
    folder = Path(folder)
    replace = _check_target(folder, force)
    ckpt = load_checkpoint(run)
    model = ckpt.build_model()  # the weights must load (CLIP kept by reference included) before anything is shared
    state = ckpt.model_state()
    results = _results(run, ckpt)
    bank = _bank(ckpt, state, results)
    config = model_config(ckpt, model)
    card = model_card(config, results, repo_id or folder.resolve().name, license)
    with atomic_folder(folder, replace=replace) as staging:
        _save_tensors({k: v.contiguous() for k, v in state.items()}, staging / MODEL_FILE,
                      {"format": "pt", "instruction_vit": FOLDER_FORMAT})
        if bank is not None:
            features, meta = bank[0], strip_paths(bank[1])
            _save_tensors(features, staging / PROMPTS_FILE, {
                "key": meta["key"], "kind": meta["kind"], "class_names": json.dumps(meta["class_names"])})
            (staging / PROMPTS_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        for file in staging.iterdir():
            file.chmod(0o644)  # ordinary permissions: a folder to share
    log.info("wrote %s: %s", folder, ", ".join(f for f in FOLDER_FILES if (folder / f).is_file()))
    return folder


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``save_file``, then the header's JSON rewritten with sorted keys (safetensors writes the metadata of a
    mapping in no fixed order), padded to its length: the same tensors and metadata give the same bytes."""
    save_file(tensors, str(path), metadata=metadata)
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(canonical) > length:  # never seen: the same content is no longer in another order
            raise RuntimeError(f"{path.name}: the canonical safetensors header is longer than the written one")
        f.seek(8)
        f.write(canonical.ljust(length, b" "))


def _check_target(folder: Path, force: bool) -> bool:
    """Whether ``folder`` is to be replaced: refused if it is a file or a non-empty folder that is not a model folder;
    a model folder needs ``force``."""
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise RunFolderError(f"{folder} exists and is not a folder: choose a new folder")
    entries = list(folder.iterdir())
    if not entries:
        return True
    if not is_model_folder(folder) or any(e.name not in FOLDER_FILES for e in entries):
        raise RunFolderError(f"{folder} exists and holds files ivit save did not write: choose a new folder")
    if not force:
        raise RunFolderError(f"{folder} is a model folder already: pass --force to replace it, or choose a new "
                             "folder")
    return True


def push_to_hub(run: str | Path, repo_id: str, *, private: bool = False, license: str = "mit",
                token: str | None = None, commit_message: str | None = None) -> str:
    """Write ``run`` as a model folder (:func:`save_pretrained`) in a temporary folder and upload it to the Hugging
    Face Hub repo ``repo_id`` (``ORG/NAME``; created if missing, ``private`` then). Returns the commit's URL.
    The token is ``token``, else the one ``hf auth login`` saved or ``HF_TOKEN``."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"the repo id is ORG/NAME (a user or organisation, then the model's name), not {repo_id!r}")
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="ivit-push-") as tmp:
        folder = save_pretrained(run, Path(tmp) / repo_id.split("/")[1], license=license, repo_id=repo_id)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                       commit_message=commit_message or f"Upload {folder.name} with ivit push")
        except Exception as err:  # noqa: BLE001 - token, network, permission, hub errors: one line with the fix
            raise HubUploadError(_push_failure(repo_id, err)) from err
    url = str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}")
    log.info("pushed %s to %s", run, url)
    return url


def _push_failure(repo_id: str, err: BaseException) -> str:
    from huggingface_hub import constants

    first = (str(err).strip().splitlines() or [""])[0][:200]
    if constants.is_offline_mode():
        fix = "HF_HUB_OFFLINE=1 is set: unset it to upload"
    elif "token" in f"{type(err).__name__} {first}".lower() or "401" in first or "403" in first:
        fix = "log in with `hf auth login` (or set HF_TOKEN) with a token that may write to it"
    else:
        fix = "check the network and the token (`hf auth whoami`), then run ivit push again"
    return f"could not upload to the Hugging Face repo {repo_id} ({type(err).__name__}: {first}); {fix}"


def model_config(ckpt: Checkpoint, model: torch.nn.Module) -> dict[str, Any]:
    """``config.json``: what rebuilds and preprocesses the model, and the record of how it was trained, portable
    (:func:`~.folder_config.portable_config`: templates and descriptions inline, no saver's path)."""
    cfg = ckpt.config
    dc = resolve_data_config({}, model=model.backbone)
    external = dict(ckpt.external or {})
    if external:
        external["encoder"] = portable_spec(cfg.prompts.encoder)  # the weights kept by reference come from this spec
    options = cfg.model.options.get("templates") if isinstance(cfg.model.options.get("templates"), str) else None
    return strip_paths({
        "format": FOLDER_FORMAT,
        "library": "instruction-vit",
        "library_version": __version__,
        "method": cfg.model.method,
        "backbone": cfg.model.backbone,
        "class_names": ckpt.class_names,
        "preprocessing": {"size": cfg.data.img_size, "mean": list(dc["mean"]), "std": list(dc["std"]),
                          "interpolation": dc["interpolation"], "crop_pct": 1.0},
        "prompts": {"kind": ckpt.meta.get("bank_kind", cfg.prompts.kind), "key": ckpt.meta.get("bank_key"),
                    "encoders": ckpt.meta.get("bank_encoders") or {}},
        "external": external or None,
        "config": portable_config(ckpt.meta["config"], _file_content(cfg.prompts.templates, template_set),
                                  _file_content(cfg.prompts.descriptions, read_descriptions),
                                  _file_content(options, template_set)),
        "checkpoint": {k: v for k, v in ckpt.meta.items() if k not in ("config", "class_names", "history")},
    })


def _file_content(value: Any, read: Any) -> Any:
    """What a templates or descriptions file named by the config holds (read now, on the saver's machine, so that
    the folder carries it); ``None`` for a named set or inline content. A file that is gone is an error: the folder
    could not carry it."""
    if not isinstance(value, str) or value in template_set_names() or value == "promptsrc":
        return None
    if not Path(value).expanduser().is_file():
        raise MissingFileError(f"the run reads its templates or descriptions from {value}, which is not here; a model "
                               "folder carries them: restore the file, or save on the machine that trained the run")
    return read(value)


def _bank(ckpt: Checkpoint, state: dict[str, torch.Tensor], results: dict[str, Any] | None,
          ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The model's prompt features as a bank file pair (features per source, and the bank's record), or ``None``."""
    stored = {k.removeprefix("prompt_bank."): v for k, v in state.items() if k.startswith("prompt_bank.")}
    if not stored:
        return None
    kind = ckpt.meta.get("bank_kind") or ckpt.config.prompts.kind
    # One source is stored as "prompts" in the model: in a bank it is named after its kind (text, image, mixed).
    features = {(kind if name == SINGLE_SOURCE else name): v.float().contiguous() for name, v in stored.items()}
    recorded = (results or {}).get("prompt_bank") or {}
    meta: dict[str, Any] = {"kind": kind, "class_names": ckpt.class_names, **(ckpt.meta.get("bank_encoders") or {})}
    if "templates" in recorded:
        meta["templates"] = recorded["templates"]
    trained = ckpt.config.model.train_prompt_features
    meta["from_model"] = {"bank_key": ckpt.meta.get("bank_key"), "prompt_features_trained": trained}
    meta["key"] = ckpt.meta["bank_key"] if ckpt.meta.get("bank_key") and not trained else bank_key(meta)
    return features, meta


def _results(run: str | Path, ckpt: Checkpoint) -> dict[str, Any] | None:
    """The run's ``results.json`` when ``run`` is its run folder or its best checkpoint (the one those results are
    of), else ``None``."""
    path = Path(run)
    if path.is_dir() and (path / "checkpoints").is_dir():
        file = path / "results.json"
    elif path.name == "best.safetensors" and path.parent.name == "checkpoints":
        file = path.parent.parent / "results.json"
    else:
        return None
    if not file.is_file():
        return None
    results = json.loads(file.read_text(encoding="utf-8"))
    return results if results.get("class_names", ckpt.class_names) == ckpt.class_names else None


# -- the model card --------------------------------------------------------------------------------------------
def model_card(config: dict[str, Any], results: dict[str, Any] | None, name: str, license: str = "mit") -> str:
    """``README.md``: YAML front matter (library, license, tags, datasets), what the model is, its data and splits,
    its test metrics, how to use it, the citation."""
    cfg, names = config["config"], config["class_names"]
    method, kind = config["method"], config["prompts"]["kind"]
    data = (results or {}).get("data") or {}
    dataset = _dataset_name(cfg["data"])
    tags = ["image-classification", "instruction-vit", "vision-transformer", "prompt-learning", method]
    if kind not in (None, "none"):
        tags.append(f"{kind}-prompts")
    repo = name if "/" in name else f"ORG/{name}"
    front = ["---", "library_name: instruction-vit", f"license: {license}", "pipeline_tag: image-classification",
             "tags:", *[f"- {t}" for t in dict.fromkeys(tags)], "datasets:", f"- {dataset}", "metrics:", "- accuracy",
             "---", ""]
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    lines = [f"# {name.split('/')[-1]}", "", _what(config), "", f"Classes ({len(names)}): {shown}.", "",
             "## Data and splits", "", *_data_lines(cfg["data"], data), "", "## Results", "", *_metric_lines(results),
             "", "## Use", "", "instruction-vit is not on a package index: install it from a checkout of its repository "
             "(`pip install -e .`), then:", "", "```bash",
             f"ivit predict hf-hub:{repo} img.jpg", f"ivit predict hf-hub:{repo} img.jpg --classes \"{', '.join(names[:2])}, "
             "a new class\"", "```", "", "```python", "import instruction_vit as ivit", "",
             f"classifier = ivit.load_classifier(\"hf-hub:{repo}\")",
             "print(classifier.predict([\"img.jpg\"]))                                  # its own classes",
             "print(classifier.predict([\"img.jpg\"], classes=[\"tabby cat\", \"lynx\"]))  # any class names",
             "```", "", "Offline (`HF_HUB_OFFLINE=1`) it loads from the Hugging Face cache. The same folder works as "
             f"`model.pretrained=hf-hub:{repo}` (start a new run from its backbone) and, with prompts, "
             f"`prompts.bank_file=hf-hub:{repo}`.", "", *_files_lines(config), "", "## Citation", "", "```bibtex",
             CITATION, "```", ""]
    return "\n".join(front + lines)


def _what(config: dict[str, Any]) -> str:
    cfg, kind = config["config"], config["prompts"]["kind"]
    pre = config["preprocessing"]
    size = f"{pre['size']} px images (mean {_fmt(pre['mean'])}, std {_fmt(pre['std'])}, {pre['interpolation']})"
    regime = cfg["model"]["regime"]
    if config["method"] == "instruction_vit" and kind not in (None, "none"):
        encoder = cfg["prompts"]["encoder"]
        return (f"An [Instruction-ViT](https://arxiv.org/abs/2305.00201) image classifier: a `{config['backbone']}` "
                f"ViT that reads one {kind} prompt per class (from `{encoder}`) beside the image tokens, and scores "
                f"each class by its head and by the similarity of the image to the class's prompt; trained "
                f"(regime `{regime}`) with instruction-vit {config['library_version']} on {size}. New class names "
                "work through their prompts.")
    if config["method"] == "instruction_vit":
        return (f"A `{config['backbone']}` image classifier without prompts (the plain baseline of Instruction-ViT), "
                f"trained (regime `{regime}`) with instruction-vit {config['library_version']} on {size}.")
    external = config.get("external") or {}
    kept = (f" The encoder's own weights are not in this folder: `{external.get('encoder')}` (weights "
            f"`{external.get('weights_id')}`) must be available where it is loaded.") if external else ""
    return (f"A `{config['method']}` classifier trained with instruction-vit {config['library_version']} on {size} "
            f"(regime `{regime}`).{kept}")


def _data_lines(data_cfg: dict[str, Any], data: dict[str, Any]) -> list[str]:
    lines = [f"- data set: `{data.get('dataset', data_cfg.get('dataset'))}`"
             + (f" (split file `{data_cfg['split_file']}`)" if data_cfg.get("split_file") else "")]
    sizes = data.get("sizes")
    if sizes:
        lines.append("- images per split: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    recipe = {k: data[k] for k in ("source", "seed", "val_fraction", "test_fraction", "classes", "shots",
                                   "shots_seed") if data.get(k) is not None}
    if recipe:
        lines.append("- splits: " + ", ".join(f"{k} {v}" for k, v in recipe.items()))
    if not data:
        lines.append("- (no results.json was saved with this model: sizes and splits unknown)")
    return lines


def _metric_lines(results: dict[str, Any] | None) -> list[str]:
    if not results or "all_prompts" not in results:
        return ["No test results were saved with this model."]
    routes = ("head", "score", "combined")
    lines = [f"Top-1 accuracy (%) on the {results.get('split', 'test')} split, best validation epoch "
             f"({results.get('best_epoch', '?')}):", "", "| prompts | " + " | ".join(routes) + " |",
             "|---|" + "---:|" * len(routes)]
    for key, value in results.items():
        if isinstance(value, dict) and "head" in value:
            label = "all prompts" if key == "all_prompts" else key.replace("select_k", "top-") + "+1 prompts"
            cells = [f"{value[r]['top1']:.2f}" if r in value else "-" for r in routes]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _files_lines(config: dict[str, Any]) -> list[str]:
    prompts = config["prompts"]["kind"] not in (None, "none")
    return ["## Files", "", f"- `{MODEL_FILE}`: the weights (safetensors)",
            *([f"- `{PROMPTS_FILE}` + `{PROMPTS_META}`: the prompt bank (features per source, class names, encoders)"]
              if prompts else []),
            f"- `{CONFIG_FILE}`: the resolved run config, classes, preprocessing and training record"]


def _dataset_name(data_cfg: dict[str, Any]) -> str:
    if data_cfg.get("dataset") == "folder":
        return Path(str(data_cfg.get("root") or "images")).name or "images"  # a local folder: its name only
    return str(data_cfg.get("dataset"))


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


__all__ = ["HubUploadError", "model_card", "model_config", "push_to_hub", "save_pretrained"]
