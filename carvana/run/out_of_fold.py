"""A fold run's out-of-fold result: `out_of_fold.json` beside its folds' checkpoints (Dice, images, cars, the
threshold and mask clean-up chosen on every car's out-of-fold prediction), which `predict` of the fold run uses."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from carvana.core.atomic import atomic_write_bytes
from carvana.core.errors import CheckpointError
from carvana.run.fields import MASK_CLEANUPS

OUT_OF_FOLD_RECORD = "out_of_fold.json"


def write_out_of_fold_record(folder: Path, record: dict[str, Any]) -> None:
    """A fold run's out-of-fold result as JSON in its checkpoint folder, written atomically."""
    atomic_write_bytes(Path(folder) / OUT_OF_FOLD_RECORD, json.dumps(record, indent=1).encode())


def read_out_of_fold_record(folder: Path) -> dict[str, Any] | None:
    """The out-of-fold result of the fold run in `folder`; None when it has none (not a fold run, or its
    folds not all scored yet). CheckpointError naming the file when it is there but damaged: a threshold
    or clean-up read from a broken record would change every prediction without a word."""
    path = Path(folder) / OUT_OF_FOLD_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read as the folds' out-of-fold record "
                              f"({getattr(e, 'strerror', None) or type(e).__name__})") from None
    problem = _out_of_fold_problem(record)
    if problem:
        raise CheckpointError(f"{path}: damaged out-of-fold record ({problem}); score the folds again "
                              f"with --resume {folder}")
    return record


def _out_of_fold_problem(record: Any) -> str:
    """What is wrong with an out-of-fold record's fields ("" when nothing)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    threshold, cleanup, dice = record.get("threshold"), record.get("mask_cleanup"), record.get("dice")
    if not isinstance(threshold, float) or not 0.0 < threshold < 1.0:
        return f"threshold {str(threshold)[:20]!r} is not a number between 0 and 1"
    if cleanup is not None and cleanup not in MASK_CLEANUPS:
        return f"mask_cleanup {str(cleanup)[:20]!r} is not one of {', '.join(MASK_CLEANUPS)}"
    if dice is not None and (not isinstance(dice, float) or not 0.0 <= dice <= 1.0):
        return f"dice {str(dice)[:20]!r} is not a number between 0 and 1"
    return ""
