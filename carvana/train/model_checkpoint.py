"""Checkpoints of a training run: what a file holds to resume it, and the callback that writes them.

Every file is a complete resume point: model, optimiser, scheduler and loss-scaler state, the epoch
and step counters, the best score and the metrics history. `last.pt` always holds the end of an
epoch, never weights from the middle of one, so resuming redoes an interrupted epoch exactly. How a
file is written, checked and read back is `carvana.run.checkpoint`.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from carvana.core.atomic import atomic_path
from carvana.core.errors import ConfigError
from carvana.core.hooks import PERSIST
from carvana.run.checkpoint import FORMAT_VERSION, save_checkpoint
from carvana.train.callbacks import Callback, TrainState

LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
MODES = ("max", "min")


def checkpoint_payload(state: TrainState, run_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to resume `state`, as tensors and primitives only.

    `run_record`: what the run was trained on (data dir, split; see `carvana.run.identity.RunRecord`), so
    that a resume continues on the same data and split, or says that they changed.
    """
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
        "train_seconds": float(state.train_seconds),  # the time budget continues from here on resume
        "epoch_steps": int(state.epoch_steps),
        "best_score": None if state.best_score is None else float(state.best_score),
        "metrics": {k: float(v) for k, v in state.metrics.items()},
        "history": [{k: float(v) for k, v in entry.items()} for entry in state.history],
        "run": run_record,
    }


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
    that epoch's end (`not state.mid_epoch`), so neither half-trained nor NaN weights are saved,
    and not again if writing it at that epoch's end just failed (a full disk stays full).

    Its hooks run before every other callback's (`order` PERSIST), so an epoch's checkpoint is on
    disk before a logger or another observer of that epoch can fail.
    """

    order = PERSIST

    def __init__(self, dirpath: str | Path, monitor: str = "val_dice", mode: str = "max", save_last: bool = True,
                 run_record: dict[str, Any] | None = None):
        if mode not in MODES:
            raise ConfigError(f"checkpoint mode {mode!r}: choose from {', '.join(MODES)}")
        self.dirpath = Path(dirpath)
        self.monitor = monitor
        self.mode = mode
        self.save_last = save_last
        self.run_record = run_record  # saved in every checkpoint (primitives only)
        self.last_path = self.dirpath / LAST_NAME
        self.best_path = self.dirpath / BEST_NAME
        self._tried_epoch: int | None = None  # the epoch this run last wrote (or tried to write) last.pt for

    def on_train_begin(self, state: TrainState) -> None:
        self._tried_epoch = None

    def on_epoch_end(self, state: TrainState) -> None:
        if self.monitor not in state.metrics:
            raise ConfigError(
                f"checkpoint monitor {self.monitor!r}: not a metric (choose from {', '.join(state.metrics)})"
            )
        # A coarse epoch's score is at the coarse size: best.pt comes from the full-size epochs.
        improved = not state.coarse_epoch and _better(state.metrics[self.monitor], state.best_score, self.mode)
        if improved:
            state.best_score = float(state.metrics[self.monitor])
        payload = checkpoint_payload(state, self.run_record)
        if self.save_last:
            self._write_last(state, payload)
        if improved:
            if self.save_last:  # same content: copy the file rather than serialise again
                with atomic_path(self.best_path) as tmp:
                    shutil.copyfile(self.last_path, tmp)
            else:
                save_checkpoint(self.best_path, payload)

    def on_train_interrupted(self, state: TrainState) -> None:
        if self.save_last and not state.mid_epoch and state.epoch > 0 and self._tried_epoch != state.epoch:
            self._write_last(state, checkpoint_payload(state, self.run_record))

    def _write_last(self, state: TrainState, payload: dict[str, Any]) -> None:
        self._tried_epoch = state.epoch
        save_checkpoint(self.last_path, payload)
        state.last_checkpoint = self.last_path
        state.last_checkpoint_epoch = state.epoch
