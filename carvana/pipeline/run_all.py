"""`python main.py`: train, score, predict and validate, ending with where everything was written.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from carvana.core.text import count
from carvana.data.source import DataOptions
from carvana.pipeline.predict import predict_test_set, predict_with_ensemble
from carvana.pipeline.report import tensorboard_command
from carvana.pipeline.results import SUBMISSION_NAME
from carvana.pipeline.settings import prediction_settings
from carvana.pipeline.train import run_training
from carvana.predict.predictor import Predictor
from carvana.run.config import ENVIRONMENT_FIELDS, Config
from carvana.run.out_of_fold import read_out_of_fold_record

log = logging.getLogger(__name__)


def run_all(config: Config, options: DataOptions, resume: str | None = None,
            given: dict[str, Any] | None = None) -> None:
    """`python main.py`: the whole job, ending with a summary of where everything was written."""
    start = time.monotonic()
    result = run_training(config, options, resume, need_test=True, given=given)

    config, threshold_note = prediction_settings(result.checkpoint, {}, recipe=result.config)
    submission = config.output_dir / SUBMISSION_NAME
    if result.fold_checkpoints:  # a fold run predicts with every fold, at the out-of-fold threshold
        folds_dir = result.fold_checkpoints[0].parent.parent
        where = {name: getattr(result.config, name) for name in ENVIRONMENT_FIELDS}
        submission, rows = predict_with_ensemble(list(result.fold_checkpoints), where, submission,
                                                  read_out_of_fold_record(folds_dir), data=result.data.layout)
    else:
        rows = predict_test_set(Predictor(result.classifier.forward, tta=config.tta), config, result.data.layout,
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
