"""Checkpoints of a training run: what a file holds to resume it, and the callback that writes them.

Every file is a complete resume point: model, optimiser, scheduler and loss-scaler state, the epoch
and step counters, the metrics history and the callbacks' states (the best score among them).
`last.pt` always holds the end of an epoch, never weights from the middle of one, so resuming redoes
an interrupted epoch exactly. How a file is written, checked and read back is `carvana.run.checkpoint`.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable

from carvana.core.atomic import atomic_path
from carvana.core.hooks import PERSIST
from carvana.run.checkpoint import FORMAT_VERSION, save_checkpoint, settings_entries
from carvana.run.identity import BEST_NAME, LAST_NAME
from carvana.train.callbacks import MetricMonitor, TrainState, callback_states


def checkpoint_payload(state: TrainState, run_record: dict[str, Any] | None = None, best_score: float | None = None,
                       callbacks: Iterable[Any] | None = None) -> dict[str, Any]:
    """Everything needed to resume `state`, as tensors and primitives only.

    `run_record`: what the run was trained on (data dir, split; see `carvana.run.identity.RunRecord`), so
    that a resume continues on the same data and split, or says that they changed. `best_score`: the
    best value of the checkpoint's monitored metric so far (also at the top level, where checkpoints
    without "callbacks" keep it). `callbacks`: whose `state_dict()`s are saved under "callbacks"
    (default: the run's, `state.callbacks`).
    """
    return {
        "format": FORMAT_VERSION,
        "model_name": state.config.model,
        "width": float(state.config.width),
        "run_name": state.run_name,
        **settings_entries(state.config),  # the recipe under "config", where it ran under "environment"
        "model_state": state.model.state_dict(),
        "optimizer_state": state.optimizer.state_dict(),
        "scheduler_state": state.scheduler.state_dict() if state.scheduler is not None else None,
        "scaler_state": state.scaler.state_dict() if state.scaler is not None else None,
        "epoch": int(state.epoch),
        "global_step": int(state.global_step),
        "train_seconds": float(state.train_seconds),  # the time budget continues from here on resume
        "epoch_steps": int(state.epoch_steps),
        "best_score": None if best_score is None else float(best_score),
        "metrics": {k: float(v) for k, v in state.metrics.items()},
        "history": [{k: float(v) for k, v in entry.items()} for entry in state.history],
        "run": run_record,
        "callbacks": callback_states(state.callbacks if callbacks is None else callbacks),
    }


class ModelCheckpoint(MetricMonitor):
    """`last.pt` after every epoch, `best.pt` when the monitored metric improves (Lightning/Keras names).

    `best_model_score`, `best_model_path`, `last_model_path` and `last_model_epoch` are its
    `state_dict()`, saved in every checkpoint, so a resumed run compares against the epochs before it.
    On an interruption `last.pt` stays at the last completed epoch: it is written only while the weights
    are that epoch's end (never half-trained or NaN weights) and not again after a failed write.
    Its hooks run after early stopping's (`order` TRACK) and before every other callback's (PERSIST),
    so an epoch's checkpoint is on disk before a logger of that epoch can fail.
    """

    order = PERSIST
    label = "checkpoint"

    def __init__(self, dirpath: str | Path, monitor: str = "val_dice", mode: str = "max", save_last: bool = True,
                 run_record: dict[str, Any] | None = None):
        super().__init__(monitor, mode)
        self.dirpath = Path(dirpath)
        self.save_last = save_last
        self.run_record = run_record  # saved in every checkpoint (primitives only)
        self.last_path = self.dirpath / LAST_NAME
        self.best_path = self.dirpath / BEST_NAME
        self.best_model_score: float | None = None
        self.best_model_path: Path | None = None
        self.last_model_path: Path | None = None
        self.last_model_epoch: int | None = None
        self._tried_epoch: int | None = None  # the epoch this run last wrote (or tried to write) last.pt for

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "dirpath": str(self.dirpath),
                "best_model_score": self.best_model_score, "best_model_path": _text(self.best_model_path),
                "last_model_path": _text(self.last_model_path)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take up a resumed run's best score, and its best.pt when that is this callback's.

        A score saved for another `monitor` or `mode` does not apply (the state an old checkpoint
        gives names neither: its score is taken). `last_model_path` stays None until this run writes
        last.pt: until then the run resumes from the file the classifier was resumed from.
        """
        if not self.monitors_as(state_dict):
            return
        score, best = state_dict.get("best_model_score"), state_dict.get("best_model_path")
        self.best_model_score = None if score is None else float(score)
        if best is not None and Path(best).resolve() == self.best_path.resolve() and self.best_path.exists():
            self.best_model_path = self.best_path

    def on_train_begin(self, state: TrainState) -> None:
        self._tried_epoch = None

    def on_epoch_end(self, state: TrainState) -> None:
        score = self.monitored_score(state)  # None in the coarse phase: best.pt comes from the full-size epochs
        improved = score is not None and self.improves(score, self.best_model_score)
        kept = self.best_model_score, self.best_model_path
        if improved:  # before the payload is made, so that the file's own state names it the best
            self.best_model_score, self.best_model_path = score, self.best_path
        try:
            if self.save_last:
                self._write_last(state)
            if improved:
                if self.save_last:  # same content: copy the file rather than serialise again
                    with atomic_path(self.best_path) as tmp:
                        shutil.copyfile(self.last_path, tmp)
                else:
                    save_checkpoint(self.best_path, self._payload(state))
        except BaseException:
            self.best_model_score, self.best_model_path = kept
            raise

    def on_exception(self, state: TrainState, exception: BaseException) -> None:
        if self.save_last and not state.mid_epoch and state.epoch > 0 and self._tried_epoch != state.epoch:
            self._write_last(state)

    def _payload(self, state: TrainState) -> dict[str, Any]:
        callbacks = state.callbacks if self in state.callbacks else [self, *state.callbacks]
        return checkpoint_payload(state, self.run_record, self.best_model_score, callbacks)

    def _write_last(self, state: TrainState) -> None:
        self._tried_epoch = state.epoch
        kept = self.last_model_path, self.last_model_epoch
        self.last_model_path, self.last_model_epoch = self.last_path, state.epoch
        try:
            save_checkpoint(self.last_path, self._payload(state))
        except BaseException:
            self.last_model_path, self.last_model_epoch = kept
            raise


def saved_callback_states(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The callbacks' states a checkpoint holds, by `state_key`, to give back when a resumed run begins.

    A checkpoint without "callbacks" gives ModelCheckpoint the best score it holds; EarlyStopping
    then counts its epochs again from the history.
    """
    states = payload.get("callbacks")
    if isinstance(states, dict):
        return {str(key): dict(value) for key, value in states.items()}
    best = payload.get("best_score")
    return {} if best is None else {ModelCheckpoint.__name__: {"best_model_score": float(best)}}


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
