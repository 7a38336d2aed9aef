"""The training step: one epoch of optimizer steps over a loader, and the sample order of each epoch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..errors import NonFiniteLossError
from ..losses import InstructionLoss
from ..progress import Task, task
from ..prompts import forward_selected, target_mask
from ..evaluation.predict import autocast


class EpochOrder(torch.utils.data.Sampler):
    """This rank's sample order for the current epoch (replaced before each epoch)."""

    def __init__(self):
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Stepper:
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

    def run_epoch(self, loader: DataLoader, epoch: int, step: int) -> tuple[dict[str, torch.Tensor], int]:
        with task(f"epoch {epoch + 1}/{self.cfg.train.epochs}", len(loader) // self.cfg.train.accum_steps) as shown:
            return self._epoch(loader, epoch, step, shown)

    def _epoch(self, loader: DataLoader, epoch: int, step: int, shown: Task) -> tuple[dict[str, torch.Tensor], int]:
        t = self.cfg.train
        sums: dict[str, torch.Tensor] = {}
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        reported = 0
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
                done = (i + 1) // t.accum_steps
                shown.advance(done - reported, f"epoch {epoch + 1}/{t.epochs} loss {sums['loss'].item() / (i + 1):.3f}")
                reported = done
        _stop_if_non_finite(bad, epoch, step, self.out)
        return sums, step


def _stop_if_non_finite(bad: torch.Tensor, epoch: int, step: int, out: Path) -> None:
    if bool(bad):
        raise NonFiniteLossError(
            f"the loss became non-finite (nan or inf) in epoch {epoch + 1}, by step {step}; the last good "
            f"checkpoint is {out / 'checkpoints' / 'last.safetensors'}. Lower train.lr or set train.grad_clip")
