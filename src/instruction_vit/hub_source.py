"""Where a shared model folder is: ``hf-hub:ORG/NAME[@REVISION]`` (Hugging Face Hub, or its cache offline) or a
local folder that ``ivit save`` wrote (a leaf module: the checkpoint, weights and prompt bank loaders all ask it).

A model folder holds ``model.safetensors`` (the model's weights), ``prompts.safetensors`` + ``prompts.json`` (its
prompt bank, readable as a bank file; absent for models without prompts), ``config.json`` (the resolved run config,
classes, preprocessing, what rebuilds the model) and ``README.md`` (the model card). Nothing here downloads at
import; a hub spec is fetched only when resolved, with ``huggingface_hub.snapshot_download`` (online: from the Hub,
kept in its cache; offline, ``HF_HUB_OFFLINE=1``: from the cache alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, WeightsUnavailableError

log = logging.getLogger(__name__)

HUB_SCHEME = "hf-hub:"
FOLDER_FORMAT = "instruction-vit-model/1"
MODEL_FILE = "model.safetensors"
PROMPTS_FILE = "prompts.safetensors"
PROMPTS_META = "prompts.json"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
#: What one model folder holds (``ivit save`` writes these and nothing else).
FOLDER_FILES = (MODEL_FILE, PROMPTS_FILE, PROMPTS_META, CONFIG_FILE, CARD_FILE)


@dataclass(frozen=True)
class ModelSource:
    """A model folder on this machine, and what it was named as."""

    path: Path  # the folder (a snapshot in the Hugging Face cache for a hub repo)
    name: str  # "hf-hub:ORG/NAME" or the folder as given
    revision: str | None = None  # the commit a hub repo resolved to
    where: str = ""  # "from the Hugging Face cache", ...

    def describe(self) -> str:
        """One line: ``hf-hub:ORG/NAME (revision 0123456789ab) from the Hugging Face cache``, or the folder."""
        rev = f" (revision {self.revision[:12]})" if self.revision else ""
        return f"{self.name}{rev} {self.where}".strip()


def is_hub_spec(spec: object) -> bool:
    return str(spec).startswith(HUB_SCHEME)


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/NAME[@REVISION]`` -> ``(ORG/NAME, REVISION or None)``; a malformed spec is a CheckpointError."""
    body = str(spec)[len(HUB_SCHEME):]
    repo_id, _, revision = body.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (revision == "" and "@" in body):
        raise CheckpointError(f"{spec!r} is not a Hugging Face model: write hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return repo_id, revision or None


def is_model_folder(path: str | Path) -> bool:
    """A folder in ``ivit save``'s format (it has ``config.json`` or ``model.safetensors``, and is no run folder)."""
    path = Path(path)
    return path.is_dir() and not (path / "checkpoints").is_dir() and \
        ((path / CONFIG_FILE).is_file() or (path / MODEL_FILE).is_file())


def resolve_model_source(spec: str | Path) -> ModelSource | None:
    """The model folder ``spec`` names (a hub repo is fetched, or found in the cache offline), or ``None`` when
    ``spec`` is something else (a checkpoint file, a run folder, a weights file)."""
    if is_hub_spec(spec):
        return fetch_hub_repo(str(spec))
    if is_model_folder(spec):
        return ModelSource(Path(spec), str(spec), where="(model folder)")
    return None


def fetch_hub_repo(spec: str) -> ModelSource:
    """``hf-hub:ORG/NAME[@REVISION]`` as a local snapshot folder. Online, ``snapshot_download`` checks the Hub and
    falls back to the cache when the Hub cannot be reached; offline (``HF_HUB_OFFLINE=1``) it reads the cache only.
    A repo that is neither reachable nor cached is a :class:`WeightsUnavailableError` naming it and the fix."""
    repo_id, revision = parse_hub_spec(spec)
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError as err:  # a dependency of the package: only a broken install lacks it
        raise WeightsUnavailableError(f"{spec} needs huggingface_hub: pip install huggingface_hub") from err
    offline = constants.is_offline_mode()
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=offline))
    except Exception as err:  # noqa: BLE001 - hub, network and cache errors alike: not available here
        where = " (offline: HF_HUB_OFFLINE=1)" if offline else ""
        at = f" at revision {revision}" if revision else ""
        raise WeightsUnavailableError(
            f"Hugging Face repo {repo_id}{at} is not in the cache {constants.HF_HUB_CACHE} and could not be "
            f"downloaded{where} ({type(err).__name__}). Fetch it once online (`hf download {repo_id}`, or any ivit "
            "command without HF_HUB_OFFLINE), point HF_HOME/HF_HUB_CACHE at a cache that holds it, or give a local "
            "folder written by `ivit save`") from err
    where = "from the Hugging Face cache" if offline else "from the Hugging Face Hub (or its cache)"
    return ModelSource(folder, f"{HUB_SCHEME}{repo_id}", folder.name, where)


def bank_in_source(spec: str | Path) -> str | Path:
    """What a prompt bank path means: a model folder or hub repo gives its ``prompts`` pair (``prompts.safetensors``
    + ``prompts.json``); anything else is returned as it is."""
    source = resolve_model_source(spec)
    if source is None:
        return spec
    if not (source.path / PROMPTS_FILE).is_file():
        raise CheckpointError(f"{source.describe()} holds no prompt bank ({PROMPTS_FILE} is missing: a model trained "
                              "without prompts); give prompts.bank_file a bank or a model trained with prompts")
    log.info("prompt bank: %s of %s", PROMPTS_FILE, source.describe())
    return source.path / "prompts"


__all__ = ["CARD_FILE", "CONFIG_FILE", "FOLDER_FILES", "FOLDER_FORMAT", "HUB_SCHEME", "MODEL_FILE", "PROMPTS_FILE",
           "PROMPTS_META", "ModelSource", "bank_in_source", "fetch_hub_repo", "is_hub_spec", "is_model_folder",
           "parse_hub_spec", "resolve_model_source"]
