"""`train`: the run's settings decided, its folders reserved, its data found, then trained once or fold by fold.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from carvana.core import distributed
from carvana.core.folders import check_writable_dir
from carvana.data.layout import load_carvana_data
from carvana.data.source import DataOptions, get_data
from carvana.models.pretrained import check_source
from carvana.pipeline.folds import train_folds
from carvana.pipeline.one_run import main_first, train_one_run
from carvana.pipeline.results import RunData, TrainingResult
from carvana.pipeline.resumed_data import check_resume_data_options, resume_checkpoint, resumed_data
from carvana.pipeline.settings import resumed_settings, settings_for_photos
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config
from carvana.run.identity import FOLD_PREFIX, LAST_NAME, Run, follow_run, open_existing_run, reserve_new_run

log = logging.getLogger(__name__)


def run_training(config: Config, options: DataOptions, resume: str | None = None,
                 need_test: bool = False, given: Mapping[str, Any] | None = None) -> TrainingResult:
    """Get data, split by car, train with callbacks, score the best checkpoint at full resolution.

    `need_test`: check the test set's layout too (its ids and photos' presence) before training, so
    that a run which ends by predicting it does not find a missing file only after training.

    With `resume` (a checkpoint, a run's folder, or "last") the run continues as it was saved: its
    recipe, where it ran (data, output and log dirs, device, workers) and its split; `given` are the
    settings given explicitly (e.g. the command line's flags), each applied and printed, or refused
    where it cannot apply to a resumed run. A new run uses `config`, with its input size fitted to the
    photos' shape unless `given` names `input_size` (`carvana.pipeline.settings.settings_for_photos`).
    """
    given = dict(given or {})
    checkpoint = resume_checkpoint(config.output_dir, resume) if resume else None
    if checkpoint is not None:
        config, notes = resumed_settings(checkpoint.run_config(), given, checkpoint.path)
        check_resume_data_options(options, checkpoint.run, checkpoint.path)
        for note in notes:
            log.info(note)
    else:
        check_source(config.encoder_weights)  # a mistyped weights file: before the data, not after
    if config.folds > 1:  # the run of all its folds, whichever fold's checkpoint `resume` found
        config = config.replace(fold=None) if config.fold is not None else config
    # Fail now, not after the first epoch (or the download): outputs must be writable.
    check_writable_dir(config.output_dir / "models", "checkpoints")
    check_writable_dir(config.log_dir, "TensorBoard logs")
    run = _reserve_run(config, resumed=checkpoint is not None)
    try:
        fit_input = checkpoint is None and "input_size" not in given
        data, config, input_note = _data_and_settings(run, config, options, checkpoint, need_test, fit_input)
        if config.folds > 1:
            return train_folds(run, config, data, given, input_note)
        return train_one_run(run, config, data, checkpoint, input_note)
    except BaseException:
        if config.folds > 1 and not any(run.models_dir.glob(f"{FOLD_PREFIX}*/{LAST_NAME}")):
            run.forget()  # a fold run none of whose folds started leaves no empty folders behind
        raise
    finally:
        run.release()


def _data_and_settings(run: Run, config: Config, options: DataOptions, checkpoint: Checkpoint | None,
                       need_test: bool, fit_input: bool) -> tuple[RunData, Config, str]:
    """The run's data (a resumed run's own, else found as `options` say), and its final settings: `config`
    with its name and what its photos decide (`settings_for_photos`), with the banner's note on them."""
    record = checkpoint.run if checkpoint is not None else None
    try:
        source = main_first(lambda: resumed_data(config, options, record) if checkpoint is not None
                            else get_data(config.data_dir, options, output_dir=config.output_dir))
        data = RunData(source, load_carvana_data(source.data_dir, need_test=need_test))
        final, note = settings_for_photos(config.replace(run_name=run.name), data.layout.image_size, fit_input)
        return data, final, note
    except BaseException:
        run.forget()  # a run that never started leaves no empty folders behind
        raise


def _reserve_run(config: Config, resumed: bool) -> Run:
    """The run's folders reserved and locked (by rank 0 under torchrun, which tells the others its name)."""
    if distributed.is_main():
        run = open_existing_run(config) if resumed else reserve_new_run(config)
        distributed.broadcast(run.name)
        return run
    name = distributed.broadcast(None)
    return follow_run(config.replace(run_name=name), name)
