"""`python main.py runs`: a table of the runs in an output dir, best first.

Each run folder under `OUTPUT/models/` is read from its checkpoints' entries (the tensors are
memory-mapped, never read, so a folder of large checkpoints lists at once): its recipe, how far it
trained and why it ended, the best validation Dice of its epochs (at the model's output size), the
full-resolution validation Dice and threshold its best checkpoint was scored with, and the time it
trained. Runs are sorted by the full-resolution Dice (the number Kaggle would compute), then by the
epochs' best, runs never scored last. A fold run (`--folds K`) is one row: its out-of-fold Dice, its
folds' epochs and time summed, the mean of their best epochs' Dice, and its folder as the checkpoint
(what `predict --ensemble` takes).
"""
from __future__ import annotations

import csv
import io
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from carvana.core.atomic import atomic_write_bytes
from carvana.core.durations import format_duration
from carvana.core.locks import FolderLock
from carvana.predict.threshold import ThresholdRecord
from carvana.run.identity import BEST_NAME, FOLD_PREFIX, LAST_NAME, LOCK_NAME, read_out_of_fold_record
from carvana.train.budget import TrainingBudget
from carvana.train.early_stopping import EarlyStopping

DONE = ("finished", "early stop", "budget spent")

COLUMNS = ("run", "status", "preset", "model", "input", "width", "epochs", "best epoch dice", "dice",
           "threshold", "trained", "best checkpoint")


@dataclass(frozen=True)
class RunRow:
    """One run of the table."""

    name: str
    status: str  # finished, early stop, stopped at epoch N/M, running, no checkpoint yet
    preset: str
    model: str
    input_size: str
    width: float | None
    epochs: int
    planned_epochs: int | None
    best_epoch_dice: float | None  # the best `val_dice` of its epochs, at the model's output size
    dice: float | None  # the best checkpoint's validation Dice at full resolution, as scored after training
    threshold: float | None
    train_seconds: float
    best_checkpoint: Path | None

    def cells(self) -> list[str]:
        """The row as the table's text cells, in `COLUMNS` order."""
        epochs = f"{self.epochs}/{self.planned_epochs}" if self.planned_epochs else str(self.epochs)
        return [self.name, self.status, self.preset, self.model, self.input_size,
                "" if self.width is None else f"{self.width:g}", epochs, _number(self.best_epoch_dice),
                _number(self.dice), "" if self.threshold is None else f"{self.threshold:g}",
                format_duration(self.train_seconds) if self.train_seconds else "",
                "" if self.best_checkpoint is None else str(self.best_checkpoint)]

    @property
    def sort_key(self) -> tuple[float, float, str]:
        dice = self.dice if self.dice is not None else -1.0
        best = self.best_epoch_dice if self.best_epoch_dice is not None else -1.0
        return (-dice, -best, self.name)


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


def read_entries(path: Path) -> dict[str, Any] | None:
    """A checkpoint's entries with its tensors memory-mapped (never read); None if it cannot be read."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile):
        return None
    return payload if isinstance(payload, dict) and isinstance(payload.get("config"), dict) else None


def run_row(folder: Path) -> RunRow | None:
    """The table's row of a run folder (None when it holds no checkpoint of ours and is not in use)."""
    if any(folder.glob(f"{FOLD_PREFIX}*/{LAST_NAME}")):
        return fold_run_row(folder)
    last, best = read_entries(folder / LAST_NAME), read_entries(folder / BEST_NAME)
    running = _in_use(folder)
    latest = last or best
    if latest is None:
        if not running:
            return None
        return RunRow(folder.name, "running (no epoch yet)", "", "", "", None, 0, None, None, None, None, 0.0, None)
    config = latest["config"]
    record = ThresholdRecord.from_payload(best) if best is not None else None
    history = [entry.get("val_dice") for entry in latest.get("history", [])]
    scores = [float(d) for d in history if isinstance(d, (int, float)) and math.isfinite(d)]
    size = config.get("input_size")
    return RunRow(
        name=folder.name, status="running" if running else _status(latest), preset=str(config.get("preset", "")),
        model=str(latest.get("model_name", config.get("model", ""))),
        input_size=f"{size[0]}x{size[1]}" if isinstance(size, (list, tuple)) and len(size) == 2 else "",
        width=float(latest["width"]) if isinstance(latest.get("width"), (int, float)) else None,
        epochs=int(latest.get("epoch", 0)), planned_epochs=_planned(config),
        best_epoch_dice=max(scores) if scores else None,
        dice=_float(record.validation_dice) if record else None, threshold=record.threshold if record else None,
        train_seconds=float(latest.get("train_seconds", 0.0) or 0.0),
        best_checkpoint=folder / BEST_NAME if best is not None else None,
    )


def fold_run_row(folder: Path) -> RunRow:
    """The row of a fold run (`--folds K`): its folds' recipe, epochs and time, its out-of-fold Dice."""
    folds = sorted((d for d in folder.glob(f"{FOLD_PREFIX}*") if d.is_dir() and d.name[len(FOLD_PREFIX):].isdigit()),
                   key=lambda d: int(d.name[len(FOLD_PREFIX):]))
    rows = [row for row in map(run_row, folds) if row is not None]
    entries = read_entries(folds[-1] / LAST_NAME) or {}
    planned = int(entries.get("config", {}).get("folds", len(folds)) or len(folds))
    record = read_out_of_fold_record(folder)
    if _in_use(folder):
        status = f"running (fold {len(rows)}/{planned})"
    elif record is not None and len(rows) == planned and all(row.status in DONE for row in rows):
        status = f"finished {planned} folds"
    else:
        cut = next((row for row in rows if row.status not in DONE), rows[-1])
        status = f"fold {rows.index(cut) + 1}/{planned}: {cut.status}"
    first = rows[0]
    scores = [row.best_epoch_dice for row in rows if row.best_epoch_dice is not None]
    return RunRow(
        name=folder.name, status=status, preset=first.preset, model=first.model, input_size=first.input_size,
        width=first.width, epochs=sum(row.epochs for row in rows),
        planned_epochs=sum(row.planned_epochs or 0 for row in rows) or None,
        best_epoch_dice=sum(scores) / len(scores) if scores else None,
        dice=_float(record.get("dice")) if record else None, threshold=_float(record.get("threshold")) if record else None,
        train_seconds=sum(row.train_seconds for row in rows), best_checkpoint=folder,
    )


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _planned(config: dict[str, Any]) -> int | None:
    return int(config["epochs"]) if config.get("epochs_cap", True) and isinstance(config.get("epochs"), int) else None


def _status(entries: dict[str, Any]) -> str:
    """Why the run's last checkpoint is where it is: finished, stopped early, or stopped (to resume)."""
    config = entries["config"]
    epoch = int(entries.get("epoch", 0))
    early = (entries.get("callbacks") or {}).get(EarlyStopping.__name__) or {}
    patience = config.get("early_stopping_patience")
    if patience and isinstance(early.get("wait_count"), int) and early["wait_count"] >= patience:
        return "early stop"
    budget = TrainingBudget(epochs=_planned(config), max_steps=config.get("max_steps"), max_time=config.get("max_time"),
                            fallback_epochs=int(config.get("epochs", 1)))
    reason = budget.stop_reason(epoch, int(entries.get("global_step", 0)), float(entries.get("train_seconds", 0.0)),
                                int(entries.get("epoch_steps", 0)))
    if reason is None:
        planned = f"/{budget.epochs}" if budget.epochs is not None else ""
        return f"stopped at epoch {epoch}{planned}"
    return "finished" if reason.startswith("finished") else "budget spent"


def _in_use(folder: Path) -> bool:
    """Whether a process holds the run's lock (it is training now)."""
    if not (folder / LOCK_NAME).exists():
        return False
    lock = FolderLock(folder, LOCK_NAME)
    if lock.acquire(wait=False):
        lock.release()
        return False
    return True


def list_runs(output_dir: Path) -> list[RunRow]:
    """The runs under `output_dir/models`, best first (see the module's docstring)."""
    models = Path(output_dir) / "models"
    folders = sorted(p for p in models.iterdir() if p.is_dir()) if models.is_dir() else []
    rows = [row for row in map(run_row, folders) if row is not None]
    return sorted(rows, key=lambda row: row.sort_key)


def format_table(rows: Sequence[RunRow]) -> str:
    """The rows as an aligned text table with a header."""
    cells = [list(COLUMNS), *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


def write_csv(rows: Sequence[RunRow], path: Path) -> None:
    """The table as CSV at `path` (numbers unrounded), written atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["run", "status", "preset", "model", "input_size", "width", "epochs", "planned_epochs",
                     "best_epoch_dice", "validation_dice", "threshold", "train_seconds", "best_checkpoint"])
    for row in rows:
        writer.writerow([row.name, row.status, row.preset, row.model, row.input_size,
                         "" if row.width is None else row.width, row.epochs, row.planned_epochs or "",
                         "" if row.best_epoch_dice is None else row.best_epoch_dice,
                         "" if row.dice is None else row.dice, "" if row.threshold is None else row.threshold,
                         row.train_seconds, "" if row.best_checkpoint is None else row.best_checkpoint])
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))
