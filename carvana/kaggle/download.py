"""Download the Carvana competition files from Kaggle into the data dir, resumably.

Each competition file goes through the same steps, each recorded on disk so that a run that is
stopped anywhere (Ctrl-C, lost network, full disk) continues where it stopped:

    .download/<file>/<file>        kaggle writes the archive here (a partial one is resumed with a
                                   Range request by the kaggle client on the next run)
    .download/<file>.downloaded    the archive is complete; the next run extracts without asking Kaggle
    <entry>                        train/, train_masks.csv, ... renamed into place once verified
    .kaggle-done/<file>.json       this file is done; later runs neither call Kaggle nor extract

The dataset's completion marker (`.carvana-complete.json`) is written last, only when every
requested file is done, and is removed as soon as something has to be fetched again.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from carvana.core.atomic import atomic_write_text
from carvana.core.errors import DataError, KaggleError
from carvana.kaggle.api import kaggle_errors, open_kaggle_api, quiet_console
from carvana.kaggle.archive import ArchiveRejected
from carvana.kaggle.competition import CompetitionFile, competition_files, done_record, extract_competition_file
from carvana.kaggle.files import COMPETITION, COMPLETE_MARKER, write_complete_marker

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

DOWNLOAD_DIR = ".download"
KAGGLE_PARTIAL_SUFFIX = ".kaggle-partial"  # kaggle 2.2.4's resume marker beside a partial download
PROGRESS_POLL_S = 0.25


@dataclass(frozen=True)
class FetchReport:
    downloaded: tuple[str, ...]  # files transferred (in full or resumed) by this run
    skipped: tuple[str, ...]  # files already there (or downloaded earlier and only extracted now)
    bytes_downloaded: int
    elapsed_s: float

    def summary(self) -> str:
        if not self.downloaded:
            return f"all {len(self.skipped)} Kaggle files already there; nothing downloaded"
        minutes, seconds = divmod(round(self.elapsed_s), 60)
        return (f"downloaded {len(self.downloaded)} files ({self.bytes_downloaded / 2**20:.1f} MiB) "
                f"in {minutes}m{seconds:02d}s; {len(self.skipped)} already there")


def fetch_kaggle(
    data_dir: Path,
    *,
    high_quality: bool = False,
    include_test: bool = True,
    progress: bool = True,
) -> FetchReport:
    """Make `data_dir` hold the Kaggle Carvana data; download only what is not there yet.

    Raises KaggleError (credentials, rules, network) or DataError (a bad archive, a full disk).
    """
    started = time.monotonic()
    data_dir = Path(data_dir)
    files = competition_files(high_quality=high_quality, include_test=include_test)
    steps = _FileSteps(data_dir)
    pending = [f for f in files if not steps.is_done(f)]
    downloaded: list[str] = []
    bytes_downloaded = 0

    if pending:
        (data_dir / COMPLETE_MARKER).unlink(missing_ok=True)
        api = open_kaggle_api() if any(not steps.is_downloaded(f) for f in pending) else None
        for file in pending:
            if not steps.is_downloaded(file):
                assert api is not None
                bytes_downloaded += _download(api, file, steps.download_folder(file), progress)
                steps.mark_downloaded(file)
                downloaded.append(file.name)
            _extract(file, steps, data_dir, progress)

    for file in files:
        steps.remove_download(file)  # also tidies archives left by a crash after the done marker
    steps.remove_empty_download_dir()
    write_complete_marker(data_dir, "kaggle", {
        "competition": COMPETITION,
        "high_quality": high_quality,
        "include_test": include_test,
        "files": [f.name for f in files],
    })
    skipped = tuple(f.name for f in files if f.name not in downloaded)
    return FetchReport(tuple(downloaded), skipped, bytes_downloaded, time.monotonic() - started)


class _FileSteps:
    """Where each file's progress is recorded in the data dir."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.downloads = data_dir / DOWNLOAD_DIR

    def download_folder(self, file: CompetitionFile) -> Path:
        # One folder per file: whatever name Kaggle's redirect gives the archive, it is the only one here.
        return self.downloads / file.name

    def _downloaded_marker(self, file: CompetitionFile) -> Path:
        return self.downloads / f"{file.name}.downloaded"

    def is_done(self, file: CompetitionFile) -> bool:
        return done_record(self.data_dir, file) is not None

    def is_downloaded(self, file: CompetitionFile) -> bool:
        return self._downloaded_marker(file).is_file() and self.archive(file) is not None

    def archive(self, file: CompetitionFile) -> Path | None:
        folder = self.download_folder(file)
        if not folder.is_dir():
            return None
        candidates = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(KAGGLE_PARTIAL_SUFFIX)]
        named = [p for p in candidates if p.name == file.name]
        if named:
            return named[0]
        return candidates[0] if len(candidates) == 1 else None

    def mark_downloaded(self, file: CompetitionFile) -> None:
        atomic_write_text(self._downloaded_marker(file), file.name)

    def remove_download(self, file: CompetitionFile) -> None:
        shutil.rmtree(self.download_folder(file), ignore_errors=True)
        self._downloaded_marker(file).unlink(missing_ok=True)

    def remove_empty_download_dir(self) -> None:
        try:
            self.downloads.rmdir()
        except OSError:  # absent, or still holds another request's partial downloads
            pass


def _download(api: "KaggleApi", file: CompetitionFile, folder: Path, progress: bool) -> int:
    """Download one file with the kaggle client; return the bytes this run transferred."""
    folder.mkdir(parents=True, exist_ok=True)
    before = _largest_file_size(folder)
    action = f"downloading {file.name}"
    with _DownloadProgress(folder, file.name, enabled=progress), quiet_console(), kaggle_errors(action):
        try:
            api.competition_download_file(COMPETITION, file.name, path=str(folder), quiet=True)
        except ValueError:
            # kaggle's own size check after its retries: the partial stays for the next run to resume.
            raise KaggleError(f"download of {file.name} ended early: run again to resume it") from None
    after = _largest_file_size(folder)
    if after == 0:
        raise KaggleError(f"Kaggle sent nothing for {file.name}: run again")
    return max(after - before, 0)


def _extract(file: CompetitionFile, steps: _FileSteps, data_dir: Path, progress: bool) -> None:
    archive = steps.archive(file)
    if archive is None:
        raise DataError(steps.download_folder(file), f"the downloaded {file.name} is missing: run again")
    try:
        extract_competition_file(archive, file, data_dir, progress=progress)
    except ArchiveRejected as e:
        # Extracting the same bytes again would fail again: make the next run download a fresh copy.
        steps.remove_download(file)
        raise DataError(archive, f"{e.problem}; deleted it, run again to download it anew") from None
    steps.remove_download(file)


def _largest_file_size(folder: Path) -> int:
    sizes = [p.stat().st_size for p in folder.iterdir()
             if p.is_file() and not p.name.endswith(KAGGLE_PARTIAL_SUFFIX)] if folder.is_dir() else []
    return max(sizes, default=0)


def _expected_size(folder: Path) -> int | None:
    """The archive's full size, as the kaggle client notes it beside a download in progress."""
    for marker in folder.glob(f"*{KAGGLE_PARTIAL_SUFFIX}"):
        try:
            size = json.loads(marker.read_text()).get("size")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(size, int) and size > 0:
            return size
    return None


class _DownloadProgress:
    """Our own progress bar for a download the kaggle client runs quietly: it watches the file grow."""

    def __init__(self, folder: Path, name: str, *, enabled: bool):
        self.folder = folder
        self.enabled = enabled
        self._stop = threading.Event()
        self._bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=f"download {name}", disable=not enabled)
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "_DownloadProgress":
        if self.enabled:
            self._bar.update(_largest_file_size(self.folder))
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._refresh()
            if self._bar.total is None:  # finished before the client noted the size
                self._bar.total = self._bar.n
        self._bar.close()

    def _watch(self) -> None:
        while not self._stop.wait(PROGRESS_POLL_S):
            self._refresh()

    def _refresh(self) -> None:
        try:
            size = _largest_file_size(self.folder)
            total = _expected_size(self.folder)
        except OSError:  # the client is swapping files under us; look again next tick
            return
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(size - self._bar.n)

