"""Building a run's parts from its config: data, prompts, model, loaders, loss, optimizer and schedule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from ..resolve import Resolved
from ..config import Config, resolved_workers
from ..data import LabelledImages, TransformedImages
from ..data.image_store import StoreDataset, build_store
from ..errors import ConfigError, DataError, RunFolderError
from ..losses import InstructionLoss
from ..model import apply_regime
from ..prompts import PromptBank
from ..artifacts.checkpoint import Checkpoint, load_checkpoint, model_from_config
from .distributed import World
from .logs import data_line, prompts_line
from ..data.loaders import device_augment, eval_loader, run_splits, transforms
from ..prompts.run_bank import prompt_bank
from ..devices import seed_everything

#: What a checkpoint records of the encoders behind its prompts (new class names must come from the same ones).
BANK_ENCODERS = ("text_encoder", "text_weights", "image_encoder", "image_weights")


@dataclass
class RunParts:
    """Everything a training run is made of, built once from its config."""

    cfg: Config
    out: Path
    world: World
    device: torch.device
    splits: dict[str, LabelledImages]
    data_info: dict[str, Any]
    bank: PromptBank | None
    model: torch.nn.Module
    weights_record: dict[str, Any] | None
    train_set: torch.utils.data.Dataset
    augment: Any  # device augmentation (data.gpu_augment), or None
    val_loader: torch.utils.data.DataLoader
    updates_per_epoch: int
    local_batch: int
    mixup: Mixup | None
    criterion: InstructionLoss
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    last: Checkpoint | None = None  # the checkpoint a resumed run continues from
    workers: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # what every checkpoint of the run records

    @property
    def class_names(self) -> list[str]:
        return self.splits["train"].class_names


def build_run(resolved: Resolved, out: Path, world: World, device: torch.device, resume: bool,
              log: Callable[[str], None]) -> RunParts:
    """Data (unreadable images as ``data.bad_images`` says), the prompt bank (rank 0 builds and caches it first),
    the model (resuming: from the checkpoint, not the weights file again) in its regime, the loaders, the loss, the
    optimizer and the schedule; each start-up fact logged in one line."""
    cfg = resolved.config
    t = cfg.train
    splits, data_info = run_splits(cfg)
    log(data_line(data_info))
    data_info["classes_without_eval_images"] = check_eval_classes(cfg, splits, log)
    bank = world.in_turn(lambda: prompt_bank(cfg, splits["train"]))
    if bank is not None:
        log(prompts_line(cfg, bank))
    last = load_checkpoint(out / "checkpoints" / "last.safetensors") if resume else None
    if last is not None and bank is not None and last.meta.get("bank_key") not in (None, bank.key):
        raise RunFolderError(
            f"the prompts of {out} have changed since it started (bank {last.meta['bank_key']} then, {bank.key} now: "
            "the encoder's weights, the templates or the data changed); resume needs the same prompts. Restore them, "
            "or start a new run")
    # Seed after everything that may or may not touch the RNG (encoders load only on cache misses).
    seed_everything(t.seed, t.deterministic)
    model, weights_record = _model(resolved, out, splits["train"].class_names, bank, last, log)
    model.to(device)

    workers = resolved_workers(cfg.data)
    augment = None
    if cfg.data.gpu_augment:  # decode once (rank 0 writes the store), augment batch-wise on the device
        augment = device_augment(cfg, model.backbone)  # (a bad RandAugment string fails before the decoding)
        size = cfg.data.store_size or round(cfg.data.img_size / 0.875)
        train_set = StoreDataset(world.in_turn(
            lambda: build_store(splits["train"], size, cfg.data.store_dir, workers, bad_images=cfg.data.bad_images)))
    else:
        train_set = TransformedImages(splits["train"], transforms(cfg, model.backbone)[0], cfg.data.bad_images)
    batches = len(splits["train"]) // t.batch_size
    if batches < t.accum_steps:
        raise ConfigError(f"{len(splits['train'])} training images make no full update of batch_size={t.batch_size} "
                          f"x accum_steps={t.accum_steps}; lower train.batch_size")
    updates_per_epoch = batches // t.accum_steps
    if t.warmup_epochs >= t.epochs and t.warmup_epochs > 0:
        log(f"warning: train.warmup_epochs={t.warmup_epochs:g} is not shorter than train.epochs={t.epochs}: the "
            f"learning rate never leaves its warm-up (it ends below train.lr={t.lr:g}); set train.warmup_epochs "
            "under train.epochs for the schedule you meant")
    local_batch = t.batch_size // world.size
    mixup = _mixup(cfg, local_batch, len(splits["train"].class_names))
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = create_optimizer_v2(model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, **fused)
    scheduler = CosineLRScheduler(optimizer, t_initial=t.epochs * updates_per_epoch, lr_min=t.min_lr,
                                  warmup_t=int(t.warmup_epochs * updates_per_epoch), warmup_lr_init=t.min_lr,
                                  t_in_epochs=False)
    meta = {"config": cfg.to_dict(), "class_names": splits["train"].class_names,
            "bank_key": bank.key if bank else None, "backbone_weights": weights_record,
            "bank_encoders": {k: bank.meta[k] for k in BANK_ENCODERS if k in bank.meta} if bank else {},
            "bank_kind": bank.kind if bank else "none"}
    return RunParts(cfg, out, world, device, splits, data_info, bank, model, weights_record, train_set, augment,
                    eval_loader(cfg, model.backbone, splits["val"]), updates_per_epoch, local_batch, mixup,
                    InstructionLoss(t.head_weight, t.score_weight, 0.0 if mixup else t.label_smoothing), optimizer,
                    scheduler, last, workers, meta)


def _model(resolved: Resolved, out: Path, class_names: list[str], bank: PromptBank | None,
           last: Checkpoint | None, log: Callable[[str], None]) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The model in its regime, with the bank's prompts stored, and the record of its starting weights."""
    cfg = resolved.config
    model = model_from_config(resolved, class_names, bank.prompt_dim if bank else None,
                              pretrained=False if last is not None else None)
    report = model.weights_report
    record = last.meta.get("backbone_weights") if last is not None else (report.to_dict() if report else None)
    if resolved.method.timm_backbone:
        if last is not None:
            log(f"backbone {cfg.model.backbone}: from {out / 'checkpoints' / 'last.safetensors'} (it started from "
                f"{(record or {}).get('source', 'random init')})")
        else:
            log(report.summary() if report is not None else
                f"backbone {cfg.model.backbone}: random init (model.pretrained is null)")
    if bank is not None:
        model.set_prompt_bank(bank.model_input(), trainable=cfg.model.train_prompt_features)
    apply_regime(model, cfg.model.regime, cfg.model.train_prompt_features)
    return model, record


def check_eval_classes(cfg: Config, splits: dict[str, LabelledImages], log: Callable[[str], None],
                       ) -> dict[str, list[str]]:
    """The classes with no validation or no test images: the best epoch would be picked, or accuracy reported,
    without them. An error unless ``data.missing_eval_classes=allow`` (then said in one line and recorded)."""
    missing = {}
    for split in ("val", "test"):
        counts = [0] * len(splits["train"].class_names)
        for label in splits[split].labels:
            counts[label] += 1
        names = [n for n, c in zip(splits["train"].class_names, counts) if c == 0]
        if names:
            missing[split] = names
    if missing:
        said = "; ".join(f"{len(v)} class{'es' if len(v) > 1 else ''} without {k} images ({', '.join(v[:3])}"
                         f"{', ...' if len(v) > 3 else ''})" for k, v in missing.items())
        if cfg.data.missing_eval_classes != "allow":
            raise DataError(f"{said}: their accuracy would not be measured. Add images (or raise data.val_fraction / "
                            "data.eval_limit), or set data.missing_eval_classes=allow to go on (recorded in results)")
        log(f"warning: {said}; going on as data.missing_eval_classes=allow says (recorded in results.json)")
    return missing


def _mixup(cfg: Config, local_batch: int, num_classes: int) -> Mixup | None:
    t = cfg.train
    if t.mixup <= 0 and t.cutmix <= 0:
        return None
    if local_batch % 2:
        raise ConfigError("Mixup/CutMix need an even batch per process (train.batch_size / processes)")
    return Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, prob=t.mixup_prob, mode=t.mixup_mode,
                 label_smoothing=t.label_smoothing, num_classes=num_classes)
