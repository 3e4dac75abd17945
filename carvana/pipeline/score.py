"""The validation cars scored as Kaggle would: full resolution, through the submission path, every threshold
and clean-up from one pass of the model.
"""
from __future__ import annotations

import logging
from pathlib import Path

from carvana.core.text import count
from carvana.data.datasets import make_test_loader
from carvana.data.images import read_mask
from carvana.kaggle import files as layout_names, rle
from carvana.kaggle.rle_csv import write_rle_rows
from carvana.pipeline.memory import explain_out_of_memory
from carvana.pipeline.results import VALIDATION_PREDICTIONS, VALIDATION_TRUTH
from carvana.predict.predictor import Predictor
from carvana.predict.threshold import ThresholdRecord, save_threshold, thresholds_to_try
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config
from carvana.submission.score import read_truth, score_submission
from carvana.submission.validation_search import ValidationSearch

log = logging.getLogger(__name__)


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

    known = data.train_rle if data.train_rle is not None else {}
    write_rle_rows(path, ((name, known[name] if name in known else rle.encode(read_mask(data.mask_path(name))))
                          for name in names))
