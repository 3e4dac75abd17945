"""Stop training when a metric has stopped improving (Keras/Lightning `EarlyStopping` semantics)."""
from __future__ import annotations

import math

from tqdm import tqdm

from carvana.core.errors import ConfigError
from carvana.train.callbacks import Callback, TrainState

MODES = ("max", "min")


class EarlyStopping(Callback):
    """Sets `state.stop_training` after `patience` epochs without an improvement over `min_delta`.

    Its counters are rebuilt from `state.history` when training begins, so a resumed run counts the
    epochs without improvement from before the interruption too. The epochs of a coarse phase are
    not counted: their scores are at the coarse size.
    """

    def __init__(self, monitor: str = "val_dice", patience: int = 5, min_delta: float = 0.0, mode: str = "max"):
        if mode not in MODES:
            raise ConfigError(f"early stopping mode {mode!r}: choose from {', '.join(MODES)}")
        if patience < 1:
            raise ConfigError(f"early stopping patience {patience}: must be at least 1")
        if min_delta < 0:
            raise ConfigError(f"early stopping min delta {min_delta}: must be zero or positive")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.mode = mode
        self.best: float | None = None
        self.wait = 0  # epochs since the last improvement
        self.stopped_epoch: int | None = None

    def on_train_begin(self, state: TrainState) -> None:
        self.best, self.wait, self.stopped_epoch = None, 0, None
        for metrics in state.history[state.config.coarse_phase_epochs:]:
            if self.monitor in metrics:
                self._update(metrics[self.monitor])

    def on_epoch_end(self, state: TrainState) -> None:
        if self.monitor not in state.metrics:
            raise ConfigError(
                f"early stopping monitor {self.monitor!r}: not a metric (choose from {', '.join(state.metrics)})"
            )
        if state.coarse_epoch:
            return
        self._update(state.metrics[self.monitor])
        if self.wait >= self.patience:
            state.stop_training = True
            self.stopped_epoch = state.epoch
            tqdm.write(
                f"early stopping: {self.monitor} has not improved on {self.best:.4f} "
                f"for {self.wait} epochs (patience {self.patience})"
            )

    def _update(self, score: float) -> None:
        if self._improves(score):
            self.best, self.wait = float(score), 0
        else:
            self.wait += 1

    def _improves(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return score > self.best + self.min_delta
        return score < self.best - self.min_delta
