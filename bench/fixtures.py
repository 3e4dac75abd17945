"""Input data the benchmarks share: real Carvana photos with synthetic masks, and probability maps.

The photos are the 32 real Kaggle test JPEGs (1918x1280) of the project's fixtures, so JPEG decode
costs what it costs on Kaggle's data. Their masks are synthetic car silhouettes saved the way
Kaggle saves them: palette GIFs whose two colours are black and white.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from bench.common import REAL_TEST_PHOTOS, car_like_mask
from carvana.core.geometry import Size
from carvana.kaggle import files as kl

PHOTO_SIZE = Size(1918, 1280)


def real_photos() -> list[Path]:
    photos = sorted(REAL_TEST_PHOTOS.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"{REAL_TEST_PHOTOS}: no real test photos (*.jpg) to benchmark with")
    return photos


def write_palette_gif(mask: np.ndarray, path: Path) -> None:
    """A 0/1 mask as Kaggle stores it: mode 'P', palette black then white."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.save(path, format="GIF")


def make_train_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """`root/train/*.jpg` (copies of the real photos) and `root/train_masks/*_mask.gif`.

    Returns the image and mask paths, paired by index.
    """
    train_dir, masks_dir = root / kl.TRAIN_DIR, root / kl.MASKS_DIR
    train_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    images, masks = [], []
    for i, photo in enumerate(real_photos()):
        image_path = train_dir / photo.name
        shutil.copyfile(photo, image_path)
        mask_path = masks_dir / kl.mask_name(photo.name)
        write_palette_gif(car_like_mask(PHOTO_SIZE.width, PHOTO_SIZE.height, seed=i), mask_path)
        images.append(image_path)
        masks.append(mask_path)
    return images, masks


def probability_maps(size: Size, count: int = 8, seed: int = 0) -> np.ndarray:
    """`count` soft car-like probability maps (count, h, w) float32 in [0, 1], each slightly shifted.

    A full-size silhouette shrunk with area averaging, so its edges are soft like a network's.
    """
    import cv2

    maps = []
    for i in range(count):
        mask = car_like_mask(PHOTO_SIZE.width, PHOTO_SIZE.height, seed=seed + i).astype(np.float32)
        maps.append(cv2.resize(mask, tuple(size), interpolation=cv2.INTER_AREA))
    return np.stack(maps)


def write_kaggle_zips(layout_dir: Path, zips_dir: Path) -> list[Path]:
    """The competition's zip files as Kaggle ships them, made from a data dir in Kaggle's layout.

    `train.zip` holds `train/<car>_<view>.jpg`, `train_masks.csv.zip` holds `train_masks.csv`, and
    so on (the JPEGs and GIFs stored, as they barely compress; the CSVs deflated). Only the parts
    the layout has are written.
    """
    layout_dir, zips_dir = Path(layout_dir), Path(zips_dir)
    zips_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in (kl.TRAIN_DIR, kl.TRAIN_HQ_DIR, kl.MASKS_DIR, kl.TEST_DIR, kl.TEST_HQ_DIR,
                  kl.MASKS_CSV, kl.SAMPLE_SUBMISSION_CSV, kl.METADATA_CSV):
        source = layout_dir / entry
        if not source.exists():
            continue
        archive = zips_dir / f"{entry}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            if source.is_dir():
                zf.write(source, entry)  # the folder's own entry, as Kaggle's archives have
                for path in sorted(source.iterdir()):
                    zf.write(path, f"{entry}/{path.name}", compress_type=zipfile.ZIP_STORED)
            else:
                zf.write(source, entry, compress_type=zipfile.ZIP_DEFLATED)
        written.append(archive)
    return written
