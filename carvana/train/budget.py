"""When a run ends: its epoch cap, its step budget (`--max-steps`) and its time budget (`--max-time`).

Budgets count the whole run, resumed parts included: optimiser steps (`global_step`) and the seconds
spent training (epochs, validation, checkpoints, logs; not data, scoring or prediction), as each
checkpoint records them, so a killed Kaggle kernel resumes with the same `--max-time` and trains only
what is left, and a resumed run decides as the first one would have.
Before each epoch the run ends when the cap is reached, a budget is spent or the next epoch (the mean
so far) would not fit; after each optimiser step a spent budget ends the epoch, which is then validated
and checkpointed like any other. `planned_epochs` is where the run is expected to end, so a cosine
schedule reaches 0 there; a time-only run plans `fallback_epochs` until an epoch has been timed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from carvana.core.durations import format_duration
from carvana.core.text import count, finished_epochs
from carvana.run.config import Config


@dataclass(frozen=True)
class TrainingBudget:
    """The limits of one run; all of them over the whole run (absolute epochs, total steps and seconds)."""

    epochs: int | None  # the epoch cap; None: only a budget ends the run
    max_steps: int | None = None
    max_time: float | None = None  # seconds
    fallback_epochs: int = 1  # the plan while nothing else gives one

    @classmethod
    def of(cls, config: Config, epochs: int | None = None) -> "TrainingBudget":
        """The budget a config sets; `epochs` (when given) replaces its epoch cap."""
        cap = epochs if epochs is not None else (config.epochs if config.epochs_cap else None)
        return cls(epochs=cap, max_steps=config.max_steps, max_time=config.max_time, fallback_epochs=config.epochs)

    @property
    def limited(self) -> bool:
        """Whether a step or time budget is set (not just an epoch count)."""
        return self.max_steps is not None or self.max_time is not None

    # ------------------------------------------------------------------ decisions

    def planned_epochs(self, epoch: int, global_step: int, train_seconds: float, steps_per_epoch: int | None) -> int:
        """The absolute epoch the run is expected to end at, seen after `epoch` completed epochs."""
        plans = []
        if self.epochs is not None:
            plans.append(self.epochs)
        if self.max_steps is not None and steps_per_epoch:
            plans.append(epoch + math.ceil(max(0, self.max_steps - global_step) / steps_per_epoch))
        seconds_per_epoch = self.seconds_per_epoch(epoch, train_seconds)
        if self.max_time is not None and seconds_per_epoch:
            plans.append(epoch + math.floor(max(0.0, self.max_time - train_seconds) / seconds_per_epoch))
        if not plans:
            return max(epoch + 1, self.fallback_epochs)
        return max(epoch, min(plans))

    def spent(self, global_step: int, train_seconds: float) -> bool:
        """Whether the steps or the time are used up (checked after every optimiser step)."""
        steps_spent = self.max_steps is not None and global_step >= self.max_steps
        return steps_spent or (self.max_time is not None and train_seconds >= self.max_time)

    def stop_reason(self, epoch: int, global_step: int, train_seconds: float, epoch_steps: int = 0,
                    steps_per_epoch: int | None = None) -> str | None:
        """Why the run ends before epoch `epoch + 1`, or None when that epoch is to be trained.

        `epoch_steps`: the steps epoch `epoch` took (fewer than `steps_per_epoch` when a budget cut it short).
        """
        where = self._where(epoch, epoch_steps, steps_per_epoch)
        if self.max_steps is not None and global_step >= self.max_steps:
            return f"stopped at the step budget --max-steps {self.max_steps} {where}"
        if self.max_time is not None:
            trained = format_duration(train_seconds)
            if train_seconds >= self.max_time:
                return (f"stopped at the time budget --max-time {format_duration(self.max_time)} {where} "
                        f"({trained} trained)")
            per_epoch = self.seconds_per_epoch(epoch, train_seconds)
            if per_epoch and self.max_time - train_seconds < per_epoch and (self.epochs is None or epoch < self.epochs):
                return (f"stopped at the time budget --max-time {format_duration(self.max_time)} {where}: "
                        f"{trained} trained, and another epoch (about {format_duration(per_epoch)}) would not fit "
                        f"in the {format_duration(self.max_time - train_seconds)} left")
        if self.epochs is not None and epoch >= self.epochs:
            return finished_epochs(self.epochs)
        return None

    @staticmethod
    def seconds_per_epoch(epoch: int, train_seconds: float) -> float | None:
        """The run's mean seconds per epoch so far (None before the first epoch ends)."""
        return train_seconds / epoch if epoch > 0 and train_seconds > 0 else None

    def _where(self, epoch: int, epoch_steps: int, steps_per_epoch: int | None) -> str:
        of = f" of {self.epochs}" if self.epochs is not None else ""
        if steps_per_epoch and 0 < epoch_steps < steps_per_epoch:
            return f"in epoch {epoch}{of}, after {epoch_steps} of its {steps_per_epoch} steps"
        return f"after epoch {epoch}{of}"

    # ------------------------------------------------------------------ words

    def describe(self) -> str:
        """The run's length as the run's summary states it (`20 epochs, or --max-time 10m if sooner`)."""
        limits = []
        if self.max_steps is not None:
            limits.append(f"--max-steps {self.max_steps}")
        if self.max_time is not None:
            limits.append(f"--max-time {format_duration(self.max_time)}")
        if not limits:
            return count(self.epochs, "epoch")
        budget = " or ".join(limits)
        if self.epochs is None:
            return f"as many epochs as {budget} allows"
        return f"{count(self.epochs, 'epoch')}, or {budget} if sooner"

    def exhausted_hint(self) -> str:
        """What to pass to train a run further once its budget is spent."""
        flags = [flag for flag, value in (("--max-steps N", self.max_steps), ("--max-time DURATION", self.max_time))
                 if value is not None]
        return f"pass a larger {' or '.join(flags)} to train longer" if flags else "pass --epochs N to train longer"


class TrainingClock:
    """Seconds trained over the whole run: those saved in its checkpoint plus this process's since `start`."""

    def __init__(self, seconds_before: float = 0.0):
        self.seconds_before = float(seconds_before)
        self.started = time.monotonic()

    def seconds(self) -> float:
        return self.seconds_before + (time.monotonic() - self.started)

