"""Names of the Kaggle Carvana data layout, shared by the fetcher, the sample generator and the loader.

    input/
      train/ or train_hq/      <car>_<view>.jpg          (1918x1280, views 01..16)
      train_masks/             <car>_<view>_mask.gif     (palette GIF, 0 = background, 1 = car)
      train_masks.csv          img,rle_mask
      test/ or test_hq/        <car>_<view>.jpg
      sample_submission.csv    img,rle_mask              (the test ids, in Kaggle's order)
      metadata.csv             id,year,make,model,trim1,trim2
      .carvana-complete.json   written last by the fetcher / sample generator
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from carvana.core.atomic import atomic_write_text

COMPETITION = "carvana-image-masking-challenge"
RULES_URL = f"https://www.kaggle.com/c/{COMPETITION}/rules"

TRAIN_DIR = "train"
TRAIN_HQ_DIR = "train_hq"
TEST_DIR = "test"
TEST_HQ_DIR = "test_hq"
MASKS_DIR = "train_masks"
MASKS_CSV = "train_masks.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
METADATA_CSV = "metadata.csv"
COMPLETE_MARKER = ".carvana-complete.json"

SUBMISSION_HEADER = ("img", "rle_mask")
MASK_SUFFIX = "_mask.gif"
VIEWS_PER_CAR = 16
ORIGINAL_SIZE = (1918, 1280)  # width, height of every Carvana photo


def mask_name(image_name: str) -> str:
    """`0cdf5b5d0ce1_01.jpg` -> `0cdf5b5d0ce1_01_mask.gif`."""
    return Path(image_name).stem + MASK_SUFFIX


def car_id(image_name: str) -> str:
    """`0cdf5b5d0ce1_01.jpg` -> `0cdf5b5d0ce1` (all 16 views of a car share it)."""
    return Path(image_name).stem.rsplit("_", 1)[0]


def write_complete_marker(data_dir: Path, source: str, details: dict[str, Any]) -> None:
    """Mark `data_dir` as complete. Written last, atomically: without it the data is not trusted."""
    atomic_write_text(Path(data_dir) / COMPLETE_MARKER, json.dumps({"source": source, **details}, indent=2))


def read_complete_marker(data_dir: Path) -> dict[str, Any] | None:
    """The marker's content, or None when the data dir was never completed."""
    try:
        return json.loads((Path(data_dir) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
