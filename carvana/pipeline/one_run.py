"""One training of one run (or one fold) in its reserved folders, with its final settings: split, model,
callbacks, then the best checkpoint scored at full resolution. Under torchrun every process runs it; rank 0 writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any

from carvana.core import distributed
from carvana.core.errors import CarvanaError
from carvana.core.text import finished_epochs
from carvana.data.datasets import make_train_loader, make_valid_loader, open_training_cache
from carvana.data.split import fold_split, split_by_car
from carvana.kaggle import files as layout_names
from carvana.pipeline.memory import explain_out_of_memory
from carvana.pipeline.report import describe_run
from carvana.pipeline.results import RunData, TrainingInterrupted, TrainingResult
from carvana.pipeline.resumed_data import check_same_split
from carvana.pipeline.score import score_validation
from carvana.predict.postprocess import probabilities_to_mask
from carvana.predict.predictor import Predictor
from carvana.predict.threshold import ThresholdRecord
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config
from carvana.run.identity import Run, RunRecord, finished_message
from carvana.run.settings_file import CONFIG_FILE_NAME, write_settings_file
from carvana.train.budget import TrainingBudget
from carvana.train.classifier import CarvanaClassifier, CoarsePhase, TrainingInterruptedError
from carvana.train.early_stopping import EarlyStopping
from carvana.train.model_checkpoint import ModelCheckpoint
from carvana.train.loggers import TensorBoardLogger
from carvana.train.tensorboard import MetricCurves, TensorBoardVisualizer

log = logging.getLogger(__name__)


def main_first(step: Any) -> Any:
    """`step()` on rank 0 first, then on the others (which find its work done: a download, the built-in sample)."""
    if not distributed.is_main():
        distributed.barrier()
    result = step()
    if distributed.is_main():
        distributed.barrier()
    return result


def train_one_run(run: Run, config: Config, data: RunData, checkpoint: Checkpoint | None,
                  input_note: str = "") -> TrainingResult:
    """Train the run (or fold) `run` with its final settings `config` on `data`, then score its best checkpoint.

    `checkpoint`: the one it resumes from; `input_note`: the banner's words on how its input size was chosen.
    """
    source, layout = data.source, data.layout
    record = checkpoint.run if checkpoint is not None else None
    try:
        split = (fold_split(layout.train_names, config.folds, config.fold, config.sample_size, config.seed)
                 if config.fold is not None else
                 split_by_car(layout.train_names, config.validation_size, config.sample_size, config.seed))
        if record is not None and record.valid_cars:
            check_same_split(record, split, source.data_dir, run.name)
        classifier = CarvanaClassifier(config, pretrained=checkpoint is None)
        if checkpoint is not None:
            classifier.resume_from(checkpoint)
    except BaseException:
        run.forget()  # a run that never started leaves no empty folders behind
        raise
    log.info(describe_run(run, config, layout, split, classifier, input_note))
    run_record = RunRecord(
        data_dir=source.data_dir, origin=source.origin, train_cars=split.train_cars, valid_cars=split.valid_cars,
        sample_cars=source.sample_cars if record is None else record.sample_cars,
        sample_image_size=source.sample_image_size if record is None else record.sample_image_size,
        photo_size=layout.image_size,
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
        logger = TensorBoardLogger(config.log_dir, str(run.folder))
        callbacks = [
            ModelCheckpoint(run.models_dir, monitor="val_dice", mode="max", run_record=run_record.to_dict()),
            MetricCurves(logger),
            TensorBoardVisualizer(logger, upsample=probabilities_to_mask),
        ] if distributed.is_main() else []
        if config.early_stopping_patience:
            callbacks.append(EarlyStopping(monitor="val_dice", patience=config.early_stopping_patience, mode="max"))

        coarse = None
        if classifier.epoch < config.coarse_phase_epochs:
            coarse = CoarsePhase(*_loaders(layout, split, config.coarse_geometry, config))
        train_loader, valid_loader = _loaders(layout, split, config.geometry, config)
        try:
            with explain_out_of_memory(config, "training"):
                # The config's cap and budget decide the length (carvana.train.budget).
                ended = classifier.train(train_loader, valid_loader, callbacks=callbacks, coarse=coarse).stop_reason
        except TrainingInterruptedError as e:
            with contextlib.suppress(CarvanaError, OSError):  # the interruption is what to report
                write_run_settings(run, config)  # a run that can be resumed has its settings beside its last.pt
            raise TrainingInterrupted(e.resume_hint, exit_code=e.exit_code) from None
        log.info(f"Training {ended}")
    write_run_settings(run, config)

    dice, scored = _score_chosen(run, config, classifier, checkpoint, trained, layout, split)
    return TrainingResult(config, classifier, scored, data, dice, len(split.valid),
                          len({layout_names.car_id(n) for n in split.valid}), training_ended=ended or "")


def write_run_settings(run: Run, config: Config, fold_run: bool = False) -> None:
    """The run's resolved settings as `config.yaml` in its checkpoint folder, to start the same recipe again
    (by rank 0, once the run has a checkpoint: a run that failed before its first epoch leaves no file).
    `fold_run`: the folder of a fold run's folds, whose file trains all of them again (each fold's own
    names its fold)."""
    path = run.models_dir / CONFIG_FILE_NAME
    if distributed.is_main() and (fold_run or run.last_path.exists()):
        what = "fold run" if fold_run else "run"
        write_settings_file(path, config, title=f"{what} {run.name}; the same recipe again:  "
                                                    f"python main.py train --config {path}")


def _score_chosen(run: Run, config: Config, classifier, checkpoint: Checkpoint | None, trained: bool, data,
                  split) -> tuple[float, Checkpoint]:
    """Load the run's best checkpoint (else its last) into the classifier and score it on the validation cars.

    Under torchrun rank 0 does it and hands the others its Dice, the checkpoint's entries (weights
    and optimiser state left out) and the weights, so that every process predicts with them.
    """
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
        _log_hparams(run, config, scored, dice)
    if not distributed.current().distributed:
        return dice, scored
    shared = distributed.broadcast((dice, _without_state(scored)) if distributed.is_main() else None)
    distributed.broadcast_module(classifier.model)
    return shared if not distributed.is_main() else (dice, scored)


def _log_hparams(run: Run, config: Config, scored: Checkpoint, dice: float) -> None:
    """The run's settings and results in TensorBoard's HParams tab."""
    history = scored.payload.get("history") or []
    epoch_dice = [entry["val_dice"] for entry in history if isinstance(entry.get("val_dice"), float)]
    record = ThresholdRecord.from_payload(scored.payload)
    TensorBoardLogger(config.log_dir, str(run.folder)).log_hyperparams(
        config.to_dict(), {"validation_dice": dice, "best_epoch_dice": max(epoch_dice) if epoch_dice else None,
                           "threshold": record.threshold if record else None,
                           "train_hours": float(scored.payload.get("train_seconds", 0.0)) / 3600},
        step=int(scored.payload.get("epoch", 0)))


def _without_state(checkpoint: Checkpoint) -> Checkpoint:
    """`checkpoint` without its tensors (weights, optimiser and scaler state): what the other processes need of it."""
    heavy = ("model_state", "optimizer_state", "scaler_state")
    return dataclasses.replace(checkpoint, payload={k: v for k, v in checkpoint.payload.items() if k not in heavy})


def _loaders(data, split, geometry, config: Config) -> tuple[Any, Any]:
    """(training, validation) loaders of the split at `geometry`, read from the decoded cache at its size."""
    cache, cache_note = open_training_cache(data, [*split.train, *split.valid], geometry, config)
    if cache_note:
        log.info(cache_note)
    return (make_train_loader(data, split.train, geometry, config, cache=cache),
            make_valid_loader(data, split.valid, geometry, config, cache=cache, shard=True))
