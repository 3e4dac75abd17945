"""The data layer: Kaggle files on disk -> checked names and paths -> tensors in the model's geometry.

    layout.py    find and check the Kaggle layout (CarvanaData, load_carvana_data)
    rle_csv.py   the one reader of img,rle_mask CSV files (train_masks, sample_submission, submissions)
    images.py    decode photos and masks with OpenCV/Pillow, fast, with one-line DataErrors
    split.py     train/validation split by car
    augment.py   joint image+mask augmentation
    cache.py     a run's photos and masks decoded once into a memory-mapped array
    workers.py   how loader workers and the cache's pool start
    datasets.py  torch datasets and DataLoaders

The names below are imported on first use, so `import carvana.data.kaggle_layout` (the fetcher)
does not pull in torch, OpenCV and pandas.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CarvanaData": "layout",
    "load_carvana_data": "layout",
    "is_carvana_data_dir": "layout",
    "StrayFilesWarning": "layout",
    "read_image": "images",
    "read_mask": "images",
    "Split": "split",
    "split_by_car": "split",
    "Augmenter": "augment",
    "CarvanaTrainDataset": "datasets",
    "CarvanaTestDataset": "datasets",
    "denormalize": "datasets",
    "make_train_loader": "datasets",
    "make_valid_loader": "datasets",
    "make_test_loader": "datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
