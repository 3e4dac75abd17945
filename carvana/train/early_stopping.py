"""Stop training when a metric has stopped improving (Keras/Lightning `EarlyStopping` semantics)."""
from __future__ import annotations

import logging
from typing import Any

from carvana.core.errors import ConfigError
from carvana.core.hooks import TRACK
from carvana.core.text import count
from carvana.train.callbacks import MetricMonitor, TrainState

log = logging.getLogger(__name__)


class EarlyStopping(MetricMonitor):
    """Sets `state.should_stop` after `patience` epochs without an improvement over `min_delta`.

    `best_score` is the best value of `monitor` so far, `wait_count` the epochs since it was reached
    and `stopped_epoch` the epoch that stopped training (None until one does). They are its
    `state_dict()`, saved in every checkpoint, so a resumed run counts the epochs without improvement
    from before the interruption too; resumed from a checkpoint without them, it counts those epochs
    again from `state.history`. The epochs of a coarse phase are not counted: their scores are at the
    coarse size.

    Its hooks run before the checkpoint's (`order` TRACK), so an epoch's checkpoint holds the
    counters with that epoch counted.
    """

    order = TRACK
    label = "early stopping"

    def __init__(self, monitor: str = "val_dice", patience: int = 5, min_delta: float = 0.0, mode: str = "max"):
        super().__init__(monitor, mode, min_delta)
        if patience < 1:
            raise ConfigError(f"early stopping patience {patience}: must be at least 1")
        self.patience = patience
        self.best_score: float | None = None
        self.wait_count = 0  # epochs since the last improvement
        self.stopped_epoch: int | None = None
        self._restored = False  # load_state_dict gave it a resumed run's counters

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "min_delta": float(self.min_delta),
                "patience": int(self.patience), "best_score": self.best_score, "wait_count": int(self.wait_count),
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take up a resumed run's counters. Counted for another `monitor`, `mode` or `min_delta` they do
        not apply: they are counted again from the history. The `patience` stays this callback's own."""
        if not self.monitors_as(state_dict):
            return
        best, stopped = state_dict.get("best_score"), state_dict.get("stopped_epoch")
        self.best_score = None if best is None else float(best)
        self.wait_count = int(state_dict.get("wait_count", 0))
        self.stopped_epoch = None if stopped is None else int(stopped)
        self._restored = True

    def on_train_begin(self, state: TrainState) -> None:
        if not self._restored:
            self.best_score, self.wait_count, self.stopped_epoch = None, 0, None
            for metrics in state.history[state.config.coarse_phase_epochs:]:
                if self.monitor in metrics:
                    self._update(metrics[self.monitor])
        self._restored = False

    def on_epoch_end(self, state: TrainState) -> None:
        score = self.monitored_score(state)
        if score is None:  # a coarse epoch
            return
        self._update(score)
        if self.wait_count >= self.patience:
            state.should_stop = True
            self.stopped_epoch = state.epoch
            log.info(
                f"early stopping: {self.monitor} has not improved on {self.best_score:.4f} "
                f"for {count(self.wait_count, 'epoch')} (patience {self.patience})"
            )

    def _update(self, score: float) -> None:
        if self.improves(score, self.best_score):
            self.best_score, self.wait_count = float(score), 0
        else:
            self.wait_count += 1
