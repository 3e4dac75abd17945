"""`python main.py runs`: a table of the runs in an output dir, best first.

Each folder under `OUTPUT/models/` is one row, read from its checkpoints' entries (tensors memory-
mapped, never read): recipe, epochs and why it ended, best epoch Dice, the full-resolution Dice and
threshold of its best checkpoint, training time. Sorted by the full-resolution Dice (Kaggle's number),
unscored runs last. A fold run is one row with its out-of-fold Dice. A folder without a checkpoint, or
with one that cannot be read, still gets a row saying so.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from carvana.core.atomic import atomic_write_bytes
from carvana.core.durations import format_duration
from carvana.core.errors import CheckpointError
from carvana.core.locks import FolderLock
from carvana.core.text import count
from carvana.predict.threshold import ThresholdRecord
from carvana.run.config import model_choices
from carvana.run.identity import BEST_NAME, FOLD_PREFIX, LAST_NAME, LOCK_NAME
from carvana.run.out_of_fold import OUT_OF_FOLD_RECORD, read_out_of_fold_record
from carvana.train.budget import TrainingBudget
from carvana.train.early_stopping import EarlyStopping

DONE = ("finished", "early stop", "budget spent")
UNREADABLE = "unreadable"
CHECKPOINT_NAMES = (LAST_NAME, BEST_NAME)

COLUMNS = ("run", "status", "preset", "model", "input", "width", "epochs", "best epoch dice", "dice",
           "threshold", "trained", "best checkpoint")


@dataclass(frozen=True)
class RunRow:
    """One run of the table; None (an empty cell) where it cannot be known."""

    name: str
    status: str  # finished, early stop, stopped at epoch N/M, running, unreadable (FILE: why), no checkpoint
    preset: str = ""
    model: str = ""
    input_size: str = ""
    width: float | None = None
    epochs: int | None = 0
    planned_epochs: int | None = None
    best_epoch_dice: float | None = None  # the best `val_dice` of its epochs, at the model's output size
    dice: float | None = None  # the best checkpoint's validation Dice at full resolution, as scored after training
    threshold: float | None = None
    train_seconds: float | None = 0.0
    best_checkpoint: Path | None = None  # a fold run's: its folder, which `predict` takes as its folds' ensemble
    ensemble_size: int = 0  # a fold run's: how many folds' best.pt that ensemble averages
    problems: tuple[str, ...] = ()  # its files that cannot be read, each with why: `fold-1/last.pt: not a checkpoint`

    def cells(self) -> list[str]:
        """The row as the table's text cells, in `COLUMNS` order."""
        epochs = "" if self.epochs is None else str(self.epochs)
        if self.epochs is not None and self.planned_epochs:
            epochs += f"/{self.planned_epochs}"
        return [self.name, self.status, self.preset, self.model, self.input_size,
                "" if self.width is None else f"{self.width:g}", epochs, _number(self.best_epoch_dice),
                _number(self.dice), "" if self.threshold is None else f"{self.threshold:g}",
                format_duration(self.train_seconds) if self.train_seconds else "", self.checkpoint_cell()]

    def checkpoint_cell(self) -> str:
        if self.best_checkpoint is None:
            return ""
        if self.ensemble_size:
            return f"{self.best_checkpoint} (ensemble of {count(self.ensemble_size, 'fold')})"
        return str(self.best_checkpoint)

    @property
    def sort_key(self) -> tuple[float, float, str]:
        dice = self.dice if self.dice is not None else -1.0
        best = self.best_epoch_dice if self.best_epoch_dice is not None else -1.0
        return (-dice, -best, self.name)


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


def read_entries(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A checkpoint's entries with its tensors memory-mapped (never read), or why it cannot be read;
    (None, None) when there is no such file."""
    if not path.exists():
        return None, None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except OSError as e:
        return None, e.strerror or type(e).__name__
    except Exception:  # noqa: BLE001 - whatever a damaged file raises is its row's problem, never the table's
        return None, "not a checkpoint"
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        return None, "not a checkpoint of a run"
    return payload, None


def run_row(folder: Path) -> RunRow:
    """The table's row of a run folder: a fold run's, else a single run's (with checkpoints or not)."""
    folds = _fold_folders(folder)
    if any((fold / name).exists() for fold in folds for name in CHECKPOINT_NAMES):
        return fold_run_row(folder, folds)
    return single_run_row(folder)


def single_run_row(folder: Path, label: str = "") -> RunRow:
    """The row of a folder with its own last.pt/best.pt; `label` prefixes the files it names (fold-1/)."""
    (last, last_problem), (best, best_problem) = (read_entries(folder / name) for name in CHECKPOINT_NAMES)
    problems = tuple(f"{label}{name}: {problem}"
                     for name, problem in zip(CHECKPOINT_NAMES, (last_problem, best_problem)) if problem)
    # How far it trained: its last.pt, or a lone best.pt; unknown when last.pt is there but unreadable.
    progress = best if not (folder / LAST_NAME).exists() else last
    recipe = last or best
    if problems:
        status = _unreadable(problems)
    elif _in_use(folder):
        status = "running" if recipe else "running (no epoch yet)"
    else:
        status = _status(progress) if progress else "no checkpoint"
    if progress is not None:
        progress_cells = _progress_cells(progress)
    else:  # unknown when the file that says it cannot be read; none trained when there is no file
        progress_cells = {"epochs": None, "train_seconds": None} if problems else {}
    return RunRow(folder.name, status, **_recipe_cells(recipe), **progress_cells,
                  **_best_cells(best, folder / BEST_NAME), problems=problems)


def _recipe_cells(entries: dict[str, Any] | None) -> dict[str, Any]:
    if entries is None:
        return {}
    config, size = entries["config"], entries["config"].get("input_size")
    model = " ".join([str(entries.get("model_name", config.get("model", ""))), *model_choices(config)])
    return {"preset": str(config.get("preset", "")), "model": model,
            "input_size": f"{size[0]}x{size[1]}" if isinstance(size, (list, tuple)) and len(size) == 2 else "",
            "width": float(entries["width"]) if isinstance(entries.get("width"), (int, float)) else None}


def _progress_cells(entries: dict[str, Any]) -> dict[str, Any]:
    history = [entry.get("val_dice") for entry in entries.get("history", [])]
    scores = [float(d) for d in history if isinstance(d, (int, float)) and math.isfinite(d)]
    return {"epochs": int(entries.get("epoch", 0)), "planned_epochs": _planned(entries["config"]),
            "best_epoch_dice": max(scores) if scores else None,
            "train_seconds": float(entries.get("train_seconds", 0.0) or 0.0)}


def _best_cells(entries: dict[str, Any] | None, path: Path) -> dict[str, Any]:
    if entries is None:
        return {}
    record = ThresholdRecord.from_payload(entries)
    return {"dice": _float(record.validation_dice) if record else None,
            "threshold": record.threshold if record else None, "best_checkpoint": path}


def fold_run_row(folder: Path, folds: list[Path]) -> RunRow:
    """The row of a fold run (`--folds K`): its folds' recipe, epochs and time, its out-of-fold Dice, and
    its folder as the best checkpoint (what `predict` takes as the folds' ensemble)."""
    rows = [single_run_row(fold, label=f"{fold.name}/") for fold in folds]
    problems = tuple(problem for row in rows for problem in row.problems)
    try:
        record = read_out_of_fold_record(folder)
    except CheckpointError:
        record, problems = None, (*problems, f"{OUT_OF_FOLD_RECORD}: not a valid out-of-fold record")
    first = next((row for row in rows if row.model), rows[0])
    scores = [row.best_epoch_dice for row in rows if row.best_epoch_dice is not None]
    ensemble_size = _ensemble_size(folds, rows)
    return RunRow(
        name=folder.name, status=_fold_status(folder, rows, _planned_folds(folds), record, problems),
        preset=first.preset, model=first.model, input_size=first.input_size, width=first.width,
        epochs=_total([row.epochs for row in rows]),
        planned_epochs=sum(row.planned_epochs or 0 for row in rows) or None,
        best_epoch_dice=sum(scores) / len(scores) if scores else None,
        dice=_float(record.get("dice")) if record else None,
        threshold=_float(record.get("threshold")) if record else None,
        train_seconds=_total([row.train_seconds for row in rows]),
        best_checkpoint=folder if ensemble_size else None, ensemble_size=ensemble_size, problems=problems,
    )


def _fold_folders(folder: Path) -> list[Path]:
    """A run's fold folders (`fold-1`, `fold-2`, ...) in fold order; none for a run of one split."""
    folds = [d for d in folder.glob(f"{FOLD_PREFIX}*") if d.is_dir() and d.name[len(FOLD_PREFIX):].isdigit()]
    return sorted(folds, key=lambda d: int(d.name[len(FOLD_PREFIX):]))


def _fold_status(folder: Path, rows: list[RunRow], planned: int, record: dict[str, Any] | None,
                 problems: tuple[str, ...]) -> str:
    if problems:
        return _unreadable(problems)
    if _in_use(folder):
        return f"running (fold {len(rows)}/{planned})"
    if record is not None and len(rows) == planned and all(row.status in DONE for row in rows):
        return f"finished {planned} folds"
    cut = next((row for row in rows if row.status not in DONE), rows[-1])
    return f"fold {rows.index(cut) + 1}/{planned}: {cut.status}"


def _planned_folds(folds: list[Path]) -> int:
    """How many folds the run trains, as its latest readable checkpoint says (else as many as it has)."""
    for path in (fold / name for fold in reversed(folds) for name in CHECKPOINT_NAMES):
        entries, _ = read_entries(path)
        if entries is not None and isinstance(entries["config"].get("folds"), int):
            return entries["config"]["folds"]
    return len(folds)


def _ensemble_size(folds: list[Path], rows: list[RunRow]) -> int:
    """How many folds' best.pt `predict` averages for the fold run's folder; 0 when one cannot be read."""
    readable = sum(row.best_checkpoint is not None for row in rows)
    return readable if readable == sum((fold / BEST_NAME).exists() for fold in folds) else 0


def _total(values: list[Any]) -> Any:
    """The sum of the folds' values, None (unknown) when one of them is."""
    return None if any(value is None for value in values) else sum(values)


def _unreadable(problems: tuple[str, ...]) -> str:
    return f"{UNREADABLE} ({'; '.join(problems)})"


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
    if not models.is_dir():
        return []
    folders = sorted(p for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(map(_row_or_unreadable, folders), key=lambda row: row.sort_key)


def _row_or_unreadable(folder: Path) -> RunRow:
    """`run_row`, or an unreadable row when a checkpoint loads but holds values of the wrong kind."""
    try:
        return run_row(folder)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        return RunRow(folder.name, f"{UNREADABLE} (odd values in its checkpoints: {type(e).__name__})", epochs=None)


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
                         *map(_csv_cell, (row.width, row.epochs, row.planned_epochs, row.best_epoch_dice, row.dice,
                                          row.threshold, row.train_seconds, row.best_checkpoint))])
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


def _csv_cell(value: Any) -> Any:
    return "" if value is None else value
