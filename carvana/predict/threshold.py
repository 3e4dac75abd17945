"""The probability threshold: chosen on the validation cars after training, saved with the checkpoint.

A model trained with BCE + Dice is not calibrated so that 0.5 is its best cut: its best threshold
depends on the run, so it is measured on cars the model never saw, at full resolution through the
submission path (carvana.submission.validation_search). 0.5 is kept unless another threshold of the
grid is better by more than `MARGIN`: a few validation cars would otherwise pick thresholds by noise.

The threshold a checkpoint's weights were scored with is a fact of that file (other weights would
want another threshold), so it is saved in the checkpoint under `RECORD_KEY`; `predict` uses it
unless `--threshold` is given, and a checkpoint that has none uses its config's threshold (0.5).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from carvana.run.checkpoint import Checkpoint

DEFAULT_THRESHOLD = 0.5
# 0.30, 0.35, ..., 0.70: the thresholds tried, the preferred one added where it is not among them.
THRESHOLD_GRID = tuple(round(0.30 + 0.05 * i, 2) for i in range(9))
# Dice a threshold must gain over the preferred one to be chosen instead.
MARGIN = 0.0005
RECORD_KEY = "prediction"


def validation_cars(count: int) -> str:
    return f"{count} validation car{'' if count == 1 else 's'}"


def thresholds_to_try(preferred: float, tune: bool) -> tuple[float, ...]:
    """The grid and `preferred` (sorted) when tuning; `preferred` alone when it was given."""
    if not tune:
        return (float(preferred),)
    return tuple(sorted(set(THRESHOLD_GRID) | {float(preferred)}))


def choose_threshold(mean_dice: Mapping[float, float], preferred: float = DEFAULT_THRESHOLD,
                     margin: float = MARGIN) -> float:
    """The threshold of best mean Dice, unless it beats `preferred` by no more than `margin`."""
    if not mean_dice:
        raise ValueError("no thresholds were scored")
    best = max(sorted(mean_dice), key=lambda t: mean_dice[t])  # ties: the lowest threshold
    if preferred in mean_dice and mean_dice[best] <= mean_dice[preferred] + margin:
        return preferred
    return best


@dataclass(frozen=True)
class ThresholdRecord:
    """What a checkpoint remembers of the threshold its weights were scored with on the validation cars."""

    threshold: float
    chosen: bool  # True: chosen on the validation cars; False: given with --threshold
    validation_dice: float  # mean full-resolution Dice at `threshold` on the validation cars
    validation_cars: int

    def to_dict(self) -> dict[str, Any]:
        """Primitives only (checkpoints load with weights_only=True)."""
        return {"threshold": float(self.threshold), "chosen": bool(self.chosen),
                "validation_dice": float(self.validation_dice), "validation_cars": int(self.validation_cars)}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "ThresholdRecord | None":
        """The record of a checkpoint, or None for one scored before thresholds were saved."""
        data = payload.get(RECORD_KEY)
        if not isinstance(data, Mapping) or not isinstance(data.get("threshold"), (int, float)):
            return None
        threshold = float(data["threshold"])
        if not 0.0 < threshold < 1.0:
            return None
        return cls(threshold, bool(data.get("chosen", True)), float(data.get("validation_dice", float("nan"))),
                   int(data.get("validation_cars", 0)))

    def describe(self) -> str:
        """How the threshold was set, for a banner: `chosen on 5 validation cars (Dice 0.9871)`."""
        if self.chosen:
            return f"chosen on {validation_cars(self.validation_cars)} (Dice {self.validation_dice:.4f})"
        return f"the run's --threshold (Dice {self.validation_dice:.4f} on {validation_cars(self.validation_cars)})"


def save_threshold(checkpoint: Path | Checkpoint, record: ThresholdRecord) -> Checkpoint:
    """Add `record` to the checkpoint file (rewritten atomically, its weights and checksum unchanged);
    returns the checkpoint as it is now. A `Checkpoint` already read is not read again."""
    from carvana.run.checkpoint import Checkpoint

    saved = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.load(checkpoint)
    return saved.updated({RECORD_KEY: record.to_dict()})


def prediction_threshold(payload: Mapping[str, Any], given: float | None, configured: float) -> tuple[float, str]:
    """The threshold to predict with and why, for the banner: `--threshold` (`given`) wins, then the
    checkpoint's record, then `configured` (the checkpoint's config; 0.5 unless trained with --threshold)."""
    record = ThresholdRecord.from_payload(payload)
    if given is not None:
        other = f"; the checkpoint's is {record.threshold:g}" if record and record.threshold != given else ""
        return float(given), f"from --threshold{other}"
    if record is not None:
        return record.threshold, record.describe()
    return float(configured), "none saved with the checkpoint"
