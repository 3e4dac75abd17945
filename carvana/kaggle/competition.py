"""The competition's files: which ones a run needs, and putting one in place as the data layout.

Kaggle ships Carvana as zip archives (`train.zip` holds `train/*.jpg`, `train_masks.csv.zip` holds
`train_masks.csv`, ...). Whether an archive came from a download (carvana.kaggle.download) or from
a folder Kaggle mounted (carvana.kaggle.zips), it is extracted the same way here, with the checks of
carvana.kaggle.archive, and recorded done in `<data dir>/.kaggle-done/<file>.json` with what it
put in place: later runs skip a file whose record is there and whose entry still exists.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carvana.core.atomic import atomic_write_text
from carvana.core.errors import DataError
from carvana.kaggle.archive import ArchiveRejected, extract_zip
from carvana.kaggle.files import (
    MASKS_CSV,
    MASKS_DIR,
    METADATA_CSV,
    SAMPLE_SUBMISSION_CSV,
    TEST_DIR,
    TEST_HQ_DIR,
    TRAIN_DIR,
    TRAIN_HQ_DIR,
)

DONE_DIR = ".kaggle-done"


@dataclass(frozen=True)
class CompetitionFile:
    """One file of the competition and the entry its archive puts into the data dir."""

    name: str
    extracts_to: str


def competition_files(*, high_quality: bool = False, include_test: bool = True) -> list[CompetitionFile]:
    """The Carvana files a run needs, as Kaggle names them."""
    train = TRAIN_HQ_DIR if high_quality else TRAIN_DIR
    files = [
        CompetitionFile(f"{train}.zip", train),
        CompetitionFile(f"{MASKS_DIR}.zip", MASKS_DIR),
        CompetitionFile(f"{MASKS_CSV}.zip", MASKS_CSV),
        CompetitionFile(f"{METADATA_CSV}.zip", METADATA_CSV),
    ]
    if include_test:
        test = TEST_HQ_DIR if high_quality else TEST_DIR
        files += [
            CompetitionFile(f"{test}.zip", test),
            CompetitionFile(f"{SAMPLE_SUBMISSION_CSV}.zip", SAMPLE_SUBMISSION_CSV),
        ]
    return files


def done_record(data_dir: Path, file: CompetitionFile) -> dict[str, Any] | None:
    """The record of `file` put in place in `data_dir`, or None when it is not (or its entry is gone)."""
    try:
        record = json.loads((Path(data_dir) / DONE_DIR / f"{file.name}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not (Path(data_dir) / file.extracts_to).exists():
        return None
    return record


def extract_competition_file(archive: Path, file: CompetitionFile, data_dir: Path, *, progress: bool,
                             resume: bool = False, details: dict[str, Any] | None = None) -> int:
    """Extract `archive` (Kaggle's `file`) into `data_dir` and record it done; return the bytes it put there.

    Kaggle sometimes wraps a single file in another zip: one level is unwrapped. `details` go into
    the done record. ArchiveRejected when the archive is unsafe, corrupt or lacks the expected entry
    (the caller decides whether to fetch it anew); `resume`: see `extract_zip`.
    """
    entries = extract_zip(archive, data_dir, progress=progress, resume=resume)
    if len(entries) == 1 and entries[0].suffix == ".zip" and not (data_dir / file.extracts_to).exists():
        inner = entries[0]
        try:
            entries = extract_zip(inner, data_dir, progress=progress)
        finally:
            inner.unlink(missing_ok=True)
    if not (data_dir / file.extracts_to).exists():
        raise ArchiveRejected(archive, f"does not contain {file.extracts_to!r} as the Carvana layout expects")
    size = sum(_bytes_under(entry) for entry in entries)
    record = {"file": file.name, "entries": sorted(p.name for p in entries), "bytes": size, **(details or {})}
    _write_record(data_dir, file, record)
    return size


def _write_record(data_dir: Path, file: CompetitionFile, record: dict[str, Any]) -> None:
    try:
        atomic_write_text(Path(data_dir) / DONE_DIR / f"{file.name}.json", json.dumps(record, indent=2))
    except OSError as error:
        raise DataError(Path(data_dir) / DONE_DIR, f"cannot record {file.name} as done ({error.strerror or error})") \
            from None


def _bytes_under(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
