"""`validate`, `score` and `submit`: a submission file checked, scored or uploaded, without a model.
"""
from __future__ import annotations

import logging
from pathlib import Path

from carvana.core.errors import DataError
from carvana.core.geometry import Size
from carvana.data.layout import load_carvana_data
from carvana.data.source import prediction_data_dir
from carvana.kaggle import files as layout_names
from carvana.kaggle.submit import submit_to_kaggle
from carvana.run.config import Config
from carvana.submission.score import score_submission
from carvana.submission.validate import validate_submission

log = logging.getLogger(__name__)


def validate_file(path: Path, sample_submission: Path | None = None, image_size: Size | None = None,
                  data_dir: Path | None = None, output_dir: Path | None = None) -> None:
    """`validate`: check `path` against the test ids and the photo size of the data it was made from.

    Without `sample_submission`, the data dir (default: input) is found as `predict` finds it: the
    folder itself if it holds sample_submission.csv, else Kaggle's zip files there as extracted in
    `output_dir` (default: output), else its built-in sample. Without
    `image_size`, the size is read from that data dir's test photos, or from the folder of the
    given sample submission when it holds test photos, else it is Kaggle's 1918x1280.
    """
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
    return load_carvana_data(data_dir, need_train=False).image_size


def score_file(path: Path, truth: Path, image_size: Size) -> float:

    report = score_submission(Path(path), Path(truth), image_size)
    log.info(f"{path}: mean Dice {report.mean_dice:.5f} over {report.n_images} images of {truth}")
    return report.mean_dice


def submit_file(path: Path, message: str, data_dir: Path | None = None, validate: bool = True,
                timeout: float = 600.0, output_dir: Path | None = None) -> None:
    """`submit`: validate against the data found as `validate` finds it (unless told not to), then upload."""
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
