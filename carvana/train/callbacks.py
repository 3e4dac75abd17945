"""The training callback interface: named hooks that receive an explicit state object.

`CarvanaClassifier.train` calls these hooks with a `TrainState`; a callback overrides only the
hooks it needs. They run in the callbacks' `order` (see `carvana.core.hooks`): early stopping's
counters, then the checkpoints, then the rest, the logging callbacks last.
The prediction hooks are `carvana.predict.hooks`.

A callback owns its state (the checkpoint's best score, early stopping's counters): it hands it
out as `state_dict()` and takes it back with `load_state_dict()`, Lightning's way. Every checkpoint
saves those under "callbacks", by each callback's `state_key`, and the classifier gives them back
before `on_train_begin` of a resumed run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from carvana.core.errors import ConfigError
from carvana.core.hooks import CONTROL
from carvana.run.config import Config

MODES = ("max", "min")


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
    run_name: str | None  # the run's name (carvana.run.identity names runs); None for a classifier outside one
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler or None
    scaler: Any  # torch.amp.GradScaler (enabled only under float16 autocast)
    device: torch.device
    epochs: int  # the epoch the run ends at (absolute, counting resumed epochs)
    epoch: int = 0  # last completed epoch, 1-based; 0 before the first ends
    global_step: int = 0  # optimiser steps taken so far, over the whole run
    metrics: dict[str, float] = field(default_factory=dict)  # this epoch: train_loss, val_dice, lr, ...
    should_stop: bool = False  # set by a callback (early stopping) to end training after this epoch
    validation_batch: ValidationBatch | None = None  # during validation: the batch just evaluated
    callbacks: list[Any] = field(default_factory=list)  # the run's callbacks, in hook order
    # Resuming and interruptions:
    history: list[dict[str, float]] = field(default_factory=list)  # `metrics` of every completed epoch, in order
    mid_epoch: bool = False  # True once the weights have moved past the end of `epoch` (an epoch is running)
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
    """Base class of training callbacks: every hook does nothing and there is no state to save.
    `order`: when its hooks run (`carvana.core.hooks`)."""

    order: int = CONTROL

    @property
    def state_key(self) -> str:
        """The name its `state_dict()` is saved under in a checkpoint's "callbacks": its class name."""
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        """What every checkpoint saves of it, so that a resumed run takes up where it was (primitives only)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take up a saved `state_dict()`; called before `on_train_begin` of a resumed run."""

    def on_train_begin(self, state: TrainState) -> None:
        pass

    def on_validation_batch_end(self, state: TrainState) -> None:
        """After each batch of an epoch's validation pass; `state.validation_batch` holds it."""

    def on_epoch_end(self, state: TrainState) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass

    def on_exception(self, state: TrainState, exception: BaseException) -> None:
        """Training stopped by `exception`: Ctrl-C or SIGTERM (a KeyboardInterrupt), a diverged loss or any
        error; `state.epoch` is the last complete epoch, and `on_train_end` will not be called."""


class MetricMonitor(Callback):
    """The one "is this better" of `ModelCheckpoint` and `EarlyStopping`, with Lightning's meanings: the
    metric `monitor`, `mode` "max" or "min", and `min_delta`, by how much a score must beat the best."""

    label = "monitor"  # names the callback in its errors

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if mode not in MODES:
            raise ConfigError(f"{self.label} mode {mode!r}: choose from {', '.join(MODES)}")
        if min_delta < 0:
            raise ConfigError(f"{self.label} min delta {min_delta}: must be zero or positive")
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta

    def monitored_score(self, state: TrainState) -> float | None:
        """The epoch's score; None for a coarse epoch, whose score is at the coarse size and not compared."""
        if self.monitor not in state.metrics:
            raise ConfigError(f"{self.label} monitor {self.monitor!r}: not a metric (choose from "
                              f"{', '.join(state.metrics)})")
        return None if state.coarse_epoch else float(state.metrics[self.monitor])

    def improves(self, score: float, best: float | None) -> bool:
        """Whether `score` beats `best` by more than `min_delta` (NaN never does; any other beats None)."""
        if math.isnan(score):
            return False
        if best is None:
            return True
        return score > best + self.min_delta if self.mode == "max" else score < best - self.min_delta

    def monitors_as(self, saved: dict[str, Any]) -> bool:
        """Whether a saved state was counted with this `monitor`, `mode` and `min_delta` (one it lacks: yes)."""
        return all(saved.get(name, getattr(self, name)) == getattr(self, name)
                   for name in ("monitor", "mode", "min_delta"))


def callback_states(callbacks: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """The `state_dict()` of each callback that has state, by `state_key` (a checkpoint's "callbacks")."""
    states = {}
    for callback in callbacks:
        state = callback.state_dict() if hasattr(callback, "state_dict") else {}
        if state:
            states[callback.state_key] = state
    return states


def load_callback_states(callbacks: Iterable[Any], states: dict[str, dict[str, Any]]) -> None:
    """Give each callback its state saved in `states` (by `state_key`); one with none saved keeps its own."""
    for callback in callbacks:
        saved = states.get(getattr(callback, "state_key", ""))
        if saved is not None and hasattr(callback, "load_state_dict"):
            callback.load_state_dict(saved)
