"""Checkpoints: what a file holds, how it is written and how it is read back safely.

A checkpoint holds only tensors and primitives (the config as `Config.to_dict()`), so it loads with
`torch.load(weights_only=True)`: opening a checkpoint never runs code from the file. Every file is a
complete resume point: model, optimiser, scheduler and loss-scaler state, the epoch and step
counters, the best score and the metrics history. `last.pt` always holds the end of an epoch, never
weights from the middle of one, so resuming redoes an interrupted epoch exactly.
"""
from __future__ import annotations

import math
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carvana.atomic import atomic_path
from carvana.errors import CheckpointError, ConfigError
from carvana.train.callbacks import Callback, TrainState

FORMAT_VERSION = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
REQUIRED_KEYS = ("format", "model_name", "width", "model_state", "epoch", "global_step", "config")
MODES = ("max", "min")


def checkpoint_payload(state: TrainState) -> dict[str, Any]:
    """Everything needed to resume `state`, as tensors and primitives only."""
    return {
        "format": FORMAT_VERSION,
        "model_name": state.config.model,
        "width": float(state.config.width),
        "run_name": state.run_name,
        "config": state.config.to_dict(),
        "model_state": state.model.state_dict(),
        "optimizer_state": state.optimizer.state_dict(),
        "scheduler_state": state.scheduler.state_dict() if state.scheduler is not None else None,
        "scaler_state": state.scaler.state_dict() if state.scaler is not None else None,
        "epoch": int(state.epoch),
        "global_step": int(state.global_step),
        "best_score": None if state.best_score is None else float(state.best_score),
        "metrics": {k: float(v) for k, v in state.metrics.items()},
        "history": [{k: float(v) for k, v in entry.items()} for entry in state.history],
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically: a crash leaves the previous file, never half of one."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, expected_model: str | None = None) -> dict[str, Any]:
    """Read a checkpoint (tensors and primitives only) onto the CPU.

    Raises CheckpointError naming the file when it is missing, unreadable, corrupt, not one of ours,
    or (with `expected_model`) a checkpoint of another model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated: {reason[:160]})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not a carvana checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    if payload["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {payload['format']}, this version reads {FORMAT_VERSION}")
    if expected_model is not None and payload["model_name"] != expected_model:
        raise CheckpointError(f"{path}: a checkpoint of {payload['model_name']}, not of {expected_model}")
    return payload


def load_model_weights(model: nn.Module, payload: dict[str, Any], path: str | Path) -> None:
    """Copy the checkpoint's weights into `model`; CheckpointError (naming `path`) if they don't fit."""
    state = payload["model_state"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            problems.append(
                f"{len(wrong_shape)} tensors of another shape (e.g. {k}: "
                f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model)"
            )
        raise CheckpointError(
            f"{path}: weights of {payload['model_name']} width {payload['width']} do not fit this model: "
            + "; ".join(problems)
        )
    model.load_state_dict(state)


def _better(score: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if math.isnan(score):
        return False
    if best is None:
        return True
    return score > best + min_delta if mode == "max" else score < best - min_delta


class ModelCheckpoint(Callback):
    """`last.pt` after every epoch, `best.pt` when the monitored metric improves (Lightning/Keras names).

    The best score lives in `TrainState.best_score`, so a resumed run keeps comparing against the
    best of the epochs before the interruption.

    On an interruption (Ctrl-C, diverged loss, error) `last.pt` is left at the last completed epoch:
    it is written only if that epoch's end was not yet saved and the weights are still those of
    that epoch's end (`not state.mid_epoch`), so neither half-trained nor NaN weights are saved.
    """

    def __init__(self, dirpath: str | Path, monitor: str = "val_dice", mode: str = "max", save_last: bool = True):
        if mode not in MODES:
            raise ConfigError(f"checkpoint mode {mode!r}: choose from {', '.join(MODES)}")
        self.dirpath = Path(dirpath)
        self.monitor = monitor
        self.mode = mode
        self.save_last = save_last
        self.last_path = self.dirpath / LAST_NAME
        self.best_path = self.dirpath / BEST_NAME
        self._saved_epoch: int | None = None  # the epoch last.pt holds, if written by this run

    def on_train_begin(self, state: TrainState) -> None:
        self._saved_epoch = None

    def on_epoch_end(self, state: TrainState) -> None:
        if self.monitor not in state.metrics:
            raise ConfigError(
                f"checkpoint monitor {self.monitor!r}: not a metric (choose from {', '.join(state.metrics)})"
            )
        improved = _better(state.metrics[self.monitor], state.best_score, self.mode)
        if improved:
            state.best_score = float(state.metrics[self.monitor])
        payload = checkpoint_payload(state)
        if self.save_last:
            self._write_last(state, payload)
        if improved:
            if self.save_last:  # same content: copy the file rather than serialise again
                with atomic_path(self.best_path) as tmp:
                    shutil.copyfile(self.last_path, tmp)
            else:
                save_checkpoint(self.best_path, payload)

    def on_train_interrupted(self, state: TrainState) -> None:
        if self.save_last and not state.mid_epoch and state.epoch > 0 and self._saved_epoch != state.epoch:
            self._write_last(state, checkpoint_payload(state))

    def _write_last(self, state: TrainState, payload: dict[str, Any]) -> None:
        save_checkpoint(self.last_path, payload)
        self._saved_epoch = state.epoch
        state.last_checkpoint = self.last_path
        state.last_checkpoint_epoch = state.epoch
