"""A fold run (`--folds K`): each fold trained as a run of its own, then every car scored out of fold.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

from carvana.core import distributed
from carvana.core.text import count
from carvana.data.datasets import make_test_loader
from carvana.kaggle.rle_csv import read_rle_rows, write_rle_rows
from carvana.pipeline.memory import explain_out_of_memory
from carvana.pipeline.one_run import train_one_run, write_run_settings
from carvana.pipeline.results import (OUT_OF_FOLD_PREDICTIONS, OUT_OF_FOLD_TRUTH, VALIDATION_TRUTH, RunData,
                                      TrainingResult)
from carvana.pipeline.settings import resumed_settings
from carvana.predict.predictor import Predictor, predict_in_parts
from carvana.predict.threshold import thresholds_to_try
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config
from carvana.run.identity import LAST_NAME, Run, fold_name, fold_run, models_dir
from carvana.run.out_of_fold import write_out_of_fold_record
from carvana.submission.score import score_submission
from carvana.submission.validation_search import ValidationSearch

log = logging.getLogger(__name__)


def train_folds(run: Run, config: Config, data: RunData, given: Mapping[str, Any],
                input_note: str = "") -> TrainingResult:
    """Train and score every fold of the fold run `run` (its final settings: `config`) in turn, then score
    the out-of-fold predictions.

    A fold whose last.pt exists continues from it with the `given` settings (one that finished is not trained
    again, only scored), so `--resume` of a fold run continues the fold that was cut and skips finished ones.
    """
    results: list[TrainingResult] = []
    for fold in range(1, config.folds + 1):
        fold_config = config.replace(fold=fold)
        last = models_dir(fold_config, run.name) / LAST_NAME
        checkpoint = Checkpoint.load(last) if last.is_file() else None
        if checkpoint is not None:
            fold_config, notes = resumed_settings(checkpoint.run_config(), given, checkpoint.path)
            for note in notes:
                log.info(note)
        log.info(f"\nFold {fold}/{config.folds} of run {run.name}" + (f" (from {last})" if checkpoint else ""))
        result = train_one_run(fold_run(fold_config, run.name, fold), fold_config, data, checkpoint,
                               input_note if fold == 1 and checkpoint is None else "")
        write_run_settings(run, config, fold_run=True)
        if results:
            results[-1] = dataclasses.replace(results[-1], classifier=None)  # one model in memory at a time
        results.append(result)
    dice, images, cars = _score_out_of_fold(run, config, data, results)
    last_fold = results[-1]
    return dataclasses.replace(last_fold, config=config, validation_dice=dice, validation_images=images,
                               validation_cars=cars, fold_checkpoints=tuple(r.checkpoint.path for r in results),
                               training_ended=f"trained {count(len(results), 'fold')} ({last_fold.training_ended} last)")


def _score_out_of_fold(run: Run, config: Config, data: RunData, folds: list[TrainingResult]
                       ) -> tuple[float, int, int]:
    """Every fold's model on the validation cars it never saw, scored as one set: the out-of-fold Dice.

    One pass over the folds' validation photos (each by its own fold's best checkpoint) into one
    threshold search (`ValidationSearch`), so the threshold for the folds' ensemble is chosen on
    out-of-fold predictions of every car. Writes `oof_predictions.csv.gz` (at that threshold) and
    `oof_truth.csv` (train_masks.csv-style, for `score`) in the run's validation folder, and the
    result (`out_of_fold.json`, with the threshold) beside the folds' checkpoints; returns (Dice,
    images, cars). Under torchrun rank 0 scores and tells the others.
    """
    if distributed.is_main():
        shared = _out_of_fold_search(run, config, data, folds)
    return distributed.broadcast(shared if distributed.is_main() else None)


def _out_of_fold_search(run: Run, config: Config, data: RunData, folds: list[TrainingResult]
                        ) -> tuple[float, int, int]:
    folder = config.output_dir / "validation" / run.name
    predictions, truth_path = folder / OUT_OF_FOLD_PREDICTIONS, folder / OUT_OF_FOLD_TRUTH
    size = data.layout.image_size
    fold_truth = [list(read_rle_rows(folder / fold_name(k) / VALIDATION_TRUTH)) for k in range(1, len(folds) + 1)]
    write_rle_rows(truth_path, ((row.img, row.rle_mask) for rows in fold_truth for row in rows))
    parts = []
    for result, rows in zip(folds, fold_truth):
        predictor = Predictor.from_checkpoint(result.config, result.checkpoint.path)
        photos = data.layout.train_image_paths([row.img for row in rows])
        parts.append((predictor, make_test_loader(photos, config.geometry, config)))
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
