"""Kaggle's own competition files as a Kaggle notebook mounts them: zip archives in a read-only folder.

`/kaggle/input/carvana-image-masking-challenge/` holds `train.zip`, `train_masks.zip`,
`train_masks.csv.zip`, `test.zip`, `sample_submission.csv.zip` and `metadata.csv.zip` (and the
`_hq` ones). Training reads each photo many times, so the archives a run needs are extracted once
into a writable folder (the output dir's `data/`), with the checks every archive gets
(carvana.kaggle.archive). Each file is recorded done there with its archive's path, size and time:
a cut extraction resumes at the file it cut (and within it, at the member it cut), later runs reuse
the folder, and an archive that changed is extracted again. The folder of the zips is only read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from carvana.core.errors import DataError
from carvana.kaggle.archive import ArchiveRejected
from carvana.kaggle.competition import CompetitionFile, competition_files, done_record, extract_competition_file
from carvana.kaggle.files import COMPLETE_MARKER, MASKS_CSV, MASKS_DIR, TRAIN_DIR, TRAIN_HQ_DIR, write_complete_marker

SOURCE = "kaggle zips"  # the completion marker's source for a folder extracted from them
# The archives without which there is nothing to train on.
_TRAINING = (f"{MASKS_DIR}.zip", f"{MASKS_CSV}.zip")


@dataclass(frozen=True)
class ZipsReport:
    """What `extract_competition_zips` did: the archives it extracted now and those already in place."""

    extracted: tuple[str, ...]
    reused: tuple[str, ...]
    bytes_on_disk: int  # of every file extracted, now and before
    elapsed_s: float

    def summary(self, zips_dir: Path, data_dir: Path) -> str:
        size = f"{self.bytes_on_disk / 2**30:.1f} GiB" if self.bytes_on_disk >= 2**30 else \
            f"{self.bytes_on_disk / 2**20:.0f} MiB"
        if not self.extracted:
            return f"Kaggle's zip files in {zips_dir}: extracted earlier into {data_dir} ({size}; reused)"
        minutes, seconds = divmod(round(self.elapsed_s), 60)
        return (f"Kaggle's zip files in {zips_dir}: extracted {', '.join(self.extracted)} into {data_dir} in "
                f"{minutes}m{seconds:02d}s ({size} on disk in all; later runs reuse them, deleting "
                f"{data_dir} is safe)")


def holds_competition_zips(folder: Path) -> bool:
    """Whether `folder` holds Kaggle's training archives (train.zip or train_hq.zip, and the masks')."""
    folder = Path(folder)
    has_photos = any((folder / f"{name}.zip").is_file() for name in (TRAIN_DIR, TRAIN_HQ_DIR))
    return has_photos and all((folder / name).is_file() for name in _TRAINING)


def extract_competition_zips(zips_dir: Path, data_dir: Path, *, high_quality: bool = False,
                             include_test: bool = True, progress: bool = True) -> ZipsReport:
    """Make `data_dir` hold the Carvana layout extracted from the archives in `zips_dir`; extract only
    what is not there yet. `high_quality`: train_hq.zip/test_hq.zip (also used when only they are there).

    DataError naming the archive for a missing, unsafe or corrupt one, or a disk too small for it.
    """
    started = time.monotonic()
    zips_dir, data_dir = Path(zips_dir), Path(data_dir)
    if not (zips_dir / f"{TRAIN_DIR}.zip").is_file():
        high_quality = True
    files = _wanted_files(zips_dir, high_quality, include_test)
    extracted: list[str] = []
    total = 0
    for file in files:
        archive = zips_dir / file.name
        identity = _identity(archive)
        record = done_record(data_dir, file)
        if record is None or record.get("archive") != identity:
            (data_dir / COMPLETE_MARKER).unlink(missing_ok=True)
            record = {"bytes": _extract(archive, file, data_dir, identity, progress)}
            extracted.append(file.name)
        total += int(record.get("bytes", 0))
    write_complete_marker(data_dir, SOURCE, {"zips_dir": str(zips_dir.resolve()), "high_quality": high_quality,
                                             "include_test": include_test, "files": [f.name for f in files]})
    reused = tuple(f.name for f in files if f.name not in extracted)
    return ZipsReport(tuple(extracted), reused, total, time.monotonic() - started)


def _wanted_files(zips_dir: Path, high_quality: bool, include_test: bool) -> list[CompetitionFile]:
    """The archives to extract: every one a run needs; metadata.csv.zip only where it is there (nothing reads it)."""
    files = competition_files(high_quality=high_quality, include_test=include_test)
    missing = [f.name for f in files if not (zips_dir / f.name).is_file() and not f.name.startswith("metadata")]
    if missing:
        raise DataError(zips_dir, f"holds Kaggle's zip files but not {', '.join(missing)}, which "
                                  f"{'training and prediction need' if include_test else 'training needs'}")
    return [f for f in files if (zips_dir / f.name).is_file()]


def _identity(archive: Path) -> dict[str, object]:
    info = archive.stat()
    return {"path": str(archive.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _extract(archive: Path, file: CompetitionFile, data_dir: Path, identity: dict[str, object],
             progress: bool) -> int:
    try:
        return extract_competition_file(archive, file, data_dir, progress=progress, resume=True,
                                        details={"archive": identity})
    except ArchiveRejected as e:
        raise DataError(archive, f"{e.problem} (Kaggle's archive is damaged: download it again, or attach "
                                 "the competition's data again)") from None
