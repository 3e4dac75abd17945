"""The training callback interface: named hooks that receive an explicit state object.

`CarvanaClassifier.train` calls these hooks with a `TrainState`; a callback overrides only the
hooks it needs. They run in the callbacks' `order` (see `carvana.core.hooks`): checkpoints first.
The prediction hooks are `carvana.predict.hooks`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from carvana.core.hooks import CONTROL
from carvana.run.config import Config


@dataclass
class ValidationBatch:
    """One batch of an epoch's validation pass: the photos as loaded, the rest on the model's device.

    Handed to `on_validation_batch_end` so that a callback can rank and show validation images
    without a second pass over the data; it should copy only what it keeps.
    """

    first: int  # position of the batch's first image in the validation set (the loader keeps its order)
    photos: torch.Tensor  # (B, 3, H, W) uint8 photos at the covered size, as the loader gave them (border cropped)
    masks: torch.Tensor  # (B, H, W) float, the loader's targets at the model's output size (> 0.5: car)
    probabilities: torch.Tensor  # (B, H, W) float in [0, 1]
    dice: torch.Tensor  # (B,) per-image Dice at the model's output size, at `config.threshold`
    image_paths: list[Path] | None = None  # the batch's photos on disk, when the loader's dataset names them
    mask_paths: list[Path] | None = None


@dataclass
class TrainState:
    config: Config
    run_name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler or None
    scaler: Any  # torch.amp.GradScaler or None
    device: torch.device
    epochs: int  # the epoch the run ends at (absolute, counting resumed epochs)
    epoch: int = 0  # last completed epoch, 1-based; 0 before the first ends
    global_step: int = 0  # optimiser steps taken so far, over the whole run
    metrics: dict[str, float] = field(default_factory=dict)  # this epoch: train_loss, val_dice, lr, ...
    best_score: float | None = None  # best value of the checkpoint's monitored metric so far
    stop_training: bool = False  # set by a callback (early stopping) to end after this epoch
    validation_batch: ValidationBatch | None = None  # during validation: the batch just evaluated
    # Added for resuming and interruptions:
    history: list[dict[str, float]] = field(default_factory=list)  # `metrics` of every completed epoch, in order
    mid_epoch: bool = False  # True once the weights have moved past the end of `epoch` (an epoch is running)
    last_checkpoint: Path | None = None  # the newest checkpoint this run can be resumed from
    last_checkpoint_epoch: int = 0  # the epoch that checkpoint holds
    # The training budget (carvana.train.budget):
    train_seconds: float = 0.0  # seconds spent training this run so far, over every process that trained it
    epoch_steps: int = 0  # the steps epoch `epoch` took (fewer than a full pass when a budget ended it)
    stop_reason: str | None = None  # why training ended ("finished all 20 epochs", "stopped at the time budget ...")

    @property
    def coarse_epoch(self) -> bool:
        """Epoch `epoch` trained in the run's coarse phase (`Config.coarse_phase_epochs`): its validation
        Dice is at the coarse size and not compared with the full-size epochs' for the best checkpoint
        or early stopping."""
        return 0 < self.epoch <= self.config.coarse_phase_epochs


class Callback:
    """Base class of training callbacks: every hook does nothing. `order`: when its hooks run (`carvana.core.hooks`)."""

    order: int = CONTROL

    def on_train_begin(self, state: TrainState) -> None:
        pass

    def on_validation_batch_end(self, state: TrainState) -> None:
        """After each batch of an epoch's validation pass; `state.validation_batch` holds it."""

    def on_epoch_end(self, state: TrainState) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass

    def on_train_interrupted(self, state: TrainState) -> None:
        """Training stopped early by Ctrl-C or a diverged loss; `state.epoch` is the last complete epoch."""
