"""Checkpoints: one ``.safetensors`` file, self-describing, written atomically, read without pickle.

Tensors: ``model/*`` (the model's state dict, prompt bank features included; weights a model marks as
``external_state``, such as CoOp's frozen CLIP, are saved by reference: ``external`` in the header names them
and the weights they must be rebuilt from), and for training state
``optim/<param>/<name>`` (optimizer moments) and ``rng/*`` (torch, CUDA and NumPy generator states).
Header metadata (JSON strings): ``meta`` (resolved config, class names, prompt bank key, epoch, step,
metrics) and ``train`` (optimizer hyper-parameters, Python RNG state, ...). The LR schedule is a pure
function of the config and the step, so it needs no state of its own.

A write goes to a temporary file in the same folder, then ``os.replace``: a kill during a save leaves the
previous checkpoint whole.

:func:`load_checkpoint` also reads a shared model folder (``ivit save``'s format, local or ``hf-hub:ORG/NAME``;
see :mod:`instruction_vit.hub_source`) as a weights-only checkpoint, so whatever takes a checkpoint takes those too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..classifiers import classifier_kind
from ..config import Config, from_dict
from ..errors import CheckpointError
from ..files import atomic_write, file_sha256
from ..hub_source import (
    CONFIG_FILE,
    FOLDER_FORMAT,
    MODEL_FILE,
    ModelSource,
    is_hub_spec,
    is_model_folder,
    resolve_model_source,
)
from ..outputs import SINGLE_SOURCE, Prompts

FORMAT = "instruction-vit-checkpoint/1"
log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    train: dict[str, Any] | None
    external: dict[str, Any] | None = None  # {"prefixes", "weights_id"}: weights saved by reference
    source: ModelSource | None = None  # set when read from a model folder (local, or a Hugging Face repo)

    @property
    def name(self) -> str:
        """What the checkpoint was loaded from, in one phrase (the file, or ``hf-hub:ORG/NAME (revision ...)``)."""
        return self.source.describe() if self.source is not None else str(self.path)

    @property
    def config(self) -> Config:
        return from_dict(self.meta["config"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("model/"): v for k, v in self.tensors.items() if k.startswith("model/")}

    def build_model(self) -> torch.nn.Module:
        """The model, rebuilt from this file alone (architecture from the config, weights from the tensors)."""
        cfg, state = self.config, self.model_state()
        dims = {k.split(".")[2]: int(v.shape[1]) for k, v in state.items()
                if k.startswith("prompt_embed.proj.") and k.endswith(".weight")}
        # One projection named "prompts" was built from one prompt dim (an int); several, from {source: dim}.
        prompt_dim = dims[SINGLE_SOURCE] if list(dims) == [SINGLE_SOURCE] else (dims or None)
        model = model_from_config(cfg, self.class_names, prompt_dim, pretrained=False)
        bank = {k.removeprefix("prompt_bank."): v for k, v in state.items() if k.startswith("prompt_bank.")}
        if bank:  # stored as prompt_bank.<source>: the sources the model was trained with
            model.set_prompt_bank(Prompts(bank))
        self.load_into(model)
        return model

    def load_into(self, model: torch.nn.Module) -> None:
        """Load the weights into ``model``. Parts saved by reference (a CoOp model's frozen CLIP) come from the
        model as built, after checking that it was built from the same weights."""
        prefixes = tuple(self.external["prefixes"]) if self.external else ()
        if prefixes and getattr(model, "external_weights_id", None) != self.external["weights_id"]:
            raise CheckpointError(
                f"{self.name} was trained over encoder weights {self.external['weights_id']!r}, but prompts.encoder "
                f"now gives {getattr(model, 'external_weights_id', None)!r}; point prompts.encoder at those weights")
        device = next(iter(model.parameters()), torch.empty(0)).device
        missing, unexpected = model.load_state_dict({k: v.to(device) for k, v in self.model_state().items()},
                                                    strict=False)
        # Parts kept by reference are rebuilt by the model: its own external_state names them (an older checkpoint
        # may name them otherwise, e.g. CoOp's ``clip.`` before its towers were split; the weights id was checked).
        rebuilt = (*prefixes, *getattr(model, "external_state", ())) if prefixes else ()
        if unexpected or any(not (rebuilt and k.startswith(rebuilt)) for k in missing):
            raise CheckpointError(f"{self.name} does not fit the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self.train is None:
            raise CheckpointError(f"{self.name} holds no training state (a weights-only checkpoint)")
        state: dict[int, dict[str, Any]] = {}
        for key, value in self.tensors.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        for index, extra in self.train["optim_state"].items():
            state.setdefault(int(index), {}).update(extra)
        optimizer.load_state_dict({"state": state, "param_groups": self.train["optim_groups"]})

    def restore_rng(self) -> None:
        if self.train is None:
            raise CheckpointError(f"{self.name} holds no training state (a weights-only checkpoint)")
        torch.set_rng_state(self.tensors["rng/torch"])
        cuda = [self.tensors[k] for k in sorted(k for k in self.tensors if k.startswith("rng/cuda/"))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        py = self.train["rng_python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        np_meta = self.train["rng_numpy"]
        np.random.set_state((np_meta[0], self.tensors["rng/numpy"].numpy().astype(np.uint32), *np_meta[1:]))


def model_from_config(cfg: Config, class_names: list[str], prompt_dim, pretrained: Any = None) -> torch.nn.Module:
    """The model a run config describes: the classifier kind ``cfg.model.method`` names (see
    :mod:`instruction_vit.classifiers`) builds it. ``pretrained`` overrides ``cfg.model.pretrained``; for a kind on a
    timm backbone, a run checkpoint there starts the backbone from that run's model (and ``weights_report`` names
    the checkpoint)."""
    kind = classifier_kind(cfg.model.method)
    source = cfg.model.pretrained if pretrained is None else pretrained
    start = None
    if kind.timm_backbone and isinstance(source, (str, Path)) and _is_checkpoint(str(source)):
        start = load_checkpoint(source)  # another run's model, or a shared model folder / hf-hub repo
        state = start.model_state()
        source = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    model = kind.build(cfg, class_names, prompt_dim, source)
    if start is not None and getattr(model, "weights_report", None) is not None:  # say which checkpoint
        what = "instruction-vit model folder" if start.source is not None else "instruction-vit checkpoint"
        model.weights_report = dataclasses.replace(model.weights_report, source=start.name, format=what,
                                                   sha256=file_sha256(start.path))
    return model


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write a checkpoint atomically; with ``optimizer``, also the optimizer and RNG states for resuming."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = tuple(getattr(model, "external_state", ()))  # frozen weights rebuilt from the config, by reference
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
               if not (external and k.startswith(external))}
    header = {"format": FORMAT, "meta": json.dumps(meta)}
    if external:
        header["external"] = json.dumps({"prefixes": list(external), "weights_id": model.external_weights_id})
    if optimizer is not None:
        opt = optimizer.state_dict()
        extra: dict[str, dict[str, Any]] = {}
        for index, state in opt["state"].items():
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{index}/{name}"] = value.detach().cpu().contiguous()
                else:
                    extra.setdefault(str(index), {})[name] = value
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda/{i}"] = state
        np_state = np.random.get_state()
        tensors["rng/numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
        py_state = random.getstate()
        header["train"] = json.dumps({
            "optim_groups": opt["param_groups"],
            "optim_state": extra,
            "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
            "rng_numpy": [np_state[0], *[_plain(x) for x in np_state[2:]]],
        })
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file (or ``RUN_DIR``, meaning ``RUN_DIR/checkpoints/best.safetensors``), or a model folder
    written by ``ivit save`` (local, or ``hf-hub:ORG/NAME[@REVISION]``: fetched, or read from the cache offline)."""
    source = resolve_model_source(path)
    if source is not None:
        return _load_model_folder(source)
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "best.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not an instruction-vit checkpoint (format {header.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    train = json.loads(header["train"]) if "train" in header else None
    external = json.loads(header["external"]) if "external" in header else None
    return Checkpoint(path, json.loads(header["meta"]), tensors, train, external)


def _load_model_folder(source: ModelSource) -> Checkpoint:
    """A model folder as a weights-only checkpoint: ``model.safetensors`` holds the model state, ``config.json`` the
    checkpoint's meta (config, classes, prompt record) and what was kept by reference (a CoOp model's CLIP)."""
    folder = source.path
    missing = [f for f in (CONFIG_FILE, MODEL_FILE) if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{source.describe()} is not a complete model folder: {' and '.join(missing)} missing "
                              "(a folder written by `ivit save RUN DIR` holds config.json and model.safetensors); "
                              "write it again with ivit save")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source.describe()}: {CONFIG_FILE} is not valid JSON ({err})") from err
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise CheckpointError(f"{source.describe()}: {CONFIG_FILE} is not an instruction-vit model config (format "
                              f"{found!r}, expected {FOLDER_FORMAT!r}); write the folder with ivit save")
    try:
        with safe_open(str(folder / MODEL_FILE), framework="pt") as f:
            tensors = {f"model/{k}": f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise CheckpointError(f"{source.describe()}: {MODEL_FILE} is not a readable safetensors file: {err}") from err
    meta = {**config.get("checkpoint", {}), "config": config["config"], "class_names": config["class_names"]}
    external = config.get("external")
    log.info("loaded %s", source.describe())
    return Checkpoint(folder / MODEL_FILE, meta, tensors, None,
                      {k: external[k] for k in ("prefixes", "weights_id")} if external else None, source)


def _is_checkpoint(path: str) -> bool:
    """A run checkpoint file, or a model folder (``ivit save``'s format, local or ``hf-hub:``)."""
    if is_hub_spec(path) or is_model_folder(path):
        return True
    if not path.endswith(".safetensors") or not Path(path).is_file():
        return False
    with safe_open(path, framework="pt") as f:
        return (f.metadata() or {}).get("format") == FORMAT


def _plain(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x
