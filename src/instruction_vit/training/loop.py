"""The training loop: one run folder (see :mod:`.run_folder`), resumable from any kill, metrics a person can read.

``train`` keeps the outline; the parts live by what they hold: :mod:`.setup` builds the run's parts from its
config, :mod:`.step` is the optimizer step, :mod:`.run_folder` the folder's files, :mod:`.checkpoint` the
checkpoints, :mod:`.results` the test results, :mod:`.logs` the lines a person reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import Config, load_config
from ..resolve import Resolved, resolve
from ..errors import CheckpointError, NonFiniteLossError, RunFolderError
from ..files import write_text
from ..outputs import capabilities
from ..artifacts.checkpoint import save_checkpoint
from .distributed import World, close_world, init_world
from ..evaluation.predict import classification_metrics, predict
from ..progress import reporting
from .logs import PROMPT_RECORD, epoch_line, results_line
from ..evaluation.transfer_protocols import novel_classes
from ..evaluation.results import checkpoint_results
from ..devices import resolve_device, seed_everything
from .run_lock import UNREADABLE, RunFolderInUseError, RunLock
from .run_folder import (
    RESUME_SAFE,
    append_metrics,
    prepare_run_folder,
    resume_changes,
    rewrite_metrics,
    tensorboard_writer,
    write_config,
)
from .setup import RunParts, build_run
from .step import EpochOrder, Stepper

logger = logging.getLogger(__name__)


def train(cfg: Config | Resolved, out: str | Path, resume: bool = False, force: bool = False,
          stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train per ``cfg`` into run folder ``out``; returns the final results (also in ``results.json``).

    What it reads and each epoch's line go to the ``instruction_vit`` logger (rank 0 only); the long steps are
    reported to the caller's :mod:`~instruction_vit.progress` reporter (rank 0 only).

    ``stop_after_epochs`` ends this invocation after that many epochs, checkpointed and resumable (for
    time-limited jobs); it then returns ``{"stopped_after_epoch": E}``.

    With ``resume``, training continues after the last epoch that was checkpointed; the metrics end equal to those
    of a run never interrupted (CPU, deterministic). ``cfg`` must then be the folder's ``config.yaml``, changed at
    most in :data:`~.run_folder.RESUME_SAFE` keys (``ivit train --resume`` builds it from that file and the
    overrides). Under ``torchrun`` (``WORLD_SIZE`` > 1) it trains with DDP; rank 0 writes, logs and evaluates.

    The run holds the folder's lock (:mod:`.run_lock`) from before it reads the folder to its end: a second command
    on the folder meanwhile stops with a :class:`~.run_lock.RunFolderInUseError` naming this one.
    """
    out, resolved = Path(out), resolve(cfg)  # the config checked against the registries, once; passed along
    world, dist_device = init_world(resolved.config.train.device)
    log: Callable[[str], None] = logger.info if world.is_main else (lambda _: None)
    with hold_run_folder(out, world, dist_device), \
            reporting(None) if not world.is_main else contextlib.nullcontext():  # rank 0 alone shows progress
        return _run(resolved, out, resume, force, stop_after_epochs, world, dist_device, log)


@contextlib.contextmanager
def hold_run_folder(out: Path, world: World, dist_device: torch.device | None,
                    lease: float | None = None) -> Iterator[None]:
    """Rank 0 holds the run folder's lock (:class:`~.run_lock.RunLock`, with ``lease``: a heartbeat) for the block;
    the other ranks wait for it at the run's barriers. Under torchrun every rank learns whether rank 0 got it, so a
    refused run stops on every rank (all raise :class:`~.run_lock.RunFolderInUseError`) instead of leaving the
    others waiting at a barrier."""
    lock = RunLock(out, logger.info, lease) if world.is_main else None
    refused: BaseException | None = None
    if lock is not None:
        try:
            lock.acquire()
        except Exception as err:  # noqa: BLE001 - told to the other ranks, then raised as it is
            refused = err
    try:
        if world.distributed:
            flag = torch.tensor([0.0 if refused is None else 1.0], device=dist_device or torch.device("cpu"))
            if world.all_reduce_mean(flag).item() > 0 and refused is None:
                raise RunFolderInUseError(out, UNREADABLE, f"run folder {out} could not be locked by rank 0 (its "
                                                           "message says why)")
        if refused is not None:
            raise refused
        yield
    except KeyboardInterrupt:
        if lock is not None and lock.lost:  # its heartbeat found it taken over and stopped this thread
            lock.release()
            raise lock.taken_over_error() from None
        raise
    finally:
        if lock is not None:
            lock.release()  # nothing when it was not taken


def _run(resolved: Resolved, out: Path, resume: bool, force: bool, stop_after_epochs: int | None, world: World,
         dist_device: torch.device | None, log: Callable[[str], None]) -> dict[str, Any]:
    """The run's outline: folder and config, parts, restore, epochs (checkpointed), test results."""
    cfg = resolved.config
    if resume and (out / "config.yaml").is_file():
        changes = resume_changes(resolve(load_config(out / "config.yaml")).config, cfg)
        if changes:
            log(f"resuming with {'; '.join(changes)}")
    world.barrier()  # every rank has read the saved config before rank 0 replaces it
    if world.is_main:
        prepare_run_folder(out, resume, force)
        write_config(out, cfg)
    world.barrier()
    run = build_run(resolved, out, world, dist_device or resolve_device(cfg.train.device), resume, log)
    start_epoch, step, best, history = _restore(run, log)
    stepper = Stepper(cfg, run.model, _train_model(run), run.device, len(run.class_names), run.mixup, run.augment,
                      run.criterion, run.optimizer, run.scheduler, out)
    writer = tensorboard_writer(out) if cfg.train.tensorboard and world.is_main else None
    sampler, loader, caps = EpochOrder(), None, capabilities(run.model)
    for epoch in range(start_epoch, cfg.train.epochs):
        loader = _loader(run, sampler, epoch, loader)
        started = time.time()
        sums, step = stepper.run_epoch(loader, epoch, step)
        if caps.end_of_epoch:  # a method's own per-epoch step, before validation (PromptSRC's prompt aggregation)
            run.model.end_epoch(epoch, cfg.train.epochs)
        row = _epoch_row(run, epoch, step, sums, time.time() - started)
        if world.is_main:
            best = _end_epoch(run, row, epoch, step, best, history, started, writer)
            log(epoch_line(row))
        world.barrier()
        stop = stop_after_epochs is not None and epoch + 1 - start_epoch >= stop_after_epochs
        if stop and epoch + 1 < cfg.train.epochs:
            log(f"stopped after epoch {epoch + 1} as asked; continue with --resume")
            close_world(world)
            return {"stopped_after_epoch": epoch + 1}
    results: dict[str, Any] = {}
    if world.is_main:
        if writer is not None:
            writer.close()
        results = _results(run)
        log(results_line(results, str(out / "results.json")))
    world.barrier()
    close_world(world)
    return results


def _restore(run: RunParts, log: Callable[[str], None]) -> tuple[int, int, float, list[dict[str, Any]]]:
    """Where the run starts: epoch, optimizer step, best validation score and metric history (resumed: from the last
    checkpoint, with its weights, optimizer and RNG states)."""
    start_epoch, step, best, history = 0, 0, -1.0, []
    if run.last is not None:
        ckpt = run.last
        ckpt.load_into(run.model)
        ckpt.restore_optimizer(run.optimizer)
        ckpt.restore_rng()
        start_epoch, step = ckpt.meta["epoch"] + 1, ckpt.meta["step"]
        best, history = ckpt.meta["best"], ckpt.meta["history"]
        if run.world.is_main:
            rewrite_metrics(run.out, history)
        log(f"resuming {run.out} after epoch {start_epoch} (step {step})")
    run.scheduler.step_update(step)
    return start_epoch, step, best, history


def _train_model(run: RunParts) -> torch.nn.Module:
    """What runs the forward: the model, DDP-wrapped under torchrun and/or compiled (``train.compile``)."""
    model: torch.nn.Module = run.model
    if run.world.distributed:
        ids = [run.device.index] if run.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if run.cfg.train.compile else model


def _loader(run: RunParts, sampler: EpochOrder, epoch: int, loader: DataLoader | None) -> DataLoader:
    """This epoch's loader over this rank's share of a seeded order (a function of seed and epoch: resumable)."""
    t = run.cfg.train
    run.model.train()
    if run.world.distributed:  # per-rank augmentation streams, a function of (seed, epoch, rank): resumable
        seed_everything(t.seed * 1_000_003 + epoch * 1_009 + run.world.rank)
    order = torch.randperm(len(run.train_set), generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
    sampler.indices = run.world.shard(order, t.batch_size, run.updates_per_epoch * t.accum_steps)
    # PIL path: new workers each epoch, seeded from the (checkpointed) global RNG. Store: the workers only copy
    # uint8 arrays, so they persist and draw nothing from the global RNG (a generator of their own).
    if loader is not None and run.augment is not None:
        return loader
    store = run.augment is not None
    return DataLoader(run.train_set, batch_size=run.local_batch, sampler=sampler, drop_last=True,
                      num_workers=run.workers, pin_memory=run.device.type == "cuda",
                      persistent_workers=store and run.workers > 0, generator=torch.Generator() if store else None)


def _epoch_row(run: RunParts, epoch: int, step: int, sums: dict[str, torch.Tensor], seconds: float) -> dict[str, Any]:
    """The epoch's metrics row: mean losses over all processes, validation top-1 per route, timing."""
    t, n = run.cfg.train, run.updates_per_epoch * run.cfg.train.accum_steps
    row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": run.optimizer.param_groups[0]["lr"],
                           **{f"train_{k}": run.world.all_reduce_mean(v).item() / n for k, v in sums.items()}}
    if run.world.is_main and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs):
        # Validation reads all N prompts: model selection must not depend on the ranker's quality.
        pred = predict(run.model, run.val_loader, run.model.bank_prompts(), run.device, t.amp)
        for route, m in classification_metrics(pred, run.class_names).items():
            row[f"val_top1_{route}"] = m["top1"]
    row["train_seconds"] = seconds  # (run_epoch ends by reading the device: the work is done)
    row["train_images_per_second"] = n * run.local_batch * run.world.size / seconds
    return row


def _end_epoch(run: RunParts, row: dict[str, Any], epoch: int, step: int, best: float,
               history: list[dict[str, Any]], started: float, writer) -> float:
    """Rank 0: append the metrics row, save ``best`` (when validation improved) and ``last``; returns the best
    validation score so far."""
    row["epoch_seconds"] = time.time() - started
    history.append(row)
    append_metrics(run.out, row, writer)
    score = row.get("val_top1_combined", row.get("val_top1_head", -1.0))
    meta = {**run.meta, "epoch": epoch, "step": step, "history": history, "best": max(best, score), "metrics": row}
    # A model whose result is its last epoch (final_model = "last": PromptSRC's prompt aggregate) is its own best.
    if score > best or capabilities(run.model).final_model == "last":
        best = max(best, score)
        save_checkpoint(run.out / "checkpoints" / "best.safetensors", run.model, meta)
    save_checkpoint(run.out / "checkpoints" / "last.safetensors", run.model, meta, run.optimizer)
    return best


def _results(run: RunParts) -> dict[str, Any]:
    """Test results of the best checkpoint with what the run read (data, weights, prompts), in ``results.json``."""
    cfg = run.cfg
    results = checkpoint_results(run.out / "checkpoints" / "best.safetensors", "test", cfg.prompts.select_k,
                                 run.splits, cfg)
    results["data"] = run.data_info
    results["backbone_weights"] = run.weights_record
    if run.bank is not None:
        results["prompt_bank"] = {k: run.bank.meta.get(k) for k in PROMPT_RECORD if k in run.bank.meta}
    # Base-to-novel: a model that takes new class names (prompts, or a CLIP prompt learner's set_classes) is given
    # the novel ones; a plain model has no novel number.
    if cfg.data.classes == "base" and (run.bank is not None or capabilities(run.model).reads_class_names):
        results["base_to_novel"] = novel_classes(cfg, run.out, results["top1"])
    text = json.dumps(results, indent=2)
    write_text(run.out / "results.json", text)
    return results


__all__ = ["RESUME_SAFE", "CheckpointError", "NonFiniteLossError", "RunFolderError", "prepare_run_folder", "train"]
