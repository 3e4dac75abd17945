"""Full-resolution training (`--crop WxH`, UNet1024): training takes random crops of the unresized photos
and their masks; validation and prediction take each photo whole, mirror-padded to a size the net takes,
and crop the output back to the photo, so the submitted mask is exactly the photo's size."""
from __future__ import annotations

import csv
import gzip
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from carvana.core.geometry import Size
from carvana.data.datasets import CarvanaTrainDataset, make_test_loader, make_train_loader, photo_input
from carvana.data.layout import load_carvana_data
from carvana.models.input_sizes import padded_input_size
from carvana.models.specs import model_geometry
from carvana.predict.predictor import Predictor
from carvana.run.checkpoint import Checkpoint
from carvana.run.config import Config
from cli_helpers import one_line_error
from conftest import REPO_ROOT
from data_factory import make_tiny_carvana, write_gif_mask

PHOTOS = Size(190, 126)  # the photos of the end-to-end run: padded whole into 192x128
PADDED = Size(192, 128)
CROP = Size(128, 64)
SAMPLE = ["--dataset", "sample", "--sample-cars", "4", "--sample-image-size", str(PHOTOS)]
CROP_RUN = [*SAMPLE, "--preset", "cpu", "--crop", str(CROP), "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--run-name", "crop"]


def crop_config(**changes) -> Config:
    """The recipe of a --crop run on 190x126 photos, as the run sets it when it starts."""
    return Config(preset="cpu", model="unet1024", input_size=PADDED, crop=CROP, photo_size=PHOTOS, width=0.125,
                  batch_size=4, workers=0, device="cpu", amp="off").replace(**changes)


def mirror_padded(image: np.ndarray, outer: Size) -> np.ndarray:
    """`image` mirror-padded to `outer` (edge pixel not repeated), the odd pixel at the bottom and the right."""
    down, across = outer.height - image.shape[0], outer.width - image.shape[1]
    return cv2.copyMakeBorder(image, down // 2, down - down // 2, across // 2, across - across // 2,
                              cv2.BORDER_REFLECT_101)


def textured_photo(size: Size, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 photo, 0/1 mask): dark noise with a bright noisy square touching the left edge, and the
    mask of that square. The noise makes every window of the photo (padding included) unique."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size.height, size.width), np.uint8)
    mask[30:90, 0:50] = 1
    photo = rng.integers(0, 100, (size.height, size.width, 3), dtype=np.uint8)
    photo[mask == 1] = rng.integers(200, 256, (int(mask.sum()), 3), dtype=np.uint8)
    return photo, mask


def bright_region(image: torch.Tensor) -> np.ndarray:
    """Where a uint8 (3, H, W) photo is bright, as a 0/1 array."""
    return (image.float().mean(0) > 127.5).numpy().astype(np.uint8)


def window_of(crop: np.ndarray, padded: np.ndarray) -> tuple[int, int]:
    """(top, left) of the place in `padded` (H, W, 3) that best matches the top-left 8x8 pixels of `crop`."""
    found = cv2.matchTemplate(padded, np.ascontiguousarray(crop[:8, :8]), cv2.TM_SQDIFF)
    _, _, (left, top), _ = cv2.minMaxLoc(found)
    return top, left


# --- sizes and geometry ------------------------------------------------------------------------


def test_the_kaggle_photos_are_padded_into_the_smallest_input_unet1024_takes():
    assert padded_input_size("unet1024", Size(1918, 1280)) == Size(1920, 1280)
    assert padded_input_size("unet1024", PHOTOS) == PADDED
    assert padded_input_size("unet1024", Size(1024, 1024)) == Size(1024, 1024), "a size the net takes is kept"


def test_the_output_is_cropped_back_to_the_centre_where_the_photo_was():
    geometry = model_geometry("unet1024", Size(1920, 1280)).with_content(Size(1918, 1280))
    output = torch.arange(1280 * 1920, dtype=torch.float32).reshape(1, 1280, 1920)

    cropped = geometry.crop_output(output)

    assert cropped.shape == (1, 1280, 1918)
    assert torch.equal(cropped, output[:, :, 1:-1]), "one column off each side, no rows"


@pytest.mark.parametrize("photos", [PHOTOS, Size(191, 127)], ids=str)
def test_a_photo_goes_in_whole_and_mirror_padded_and_comes_back_out_where_it_was(photos):
    geometry = crop_config(photo_size=photos).geometry
    photo, _ = textured_photo(photos)

    padded = photo_input(photo, geometry)

    assert padded.shape == (3, PADDED.height, PADDED.width)
    assert torch.equal(geometry.crop_output(padded), torch.from_numpy(photo.transpose(2, 0, 1))), \
        "a same-size net's output, cropped, lines up with the photo pixel for pixel"
    if photos == PHOTOS:  # one pixel of padding on each side: the mirror of the photo's second row and column
        assert torch.equal(padded[:, 0], padded[:, 2]) and torch.equal(padded[:, -1], padded[:, -3])
        assert torch.equal(padded[:, :, 0], padded[:, :, 2]) and torch.equal(padded[:, :, -1], padded[:, :, -3])


# --- training crops ----------------------------------------------------------------------------


def test_training_items_are_random_windows_of_the_padded_photo_and_the_same_window_of_its_mask(tmp_path):
    photo, mask = textured_photo(PHOTOS)
    photo_file = tmp_path / "c0ffee000001_01.png"  # lossless: the loaded pixels are these
    assert cv2.imwrite(str(photo_file), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    mask_file = write_gif_mask(tmp_path / "c0ffee000001_01_mask.gif", mask)
    crop = Size(64, 64)  # windows at 65x65 places of the 192x128 padded photo
    dataset = CarvanaTrainDataset([photo_file], [mask_file], crop_config().geometry, augment=None, seed=3, crop=crop)
    padded_photo, padded_mask = mirror_padded(photo, PADDED), mirror_padded(mask, PADDED)

    windows, car_shares = [], []
    for _ in range(1000):
        image, target = dataset[0]
        assert image.shape == (3, crop.height, crop.width) and target.shape == (1, crop.height, crop.width)
        top, left = window_of(image.numpy().transpose(1, 2, 0), padded_photo)
        window = (slice(top, top + crop.height), slice(left, left + crop.width))
        assert np.array_equal(image.numpy().transpose(1, 2, 0), padded_photo[window])
        assert np.array_equal(target[0].numpy(), padded_mask[window]), "the mask is cut from the same window"
        assert np.array_equal(bright_region(image), target[0].numpy().astype(np.uint8))
        windows.append((top, left))
        car_shares.append(float(target.mean()))

    tops, lefts = zip(*windows)
    assert len(set(windows)) > 500, "each draw takes a new window"
    assert (min(tops), max(tops), min(lefts), max(lefts)) == (0, PADDED.height - crop.height,
                                                              0, PADDED.width - crop.width), \
        "windows reach every side of the padded photo, its mirror border included"
    assert min(car_shares) == 0 and any(0 < share < 1 for share in car_shares), "windows with and without the car"


def test_the_training_loader_of_a_crop_run_gives_crop_sized_batches(tmp_path):
    data = load_carvana_data(make_tiny_carvana(tmp_path, cars=1, views=4, size=PHOTOS))
    config = crop_config(output_dir=tmp_path / "output")

    images, masks = next(iter(make_train_loader(data, data.train_names, config.geometry, config)))

    assert images.shape == (4, 3, CROP.height, CROP.width) and images.dtype == torch.uint8
    assert masks.shape == (4, 1, CROP.height, CROP.width)


# --- the command line, end to end --------------------------------------------------------------


def main_py(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python main.py ARGS` in `cwd`, as a user runs it (two torch threads)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def submission_rows(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A finished --crop run on the built-in sample at 190x126: (its folder, the finished process)."""
    workdir = tmp_path_factory.mktemp("crop-run")
    return workdir, main_py(CROP_RUN, workdir)


@pytest.mark.slow
def test_a_crop_run_trains_on_crops_and_says_it_takes_the_photos_whole(crop_run):
    workdir, result = crop_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("input 192x128 -> output 192x128 (the 190x126 photos whole, mirror-padded; training on 128x64 crops "
            "of them)") in result.stdout
    assert "no coarse phase: --crop trains at full resolution" in result.stdout
    assert (workdir / "output" / "submit.csv.gz").is_file()


@pytest.mark.slow
def test_the_crop_runs_submission_is_valid_at_the_photos_size(crop_run):
    workdir, _ = crop_run
    result = main_py(["validate", "output/submit.csv.gz"], workdir)
    assert result.returncode == 0, result.stderr
    assert "RLE inside 190x126" in result.stdout


@pytest.mark.slow
def test_the_best_checkpoint_keeps_the_crop_and_the_photos_size(crop_run):
    workdir, _ = crop_run
    recipe = Checkpoint.load(workdir / "output" / "models" / "crop" / "best.pt").recipe
    assert (recipe.crop, recipe.photo_size, recipe.input_size) == (CROP, PHOTOS, PADDED)


@pytest.mark.slow
def test_predict_with_the_best_checkpoint_gives_the_runs_submission(crop_run):
    workdir, _ = crop_run
    result = main_py(["predict", "--checkpoint", "output/models/crop/best.pt", "--submission",
                      "output/again.csv.gz", "--workers", "0"], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    again = submission_rows(workdir / "output" / "again.csv.gz")
    assert again == submission_rows(workdir / "output" / "submit.csv.gz") and len(again) == 1 + 96


@pytest.mark.slow
def test_the_predictor_of_a_crop_checkpoint_gives_maps_of_exactly_the_photos_size(crop_run):
    workdir, _ = crop_run
    best = workdir / "output" / "models" / "crop" / "best.pt"
    config = Checkpoint.load(best).recipe.replace(device="cpu")
    predictor = Predictor.from_checkpoint(config, best)
    photos = sorted((workdir / "input" / "sample" / "test").glob("*.jpg"))[:3]

    images, names = next(iter(make_test_loader(photos, config.geometry, batch_size=3, workers=0)))
    probabilities = predictor.predict_probabilities(images)

    assert images.shape == (3, 3, PADDED.height, PADDED.width), "each photo goes in whole, padded"
    assert probabilities.shape == (3, PHOTOS.height, PHOTOS.width)
    assert names == [p.name for p in photos]
    assert 0.0 <= float(probabilities.min()) and float(probabilities.max()) <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("flags, named", [
    (["--preset", "cpu", "--crop", "100x100"], ["--crop 100x100", "64"]),
    (["--preset", "unet_original", "--crop", "128x128"], ["--crop 128x128", "unet_original"]),
    (["--preset", "cpu", "--crop", "256x256"], ["--crop 256x256", "190x126", "192x128"]),
], ids=["not-multiples-of-64", "valid-convolution-net", "larger-than-the-padded-photos"])
def test_a_crop_that_cannot_work_is_refused_in_one_line_and_leaves_no_run(crop_run, flags, named):
    workdir, _ = crop_run
    result = main_py([*SAMPLE, *flags, "--epochs", "1", "--workers", "0", "--run-name", "refused"], workdir)
    assert result.returncode != 0
    error = one_line_error(result.stderr)
    assert all(part in error for part in named), error
    assert not (workdir / "output" / "models" / "refused").exists()
    assert not (workdir / "logs" / "refused").exists()


@pytest.mark.slow
def test_resume_refuses_another_crop_and_leaves_the_run_as_it_was(crop_run):
    workdir, _ = crop_run
    last = workdir / "output" / "models" / "crop" / "last.pt"
    before = last.read_bytes()

    result = main_py(["--resume", "output/models/crop", "--crop", "64x64", "--workers", "0"], workdir)

    assert result.returncode != 0
    error = one_line_error(result.stderr)
    assert "--crop 64x64" in error and "128x64" in error, error
    assert last.read_bytes() == before


@pytest.mark.slow
def test_the_runs_config_file_restarts_the_same_crop_recipe(crop_run):
    workdir, _ = crop_run
    result = main_py(["train", "--config", "output/models/crop/config.yaml", "--print-config"], workdir)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert {"crop: 128x64", "photo_size: 190x126", "input_size: 192x128"} <= set(printed), result.stdout
