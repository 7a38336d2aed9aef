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

import contextlib
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

from ..config import Config, from_dict
from ..errors import CheckpointError, UserError
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
from ..outputs import SINGLE_SOURCE, Prompts, capabilities
from ..resolve import Resolved, resolve
from .folder_config import UNRESOLVED, strip_paths, trusted_config, with_encoders

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
    unresolved: dict[str, str] = dataclasses.field(default_factory=dict)  # encoders a folder named by a file

    def require_encoders(self, purpose: str) -> None:
        """Refuse (one line, the fix named) when ``purpose`` needs a prompt encoder that the model folder named by a
        file on the machine that wrote it: a folder's paths are not followed, the caller names the encoder."""
        if not self.unresolved:
            return
        key, spec = next(iter(self.unresolved.items()))
        recorded = (self.external or {}).get("weights_id") or \
            (self.meta.get("bank_encoders") or {}).get("image_weights" if "image" in key else "text_weights")
        weights = f", weights {recorded}" if recorded else ""
        option = "--image-encoder" if key == "prompts.image_encoder" else "--encoder"
        raise CheckpointError(
            f"{self.name} names its prompt encoder by a file on the machine that wrote it ({spec}{weights}), and a "
            f"model folder's paths are not followed: for {purpose}, name yours with {option} SPEC "
            f"(load_classifier(..., {option[2:].replace('-', '_')}=SPEC)), e.g. {option} {_example_spec(spec)}; "
            "it is checked against the weights the folder records")

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
        resolved, state = resolve(self.config), self.model_state()
        dims = {k.split(".")[2]: int(v.shape[1]) for k, v in state.items()
                if k.startswith("prompt_embed.proj.") and k.endswith(".weight")}
        # One projection named "prompts" was built from one prompt dim (an int); several, from {source: dim}.
        prompt_dim = dims[SINGLE_SOURCE] if list(dims) == [SINGLE_SOURCE] else (dims or None)
        if resolved.method.uses_encoder:
            self.require_encoders(f"building its {resolved.config.model.method} model")
        if resolved.method.timm_backbone:  # sizes first, on the meta device: a config that does not fit allocates nothing
            self._check_shapes(resolved, prompt_dim)
        model = resolved.method.build(resolved.config, self.class_names, prompt_dim, False)
        bank = {k.removeprefix("prompt_bank."): v for k, v in state.items() if k.startswith("prompt_bank.")}
        if bank:  # stored as prompt_bank.<source>: the sources the model was trained with
            model.set_prompt_bank(Prompts(bank))
        self.load_into(model)
        return model

    def _check_shapes(self, resolved: Resolved, prompt_dim: Any) -> None:
        """The model the config describes, built on the meta device (no memory), must have the tensors this file
        holds, shape for shape: a config whose sizes do not fit is refused before anything is allocated."""
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in
                        resolved.method.build(resolved.config, self.class_names, prompt_dim, False).state_dict().items()}
        held = {k: tuple(v.shape) for k, v in self.model_state().items() if not k.startswith("prompt_bank.")}
        expected = {k: v for k, v in expected.items() if not k.startswith("prompt_bank.")}
        differing = sorted(k for k in expected.keys() | held.keys() if expected.get(k) != held.get(k))
        if differing:
            shown = ", ".join(f"{k} {held.get(k, 'missing')} vs {expected.get(k, 'none')}" for k in differing[:3])
            raise CheckpointError(f"{self.name}: its weights do not fit the model its config describes ({shown}"
                                  f"{', ...' if len(differing) > 3 else ''}; held vs built): the config or the "
                                  "weights file is not the one saved with it")

    def load_into(self, model: torch.nn.Module) -> None:
        """Load the weights into ``model``. Parts saved by reference (a CoOp model's frozen CLIP) come from the
        model as built, after checking that it was built from the same weights."""
        prefixes = tuple(self.external["prefixes"]) if self.external else ()
        declared = capabilities(model).external_state
        given = model.external_weights_id if declared else None
        if prefixes and given != self.external["weights_id"]:
            raise CheckpointError(
                f"{self.name} was trained over encoder weights {self.external['weights_id']!r}, but prompts.encoder "
                f"now gives {given!r}; point prompts.encoder at those weights")
        device = next(iter(model.parameters()), torch.empty(0)).device
        missing, unexpected = model.load_state_dict({k: v.to(device) for k, v in self.model_state().items()},
                                                    strict=False)
        # Parts kept by reference are rebuilt by the model: its own external_state names them (an older checkpoint
        # may name them otherwise, e.g. CoOp's ``clip.`` before its towers were split; the weights id was checked).
        rebuilt = (*prefixes, *declared) if prefixes else ()
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


def model_from_config(cfg: Config | Resolved, class_names: list[str], prompt_dim,
                      pretrained: Any = None) -> torch.nn.Module:
    """The model a run config describes: the method ``cfg.model.method`` names (see
    :mod:`instruction_vit.methods`) builds it (a :class:`~instruction_vit.resolve.Resolved` config carries the
    kind already). ``pretrained`` overrides ``cfg.model.pretrained``; for a method on a timm backbone, a run checkpoint
    there starts the backbone from that run's model (and ``weights_report`` names the checkpoint)."""
    resolved = resolve(cfg)
    cfg, method = resolved.config, resolved.method
    source = cfg.model.pretrained if pretrained is None else pretrained
    start = None
    if method.timm_backbone and isinstance(source, (str, Path)) and _is_checkpoint(str(source)):
        start = load_checkpoint(source)  # another run's model, or a shared model folder / hf-hub repo
        state = start.model_state()
        source = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    model = method.build(cfg, class_names, prompt_dim, source)
    if start is not None and model.weights_report is not None:  # say which checkpoint
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
    external = capabilities(model).external_state  # frozen weights rebuilt from the config, by reference
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


def load_checkpoint(path: str | Path, encoder: str | None = None, image_encoder: str | None = None) -> Checkpoint:
    """Read a checkpoint file (or ``RUN_DIR``, meaning ``RUN_DIR/checkpoints/best.safetensors``), or a model folder
    written by ``ivit save`` (local, or ``hf-hub:ORG/NAME[@REVISION]``: fetched, or read from the cache offline).

    ``encoder`` / ``image_encoder``: the prompt encoder specs to use in place of the recorded ones (a model folder
    that names its encoder by a file on another machine needs them; the weights are checked against the record)."""
    source = resolve_model_source(path)
    if source is not None:
        return _load_model_folder(source, encoder, image_encoder)
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "best.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with _unreadable_as(f"{path} is not a readable safetensors checkpoint"):
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not an instruction-vit checkpoint (its header has no format "
                                      f"{FORMAT!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        train = _json(header["train"]) if "train" in header else None
        external = _json(header["external"]) if "external" in header else None
        meta = _json(header["meta"])
    ckpt = Checkpoint(path, meta, tensors, train, external)
    if encoder or image_encoder:
        ckpt.meta["config"], _ = with_encoders(ckpt.meta["config"], {}, encoder, image_encoder)
        if image_encoder:
            ckpt.meta["config"]["prompts"]["image_encoder"] = image_encoder
    return ckpt


#: The most a model folder's config.json may hold (a real one is a few kB): larger is refused before it is read.
MAX_CONFIG_BYTES = 16 * 2**20
#: The most classes a checkpoint may name, and the longest class name.
MAX_CLASSES, MAX_NAME_CHARS = 1_000_000, 1_000


def _load_model_folder(source: ModelSource, encoder: str | None = None,
                       image_encoder: str | None = None) -> Checkpoint:
    """A model folder as a weights-only checkpoint: ``model.safetensors`` holds the model state, ``config.json`` the
    checkpoint's meta (config, classes, prompt record) and what was kept by reference (a CoOp model's CLIP). Only
    what rebuilds the model is taken from ``config.json`` (:func:`~.folder_config.trusted_config`)."""
    folder, name = source.path, source.describe()
    missing = [f for f in (CONFIG_FILE, MODEL_FILE) if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{name} is not a complete model folder: {' and '.join(missing)} missing "
                              "(a folder written by `ivit save RUN DIR` holds config.json and model.safetensors); "
                              "write it again with ivit save")
    size = (folder / CONFIG_FILE).stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{name}: config.json is {size / 2**20:.0f} MiB, more than a model config holds "
                              f"({MAX_CONFIG_BYTES // 2**20} MiB at most); it is not one ivit save wrote")
    with _unreadable_as(f"{name}: config.json is not valid JSON"):
        config = _json((folder / CONFIG_FILE).read_bytes().decode("utf-8"))
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        raise CheckpointError(f"{name}: config.json is not an instruction-vit model config (format "
                              f"{FOLDER_FORMAT!r} expected); write the folder with ivit save")
    class_names = _class_names(config.get("class_names"), name)
    run_config, unresolved = trusted_config(config.get("config"), name)
    run_config, unresolved = with_encoders(run_config, unresolved, encoder, image_encoder)
    with _unreadable_as(f"{name}: {MODEL_FILE} is not a readable safetensors file"):
        with safe_open(str(folder / MODEL_FILE), framework="pt") as f:
            tensors = {f"model/{k}": f.get_tensor(k) for k in f.keys()}
    record = config.get("checkpoint") if isinstance(config.get("checkpoint"), dict) else {}
    meta = {**record, "config": run_config, "class_names": class_names}
    external = config.get("external")
    if external is not None and not (isinstance(external, dict) and isinstance(external.get("weights_id"), str)
                                     and isinstance(external.get("prefixes"), list)):
        raise CheckpointError(f"{name}: config.json's external record is malformed; write the folder again with "
                              "ivit save")
    try:
        from_dict(run_config)
    except UserError as err:
        raise CheckpointError(f"{name}: config.json's run config cannot be used ({err})") from None
    log.info("loaded %s", name)
    return Checkpoint(folder / MODEL_FILE, meta, tensors, None,
                      {k: external[k] for k in ("prefixes", "weights_id")} if external else None, source, unresolved)


def _class_names(names: Any, where: str) -> list[str]:
    """A folder's class names: a non-empty list of distinct, non-blank strings of bounded length."""
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{where}: config.json's class_names is not a list of class names; write the folder "
                              "again with ivit save")
    if len(names) > MAX_CLASSES or any(len(n) > MAX_NAME_CHARS or not n.strip() for n in names):
        raise CheckpointError(f"{where}: config.json's class_names holds blank names, names over "
                              f"{MAX_NAME_CHARS} characters or over {MAX_CLASSES} names")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{where}: config.json's class_names names a class twice")
    return list(names)


def _json(text: str) -> Any:
    return json.loads(text)


@contextlib.contextmanager
def _unreadable_as(message: str):
    """A file that cannot be parsed (not safetensors, not JSON, nested too deep, not UTF-8, pickled) is one
    :class:`CheckpointError` with ``message``; what the file holds is never quoted."""
    try:
        yield
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError,
            ValueError, OSError) as err:
        if isinstance(err, UserError):
            raise
        raise CheckpointError(f"{message} ({type(err).__name__})") from None


def _example_spec(spec: str) -> str:
    """The spec a folder recorded, its file put back as a placeholder path, for the message's example."""
    name = spec.removeprefix(UNRESOLVED)
    for marker in ("local-dir:", "@"):
        head, sep, tail = name.rpartition(marker)
        if sep:
            return f"{head}{sep}/path/to/{strip_paths(tail)}"
    return name


def _is_checkpoint(path: str) -> bool:
    """A run checkpoint file, or a model folder (``ivit save``'s format, local or ``hf-hub:``)."""
    if is_hub_spec(path) or is_model_folder(path):
        return True
    if not path.endswith(".safetensors") or not Path(path).is_file():
        return False
    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError):
        return False  # not a checkpoint: the weights loader says what the file is not


def _plain(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x
