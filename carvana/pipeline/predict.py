"""`predict`: the test set through a checkpoint or an ensemble, streamed into a validated submission.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carvana.core import distributed
from carvana.core.errors import CheckpointError
from carvana.core.geometry import Size, aspect_difference
from carvana.core.process_lifetime import Terminated
from carvana.core.text import count
from carvana.data.datasets import make_test_loader
from carvana.data.layout import CarvanaData, load_carvana_data
from carvana.data.source import prediction_data_dir
from carvana.kaggle import files as layout_names
from carvana.kaggle.rle_csv import is_gzip_name
from carvana.pipeline.files import validate_file
from carvana.pipeline.memory import explain_out_of_memory
from carvana.pipeline.report import prediction_words, report_submission
from carvana.pipeline.results import SUBMISSION_NAME, PredictionStopped
from carvana.pipeline.settings import prediction_settings
from carvana.predict.ensemble import (EnsembleForward, EnsembleMember, averages_at_photo_size, describe_mean,
                                      ensemble_checkpoints)
from carvana.predict.predictor import Predictor
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config, Environment
from carvana.run.identity import BEST_NAME, fold_checkpoints
from carvana.run.out_of_fold import read_out_of_fold_record
from carvana.submission.parts import merge_parts, part_path, remove_parts
from carvana.submission.predictions_saver import PredictionsSaver

log = logging.getLogger(__name__)


def predict_test_set(predictor: Predictor, config: Config, data: CarvanaData, submission: Path,
                     trained_photos: Size | None = None, threshold_note: str = "") -> int:
    """Stream the predictions of `data`'s test set into `submission` (atomically); return the row count.

    `threshold_note`: where `config.threshold` comes from, for the banner (`prediction_threshold`).

    `trained_photos`: the size of the photos the model was trained on, when known; test photos of a
    clearly different shape are warned about (they are resized to the same input all the same).

    Under torchrun each process predicts its share into a part file that rank 0 merges; whatever
    stops one of them (torchrun ends the others with SIGTERM when one fails), no part is left behind
    and a previous submission stays as it was.
    """
    ranks = distributed.current()
    if not ranks.distributed:
        return _predict_test_set(predictor, config, data, submission, trained_photos, threshold_note)
    try:
        distributed.barrier()  # every process is here before any writes a part
        return _predict_test_set(predictor, config, data, submission, trained_photos, threshold_note)
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


def _predict_test_set(predictor: Predictor, config: Config, data: CarvanaData, submission: Path,
                      trained_photos: Size | None, threshold_note: str) -> int:
    if trained_photos is not None:
        _warn_of_another_shape(data.image_size, trained_photos, config.input_size, data.data_dir)
    # The inputs the model takes: one per distinct geometry of an ensemble's members, else the config's.
    geometries = predictor.forward.input_geometries or (config.geometry,)
    loader = make_test_loader(data, geometries[0] if len(geometries) == 1 else geometries, config, shard=True)
    ranks = distributed.current()
    processes = f" by {ranks.world_size} processes" if ranks.distributed else ""
    log.info(f"Predicting {len(data.test_names)} test images{processes} into {submission} "
             f"({'; '.join(prediction_words(config, threshold_note))}) ...")
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


def run_prediction(checkpoint: Path | list[Path] | None, overrides: dict[str, Any],
                   submission: Path | None = None, ensemble: Path | None = None) -> Path:
    """`predict`: load a checkpoint (or several: an ensemble), predict the test set, validate the file.

    `checkpoint`: a file, or a run's folder (its best.pt), or a list of them; default the newest
    run's best.pt in the output dir. `ensemble`: a folder whose subfolders' best.pt are the models
    (a fold run's folds). Two or more models predict as their ensemble (`predict_with_ensemble`);
    one predicts as itself. The model and its settings are the checkpoint's recipe; where it runs
    (data and output dirs, device, workers) is `overrides` (the flags) else the defaults, never the
    checkpoint's: a checkpoint from another machine needs none of its paths.
    """
    if submission is not None:
        is_gzip_name(submission)  # a name its content could not agree with is refused before any work
    members = ensemble_member_paths(checkpoint, ensemble)
    if ensemble is None and len(members) == 1 and fold_checkpoints(members[0]):
        ensemble = members[0]  # a fold run's folder means its folds' ensemble
        log.info(f"{ensemble} is a fold run: predicting with its folds' ensemble (as --ensemble {ensemble})")
        members = ensemble_member_paths(None, ensemble)
    if len(members) > 1:
        record = read_out_of_fold_record(ensemble) if ensemble is not None else None
        submission, rows = predict_with_ensemble(members, overrides, submission, record)
        report_submission(submission, rows)
        return submission
    model = load_predictor(members[0] if members else None, overrides)
    config = model.config
    data = _test_data(config)
    submission = submission or config.output_dir / SUBMISSION_NAME
    rows = predict_test_set(model.predictor, config, data, submission,
                            trained_photos=_trained_photos(model.checkpoint), threshold_note=model.threshold_note)
    report_submission(submission, rows)
    return submission


def ensemble_member_paths(checkpoint: Path | list[Path] | None, ensemble: Path | None) -> list[Path]:
    """The checkpoints (files or run folders) `predict` was given: `--ensemble`'s best.pt files, else
    `--checkpoint`'s paths; empty for neither (the newest run's best.pt)."""
    if ensemble is not None:
        return ensemble_checkpoints(ensemble, BEST_NAME)
    if checkpoint is None:
        return []
    return [Path(checkpoint)] if isinstance(checkpoint, (str, os.PathLike)) else [Path(p) for p in checkpoint]


def predict_with_ensemble(paths: list[Path], overrides: dict[str, Any], submission: Path | None,
                           out_of_fold: dict[str, Any] | None = None, data: CarvanaData | None = None
                           ) -> tuple[Path, int]:
    """`predict` with the ensemble of the checkpoints at `paths`: the mean of their probabilities
    (carvana.predict.ensemble), thresholded and cleaned up as chosen on the folds' out-of-fold
    predictions (`out_of_fold`, a fold run's record), else as the first checkpoint's are, unless
    --threshold / --mask-cleanup say otherwise, streamed into one submission; returns it and its rows.
    `data`: the test set, when already loaded (else found as the first checkpoint's settings say)."""
    first: Checkpoint | None = None
    first_config: Config | None = None
    members: list[EnsembleMember] = []
    described: list[str] = []
    for path in paths:
        folds = fold_checkpoints(path)
        if folds:
            raise CheckpointError(f"{path}: a fold run among other models; give its folds' checkpoints "
                                  f"({', '.join(map(str, folds))}), or the fold run alone")
        saved = Checkpoint.latest(path, BEST_NAME)
        config = saved.recipe.replace(**overrides)  # the member's forward pass; the first one's threshold below
        if first is None:
            first, first_config = saved, config
        forward = Predictor.from_checkpoint(config, saved.path, payload=saved.payload).forward
        members.append(EnsembleMember(saved.path, forward, config.tta))
        crop = f", --crop {config.crop}" if config.crop is not None else ""
        described.append(f"{saved.path} ({config.model} width {config.width:g} at {config.input_size}{crop}"
                         f"{', flip TTA' if config.tta else ''})")
    assert first is not None and first_config is not None
    if data is None:
        data = _test_data(first_config)
    # Members of different covered sizes are averaged at the photos' size: the test photos'.
    ensemble = EnsembleForward(members, data.image_size if averages_at_photo_size(members) else None)
    # Every member flipping is the ensemble's TTA; otherwise each member keeps its own (the banner lists which).
    config, threshold_note = prediction_settings(first, {**overrides, "tta": ensemble.tta})
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
    rows = predict_test_set(Predictor(ensemble, tta=config.tta), config, data, submission,  # type: ignore[arg-type]
                            trained_photos=_trained_photos(first), threshold_note=threshold_note)
    return submission, rows


@dataclass(frozen=True)
class LoadedModel:
    """One trained model ready to predict: its checkpoint, its settings as it predicts, and its predictor."""

    checkpoint: Checkpoint
    config: Config  # the checkpoint's recipe, where it runs (`overrides`), and the threshold to use
    threshold_note: str  # where the threshold comes from, for the banner
    predictor: Predictor


def _test_data(config: Config) -> CarvanaData:
    """The test set a prediction reads: the data dir's (or the sample, or Kaggle's extracted zips), read once."""
    return load_carvana_data(prediction_data_dir(config.data_dir, config.output_dir), need_train=False)


def load_predictor(checkpoint: Path | None, overrides: dict[str, Any]) -> LoadedModel:
    """The model `predict` and `cutout` use: `checkpoint` (see `saved_model`) with the flags in `overrides`
    applied to its recipe, and its threshold (`prediction_settings`)."""
    saved = saved_model(checkpoint, overrides.get("output_dir"))
    config, threshold_note = prediction_settings(saved, overrides)
    return LoadedModel(saved, config, threshold_note, Predictor.from_checkpoint(config, saved.path,
                                                                                payload=saved.payload))


def saved_model(checkpoint: Path | None, output_dir: Path | None) -> Checkpoint:
    """The checkpoint to predict with: `checkpoint` (a file, or a run's folder: its best.pt), else the
    newest run's best.pt under `output_dir` (default: output)."""
    if checkpoint is not None:
        folds = fold_checkpoints(Path(checkpoint))
        if folds:
            raise CheckpointError(f"{checkpoint}: a fold run of {count(len(folds), 'fold')}; this takes one model: "
                                  f"pass one fold's checkpoint, e.g. {folds[0]}")
        return Checkpoint.latest(checkpoint, BEST_NAME)
    return Checkpoint.latest(Path(output_dir or Environment.output_dir) / "models", BEST_NAME,
                             missing="no trained model yet; run `python main.py train` first or pass --checkpoint")


# Test photos whose aspect differs from the training photos' by more than this get a warning.
ASPECT_WARNING = 0.10


def _trained_photos(checkpoint: Checkpoint) -> Size | None:
    """The size of the photos a checkpoint's run was trained on (None where it does not record it)."""
    return checkpoint.run.photo_size if checkpoint.run is not None else None


def _warn_of_another_shape(test_photos: Size, trained_photos: Size, input_size: Size, data_dir: Path) -> None:

    if aspect_difference(test_photos, trained_photos) > ASPECT_WARNING:
        # INFO, not WARNING: the line stays on stdout with the prediction's report (warnings go to stderr).
        log.info(f"warning: {data_dir}: the test photos are {test_photos}, another shape than the {trained_photos} "
                 f"photos the model was trained on; they are resized to its input {input_size} all the same, "
                 "which may cost accuracy (a model trained on photos of their shape fits them better)")
