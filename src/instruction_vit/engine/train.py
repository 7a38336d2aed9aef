"""The training loop: one run folder, resumable from any kill, metrics a person can read and plot.

Run folder::

    config.yaml            resolved config, written before training
    metrics.csv / .jsonl   one row per epoch (losses, validation top-1, lr, seconds, training img/s)
    checkpoints/last.safetensors   weights + optimizer + RNG state (resume)
    checkpoints/best.safetensors   weights of the best validation epoch (eval, predict)
    results.json           test metrics of the best checkpoint, with and without prompt selection
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader

from ..config import Config, load_config, resolved_workers
from ..data import TransformedImages
from ..data.store import StoreDataset, build_store
from ..classifiers import classifier_kind
from ..errors import ConfigError, NonFiniteLossError, RunFolderError
from ..files import atomic_write
from ..losses import InstructionLoss
from ..model import apply_regime
from ..prompts import forward_selected, target_mask
from .checkpoint import CheckpointError, load_checkpoint, model_from_config, save_checkpoint
from .distributed import close_world, init_world
from .evaluate import autocast, classification_metrics, predict
from .results import checkpoint_results
from .protocols import novel_classes
from .run import (
    PROMPT_RECORD,
    data_line,
    device_augment,
    eval_loader,
    prompt_bank,
    prompts_line,
    run_splits,
    resolve_device,
    seed_everything,
    transforms,
)


#: What a run folder holds; a folder with only some of these and no checkpoint is a run that failed before its first
#: checkpoint (a bad data root, say): it is started again without --force.
RUN_ENTRIES = frozenset({"config.yaml", "metrics.csv", "metrics.jsonl", "results.json", "checkpoints", "tensorboard",
                         "cell.json"})
#: Config keys a resumed run may change: they say how it runs, not what it computes.
#: What a checkpoint records of the encoders behind its prompts (new class names must come from the same ones).
BANK_ENCODERS = ("text_encoder", "text_weights", "image_encoder", "image_weights")
RESUME_SAFE = ("train.device", "train.log_every", "train.tensorboard", "train.compile", "data.num_workers",
               "data.store_dir", "prompts.cache_dir")


def prepare_run_folder(out: Path, resume: bool, force: bool) -> None:
    last = out / "checkpoints" / "last.safetensors"
    if resume:
        if not last.is_file():
            raise RunFolderError(f"nothing to resume in {out}: {last} does not exist")
        return
    if out.exists() and any(out.iterdir()) and not force and not _unstarted_run(out):
        raise RunFolderError(f"run folder {out} already exists and is not empty; pass --resume to continue it "
                             "or --force to start over in it")
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.csv", "metrics.jsonl", "results.json"):
        (out / stale).unlink(missing_ok=True)
    for ckpt in (out / "checkpoints").glob("*.safetensors"):
        ckpt.unlink()


def _unstarted_run(out: Path) -> bool:
    """A run folder that failed before its first checkpoint: nothing in it but what a run writes, no checkpoint."""
    entries = {p.name for p in out.iterdir()}
    return entries <= RUN_ENTRIES and "results.json" not in entries and not any((out / "checkpoints").glob("*"))


def resume_changes(saved: Config, cfg: Config) -> list[str]:
    """Keys whose value ``cfg`` changes from the run's saved config, as ``key: old -> new``; refuses (RunFolderError)
    a change to anything but :data:`RESUME_SAFE`."""
    old, new = _flat(saved.to_dict()), _flat(cfg.to_dict())
    changed = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
    unsafe = [k for k in changed if k not in RESUME_SAFE]
    if unsafe:
        shown = ", ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in unsafe[:3])
        raise RunFolderError(
            f"--resume continues the run as it was set up, and {shown} would change what it computes (the schedule, "
            f"data or model of the steps already taken). A resumed run may change only {', '.join(RESUME_SAFE)}. "
            "To go on differently, start a new run from this one's weights: ivit train --out NEW "
            "model.pretrained=RUN/checkpoints/last.safetensors ...")
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()]


def _flat(tree: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in tree.items() for key, value in values.items()}


def train(cfg: Config, out: str | Path, resume: bool = False, force: bool = False,
          log: Callable[[str], None] = print, progress=None, stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train per ``cfg`` into run folder ``out``; returns the final results (also in ``results.json``).

    ``stop_after_epochs`` ends this invocation after that many epochs, checkpointed and resumable (for
    time-limited jobs); it then returns ``{"stopped_after_epoch": E}``.

    With ``resume``, training continues after the last epoch that was checkpointed; the metrics end equal to those
    of a run never interrupted (CPU, deterministic). ``cfg`` must then be the folder's ``config.yaml``, changed at
    most in :data:`RESUME_SAFE` keys (``ivit train --resume`` builds it from that file and the overrides).
    Under ``torchrun`` (``WORLD_SIZE`` > 1) it trains with DDP; rank 0 writes, logs and evaluates.
    """
    out = Path(out)
    world, dist_device = init_world(cfg.train.device)
    if not world.is_main:
        log, progress = (lambda _: None), None
    if resume and (out / "config.yaml").is_file():
        changes = resume_changes(load_config(out / "config.yaml"), cfg)
        if changes:
            log(f"resuming with {'; '.join(changes)}")
    world.barrier()  # every rank has read the saved config before rank 0 replaces it
    if world.is_main:
        prepare_run_folder(out, resume, force)
        text = cfg.to_yaml()
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    world.barrier()
    t = cfg.train
    device = dist_device or resolve_device(t.device)
    splits, data_info = run_splits(cfg)
    log(data_line(data_info))
    class_names = splits["train"].class_names
    bank = world.in_turn(lambda: prompt_bank(cfg, splits["train"], progress=progress))  # rank 0 builds it first
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
    # Resuming, the backbone comes from the checkpoint: the weights file is not read again (it may have changed).
    model = model_from_config(cfg, class_names, bank.prompt_dim if bank else None,
                              pretrained=False if last is not None else None)
    weights_record = last.meta.get("backbone_weights") if last is not None else \
        (model.weights_report.to_dict() if getattr(model, "weights_report", None) is not None else None)
    if classifier_kind(cfg.model.method).timm_backbone:
        if last is not None:
            log(f"backbone {cfg.model.backbone}: from {out / 'checkpoints' / 'last.safetensors'} (it started from "
                f"{(weights_record or {}).get('source', 'random init')})")
        else:
            log(model.weights_report.summary() if weights_record is not None else
                f"backbone {cfg.model.backbone}: random init (model.pretrained is null)")
    if bank is not None:
        model.set_prompt_bank(bank.model_input(), trainable=cfg.model.train_prompt_features)
    apply_regime(model, cfg.model.regime, cfg.model.train_prompt_features)
    model.to(device)

    augment, workers = None, resolved_workers(cfg.data)
    if cfg.data.gpu_augment:  # decode once (rank 0 writes the store), augment batch-wise on the device
        augment = device_augment(cfg, model.backbone)  # (a bad RandAugment string fails before the decoding)
        size = cfg.data.store_size or round(cfg.data.img_size / 0.875)
        train_set = StoreDataset(world.in_turn(
            lambda: build_store(splits["train"], size, cfg.data.store_dir, workers, progress,
                                bad_images=cfg.data.bad_images)))
    else:
        train_set = TransformedImages(splits["train"], transforms(cfg, model.backbone)[0], cfg.data.bad_images)
    val_loader = eval_loader(cfg, model.backbone, splits["val"])
    batches = len(splits["train"]) // t.batch_size
    if batches < t.accum_steps:
        raise ConfigError(f"{len(splits['train'])} training images make no full update of batch_size={t.batch_size} "
                         f"x accum_steps={t.accum_steps}; lower train.batch_size")
    updates_per_epoch = batches // t.accum_steps
    local_batch = t.batch_size // world.size

    mixup = None
    if t.mixup > 0 or t.cutmix > 0:
        if local_batch % 2:
            raise ConfigError("Mixup/CutMix need an even batch per process (train.batch_size / processes)")
        mixup = Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, prob=t.mixup_prob, mode=t.mixup_mode,
                      label_smoothing=t.label_smoothing, num_classes=len(class_names))
    criterion = InstructionLoss(t.head_weight, t.score_weight, 0.0 if mixup else t.label_smoothing)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = create_optimizer_v2(model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, **fused)
    scheduler = CosineLRScheduler(optimizer, t_initial=t.epochs * updates_per_epoch, lr_min=t.min_lr,
                                  warmup_t=int(t.warmup_epochs * updates_per_epoch), warmup_lr_init=t.min_lr,
                                  t_in_epochs=False)

    start_epoch, step, best, history = 0, 0, -1.0, []
    if last is not None:
        ckpt = last
        ckpt.load_into(model)
        ckpt.restore_optimizer(optimizer)
        ckpt.restore_rng()
        start_epoch, step = ckpt.meta["epoch"] + 1, ckpt.meta["step"]
        best, history = ckpt.meta["best"], ckpt.meta["history"]
        if world.is_main:
            _rewrite_metrics(out, history)
        log(f"resuming {out} after epoch {start_epoch} (step {step})")
    scheduler.step_update(step)

    train_model: torch.nn.Module = model
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if t.compile:
        train_model = torch.compile(train_model)
    stepper = _Stepper(cfg, model, train_model, device, len(class_names), mixup, augment, criterion, optimizer,
                       scheduler, out)
    meta_base = {"config": cfg.to_dict(), "class_names": class_names, "bank_key": bank.key if bank else None,
                 "backbone_weights": weights_record,
                 "bank_encoders": {k: bank.meta[k] for k in BANK_ENCODERS if k in bank.meta} if bank else {},
                 "bank_kind": bank.kind if bank else "none"}
    writer = _tensorboard(out) if t.tensorboard and world.is_main else None

    sampler, loader = _EpochOrder(), None
    for epoch in range(start_epoch, t.epochs):
        model.train()
        started = time.time()
        if world.distributed:  # per-rank augmentation streams, a function of (seed, epoch, rank): resumable
            seed_everything(t.seed * 1_000_003 + epoch * 1_009 + world.rank)
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
        sampler.indices = world.shard(order, t.batch_size, updates_per_epoch * t.accum_steps)
        # PIL path: new workers each epoch, seeded from the (checkpointed) global RNG. Store: the workers only copy
        # uint8 arrays, so they persist and draw nothing from the global RNG (a generator of their own).
        if loader is None or augment is None:
            store = augment is not None
            loader = DataLoader(train_set, batch_size=local_batch, sampler=sampler, drop_last=True,
                                num_workers=workers, pin_memory=device.type == "cuda",
                                persistent_workers=store and workers > 0,
                                generator=torch.Generator() if store else None)
        sums, step = stepper.run_epoch(loader, epoch, step, progress)
        train_seconds = time.time() - started  # (run_epoch ends by reading the device: the work is done)
        n = updates_per_epoch * t.accum_steps
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                               **{f"train_{k}": world.all_reduce_mean(v).item() / n for k, v in sums.items()}}
        if world.is_main:
            if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
                # Validation reads all N prompts: model selection must not depend on the ranker's quality.
                pred = predict(model, val_loader, model.bank_prompts(), device, t.amp)
                for route, m in classification_metrics(pred, class_names).items():
                    row[f"val_top1_{route}"] = m["top1"]
            row["train_seconds"] = train_seconds
            row["train_images_per_second"] = n * local_batch * world.size / train_seconds
            row["epoch_seconds"] = time.time() - started
            history.append(row)
            _append_metrics(out, row, writer)
            score = row.get("val_top1_combined", row.get("val_top1_head", -1.0))
            meta = {**meta_base, "epoch": epoch, "step": step, "history": history,
                    "best": max(best, score), "metrics": row}
            if score > best:
                best = score
                save_checkpoint(out / "checkpoints" / "best.safetensors", model, meta)
            save_checkpoint(out / "checkpoints" / "last.safetensors", model, meta, optimizer)
            log(_epoch_line(row))
        world.barrier()
        if stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs and epoch + 1 < t.epochs:
            log(f"stopped after epoch {epoch + 1} as asked; continue with --resume")
            close_world(world)
            return {"stopped_after_epoch": epoch + 1}

    results: dict[str, Any] = {}
    if world.is_main:
        if writer is not None:
            writer.close()
        results = checkpoint_results(out / "checkpoints" / "best.safetensors", "test", cfg.prompts.select_k, splits,
                                     cfg, progress)
        results.pop("split")
        results["data"] = data_info
        results["backbone_weights"] = weights_record
        if bank is not None:
            results["prompt_bank"] = {k: bank.meta.get(k) for k in PROMPT_RECORD if k in bank.meta}
        if cfg.data.classes == "base" and bank is not None:
            results["base_to_novel"] = novel_classes(cfg, out, results["top1"])
        (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    world.barrier()
    close_world(world)
    return results


class _EpochOrder(torch.utils.data.Sampler):
    """This rank's sample order for the current epoch (replaced before each epoch)."""

    def __init__(self):
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class _Stepper:
    """One epoch of optimizer steps. Loss sums and the non-finite flag stay on the device; they are read (the
    only host syncs) every ``train.log_every`` steps and at the epoch's end, before anything is saved."""

    cfg: Config
    model: torch.nn.Module  # the module itself (prompts, parameters)
    train_model: torch.nn.Module  # what runs the forward: the model, DDP-wrapped and/or compiled
    device: torch.device
    num_classes: int
    mixup: Any
    augment: Any
    criterion: InstructionLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    out: Path

    def forward(self, images: torch.Tensor, target: torch.Tensor):
        prompts, select_k = self.model.bank_prompts(), self.cfg.prompts.train_select_k
        if prompts is None:
            return self.train_model(images)
        if select_k:  # K+1 prompts per sample: the targets, then random others, then the averaged rest
            ranking = torch.rand(images.shape[0], self.num_classes, device=self.device)
            keep = target_mask(target, self.num_classes)
            return forward_selected(self.train_model, images, prompts, ranking, select_k, keep=keep)
        return self.train_model(images, prompts)

    def run_epoch(self, loader: DataLoader, epoch: int, step: int, progress) -> tuple[dict[str, torch.Tensor], int]:
        t = self.cfg.train
        sums: dict[str, torch.Tensor] = {}
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        task = progress.add_task(f"epoch {epoch + 1}/{t.epochs}", total=len(loader) // t.accum_steps) \
            if progress else None
        self.optimizer.zero_grad(set_to_none=True)
        for i, (images, labels) in enumerate(loader):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if self.augment is not None:
                images = self.augment(images)
            images, target = self.mixup(images, labels) if self.mixup else (images, labels)
            with autocast(self.device, t.amp):
                parts = self.criterion(self.forward(images, target), target)
            (parts["loss"] / t.accum_steps).backward()
            bad |= ~torch.isfinite(parts["loss"].detach())
            for name, value in parts.items():
                sums[name] = sums.get(name, 0) + value.detach()
            if (i + 1) % t.accum_steps:
                continue
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            self.scheduler.step_update(step)
            if step % t.log_every == 0 or i + 1 == len(loader):
                _stop_if_non_finite(bad, epoch, step, self.out)
                if progress:
                    progress.update(task, completed=(i + 1) // t.accum_steps, description=(
                        f"epoch {epoch + 1}/{t.epochs} loss {sums['loss'].item() / (i + 1):.3f}"))
        _stop_if_non_finite(bad, epoch, step, self.out)
        if progress:
            progress.remove_task(task)
        return sums, step


def _stop_if_non_finite(bad: torch.Tensor, epoch: int, step: int, out: Path) -> None:
    if bool(bad):
        raise NonFiniteLossError(
            f"the loss became non-finite (nan or inf) in epoch {epoch + 1}, by step {step}; the last good "
            f"checkpoint is {out / 'checkpoints' / 'last.safetensors'}. Lower train.lr or set train.grad_clip")


def _epoch_line(row: dict[str, Any]) -> str:
    val = " ".join(f"{k.removeprefix('val_top1_')} {v:.1f}%" for k, v in row.items() if k.startswith("val_top1_"))
    return f"epoch {row['epoch']}: loss {row.get('train_loss', math.nan):.3f}  val top-1 {val} " \
           f"({row['epoch_seconds']:.1f}s, training {_rate(row['train_images_per_second'])} img/s)"


def _rate(value: float) -> str:
    """Images per second, to three significant figures (a ViT-B on a CPU trains at well under one)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _append_metrics(out: Path, row: dict[str, Any], writer) -> None:
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    path = out / "metrics.csv"
    header = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if header:
            w.writeheader()
        w.writerow(row)
    if writer is not None:
        for key, value in row.items():
            if key not in ("epoch", "step"):
                writer.add_scalar(key, value, row["epoch"])


def _rewrite_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """On resume, drop metric rows of epochs after the checkpoint (they will be recomputed)."""
    for stale in ("metrics.csv", "metrics.jsonl"):
        (out / stale).unlink(missing_ok=True)
    for row in history:
        _append_metrics(out, row, None)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


__all__ = ["CheckpointError", "NonFiniteLossError", "RunFolderError", "prepare_run_folder", "train"]
