"""Where a run's data comes from: the Kaggle layout in the data dir, Kaggle's zip files, a download, or the sample.

`get_data` follows `--dataset`:

    auto    the Carvana layout in the data dir, read as it is (the folder may be read-only); else
            Kaggle's zip files there (a Kaggle notebook's /kaggle/input/<competition>), extracted
            once into the output dir's data/; else a download when Kaggle credentials are set;
            else the built-in sample in <data dir>/sample, but only where no --data-dir was given:
            a folder the user named must hold the data (a typo is not filled with the sample).
    kaggle  the same, but never the sample: the layout, the zips, or a download (which needs a
            writable data dir: a read-only one is never written).
    sample  the built-in sample in <data dir>/sample.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from carvana.core.errors import DataError
from carvana.core.folders import writable_problem
from carvana.core.geometry import Size
from carvana.data.layout import is_carvana_data_dir, load_carvana_data
from carvana.kaggle import files as names
from carvana.kaggle.competition import DONE_DIR
from carvana.kaggle.zips import holds_competition_zips

log = logging.getLogger(__name__)

# What a DataSource's `origin` says (a run's record keeps it).
LOCAL = "local data"
KAGGLE = "Kaggle"
KAGGLE_ZIPS = "Kaggle's zip files"
SAMPLE = "built-in sample"
EXTRACTED_DIR_NAME = "data"  # under the output dir: Kaggle's zip files extracted
DOWNLOAD_DIR = ".download"  # carvana.kaggle.download's archives in progress


@dataclass(frozen=True)
class DataOptions:
    """Where the data comes from (the `--dataset` family of flags)."""

    dataset: str = "auto"  # auto | kaggle | sample
    high_quality: bool = False
    include_test: bool = True
    sample_cars: int | None = None
    sample_image_size: Size | None = None
    # The user named the data dir (--data-dir, or a settings file's data_dir): never the sample in its place.
    data_dir_given: bool = False


@dataclass(frozen=True)
class DataSource:
    """The folder the layout is read from, where it came from, and for the sample, its settings."""

    data_dir: Path
    origin: str  # LOCAL, KAGGLE, KAGGLE_ZIPS or SAMPLE
    sample_cars: int | None = None
    sample_image_size: Size | None = None
    archives: Path | None = None  # KAGGLE_ZIPS: the folder of the zip files `data_dir` was extracted from

    def describe(self) -> str:
        if self.archives is not None:
            return f"{self.origin} in {self.archives}, extracted in {self.data_dir}"
        return f"{self.origin} in {self.data_dir}"


def extracted_data_dir(output_dir: Path) -> Path:
    """Where Kaggle's zip files are extracted: a writable place under the output dir."""
    return Path(output_dir) / EXTRACTED_DIR_NAME


def sample_data_dir(data_dir: Path) -> Path:
    """The built-in sample lives beside real data, never mixed into it."""
    return Path(data_dir) / "sample"


def get_data(data_dir: Path, options: DataOptions, *, output_dir: Path, announce: bool = True) -> DataSource:
    """Find, extract, download or generate the data, following `--dataset` (see the module's docstring)."""
    from carvana.kaggle.credentials import kaggle_credentials_usable

    data_dir = Path(data_dir)
    choice = options.dataset
    if choice == "sample":
        source = ensure_sample(sample_data_dir(data_dir), options, announce)
    elif _holds_layout(data_dir, need_test=choice == "kaggle" and options.include_test):
        source = DataSource(data_dir, LOCAL if choice == "auto" else KAGGLE)
    elif holds_competition_zips(data_dir):
        source = _extract_zips(data_dir, options, output_dir, announce)
    elif choice == "kaggle" or kaggle_credentials_usable():  # credentials set but broken: refused, never the sample
        source = _download(data_dir, options, announce)
    elif _has_part_of_the_layout(data_dir) and not download_in_progress(data_dir):
        # Some of the Kaggle files are here but not all, and none can be downloaded: name the missing one
        # rather than quietly train on the sample (and replace a submission made from real data).
        load_carvana_data(data_dir, need_test=False)
        source = DataSource(data_dir, LOCAL)
    elif options.data_dir_given:
        raise DataError(data_dir, _nothing_here(data_dir))
    else:
        if announce:
            log.info(_why_the_sample(data_dir))
        source = ensure_sample(sample_data_dir(data_dir), options, announce)
    if announce:
        log.info(f"Dataset: {source.describe()}")
    return source


def prediction_data_dir(data_dir: Path, output_dir: Path) -> Path:
    """The data dir with a test set: the given one, else Kaggle's zip files there (extracted), else its sample.

    `predict`, `validate` and `submit` all find the data this way, so a submission made from the
    built-in sample (in input/sample) validates with the same default data dir it was made with.
    """
    data_dir = Path(data_dir)
    if (data_dir / names.SAMPLE_SUBMISSION_CSV).exists():
        return data_dir
    if holds_competition_zips(data_dir):
        return _extract_zips(data_dir, DataOptions(), output_dir, announce=True).data_dir
    sample = sample_data_dir(data_dir)
    if (sample / names.SAMPLE_SUBMISSION_CSV).exists():
        return sample
    raise DataError(data_dir / names.SAMPLE_SUBMISSION_CSV, f"missing (and no built-in sample in {sample}/): "
                    "no test set here (run `python main.py fetch` first, or pass --data-dir)")


def download_in_progress(data_dir: Path) -> bool:
    """A Kaggle fetch started here and has not written the completion marker: never trust it as data."""
    started = (data_dir / DOWNLOAD_DIR).exists() or (data_dir / DONE_DIR).exists()
    return started and names.read_complete_marker(data_dir) is None


def _holds_layout(data_dir: Path, need_test: bool) -> bool:
    """The Kaggle layout for training (and the test set's, with `need_test`) is here, not half-downloaded."""
    if not is_carvana_data_dir(data_dir) or download_in_progress(data_dir):
        return False
    has_test = any((data_dir / name).is_dir() for name in (names.TEST_DIR, names.TEST_HQ_DIR))
    return not need_test or (has_test and (data_dir / names.SAMPLE_SUBMISSION_CSV).is_file())


def _has_part_of_the_layout(data_dir: Path) -> bool:
    parts = (names.TRAIN_DIR, names.TRAIN_HQ_DIR, names.MASKS_DIR, names.MASKS_CSV,
             names.TEST_DIR, names.TEST_HQ_DIR, names.SAMPLE_SUBMISSION_CSV)
    return any((data_dir / part).exists() for part in parts)


def _extract_zips(zips_dir: Path, options: DataOptions, output_dir: Path, announce: bool) -> DataSource:
    from carvana.kaggle.zips import extract_competition_zips

    target = extracted_data_dir(output_dir)
    report = extract_competition_zips(zips_dir, target, high_quality=options.high_quality,
                                      include_test=options.include_test, progress=announce)
    if announce:
        log.info(report.summary(zips_dir, target))
    return DataSource(target, KAGGLE_ZIPS, archives=zips_dir)


def _download(data_dir: Path, options: DataOptions, announce: bool) -> DataSource:
    from carvana.kaggle.download import fetch_kaggle

    problem = writable_problem(data_dir)
    if problem is not None:
        raise DataError(data_dir, f"no Carvana data here to read, and Kaggle's cannot be downloaded into it "
                                  f"({problem}): pass a --data-dir that holds the data or its zip files, or a "
                                  "writable one to download into")
    if announce:
        log.info(f"Downloading Carvana from Kaggle into {data_dir} (resumable; complete files are skipped) ...")
    report = fetch_kaggle(data_dir, high_quality=options.high_quality, include_test=options.include_test,
                          progress=announce)
    if announce:
        log.info(f"  {report.summary()}")
    return DataSource(data_dir, KAGGLE)


def _nothing_here(data_dir: Path) -> str:
    from carvana.kaggle.credentials import credentials_hint

    what = "no such folder" if not data_dir.exists() else "no Carvana data here"
    return (f"{what}: expected Kaggle's files ({names.TRAIN_DIR}/, {names.MASKS_DIR}/, {names.MASKS_CSV}, ...) or "
            f"its zip files ({names.TRAIN_DIR}.zip, {names.MASKS_DIR}.zip, {names.MASKS_CSV}.zip, ...); to download "
            f"them, {credentials_hint()}; --dataset sample uses the built-in sample instead")


def _why_the_sample(data_dir: Path) -> str:
    from carvana.kaggle.credentials import credentials_hint

    if download_in_progress(data_dir):
        return (f"{data_dir} holds an unfinished Kaggle download (no {names.COMPLETE_MARKER}) and there are no "
                "Kaggle credentials to finish it: using the built-in sample dataset.")
    return (f"No Carvana data in {data_dir} and no Kaggle credentials: using the built-in sample dataset.\n"
            f"  (For the real data: {credentials_hint()}; see README, 'Kaggle credentials'.)")


def ensure_sample(sample_dir: Path, options: DataOptions, announce: bool) -> DataSource:
    """The built-in sample in `sample_dir`: the complete one there if it has the wanted settings, else
    a new one (replacing another one says so). Another process generating it at the same time is
    waited for, and its result reused."""
    from carvana.sample.dataset import ensure_sample_dataset, sample_is_complete, sample_settings

    if not sample_is_complete(sample_dir, options.sample_cars, options.sample_image_size):
        report = ensure_sample_dataset(sample_dir, train_cars=options.sample_cars, size=options.sample_image_size,
                                       announce=log.info if announce else None)
        if announce and report is not None:
            log.info(f"  {report.summary()}")
        elif announce:
            log.info(f"  {sample_dir}: generated meanwhile by another process; using it")
    cars, size = sample_settings(sample_dir)
    return DataSource(sample_dir, SAMPLE, sample_cars=cars, sample_image_size=size)
