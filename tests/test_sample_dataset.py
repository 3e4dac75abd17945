"""The built-in sample dataset: Kaggle's layout exactly, deterministic, never half-written, and
hard enough that a colour threshold does not solve it."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from carvana.core.errors import CarvanaError, ConfigError
from carvana.core.geometry import Size
from carvana.kaggle import rle
from carvana.kaggle import files as layout
from carvana.sample import dataset as sample_dataset
from carvana.sample.dataset import generate_sample_dataset

SMALL = Size(192, 128)
IMAGE_NAME = re.compile(r"^[0-9a-f]{12}_(0[1-9]|1[0-6])\.jpg$")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sample") / "input"
    report = generate_sample_dataset(data_dir, train_cars=5, test_cars=2, size=SMALL, seed=3, progress=False)
    return data_dir, report


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_mask(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def cars_in(folder: Path) -> set[str]:
    return {layout.car_id(p.name) for p in folder.iterdir()}


def all_files(data_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file()}


def test_writes_exactly_the_kaggle_layout(sample):
    data_dir, report = sample
    assert {p.name for p in data_dir.iterdir()} == {
        layout.TRAIN_DIR, layout.MASKS_DIR, layout.TEST_DIR, layout.MASKS_CSV,
        layout.SAMPLE_SUBMISSION_CSV, layout.METADATA_CSV, layout.COMPLETE_MARKER,
    }
    train = sorted(p.name for p in (data_dir / layout.TRAIN_DIR).iterdir())
    test = sorted(p.name for p in (data_dir / layout.TEST_DIR).iterdir())
    assert all(IMAGE_NAME.match(name) for name in train + test)
    assert (report.train_images, report.test_images) == (len(train), len(test)) == (5 * 16, 2 * 16)
    assert sorted(p.name for p in (data_dir / layout.MASKS_DIR).iterdir()) == sorted(map(layout.mask_name, train))
    assert not cars_in(data_dir / layout.TRAIN_DIR) & cars_in(data_dir / layout.TEST_DIR)
    for name in train[:3] + test[:3]:
        folder = layout.TRAIN_DIR if name in train else layout.TEST_DIR
        assert cv2.imread(str(data_dir / folder / name)).shape == (SMALL.height, SMALL.width, 3)


def test_every_car_has_its_16_views(sample):
    data_dir, _ = sample
    for folder in (layout.TRAIN_DIR, layout.TEST_DIR):
        names = [p.name for p in (data_dir / folder).iterdir()]
        for car in cars_in(data_dir / folder):
            views = sorted(n for n in names if layout.car_id(n) == car)
            assert views == [f"{car}_{v:02d}.jpg" for v in range(1, 17)]


def test_masks_are_palette_gifs_of_zero_and_one(sample):
    data_dir, _ = sample
    for path in sorted((data_dir / layout.MASKS_DIR).iterdir())[:8]:
        with Image.open(path) as gif:
            assert (gif.format, gif.mode, gif.size) == ("GIF", "P", tuple(SMALL))
            assert gif.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
            indices = np.array(gif)
        assert set(np.unique(indices)) == {0, 1}
        # OpenCV reads Kaggle's masks as 0/255 grey; so must it read ours, pixel for pixel.
        assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), indices * 255)


def test_train_masks_csv_is_the_rle_of_the_gifs(sample):
    data_dir, _ = sample
    rows = read_rows(data_dir / layout.MASKS_CSV)
    assert list(rows[0]) == list(layout.SUBMISSION_HEADER)
    assert [r["img"] for r in rows] == sorted(p.name for p in (data_dir / layout.TRAIN_DIR).iterdir())
    for row in rows:
        decoded = rle.decode(row["rle_mask"], SMALL.height, SMALL.width)
        assert np.array_equal(decoded, read_mask(data_dir / layout.MASKS_DIR / layout.mask_name(row["img"])))


def test_sample_submission_lists_every_test_image_once(sample):
    data_dir, _ = sample
    rows = read_rows(data_dir / layout.SAMPLE_SUBMISSION_CSV)
    assert list(rows[0]) == list(layout.SUBMISSION_HEADER)
    assert [r["img"] for r in rows] == sorted(p.name for p in (data_dir / layout.TEST_DIR).iterdir())
    for row in rows:
        rle.parse_runs(row["rle_mask"], SMALL.height, SMALL.width)  # a valid placeholder


def test_metadata_describes_every_car(sample):
    data_dir, _ = sample
    rows = read_rows(data_dir / layout.METADATA_CSV)
    assert list(rows[0]) == ["id", "year", "make", "model", "trim1", "trim2"]
    assert {r["id"] for r in rows} == cars_in(data_dir / layout.TRAIN_DIR) | cars_in(data_dir / layout.TEST_DIR)
    assert all(2000 <= int(r["year"]) <= 2018 and r["make"] and r["model"] for r in rows)


def test_marker_says_the_set_is_a_complete_sample(sample):
    data_dir, report = sample
    marker = layout.read_complete_marker(data_dir)
    assert marker["source"] == "sample"
    assert (marker["train_images"], marker["test_images"], marker["size"]) == (80, 32, "192x128")
    assert report.summary().startswith("sample data: 5 train cars (80 images)")


def test_the_marker_is_written_after_everything_else(tmp_path, monkeypatch):
    seen_at_marker_time = []
    original = layout.write_complete_marker

    def spy(data_dir, source, details):
        # The generation lock is held until the marker is written.
        names = [p.name for p in Path(data_dir).iterdir() if p.name != sample_dataset.LOCK_NAME]
        seen_at_marker_time.append(sorted(names))
        original(data_dir, source, details)

    monkeypatch.setattr(layout, "write_complete_marker", spy)
    generate_sample_dataset(tmp_path, train_cars=1, test_cars=1, size=Size(96, 64), progress=False)
    assert seen_at_marker_time == [sorted(sample_dataset.OUTPUTS)]  # all in place, no staging folder left


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    def generate(name: str, seed: int, workers: int) -> dict[str, bytes]:
        generate_sample_dataset(tmp_path / name, train_cars=2, test_cars=1, size=Size(96, 64), seed=seed,
                                progress=False, workers=workers)
        return all_files(tmp_path / name)

    first = generate("a", seed=11, workers=1)
    assert generate("b", seed=11, workers=2) == first  # nor does drawing in parallel change a byte
    other = generate("c", seed=12, workers=1)
    assert set(other) != set(first)
    assert all(other[name] != first[name] for name in other if name in first and name.endswith(".jpg"))


def test_an_interrupted_run_is_not_marked_complete(tmp_path, monkeypatch):
    written = []

    def disk_full_after_20_masks(mask):
        if len(written) == 20:
            raise OSError(28, "No space left on device")
        written.append(mask)
        return original(mask)

    original = sample_dataset.mask_gif
    monkeypatch.setattr(sample_dataset, "mask_gif", disk_full_after_20_masks)
    with pytest.raises(CarvanaError, match="nothing was marked complete"):
        generate_sample_dataset(tmp_path, train_cars=2, test_cars=1, size=Size(96, 64), progress=False, workers=1)
    assert layout.read_complete_marker(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone too


def test_a_failure_while_replacing_an_old_set_unmarks_it(tmp_path, monkeypatch):
    generate_sample_dataset(tmp_path, train_cars=1, test_cars=1, size=Size(96, 64), seed=1, progress=False)
    assert layout.read_complete_marker(tmp_path) is not None
    replaced = []

    def fail_on_third(src, dst):
        if len(replaced) == 2:
            raise KeyboardInterrupt
        replaced.append(dst)
        return real_replace(src, dst)

    real_replace = sample_dataset.os.replace
    monkeypatch.setattr(sample_dataset.os, "replace", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate_sample_dataset(tmp_path, train_cars=1, test_cars=1, size=Size(96, 64), seed=2, progress=False)
    assert layout.read_complete_marker(tmp_path) is None
    assert not list(tmp_path.glob(sample_dataset.STAGING_PREFIX + "*"))


def test_regenerating_replaces_the_old_set(tmp_path):
    generate_sample_dataset(tmp_path, train_cars=2, test_cars=1, size=Size(96, 64), seed=1, progress=False)
    old_cars = cars_in(tmp_path / layout.TRAIN_DIR)
    generate_sample_dataset(tmp_path, train_cars=1, test_cars=1, size=Size(96, 64), seed=2, progress=False)
    assert len(list((tmp_path / layout.TRAIN_DIR).iterdir())) == 16
    assert not cars_in(tmp_path / layout.TRAIN_DIR) & old_cars
    assert layout.read_complete_marker(tmp_path)["seed"] == 2


def best_threshold_dice(images: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """Mean Dice of the best single global threshold (either polarity), chosen knowing the truth."""
    fg = np.array([np.bincount(im[m > 0], minlength=256) for im, m in zip(images, masks)])
    bg = np.array([np.bincount(im[m == 0], minlength=256) for im, m in zip(images, masks)])
    fg_below, bg_below = np.cumsum(fg, axis=1), np.cumsum(bg, axis=1)
    fg_total, bg_total = fg.sum(axis=1, keepdims=True), bg.sum(axis=1, keepdims=True)
    best = 0.0
    for true_pos, false_pos in ((fg_below, bg_below), (fg_total - fg_below, bg_total - bg_below)):
        dice = 2 * true_pos / (fg_total + true_pos + false_pos)
        best = max(best, float(dice.mean(axis=0).max()))
    return best


def test_no_colour_threshold_segments_the_cars(sample):
    data_dir, _ = sample
    names = sorted(p.name for p in (data_dir / layout.TRAIN_DIR).iterdir())
    photos = [cv2.imread(str(data_dir / layout.TRAIN_DIR / n)) for n in names]
    masks = [read_mask(data_dir / layout.MASKS_DIR / layout.mask_name(n)) for n in names]
    channels = {
        "grey": [cv2.cvtColor(p, cv2.COLOR_BGR2GRAY) for p in photos],
        "blue": [p[..., 0] for p in photos], "green": [p[..., 1] for p in photos], "red": [p[..., 2] for p in photos],
        "saturation": [cv2.cvtColor(p, cv2.COLOR_BGR2HSV)[..., 1] for p in photos],
    }
    for name, images in channels.items():
        assert best_threshold_dice(images, masks) < 0.8, name


def test_masks_look_like_one_car_standing_in_the_middle(sample):
    data_dir, _ = sample
    coverages = []
    for path in sorted((data_dir / layout.MASKS_DIR).iterdir()):
        mask = read_mask(path)
        coverages.append(mask.mean())
        assert 0.05 < mask.mean() < 0.6, path.name
        assert not mask[0].any() and not mask[:, 0].any() and not mask[:, -1].any(), path.name
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        assert stats[1:, cv2.CC_STAT_AREA].max() >= 0.97 * mask.sum(), path.name
    assert 0.15 < np.mean(coverages) < 0.45


def test_the_turntable_turns_the_car(sample):
    data_dir, _ = sample
    for car in cars_in(data_dir / layout.TRAIN_DIR):
        columns = {v: np.flatnonzero(read_mask(data_dir / layout.MASKS_DIR / f"{car}_{v:02d}_mask.gif").any(axis=0))
                   for v in (1, 5, 9, 13)}
        width = {v: int(np.ptp(c)) for v, c in columns.items()}
        assert min(width[5], width[13]) > 1.4 * max(width[1], width[9])  # sides are longer than ends


def test_the_default_size_is_carvanas(tmp_path):
    report = generate_sample_dataset(tmp_path, train_cars=1, test_cars=1, progress=False)
    assert report.size == Size(1918, 1280)
    name = sorted((tmp_path / layout.TRAIN_DIR).iterdir())[4].name
    assert cv2.imread(str(tmp_path / layout.TRAIN_DIR / name)).shape == (1280, 1918, 3)
    row = next(r for r in read_rows(tmp_path / layout.MASKS_CSV) if r["img"] == name)
    gif = cv2.imread(str(tmp_path / layout.MASKS_DIR / layout.mask_name(name)), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(rle.decode(row["rle_mask"], 1280, 1918) * 255, gif)


def test_other_sizes_are_kept_exactly(tmp_path):
    generate_sample_dataset(tmp_path, train_cars=1, test_cars=1, size=Size(150, 100), progress=False)
    image = next((tmp_path / layout.TEST_DIR).iterdir())
    assert cv2.imread(str(image)).shape == (100, 150, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"train_cars": 0}, "at least one"),
    ({"test_cars": 0}, "at least one"),
    ({"size": Size(16, 16)}, "16x16"),
    ({"workers": 0}, "workers"),
])
def test_rejects_settings_that_cannot_work(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        generate_sample_dataset(tmp_path / "input", progress=False, **kwargs)
    assert not (tmp_path / "input").exists()


def photos_and_masks(data_dir: Path, view: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(grey photo, 0/1 mask) of every training photo, or of one view of every training car."""
    names = sorted(p.name for p in (data_dir / layout.TRAIN_DIR).iterdir())
    if view is not None:
        names = [n for n in names if n.endswith(f"_{view:02d}.jpg")]
    return [(cv2.imread(str(data_dir / layout.TRAIN_DIR / n), cv2.IMREAD_GRAYSCALE),
             read_mask(data_dir / layout.MASKS_DIR / layout.mask_name(n))) for n in names]


def test_some_booths_have_a_dark_floor_band_that_is_not_car(sample):
    data_dir, _ = sample
    banded = [(photo, mask) for photo, mask in photos_and_masks(data_dir) if photo[-2:].mean() < 110]
    assert banded  # dark as tyres along the whole bottom edge of the frame ...
    assert not any(mask[-2:].any() for _, mask in banded)  # ... and never car


def test_cars_are_framed_differently_as_in_the_real_booths(sample):
    data_dir, _ = sample
    bottoms = [np.flatnonzero(mask.any(axis=1)).max() / mask.shape[0] for _, mask in photos_and_masks(data_dir, 5)]
    tops = [np.flatnonzero(mask.any(axis=1)).min() / mask.shape[0] for _, mask in photos_and_masks(data_dir, 5)]
    assert np.ptp(bottoms) > 0.04 and np.ptp(tops) > 0.04
    assert 0.2 < np.mean(tops) < 0.38  # the car stands high in the frame, under the lettering, as Carvana's do


def test_the_floor_shadow_reaches_beyond_the_car_and_is_not_car(sample):
    data_dir, _ = sample
    near, far = [], []
    for photo, mask in photos_and_masks(data_dir, 1):  # the front: floor on both sides of the car
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        band = slice(rows.max() - 6, rows.max() - 1)  # the floor beside the wheels
        width = photo.shape[1]
        for lo, hi in ((cols.min() - 14, cols.min() - 4), (cols.max() + 5, cols.max() + 15)):
            assert not mask[band, lo:hi].any()
            near.append(photo[band, lo:hi].mean())
        far.append(np.mean([photo[band, :width // 12].mean(), photo[band, -width // 12:].mean()]))
    assert np.mean(near) < np.mean(far) - 8  # in grey levels: darker beside the car than at the frame's edges


def test_white_panels_are_as_bright_as_the_wall(sample):
    """White and silver cars' panels mirror the bright studio: some are no darker than the wall behind."""
    data_dir, _ = sample
    brightest = 0.0
    for photo, mask in photos_and_masks(data_dir):
        wall = np.median(photo[: photo.shape[0] // 8])
        car = photo[mask > 0]
        brightest = max(brightest, float(np.mean(car >= wall - 6)))
    assert brightest > 0.23
