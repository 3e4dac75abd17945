"""What a resumed run continues from: its checkpoint (`--resume`), and the data and split it was trained on.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from carvana.core.errors import ConfigError, DataError
from carvana.data.layout import is_carvana_data_dir
from carvana.data.source import SAMPLE, DataOptions, DataSource, download_in_progress, ensure_sample, get_data
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config
from carvana.run.identity import FOLD_PREFIX, LAST_NAME, RunRecord

log = logging.getLogger(__name__)


def resume_checkpoint(output_dir: Path, resume: str) -> Checkpoint:
    """`--resume`'s checkpoint: PATH (a checkpoint, or a run's folder: its last.pt), or "last": the newest
    run's last.pt in the output dir."""
    if resume == "last":  # the newest last.pt of a run, or of a fold of a fold run
        models = Path(output_dir) / "models"
        found = sorted([*models.glob(f"*/{LAST_NAME}"), *models.glob(f"*/{FOLD_PREFIX}*/{LAST_NAME}")],
                       key=lambda path: path.stat().st_mtime)
        if found:
            return Checkpoint.load(found[-1])
        return Checkpoint.latest(models, LAST_NAME, missing=f"no run with a {LAST_NAME} to resume")
    return Checkpoint.latest(Path(resume), LAST_NAME)


def check_resume_data_options(options: DataOptions, record: RunRecord | None, checkpoint: Path) -> None:
    """Data flags on resume: refused where they would change the data the run was split on."""
    if record is None:
        return
    sample = record.origin == SAMPLE
    if options.dataset == "sample" and not sample or options.dataset == "kaggle" and sample:
        raise ConfigError(f"--dataset {options.dataset}: {checkpoint} was trained on {record.origin} in "
                          f"{record.data_dir}; a resumed run keeps its data")
    for flag, value, kept in (("--sample-cars", options.sample_cars, record.sample_cars),
                              ("--sample-image-size", options.sample_image_size, record.sample_image_size)):
        if value is not None and (not sample or str(value) != str(kept)):
            raise ConfigError(f"{flag} {value}: {checkpoint} was trained on {record.origin} in {record.data_dir}; "
                              "other sample data would change its split (start a new run to change it)")


def resumed_data(config: Config, options: DataOptions, record: RunRecord | None) -> DataSource:
    """The data a resumed run was trained on: the folder its checkpoint names, unless --data-dir moved it.

    A built-in sample that another run replaced since is generated again as it was (it is seeded).
    """
    if record is None or (config.data_dir != record.data_dir and config.data_dir != _given_data_dir(record)):
        return get_data(config.data_dir, options, output_dir=config.output_dir)
    if record.origin == SAMPLE:
        kept = DataOptions(dataset="sample", sample_cars=record.sample_cars, sample_image_size=record.sample_image_size)
        source = ensure_sample(record.data_dir, kept, announce=True)
        log.info(f"Dataset: {record.origin} in {record.data_dir} (the run's data)")
        return source
    if is_carvana_data_dir(record.data_dir) and not download_in_progress(record.data_dir):
        log.info(f"Dataset: {record.origin} in {record.data_dir} (the run's data)")
        return DataSource(record.data_dir, record.origin)
    return get_data(config.data_dir, options, output_dir=config.output_dir)


def _given_data_dir(record: RunRecord) -> Path:
    """The --data-dir a run was started with (the sample lives in its `sample` subfolder)."""
    return record.data_dir.parent if record.origin == SAMPLE else record.data_dir


def check_same_split(record: RunRecord, split: Any, data_dir: Path, run_name: str) -> None:
    if split.valid_cars == record.valid_cars and split.train_cars == record.train_cars:
        return
    gone = sorted(set(record.valid_cars) - set(split.valid_cars))
    example = f" (e.g. validation car {gone[0]} is not among them)" if gone else ""
    raise DataError(data_dir, f"its cars split differently from those run {run_name} was trained and validated "
                              f"on{example}: the data changed since; resume with the run's data, or start a "
                              "new run")
