"""`train`: reserve the run (new, or resumed from its checkpoint), then train it once or fold by fold.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from carvana.core import distributed
from carvana.core.folders import check_writable_dir
from carvana.data.source import DataOptions
from carvana.pipeline.folds import train_folds
from carvana.pipeline.one_run import train_one_run
from carvana.pipeline.results import TrainingResult
from carvana.pipeline.resumed_data import check_resume_data_options, resume_checkpoint
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config
from carvana.run.identity import (FOLD_PREFIX, LAST_NAME, Run, follow_run, open_existing_run, reserve_new_run,
                                  resumed_config)

log = logging.getLogger(__name__)


def run_training(config: Config, options: DataOptions, resume: str | None = None,
                 need_test: bool = False, changes: dict[str, Any] | None = None) -> TrainingResult:
    """Get data, split by car, train with callbacks, score the best checkpoint at full resolution.

    `need_test`: check the test set's layout too (its ids and photos' presence) before training, so
    that a run which ends by predicting it does not find a missing file only after training.

    With `resume` (a checkpoint, a run's folder, or "last") the run continues as it was saved: its
    recipe, where it ran (data, output and log dirs, device, workers) and its split; `changes` are the
    settings given explicitly (e.g. the command line's flags), each applied and printed, or refused
    where it cannot apply to a resumed run. A new run uses `config`,
    with its input size fitted to the photos' shape unless `changes` names `input_size` (see
    `carvana.models.input_sizes.input_size_for_photos`); a resumed run keeps the input size it was saved with.
    """
    checkpoint: Checkpoint | None = None
    if resume:
        checkpoint = resume_checkpoint(config.output_dir, resume)
        config, notes = resumed_config(checkpoint.run_config(), dict(changes or {}), checkpoint.path)
        check_resume_data_options(options, checkpoint.run, checkpoint.path)
        for note in notes:
            log.info(note)
    fold_series = config.folds > 1
    if fold_series:  # the run of all its folds, whichever fold's checkpoint `resume` found
        config = dataclasses.replace(config, fold=None)
    # Fail now, not after the first epoch (or the download): outputs must be writable.
    check_writable_dir(config.output_dir / "models", "checkpoints")
    check_writable_dir(config.log_dir, "TensorBoard logs")
    run = _reserve_run(config, resumed=checkpoint is not None)
    try:
        fit_input = checkpoint is None and "input_size" not in (changes or {})
        if fold_series:
            return train_folds(run, options, need_test, dict(changes or {}), fit_input)
        return train_one_run(run, options, need_test, checkpoint, fit_input)
    except BaseException:
        if fold_series and not any(run.models_dir.glob(f"{FOLD_PREFIX}*/{LAST_NAME}")):
            run.forget()  # a fold run none of whose folds started leaves no empty folders behind
        raise
    finally:
        run.release()


def _reserve_run(config: Config, resumed: bool) -> Run:
    """The run's folders reserved and locked (by rank 0 under torchrun, which tells the others its name)."""
    if distributed.is_main():
        run = open_existing_run(config) if resumed else reserve_new_run(config)
        distributed.broadcast(run.name)
        return run
    name = distributed.broadcast(None)
    return follow_run(config.replace(run_name=name), name)
