"""The pipeline's stages as plain functions: get data -> split by car -> train -> score -> predict -> validate.

Each function is one step a user can run on its own (see `carvana.cli`); `run_all` chains them.
The functions log what they are doing and where things were written (carvana.core.console prints it).

Under torchrun (`carvana.core.distributed`) every process runs the same function: rank 0 reserves
the run and gets the data first, every process trains and validates its share, rank 0 alone scores
the validation cars at full resolution and hands the result (and the scored weights) to the others,
and every process predicts its share of the test set into a part file that rank 0 merges into the
submission (`carvana.submission.parts`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carvana.core import distributed
from carvana.core.errors import CarvanaError, CheckpointError, ConfigError, DataError
from carvana.core.folders import check_writable_dir
from carvana.core.geometry import Size
from carvana.core.process_lifetime import Terminated
from carvana.core.text import count, finished_epochs
from carvana.data.source import SAMPLE, DataOptions, DataSource, ensure_sample, get_data, prediction_data_dir
from carvana.kaggle import files as layout_names
from carvana.run.config import ENVIRONMENT_FIELDS, Config, Environment
from carvana.run.identity import (BEST_NAME, FOLD_PREFIX, LAST_NAME, Run, RunRecord, finished_message,
                                  fold_checkpoints, follow_run, open_existing_run, reserve_new_run, resumed_config)
from carvana.run.out_of_fold import read_out_of_fold_record, write_out_of_fold_record
from carvana.train.budget import TrainingBudget

if TYPE_CHECKING:
    from carvana.predict.predictor import Predictor
    from carvana.run.checkpoint import Checkpoint

log = logging.getLogger(__name__)

SUBMISSION_NAME = "submit.csv.gz"
# In a run's validation folder: the validation cars' true masks and its best checkpoint's predictions
# of them; a fold run's out-of-fold ones put every fold's together.
VALIDATION_TRUTH = "valid_truth.csv"
VALIDATION_PREDICTIONS = "valid_predictions.csv.gz"
OUT_OF_FOLD_TRUTH = "oof_truth.csv"
OUT_OF_FOLD_PREDICTIONS = "oof_predictions.csv.gz"


class TrainingInterrupted(CarvanaError):
    """Ctrl-C or SIGTERM during training: the last checkpoint is saved; the message says how to resume."""

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code  # 130 Ctrl-C, 143 SIGTERM


class PredictionStopped(CarvanaError):
    """SIGTERM while several processes (torchrun) predict the test set: no submission was written."""

    exit_code = 143


@dataclass(frozen=True)
class TrainingResult:
    config: Config  # the run's settings (a resumed run's model and name included)
    classifier: Any  # the CarvanaClassifier, holding the weights of `checkpoint`
    checkpoint: Checkpoint  # best.pt, or last.pt when no epoch improved on the monitored metric; as scored
    source: DataSource  # where the data came from (e.g. input/sample for the built-in sample)
    validation_dice: float  # at full resolution, on the validation cars
    validation_images: int
    validation_cars: int
    training_ended: str = ""  # why training ended: "finished all 20 epochs", "stopped at the time budget ..."
    photo_size: Size | None = None  # the training photos' size, at which the validation was scored
    # A fold run (--folds K): each fold's best checkpoint, and `validation_dice` is the out-of-fold Dice.
    fold_checkpoints: tuple[Path, ...] = ()


def tensorboard_command(log_dir: Path) -> str:
    """The command that shows a log dir's runs (relative dirs as ./logs, absolute ones as given)."""
    log_dir = Path(log_dir)
    return f"tensorboard --logdir {log_dir if log_dir.is_absolute() else f'./{log_dir}'}"


# --------------------------------------------------------------------------- training


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
        _check_resume_data_options(options, checkpoint.run, checkpoint.path)
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
            return _train_folds(run, options, need_test, dict(changes or {}), fit_input)
        return _train_in(run, options, need_test, checkpoint, fit_input)
    except BaseException:
        if fold_series and not any(run.models_dir.glob(f"{FOLD_PREFIX}*/{LAST_NAME}")):
            run.forget()  # a fold run none of whose folds started leaves no empty folders behind
        raise
    finally:
        run.release()


def _train_folds(run: Run, options: DataOptions, need_test: bool, changes: dict[str, Any],
                 fit_input: bool) -> TrainingResult:
    """Train and score every fold of the fold run `run` in turn, then score the out-of-fold predictions.

    A fold whose last.pt exists continues from it (one that finished is not trained again, only
    scored), so `--resume` of a fold run continues the fold that was cut and skips finished ones.
    The input size fitted to the photos for fold 1 is every fold's.
    """
    from carvana.run.checkpoint import Checkpoint
    from carvana.run.identity import fold_run, models_dir

    config = run.config
    results: list[TrainingResult] = []
    source: DataSource | None = None  # found once, for the first fold
    for fold in range(1, config.folds + 1):
        fold_config = config.replace(fold=fold)
        last = models_dir(fold_config, run.name) / LAST_NAME
        checkpoint = Checkpoint.load(last) if last.is_file() else None
        if checkpoint is not None:
            fold_config, notes = resumed_config(checkpoint.run_config(), changes, checkpoint.path)
            for note in notes:
                log.info(note)
        log.info(f"\nFold {fold}/{config.folds} of run {run.name}" + (f" (from {last})" if checkpoint else ""))
        result = _train_in(fold_run(fold_config, run.name, fold), options, need_test, checkpoint,
                           fit_input=fit_input and fold == 1 and checkpoint is None, source=source)
        source = result.source
        if fold == 1:
            config = dataclasses.replace(config, input_size=result.config.input_size,
                                         photo_size=result.config.photo_size)
            run.config = config
        _write_run_settings(run, fold_run=True)
        if results:
            results[-1] = dataclasses.replace(results[-1], classifier=None)  # one model in memory at a time
        results.append(result)
    dice, images, cars = _score_out_of_fold(run, results)
    last_fold = results[-1]
    return dataclasses.replace(last_fold, config=config, validation_dice=dice, validation_images=images,
                               validation_cars=cars, fold_checkpoints=tuple(r.checkpoint.path for r in results),
                               training_ended=f"trained {count(len(results), 'fold')} ({last_fold.training_ended} last)")


def _score_out_of_fold(run: Run, folds: list[TrainingResult]) -> tuple[float, int, int]:
    """Every fold's model on the validation cars it never saw, scored as one set: the out-of-fold Dice.

    One pass over the folds' validation photos (each by its own fold's best checkpoint) into one
    threshold search (`ValidationSearch`), so the threshold for the folds' ensemble is chosen on
    out-of-fold predictions of every car. Writes `oof_predictions.csv.gz` (at that threshold) and
    `oof_truth.csv` (train_masks.csv-style, for `score`) in the run's validation folder, and the
    result (`out_of_fold.json`, with the threshold) beside the folds' checkpoints; returns (Dice,
    images, cars). Under torchrun rank 0 scores and tells the others.
    """
    if distributed.is_main():
        shared = _out_of_fold_search(run, folds)
    return distributed.broadcast(shared if distributed.is_main() else None)


def _out_of_fold_search(run: Run, folds: list[TrainingResult]) -> tuple[float, int, int]:
    from carvana.data.datasets import make_test_loader
    from carvana.kaggle.rle_csv import read_rle_rows, write_rle_rows
    from carvana.predict.predictor import Predictor, predict_in_parts
    from carvana.predict.threshold import thresholds_to_try
    from carvana.run.identity import fold_name
    from carvana.submission.score import score_submission
    from carvana.submission.validation_search import ValidationSearch

    config = run.config
    folder = config.output_dir / "validation" / run.name
    predictions, truth_path = folder / OUT_OF_FOLD_PREDICTIONS, folder / OUT_OF_FOLD_TRUTH
    size = folds[0].photo_size
    fold_truth = [list(read_rle_rows(folder / fold_name(k) / VALIDATION_TRUTH)) for k in range(1, len(folds) + 1)]
    write_rle_rows(truth_path, ((row.img, row.rle_mask) for rows in fold_truth for row in rows))
    parts = []
    for result, rows in zip(folds, fold_truth):
        predictor = Predictor.from_checkpoint(result.config, result.checkpoint.path)
        photos = [result.source.data_dir / layout_names.TRAIN_DIR / row.img for row in rows]
        parts.append((predictor, make_test_loader(_existing_photos(result, photos), config.geometry, config)))
    thresholds = thresholds_to_try(config.threshold, config.tune_threshold)
    search = ValidationSearch(predictions, {row.img: row.rle_mask for rows in fold_truth for row in rows}, size,
                              thresholds, preferred=config.threshold, cleanup=config.mask_cleanup)
    images = sum(len(rows) for rows in fold_truth)
    log.info(f"\nScoring the {count(len(folds), 'fold')} out of fold: each fold's best checkpoint on its own "
             f"validation cars, {count(images, 'image')} at {size} ({count(len(thresholds), 'threshold')}) ...")
    with explain_out_of_memory(config, "scoring the folds out of fold"):
        predict_in_parts(parts, callbacks=[search], tta=config.tta)
    cars = sum(result.validation_cars for result in folds)
    report = score_submission(predictions, truth_path, size)
    assert search.result is not None
    log.info("\n".join([
        f"  {search.result.threshold_line(cars)}", f"  {search.result.cleanup_line(cars)}",
        f"Out-of-fold validation Dice at {size}: {report.mean_dice:.4f} over {count(report.n_images, 'image')} "
        f"of {count(cars, 'car')}, each predicted by the fold that never saw it",
        f"  predictions: {predictions}  (python main.py score {predictions} --truth {truth_path} --image-size {size})",
    ]))
    write_out_of_fold_record(run.models_dir, {
        "folds": len(folds), "dice": report.mean_dice, "images": report.n_images, "cars": cars,
        "threshold": search.result.threshold, "mask_cleanup": config.mask_cleanup, "photo_size": str(size),
        "predictions": str(predictions), "truth": str(truth_path),
        "checkpoints": [str(result.checkpoint.path) for result in folds]})
    return report.mean_dice, report.n_images, cars


def _existing_photos(result: TrainingResult, photos: list[Path]) -> list[Path]:
    """The validation photos as files (a JPEG of the training folder; the HQ folder's when the run used it)."""
    from carvana.data.layout import load_carvana_data

    if all(photo.is_file() for photo in photos):
        return photos
    data = load_carvana_data(result.source.data_dir, need_test=False)
    return [data.train_image_path(photo.name) for photo in photos]


def _reserve_run(config: Config, resumed: bool) -> Run:
    """The run's folders reserved and locked (by rank 0 under torchrun, which tells the others its name)."""
    if distributed.is_main():
        run = open_existing_run(config) if resumed else reserve_new_run(config)
        distributed.broadcast(run.name)
        return run
    name = distributed.broadcast(None)
    return follow_run(config.replace(run_name=name), name)


def _main_first(step: Any) -> Any:
    """`step()` on rank 0 first, then on the others (which find its work done: a download, the built-in sample)."""
    if not distributed.is_main():
        distributed.barrier()
    result = step()
    if distributed.is_main():
        distributed.barrier()
    return result


def resume_checkpoint(output_dir: Path, resume: str) -> Checkpoint:
    """`--resume`'s checkpoint: PATH (a checkpoint, or a run's folder: its last.pt), or "last": the newest
    run's last.pt in the output dir."""
    from carvana.run.checkpoint import Checkpoint

    if resume == "last":  # the newest last.pt of a run, or of a fold of a fold run
        models = Path(output_dir) / "models"
        found = sorted([*models.glob(f"*/{LAST_NAME}"), *models.glob(f"*/{FOLD_PREFIX}*/{LAST_NAME}")],
                       key=lambda path: path.stat().st_mtime)
        if found:
            return Checkpoint.load(found[-1])
        return Checkpoint.latest(models, LAST_NAME, missing=f"no run with a {LAST_NAME} to resume")
    return Checkpoint.latest(Path(resume), LAST_NAME)


def _train_in(run: Run, options: DataOptions, need_test: bool, checkpoint: Checkpoint | None,
              fit_input: bool = False, source: DataSource | None = None) -> TrainingResult:
    """`run_training` once the run's folders are reserved and locked; `checkpoint`: the one it resumes from.

    `fit_input`: take the input size for the data's photos (their shape, the preset's pixel count).
    `source`: the data, when already found (a fold run's later folds); else it is found here.
    """
    from carvana.data.layout import load_carvana_data
    from carvana.data.split import fold_split, split_by_car
    from carvana.predict.postprocess import probabilities_to_mask
    from carvana.train.classifier import CarvanaClassifier, CoarsePhase, TrainingInterruptedError
    from carvana.train.early_stopping import EarlyStopping
    from carvana.train.model_checkpoint import ModelCheckpoint
    from carvana.train.tensorboard import TensorBoardLogger, TensorBoardVisualizer

    config = run.config
    record = checkpoint.run if checkpoint is not None else None
    try:
        if source is None:
            source = _main_first(lambda: _resumed_data(config, options, record) if checkpoint is not None
                                 else get_data(config.data_dir, options, output_dir=config.output_dir))
        data = load_carvana_data(source.data_dir, need_test=need_test)
        input_note = ""
        if config.crop is not None and config.photo_size is None:
            config = _padded_for_photos(config, data.image_size, fit_input)
            run.config = config
        elif fit_input:
            config, input_note = _input_for_photos(config, data.image_size)
            run.config = config
        split = (fold_split(data.train_names, config.folds, config.fold, config.sample_size, config.seed)
                 if config.fold is not None else
                 split_by_car(data.train_names, config.validation_size, config.sample_size, config.seed))
        if record is not None and record.valid_cars:
            _check_same_split(record, split, source.data_dir, run.name)
        classifier = CarvanaClassifier(config)
        if checkpoint is not None:
            classifier.resume_from(checkpoint)
    except BaseException:
        run.forget()  # a run that never started leaves no empty folders behind
        raise
    log.info(_describe_run(run, data, split, classifier, source, input_note))
    run_record = RunRecord(
        data_dir=source.data_dir, origin=source.origin, train_cars=split.train_cars, valid_cars=split.valid_cars,
        sample_cars=source.sample_cars if record is None else record.sample_cars,
        sample_image_size=(None if source.sample_image_size is None else str(source.sample_image_size))
        if record is None else record.sample_image_size,
        photo_size=str(data.image_size),
    )

    budget = TrainingBudget.of(config)
    ended = budget.stop_reason(classifier.epoch, classifier.global_step, classifier.train_seconds)
    trained = False
    if config.epochs_cap and classifier.epoch >= config.epochs:
        saved_epochs = checkpoint.recipe.epochs if checkpoint is not None else config.epochs
        log.info(finished_message(run.name, classifier.epoch, saved_epochs, config.epochs))
        ended = f"had already {finished_epochs(classifier.epoch)}"
    elif ended is not None:
        log.info(f"run {run.name} {ended}; {budget.exhausted_hint()} (going on with its best checkpoint)")
        ended = f"had already {ended}"
    else:
        trained = True
        # Hooks run by each callback's `order` whatever this list's order: the checkpoint first.
        # Rank 0 alone writes the run's files; early stopping decides on metrics every process shares.
        callbacks = [
            ModelCheckpoint(run.models_dir, monitor="val_dice", mode="max", run_record=run_record.to_dict()),
            TensorBoardLogger(config.log_dir, str(run.folder)),
            TensorBoardVisualizer(config.log_dir, str(run.folder), upsample=probabilities_to_mask),
        ] if distributed.is_main() else []
        if config.early_stopping_patience:
            callbacks.append(EarlyStopping(monitor="val_dice", patience=config.early_stopping_patience, mode="max"))

        coarse = None
        if classifier.epoch < config.coarse_phase_epochs:
            coarse = CoarsePhase(*_loaders(data, split, config.coarse_geometry, config))
        train_loader, valid_loader = _loaders(data, split, run.geometry, config)
        try:
            with explain_out_of_memory(config, "training"):
                # The config's cap and budget decide the length (carvana.train.budget).
                ended = classifier.train(train_loader, valid_loader, callbacks=callbacks, coarse=coarse).stop_reason
        except TrainingInterruptedError as e:
            with contextlib.suppress(CarvanaError, OSError):  # the interruption is what to report
                _write_run_settings(run)  # a run that can be resumed has its settings beside its last.pt
            raise TrainingInterrupted(e.resume_hint, exit_code=e.exit_code) from None
        log.info(f"Training {ended}")
    _write_run_settings(run)

    dice, scored = _score_chosen(run, classifier, checkpoint, trained, data, split, config)
    return TrainingResult(config, classifier, scored, source, dice, len(split.valid),
                          len({layout_names.car_id(n) for n in split.valid}), training_ended=ended or "",
                          photo_size=data.image_size)


def _write_run_settings(run: Run, fold_run: bool = False) -> None:
    """The run's resolved settings as `config.yaml` in its checkpoint folder, to start the same recipe again
    (by rank 0, once the run has a checkpoint: a run that failed before its first epoch leaves no file).
    `fold_run`: the folder of a fold run's folds, whose file trains all of them again (each fold's own
    names its fold)."""
    from carvana.run.settings_file import CONFIG_FILE_NAME, write_settings_file

    path = run.models_dir / CONFIG_FILE_NAME
    if distributed.is_main() and (fold_run or run.last_path.exists()):
        what = "fold run" if fold_run else "run"
        write_settings_file(path, run.config, title=f"{what} {run.name}; the same recipe again:  "
                                                    f"python main.py train --config {path}")


def _score_chosen(run: Run, classifier, checkpoint: Checkpoint | None, trained: bool, data, split,
                  config: Config) -> tuple[float, Checkpoint]:
    """Load the run's best checkpoint (else its last) into the classifier and score it on the validation cars.

    Under torchrun rank 0 does it and hands the others its Dice, the checkpoint's entries (weights
    and optimiser state left out) and the weights, so that every process predicts with them.
    """
    from carvana.predict.predictor import Predictor

    if distributed.is_main():
        chosen = run.best_path if run.best_path.exists() else run.last_path
        if not chosen.exists() and checkpoint is not None:
            chosen = checkpoint.path
        if not trained and checkpoint is not None and chosen == checkpoint.path:
            scored = checkpoint  # the classifier holds its weights already: the file is not read again
        else:
            scored = classifier.load_weights(chosen)
        dice, scored = score_validation(Predictor(classifier.forward, tta=config.tta), data, split.valid, config,
                                        run.validation_dir, checkpoint=scored)
        _log_hparams(run, scored, dice)
    if not distributed.current().distributed:
        return dice, scored
    shared = distributed.broadcast((dice, _without_state(scored)) if distributed.is_main() else None)
    distributed.broadcast_module(classifier.model)
    return shared if not distributed.is_main() else (dice, scored)


def _log_hparams(run: Run, scored: Checkpoint, dice: float) -> None:
    """The run's settings and results in TensorBoard's HParams tab."""
    from carvana.predict.threshold import ThresholdRecord
    from carvana.train.tensorboard import log_hparams

    history = scored.payload.get("history") or []
    epoch_dice = [entry["val_dice"] for entry in history if isinstance(entry.get("val_dice"), float)]
    record = ThresholdRecord.from_payload(scored.payload)
    log_hparams(run.config.log_dir, str(run.folder), run.config.to_dict(),
                {"validation_dice": dice, "best_epoch_dice": max(epoch_dice) if epoch_dice else None,
                 "threshold": record.threshold if record else None,
                 "train_hours": float(scored.payload.get("train_seconds", 0.0)) / 3600},
                step=int(scored.payload.get("epoch", 0)))


def _without_state(checkpoint: Checkpoint) -> Checkpoint:
    """`checkpoint` without its tensors (weights, optimiser and scaler state): what the other processes need of it."""
    heavy = ("model_state", "optimizer_state", "scaler_state")
    return dataclasses.replace(checkpoint, payload={k: v for k, v in checkpoint.payload.items() if k not in heavy})


def _loaders(data, split, geometry, config: Config) -> tuple[Any, Any]:
    """(training, validation) loaders of the split at `geometry`, read from the decoded cache at its size."""
    from carvana.data.datasets import make_train_loader, make_valid_loader, open_training_cache

    cache, cache_note = open_training_cache(data, [*split.train, *split.valid], geometry, config)
    if cache_note:
        log.info(cache_note)
    return (make_train_loader(data, split.train, geometry, config, cache=cache),
            make_valid_loader(data, split.valid, geometry, config, cache=cache, shard=True))


def _input_for_photos(config: Config, photos: Size) -> tuple[Config, str]:
    """`config` with the input size its model should take for `photos`, and the banner's note on it
    (empty when the preset's own size fits them)."""
    from carvana.models.input_sizes import input_size_for_photos

    fitted = input_size_for_photos(config.model, config.input_size, photos,
                                   drawn_for=Size(*layout_names.ORIGINAL_SIZE))
    if fitted == config.input_size:
        return config, ""
    return config.replace(input_size=fitted), f" (from the {photos} photos' shape; --input-size overrides)"


def _padded_for_photos(config: Config, photos: Size, fit_input: bool) -> Config:
    """A --crop run's `config` with its photos' size, padded into the smallest input the net takes
    (or the --input-size given, which must hold them)."""
    from carvana.models.input_sizes import padded_input_size

    input_size = padded_input_size(config.model, photos) if fit_input else config.input_size
    return config.replace(photo_size=photos, input_size=input_size)


def _crop_note(config: Config) -> str:
    """The banner's words on a --crop run's sizes (none for other runs)."""
    if config.crop is None:
        return ""
    return f" (the {config.photo_size} photos whole, mirror-padded; training on {config.crop} crops of them)"


def _check_resume_data_options(options: DataOptions, record: RunRecord | None, checkpoint: Path) -> None:
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


def _resumed_data(config: Config, options: DataOptions, record: RunRecord | None) -> DataSource:
    """The data a resumed run was trained on: the folder its checkpoint names, unless --data-dir moved it.

    A built-in sample that another run replaced since is generated again as it was (it is seeded).
    """
    from carvana.data.layout import is_carvana_data_dir
    from carvana.data.source import download_in_progress

    if record is None or (config.data_dir != record.data_dir and config.data_dir != _given_data_dir(record)):
        return get_data(config.data_dir, options, output_dir=config.output_dir)
    if record.origin == SAMPLE:
        size = Size.parse(record.sample_image_size) if record.sample_image_size else None
        kept = DataOptions(dataset="sample", sample_cars=record.sample_cars, sample_image_size=size)
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


def _check_same_split(record: RunRecord, split: Any, data_dir: Path, run_name: str) -> None:
    if split.valid_cars == record.valid_cars and split.train_cars == record.train_cars:
        return
    gone = sorted(set(record.valid_cars) - set(split.valid_cars))
    example = f" (e.g. validation car {gone[0]} is not among them)" if gone else ""
    raise DataError(data_dir, f"its cars split differently from those run {run_name} was trained and validated "
                              f"on{example}: the data changed since; resume with the run's data, or start a "
                              "new run")


def explain_out_of_memory(config: Config, stage: str) -> contextlib.AbstractContextManager[None]:
    """Turn running out of memory (CPU or GPU) in `stage` into one line that says what to lower."""
    return _OutOfMemory(config, stage)


class _OutOfMemory(contextlib.AbstractContextManager):
    def __init__(self, config: Config, stage: str):
        self.config, self.stage = config, stage

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        if error is None or not _is_out_of_memory(error):
            return None
        device = "GPU" if "CUDA" in str(error) or type(error).__name__ == "OutOfMemoryError" else "memory"
        size = f"--crop {self.config.crop}" if self.config.crop is not None else f"--input-size {self.config.input_size}"
        raise CarvanaError(
            f"--batch-size {self.config.batch_size}: out of {device} while {self.stage} at {size}; lower "
            f"--batch-size or {size.split()[0]}, or use --amp bf16"
        ) from None


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in text for sign in ("can't allocate memory", "out of memory", "Cannot allocate memory"))


def _describe_run(run: Run, data, split, classifier, source, input_note: str = "") -> str:
    config, geometry = run.config, run.geometry
    cars = lambda names: len({layout_names.car_id(n) for n in names})  # noqa: E731
    params = sum(p.numel() for p in classifier.model.parameters())
    lr = float(classifier.optimizer.param_groups[0]["lr"])  # what the next epoch trains with
    base_lr = "" if math.isclose(lr, config.lr, rel_tol=1e-6) else f" (base {config.lr:g})"
    unfinished = not config.epochs_cap or classifier.epoch < config.epochs
    resumed = f" (from epoch {classifier.epoch + 1})" if 0 < classifier.epoch and unfinished else ""
    return "\n".join([
        f"Data: {count(len(split.train), 'training image')} ({count(cars(split.train), 'car')}), "
        f"{count(len(split.valid), 'validation image')} ({count(cars(split.valid), 'unseen car')}), "
        f"photos {data.image_size}",
        f"Model: {config.model} (width {config.width:g}, {params / 1e6:.2f}M parameters), "
        f"input {geometry.input_size} -> output {geometry.output_size}{input_note or _crop_note(config)}"
        f"{_coarse_note(config)}",
        f"Training: {TrainingBudget.of(config).describe()}{resumed}, batch {config.batch_size}, "
        f"{config.optimizer} lr {lr:.3g}"
        f"{base_lr}, scheduler {config.scheduler}, device {classifier.device}, {classifier.forward.layout.describe()}",
        f"Run: {run.name}  (logs: {run.log_dir}, checkpoints: {run.models_dir})",
    ])


def _coarse_note(config: Config) -> str:
    """The banner's words on the run's coarse phase (progressive resizing), or on why it has none."""
    from carvana.models.input_sizes import coarse_input_size

    if config.coarse_phase_epochs:
        return (f"; epochs 1-{config.coarse_phase_epochs} at "
                f"{coarse_input_size(config.model, config.input_size)} (coarse phase; --coarse-epochs 0 turns it off)")
    if config.coarse_epochs and config.crop is not None:
        return "; no coarse phase: --crop trains at full resolution"
    if config.coarse_epochs and not config.epochs_cap:
        return "; no coarse phase: a budget alone decides the run's length"
    if config.coarse_epochs:
        return f"; no coarse phase: --epochs {config.epochs} leaves no epoch after its {config.coarse_epochs}"
    return ""


def score_validation(predictor: Predictor, data, valid_names: list[str], config: Config, out_dir: Path,
                     checkpoint: Checkpoint | None = None) -> tuple[float, Checkpoint | None]:
    """Predict the validation cars through the submission path at full resolution and score them.

    This is the number Kaggle would compute: masks up-sampled to the photos' size, thresholded,
    run-length encoded, then compared with the true masks of cars the model never saw. From the same
    pass of the model, every threshold of the grid and every mask clean-up is scored; the threshold
    is chosen there (unless --threshold was given) and saved in `checkpoint`, the file these weights
    came from, and the predictions file and the Dice returned are those at it. `out_dir`: where the
    truth and predictions files go (the run's validation folder). Returns the Dice and the
    checkpoint with its threshold.
    """
    from carvana.data.datasets import make_test_loader
    from carvana.predict.threshold import ThresholdRecord, save_threshold, thresholds_to_try
    from carvana.submission.score import read_truth, score_submission
    from carvana.submission.validation_search import ValidationSearch

    truth = out_dir / VALIDATION_TRUTH
    predictions = out_dir / VALIDATION_PREDICTIONS
    _write_truth_csv(data, valid_names, truth)
    loader = make_test_loader([data.train_dir / n for n in valid_names], config.geometry, config)
    thresholds = thresholds_to_try(config.threshold, config.tune_threshold)
    search = ValidationSearch(predictions, {name: row.rle_mask for name, row in read_truth(truth).items()},
                              data.image_size, thresholds, preferred=config.threshold, cleanup=config.mask_cleanup)
    log.info(f"Scoring the best checkpoint on {count(len(valid_names), 'validation image')} at {data.image_size} "
             f"({count(len(thresholds), 'threshold')}) ...")
    with explain_out_of_memory(config, "scoring the validation cars"):
        predictor.predict(loader, tta=config.tta, callbacks=[search])
    cars = len({layout_names.car_id(n) for n in valid_names})
    log.info(f"  {search.result.threshold_line(cars)}")
    log.info(f"  {search.result.cleanup_line(cars)}")
    report = score_submission(predictions, truth, data.image_size)
    log.info(f"  validation Dice at {data.image_size}: {report.mean_dice:.4f} ({count(report.n_images, 'image')})")
    if checkpoint is not None:
        checkpoint = save_threshold(checkpoint, ThresholdRecord(search.result.threshold, chosen=config.tune_threshold,
                                                                validation_dice=report.mean_dice,
                                                                validation_cars=cars))
    return report.mean_dice, checkpoint


def _write_truth_csv(data, names: list[str], path: Path) -> None:
    """The true masks of `names` as a train_masks.csv-style file (from the CSV, else from the GIFs)."""
    from carvana.data.images import read_mask
    from carvana.kaggle import rle

    from carvana.kaggle.rle_csv import write_rle_rows

    known = data.train_rle if data.train_rle is not None else {}
    write_rle_rows(path, ((name, known[name] if name in known else rle.encode(read_mask(data.mask_path(name))))
                          for name in names))


# --------------------------------------------------------------------------- prediction


def predict_test_set(predictor: Predictor, config: Config, data_dir: Path, submission: Path,
                     trained_photos: Size | None = None, threshold_note: str = "") -> int:
    """Stream the test set's predictions into `submission` (atomically); return the row count.

    `threshold_note`: where `config.threshold` comes from, for the banner (`prediction_threshold`).

    `trained_photos`: the size of the photos the model was trained on, when known; test photos of a
    clearly different shape are warned about (they are resized to the same input all the same).

    Under torchrun each process predicts its share into a part file that rank 0 merges; whatever
    stops one of them (torchrun ends the others with SIGTERM when one fails), no part is left behind
    and a previous submission stays as it was.
    """
    from carvana.submission.parts import part_path, remove_parts

    ranks = distributed.current()
    if not ranks.distributed:
        return _predict_test_set(predictor, config, data_dir, submission, trained_photos, threshold_note)
    try:
        distributed.barrier()  # every process is here before any writes a part
        return _predict_test_set(predictor, config, data_dir, submission, trained_photos, threshold_note)
    except BaseException as error:
        part_path(submission, ranks.rank, ranks.world_size).unlink(missing_ok=True)
        if isinstance(error, Terminated):
            kept = f"{submission} is kept as it was" if submission.exists() else f"no {submission} was written"
            raise PredictionStopped(f"prediction stopped by SIGTERM (under torchrun: another process of the run "
                                    f"failed, or the run was stopped); {kept}") from None
        raise
    finally:
        if ranks.is_main:
            remove_parts(submission)  # merged, or never to be


def _predict_test_set(predictor: Predictor, config: Config, data_dir: Path, submission: Path,
                      trained_photos: Size | None, threshold_note: str) -> int:
    from carvana.data.datasets import make_test_loader
    from carvana.data.layout import load_carvana_data
    from carvana.submission.parts import merge_parts, part_path
    from carvana.submission.predictions_saver import PredictionsSaver

    data = load_carvana_data(data_dir, need_train=False)
    if trained_photos is not None:
        _warn_of_another_shape(data.image_size, trained_photos, config.input_size, data_dir)
    # The inputs the model takes: one per distinct geometry of an ensemble's members, else the config's.
    geometries = predictor.forward.input_geometries or (config.geometry,)
    loader = make_test_loader(data, geometries[0] if len(geometries) == 1 else geometries, config, shard=True)
    ranks = distributed.current()
    processes = f" by {ranks.world_size} processes" if ranks.distributed else ""
    log.info(f"Predicting {len(data.test_names)} test images{processes} into {submission} "
             f"({'; '.join(_prediction_settings(config, threshold_note))}) ...")
    written = part_path(submission, ranks.rank, ranks.world_size) if ranks.distributed else submission
    saver = PredictionsSaver(written, data.image_size, threshold=config.threshold, cleanup=config.mask_cleanup)
    with explain_out_of_memory(config, "predicting the test set"):
        predictor.predict(loader, tta=config.tta, callbacks=[saver])
    if ranks.distributed:
        distributed.barrier()  # every part is complete
        if ranks.is_main:
            merge_parts(submission, data.test_names, ranks.world_size)
    if ranks.is_main:
        validate_file(submission, data.data_dir / layout_names.SAMPLE_SUBMISSION_CSV, image_size=data.image_size)
    return len(data.test_names)


def _prediction_settings(config: Config, threshold_note: str) -> list[str]:
    """How the masks are made, for a banner: the threshold and where it comes from, the clean-up, TTA."""
    settings = [f"threshold {config.threshold:g}" + (f": {threshold_note}" if threshold_note else "")]
    if config.mask_cleanup != "none":
        settings.append(f"mask cleanup {config.mask_cleanup}")
    if config.tta:
        settings.append("flip TTA")
    return settings


def run_prediction(checkpoint: Path | list[Path] | None, overrides: dict[str, Any],
                   submission: Path | None = None, ensemble: Path | None = None) -> Path:
    """`predict`: load a checkpoint (or several: an ensemble), predict the test set, validate the file.

    `checkpoint`: a file, or a run's folder (its best.pt), or a list of them; default the newest
    run's best.pt in the output dir. `ensemble`: a folder whose subfolders' best.pt are the models
    (a fold run's folds). Two or more models predict as their ensemble (`_predict_with_ensemble`);
    one predicts as itself. The model and its settings are the checkpoint's recipe; where it runs
    (data and output dirs, device, workers) is `overrides` (the flags) else the defaults, never the
    checkpoint's: a checkpoint from another machine needs none of its paths.
    """
    from carvana.kaggle.rle_csv import is_gzip_name
    from carvana.predict.predictor import Predictor

    if submission is not None:
        is_gzip_name(submission)  # a name its content could not agree with is refused before any work
    members = ensemble_member_paths(checkpoint, ensemble)
    if ensemble is None and len(members) == 1 and fold_checkpoints(members[0]):
        ensemble = members[0]  # a fold run's folder means its folds' ensemble
        log.info(f"{ensemble} is a fold run: predicting with its folds' ensemble (as --ensemble {ensemble})")
        members = ensemble_member_paths(None, ensemble)
    if len(members) > 1:
        record = read_out_of_fold_record(ensemble) if ensemble is not None else None
        submission, rows = _predict_with_ensemble(members, overrides, submission, record)
        _report_submission(submission, rows)
        return submission
    saved = saved_model(members[0] if members else None, overrides.get("output_dir"))
    config = saved.recipe.replace(**overrides)
    config, threshold_note = prediction_config(config, saved.payload, given_threshold=overrides.get("threshold"))
    predictor = Predictor.from_checkpoint(config, saved.path, payload=saved.payload)
    data_dir = prediction_data_dir(config.data_dir, config.output_dir)
    submission = submission or config.output_dir / SUBMISSION_NAME
    rows = predict_test_set(predictor, config, data_dir, submission, trained_photos=_trained_photos(saved.run),
                            threshold_note=threshold_note)
    _report_submission(submission, rows)
    return submission


def _report_submission(submission: Path, rows: int) -> None:
    log.info(f"Submission: {submission} ({rows} rows, valid). "
             f"Upload with:  python main.py submit {submission} -m \"...\"")


def ensemble_member_paths(checkpoint: Path | list[Path] | None, ensemble: Path | None) -> list[Path]:
    """The checkpoints (files or run folders) `predict` was given: `--ensemble`'s best.pt files, else
    `--checkpoint`'s paths; empty for neither (the newest run's best.pt)."""
    from carvana.predict.ensemble import ensemble_checkpoints

    if ensemble is not None:
        return ensemble_checkpoints(ensemble, BEST_NAME)
    if checkpoint is None:
        return []
    return [Path(checkpoint)] if isinstance(checkpoint, (str, os.PathLike)) else [Path(p) for p in checkpoint]


def _predict_with_ensemble(paths: list[Path], overrides: dict[str, Any], submission: Path | None,
                           out_of_fold: dict[str, Any] | None = None) -> tuple[Path, int]:
    """`predict` with the ensemble of the checkpoints at `paths`: the mean of their probabilities
    (carvana.predict.ensemble), thresholded and cleaned up as chosen on the folds' out-of-fold
    predictions (`out_of_fold`, a fold run's record), else as the first checkpoint's are, unless
    --threshold / --mask-cleanup say otherwise, streamed into one submission; returns it and its rows."""
    from carvana.data.layout import load_carvana_data
    from carvana.predict.ensemble import EnsembleForward, EnsembleMember, averages_at_photo_size, describe_mean
    from carvana.predict.predictor import Predictor
    from carvana.run.checkpoint import Checkpoint

    first: Checkpoint | None = None
    first_config: Config | None = None
    members: list[EnsembleMember] = []
    described: list[str] = []
    for path in paths:
        if fold_checkpoints(path):
            raise CheckpointError(f"{path}: a fold run among other models; give its folds' checkpoints "
                                  f"({', '.join(map(str, fold_checkpoints(path)))}), or the fold run alone")
        saved = Checkpoint.latest(path, BEST_NAME)
        config = saved.recipe.replace(**overrides)
        if first is None:
            first, first_config = saved, config
        forward = Predictor.from_checkpoint(config, saved.path, payload=saved.payload).forward
        members.append(EnsembleMember(saved.path, forward, config.tta))
        crop = f", --crop {config.crop}" if config.crop is not None else ""
        described.append(f"{saved.path} ({config.model} width {config.width:g} at {config.input_size}{crop}"
                         f"{', flip TTA' if config.tta else ''})")
    assert first is not None and first_config is not None
    data_dir = prediction_data_dir(first_config.data_dir, first_config.output_dir)
    # Members of different covered sizes are averaged at the photos' size: the test photos' (read only for them).
    photo_size = load_carvana_data(data_dir, need_train=False).image_size if averages_at_photo_size(members) else None
    ensemble = EnsembleForward(members, photo_size)
    # Every member flipping is the ensemble's TTA; otherwise each member keeps its own (the banner lists which).
    config, threshold_note = prediction_config(first_config.replace(tta=ensemble.tta), first.payload,
                                               given_threshold=overrides.get("threshold"))
    threshold_source = "--threshold" if "threshold" in overrides else "the first model's"
    cleanup_source = "--mask-cleanup" if "mask_cleanup" in overrides else "the first model's"
    if out_of_fold is not None and "threshold" not in overrides:
        chosen = (f"chosen out of fold on {out_of_fold.get('cars')} cars (Dice {float(out_of_fold['dice']):.4f})"
                  if isinstance(out_of_fold.get("dice"), float) else "chosen out of fold")
        config, threshold_source, threshold_note = config.replace(threshold=out_of_fold["threshold"]), chosen, chosen
    elif "threshold" not in overrides:
        threshold_note = f"the first model's, {threshold_note}"
    if out_of_fold is not None and "mask_cleanup" not in overrides and out_of_fold.get("mask_cleanup"):
        config, cleanup_source = config.replace(mask_cleanup=out_of_fold["mask_cleanup"]), "the folds' run's"
    log.info(f"Ensemble of {len(members)} models, their probabilities averaged {describe_mean(ensemble)}: "
             f"{', '.join(described)}; threshold {config.threshold:g} ({threshold_source}), mask clean-up "
             f"{config.mask_cleanup} ({cleanup_source})")
    submission = submission or config.output_dir / SUBMISSION_NAME
    rows = predict_test_set(Predictor(ensemble, tta=config.tta), config, data_dir, submission,  # type: ignore[arg-type]
                            trained_photos=_trained_photos(first.run), threshold_note=threshold_note)
    return submission, rows


def saved_model(checkpoint: Path | None, output_dir: Path | None) -> Checkpoint:
    """The checkpoint to predict with: `checkpoint` (a file, or a run's folder: its best.pt), else the
    newest run's best.pt under `output_dir` (default: output)."""
    from carvana.run.checkpoint import Checkpoint

    if checkpoint is not None:
        folds = fold_checkpoints(Path(checkpoint))
        if folds:
            raise CheckpointError(f"{checkpoint}: a fold run of {count(len(folds), 'fold')}; this takes one model: "
                                  f"pass one fold's checkpoint, e.g. {folds[0]}")
        return Checkpoint.latest(checkpoint, BEST_NAME)
    return Checkpoint.latest(Path(output_dir or Environment.output_dir) / "models", BEST_NAME,
                             missing="no trained model yet; run `python main.py train` first or pass --checkpoint")


def run_cutout(photos: list[Path], out_dir: Path, checkpoint: Path | None, overrides: dict[str, Any]) -> int:
    """`cutout`: the mask and the transparent-background photo of each photo (files or folders of JPEG/PNG,
    any size) into `out_dir`; returns how many could not be read (each reported in one line)."""
    from carvana.cutout.cutouts import find_photos, write_cutouts
    from carvana.predict.predictor import Predictor

    check_writable_dir(out_dir, "cutouts")  # before the model is loaded or any photo read
    found = find_photos(photos, out_dir)
    saved = saved_model(checkpoint, overrides.get("output_dir"))
    config = saved.recipe.replace(**overrides)
    config, threshold_note = prediction_config(config, saved.payload, given_threshold=overrides.get("threshold"))
    predictor = Predictor.from_checkpoint(config, saved.path, payload=saved.payload)
    log.info(f"Cutting out {len(found)} photo{'s' if len(found) != 1 else ''} into {out_dir} with {saved.path} "
             f"({'; '.join(_prediction_settings(config, threshold_note))}) ...")
    report = write_cutouts(predictor, found, out_dir, config.geometry, config.threshold, config.mask_cleanup)
    skipped = f"; {len(report.failed)} skipped (see above)" if report.failed else ""
    log.info(f"Cutouts: {len(report.written)} photos in {out_dir} (NAME_mask.png and NAME_cutout.png each){skipped}")
    return len(report.failed)


def prediction_config(config: Config, payload: dict[str, Any], given_threshold: float | None) -> tuple[Config, str]:
    """`config` with the threshold to predict with (`--threshold`, else the checkpoint's, else the
    config's), and where it comes from for the banner."""
    from carvana.predict.threshold import prediction_threshold

    threshold, note = prediction_threshold(payload, given_threshold, config.threshold)
    return config.replace(threshold=threshold), note


# Test photos whose aspect differs from the training photos' by more than this get a warning.
ASPECT_WARNING = 0.10


def _trained_photos(record: RunRecord | None) -> Size | None:
    """The size of the photos a checkpoint's run was trained on (None for checkpoints that do not record it)."""
    try:
        return Size.parse(record.photo_size) if record is not None and record.photo_size else None
    except (ConfigError, AttributeError):
        return None


def _warn_of_another_shape(test_photos: Size, trained_photos: Size, input_size: Size, data_dir: Path) -> None:
    from carvana.core.geometry import aspect_difference

    if aspect_difference(test_photos, trained_photos) > ASPECT_WARNING:
        # INFO, not WARNING: the line stays on stdout with the prediction's report (warnings go to stderr).
        log.info(f"warning: {data_dir}: the test photos are {test_photos}, another shape than the {trained_photos} "
                 f"photos the model was trained on; they are resized to its input {input_size} all the same, "
                 "which may cost accuracy (a model trained on photos of their shape fits them better)")


def run_all(config: Config, options: DataOptions, resume: str | None = None,
            changes: dict[str, Any] | None = None) -> None:
    """`python main.py`: the whole job, ending with a summary of where everything was written."""
    start = time.monotonic()
    result = run_training(config, options, resume, need_test=True, changes=changes)
    from carvana.predict.predictor import Predictor

    config, threshold_note = prediction_config(result.config, result.checkpoint.payload, None)
    submission = config.output_dir / SUBMISSION_NAME
    if result.fold_checkpoints:  # a fold run predicts with every fold, at the out-of-fold threshold
        folds_dir = result.fold_checkpoints[0].parent.parent
        where = {name: getattr(result.config, name) for name in ENVIRONMENT_FIELDS}
        submission, rows = _predict_with_ensemble(list(result.fold_checkpoints), where, submission,
                                                  read_out_of_fold_record(folds_dir))
    else:
        rows = predict_test_set(Predictor(result.classifier.forward, tta=config.tta), config, result.source.data_dir,
                                submission, threshold_note=threshold_note)
    minutes, seconds = divmod(int(time.monotonic() - start), 60)
    log.info("\n".join([
        "",
        f"Done in {minutes}m{seconds:02d}s.",
        f"  Submission:      {submission} ({rows} rows, valid)",
        f"  {'Out-of-fold Dice' if result.fold_checkpoints else 'Validation Dice'}: {result.validation_dice:.4f} "
        f"at full resolution on {count(result.validation_cars, 'unseen car')} "
        f"({count(result.validation_images, 'image')})",
        f"  Training:        {result.training_ended}",
        f"  Best checkpoint: {result.checkpoint.path}" if not result.fold_checkpoints else
        f"  Fold checkpoints: {result.fold_checkpoints[0].parent.parent}/fold-*/best.pt (predicted as their ensemble)",
        f"  TensorBoard:     {tensorboard_command(config.log_dir)}",
        f"  Upload:          python main.py submit {submission} -m \"{config.run_name}\"",
    ]))


# --------------------------------------------------------------------------- validate / score / submit


def validate_file(path: Path, sample_submission: Path | None = None, image_size: Size | None = None,
                  data_dir: Path | None = None, output_dir: Path | None = None) -> None:
    """`validate`: check `path` against the test ids and the photo size of the data it was made from.

    Without `sample_submission`, the data dir (default: input) is found as `predict` finds it: the
    folder itself if it holds sample_submission.csv, else Kaggle's zip files there as extracted in
    `output_dir` (default: output), else its built-in sample. Without
    `image_size`, the size is read from that data dir's test photos, or from the folder of the
    given sample submission when it holds test photos, else it is Kaggle's 1918x1280.
    """
    from carvana.submission.validate import validate_submission

    if sample_submission is None:
        data_dir = prediction_data_dir(Path(data_dir) if data_dir is not None else Config.data_dir,
                                       output_dir or Config.output_dir)
        sample_submission = data_dir / layout_names.SAMPLE_SUBMISSION_CSV
    elif data_dir is None and _has_test_photos(Path(sample_submission).parent):
        data_dir = Path(sample_submission).parent
    if image_size is None:
        image_size = _image_size_of(data_dir) if data_dir is not None else Size(*layout_names.ORIGINAL_SIZE)
    report = validate_submission(Path(path), Path(sample_submission), image_size)
    log.info(f"{path}: valid ({report.rows} rows, every id of {sample_submission} exactly once, "
             f"RLE inside {image_size})")


def _has_test_photos(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in (layout_names.TEST_DIR, layout_names.TEST_HQ_DIR))


def _image_size_of(data_dir: Path) -> Size:
    """The photo size of a data dir's test images."""
    from carvana.data.layout import load_carvana_data

    return load_carvana_data(data_dir, need_train=False).image_size


def score_file(path: Path, truth: Path, image_size: Size) -> float:
    from carvana.submission.score import score_submission

    report = score_submission(Path(path), Path(truth), image_size)
    log.info(f"{path}: mean Dice {report.mean_dice:.5f} over {report.n_images} images of {truth}")
    return report.mean_dice


def submit_file(path: Path, message: str, data_dir: Path | None = None, validate: bool = True,
                timeout: float = 600.0, output_dir: Path | None = None) -> None:
    """`submit`: validate against the data found as `validate` finds it (unless told not to), then upload."""
    from carvana.kaggle.submit import submit_to_kaggle

    if validate:
        try:
            found = prediction_data_dir(Path(data_dir) if data_dir is not None else Config.data_dir,
                                        output_dir or Config.output_dir)
        except DataError as e:
            raise DataError(e.path, "missing: needed to validate the submission first "
                                    "(pass --data-dir, or --no-validate)") from None
        validate_file(path, data_dir=found)
    log.info(f"Uploading {path} to Kaggle ({layout_names.COMPETITION}) ...")
    result = submit_to_kaggle(Path(path), message, timeout=timeout)
    log.info(result.describe())

