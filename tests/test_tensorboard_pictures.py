"""TensorBoard's validation pictures, read back from the event files of a real `main.py train` run.

Each epoch: the three validation photos with the lowest Dice (worst first) and the same three fixed
photos, each drawn from the photo on disk at full resolution with a 1:1 crop of its worst edge.
The photos here are 1200x800, larger than the readable width, so the width rule is exercised.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from data_factory import make_tiny_carvana
from training_helpers import image_summaries, scalar_events, text_summaries

from carvana import cli
from carvana.core.geometry import Size
from carvana.data.images import read_image
from carvana.kaggle import rle
from carvana.kaggle.rle_csv import read_rle_rows
from carvana.run.checkpoint import load_checkpoint
from carvana.train.metrics import dice_score
from carvana.train.overlays import CAPTION_HEIGHT, CROP_SIDE, READABLE_WIDTH

pytestmark = pytest.mark.slow

PHOTO = Size(1200, 800)
TINY = ["--preset", "cpu", "--input-size", "128x64", "--batch-size", "8", "--workers", "0", "--no-augment"]
ROW = re.compile(r"^\| (\d+) \| (\S+) \| ([\d.]+) \| ([\d.]+) \|$")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_tiny_carvana(tmp_path_factory.mktemp("data"), cars=6, size=PHOTO, views=4, with_test=False)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory) -> Path:
    """2 epochs on 6 cars x 4 views (3 cars validate: 12 validation photos); returns the work folder."""
    data = data_dir
    work = tmp_path_factory.mktemp("work")
    code = cli.main(["train", "--data-dir", str(data), *TINY, "--epochs", "2", "--validation-size", "0.5",
                     "--threshold", "0.5", "--no-tta", "--mask-cleanup", "none", "--run-name", "pics",
                     "--output-dir", str(work / "output"), "--log-dir", str(work / "logs")])
    assert code == 0
    return work


def worst_tables(work: Path) -> dict[int, list[tuple[int, str, float, float]]]:
    """epoch -> [(rank, photo, Dice at the model's size, Dice at the photo's size)] of `val_worst/dice`."""
    tables = {}
    for step, text in text_summaries(work / "logs" / "pics")["val_worst/dice"]:
        rows = [ROW.match(line) for line in text.splitlines()[2:]]
        assert all(rows), text
        tables[step] = [(int(m[1]), m[2], float(m[3]), float(m[4])) for m in rows]
    return tables


def validation_photos(work: Path) -> list[str]:
    return [row.img for row in read_rle_rows(work / "output" / "validation" / "pics" / "valid_truth.csv")]


def test_each_epoch_shows_the_three_worst_validation_photos_worst_first_with_their_dice(run):
    pictures = image_summaries(run / "logs" / "pics")
    tables = worst_tables(run)
    mean_dice = dict(scalar_events(run / "logs" / "pics")["dice/val"])

    assert {tag: [step for step, _ in shown] for tag, shown in pictures.items() if tag.startswith("val_worst/")} \
        == {"val_worst/1": [1, 2], "val_worst/2": [1, 2], "val_worst/3": [1, 2]}
    assert sorted(tables) == [1, 2]
    for epoch, rows in tables.items():
        assert [rank for rank, *_ in rows] == [1, 2, 3]
        dice = [model for _, _, model, _ in rows]
        assert dice == sorted(dice), f"epoch {epoch}: not worst first"
        assert dice[-1] <= mean_dice[epoch] + 1e-4  # the worst are at most the mean
        assert {photo for _, photo, _, _ in rows} <= set(validation_photos(run))


def test_the_worst_photos_dice_at_full_resolution_is_the_submission_paths(run):
    """The caption's full-resolution Dice is what scoring the run's validation predictions gives."""
    best_epoch = load_checkpoint(run / "output" / "models" / "pics" / "best.pt")["epoch"]
    folder = run / "output" / "validation" / "pics"
    predicted = {row.img: row.rle_mask for row in read_rle_rows(folder / "valid_predictions.csv.gz")}
    truth = {row.img: row.rle_mask for row in read_rle_rows(folder / "valid_truth.csv")}

    for _, photo, _, full in worst_tables(run)[best_epoch]:
        scored = dice_score(rle.decode(predicted[photo], PHOTO.height, PHOTO.width),
                            rle.decode(truth[photo], PHOTO.height, PHOTO.width))
        assert full == pytest.approx(scored, abs=6e-5), photo


def test_the_fixed_photos_are_the_first_view_of_each_validation_car_every_epoch(run):
    pictures = image_summaries(run / "logs" / "pics")
    cars = sorted({photo.rsplit("_", 1)[0] for photo in validation_photos(run)})

    fixed = {tag: [step for step, _ in shown] for tag, shown in pictures.items() if tag.startswith("val_fixed/")}
    assert fixed == {f"val_fixed/{car}_01": [1, 2] for car in cars}


def test_each_picture_is_the_full_resolution_photo_at_a_readable_width_beside_a_1_to_1_crop(run, data_dir):
    photos = {path.stem: read_image(path) for path in (data_dir / "train").glob("*_01.jpg")}
    pictures = image_summaries(run / "logs" / "pics")

    for tag, shown in pictures.items():
        for step, picture in shown:
            # A readable width (>= 960 px: the photos are wider) plus the crop; never the model's 128 px.
            assert picture.shape[1] == READABLE_WIDTH + CROP_SIDE, tag
            assert picture.shape[0] >= CAPTION_HEIGHT + READABLE_WIDTH * PHOTO.height // PHOTO.width
            if tag.startswith("val_fixed/"):
                crop = picture[CAPTION_HEIGHT:CAPTION_HEIGHT + CROP_SIDE, READABLE_WIDTH:]
                photo = photos[tag.removeprefix("val_fixed/")]
                match = cv2.matchTemplate(photo, crop, cv2.TM_CCOEFF_NORMED)
                top, left = np.unravel_index(int(match.argmax()), match.shape)
                window = photo[top:top + CROP_SIDE, left:left + CROP_SIDE].astype(int)
                # Equal up to the JPEG encoding of the summary: a 1:1 window of the photo on disk.
                assert np.abs(window - crop).mean() < 4, f"{tag} at epoch {step}: not a 1:1 crop of the photo"
