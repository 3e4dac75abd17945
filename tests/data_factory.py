"""Tiny datasets in the Kaggle Carvana layout, written into a test's tmp_path.

`make_tiny_carvana(tmp_path)` writes photos of a drawn "car" (a filled ellipse with two wheels on
a gradient background), its palette-GIF masks, `train_masks.csv`, test photos and
`sample_submission.csv`, in a few tens of milliseconds, so tests of training, prediction and the
CLI can run the real pipeline on it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carvana.core.geometry import Size
from carvana.kaggle import rle
from carvana.kaggle import files as kl


def car_ids(count: int, salt: str = "train") -> list[str]:
    """Deterministic 12-hex-digit car ids, like Kaggle's (0cdf5b5d0ce1)."""
    return [hashlib.sha1(f"{salt}-{i}".encode()).hexdigest()[:12] for i in range(count)]


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write {path}")
    return path


def write_gif_mask(path: Path, mask: np.ndarray) -> Path:
    """A 0/1 mask as Kaggle stores it: a palette GIF, index 0 black, index 1 white."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.save(path, format="GIF")
    return path


def draw_car(size: Size, car: int, view: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 photo, 0/1 uint8 mask) of a simple car: body ellipse and wheels, turning with the view."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    background = 170 + 50 * (ys / max(1, height - 1)) - 20 * (xs / max(1, width - 1))
    photo = np.repeat(background[..., None], 3, axis=2)
    photo += rng.normal(0, 4, photo.shape)
    photo = np.clip(photo, 0, 255).astype(np.uint8)

    angle = 2 * np.pi * (view - 1) / kl.VIEWS_PER_CAR
    centre = (int(width * (0.5 + 0.08 * np.sin(angle))), int(height * 0.55))
    axes = (int(width * (0.22 + 0.12 * abs(np.cos(angle)))), int(height * 0.2))
    colour = tuple(int(c) for c in np.random.default_rng(car).integers(20, 140, 3))
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    photo[mask == 1] = colour
    wheel_radius = max(2, axes[1] // 2)
    for side in (-1, 1):
        wheel = (centre[0] + side * axes[0] // 2, centre[1] + axes[1] // 2)
        cv2.circle(photo, wheel, wheel_radius, (25, 25, 25), thickness=-1)
        cv2.circle(mask, wheel, wheel_radius, 1, thickness=-1)
    return photo, mask


def make_tiny_carvana(
    tmp_path: Path,
    cars: int = 3,
    size: Size = Size(192, 128),
    with_test: bool = True,
    *,
    views: int = kl.VIEWS_PER_CAR,
    test_cars: int = 1,
    seed: int = 0,
    complete_marker: bool = True,
) -> Path:
    """Write a tiny Kaggle-layout dataset under `tmp_path/input` and return that folder."""
    data_dir = Path(tmp_path) / "input"
    rng = np.random.default_rng(seed)
    rows = []
    for car_number, car in enumerate(car_ids(cars)):
        for view in range(1, views + 1):
            name = f"{car}_{view:02d}.jpg"
            photo, mask = draw_car(size, car_number, view, rng)
            write_jpeg(data_dir / kl.TRAIN_DIR / name, photo)
            write_gif_mask(data_dir / kl.MASKS_DIR / kl.mask_name(name), mask)
            rows.append(f"{name},{rle.encode(mask)}")
    (data_dir / kl.MASKS_CSV).write_text("img,rle_mask\n" + "\n".join(rows) + "\n")
    if with_test:
        test_rows = []
        for car_number, car in enumerate(car_ids(test_cars, salt="test")):
            for view in range(1, views + 1):
                name = f"{car}_{view:02d}.jpg"
                photo, _ = draw_car(size, cars + car_number, view, rng)
                write_jpeg(data_dir / kl.TEST_DIR / name, photo)
                test_rows.append(f"{name},1 1")
        (data_dir / kl.SAMPLE_SUBMISSION_CSV).write_text("img,rle_mask\n" + "\n".join(test_rows) + "\n")
    metadata = ["id,year,make,model,trim1,trim2"] + [f"{car},2017,Acme,Ellipse,Base,2dr" for car in car_ids(cars)]
    (data_dir / kl.METADATA_CSV).write_text("\n".join(metadata) + "\n")
    if complete_marker:
        kl.write_complete_marker(data_dir, "tests.data_factory", {"cars": cars, "size": str(size)})
    return data_dir
