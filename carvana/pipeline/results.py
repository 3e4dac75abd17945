"""What the pipeline's stages hand on and how they end: a training's result, the interruptions a user sees,
and the names of the files a run writes beside its checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carvana.core.errors import StoppedBySignal
from carvana.data.layout import CarvanaData
from carvana.data.source import DataSource
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config


class TrainingInterrupted(StoppedBySignal):
    """Ctrl-C or SIGTERM during training: the last checkpoint is saved; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code  # 130 Ctrl-C, 143 SIGTERM


class PredictionStopped(StoppedBySignal):
    """SIGTERM while several processes (torchrun) predict the test set: no submission was written."""
    exit_code = 143


@dataclass(frozen=True)
class RunData:
    """A run's data, found once for all its folds: where it came from, and its files and photos' size."""

    source: DataSource
    layout: CarvanaData


@dataclass(frozen=True)
class TrainingResult:
    config: Config  # the run's settings (a resumed run's model and name included)
    classifier: Any  # the CarvanaClassifier, holding the weights of `checkpoint`
    checkpoint: Checkpoint  # best.pt, or last.pt when no epoch improved on the monitored metric; as scored
    data: RunData  # where the data came from (e.g. input/sample for the built-in sample) and its files
    validation_dice: float  # at full resolution (its photos' size), on the validation cars
    validation_images: int
    validation_cars: int
    training_ended: str = ""  # why training ended: "finished all 20 epochs", "stopped at the time budget ..."
    # A fold run (--folds K): each fold's best checkpoint, and `validation_dice` is the out-of-fold Dice.
    fold_checkpoints: tuple[Path, ...] = ()


SUBMISSION_NAME = "submit.csv.gz"


# In a run's validation folder: the validation cars' true masks and its best checkpoint's predictions
# of them; a fold run's out-of-fold ones put every fold's together.
VALIDATION_TRUTH = "valid_truth.csv"


VALIDATION_PREDICTIONS = "valid_predictions.csv.gz"


OUT_OF_FOLD_TRUTH = "oof_truth.csv"


OUT_OF_FOLD_PREDICTIONS = "oof_predictions.csv.gz"
