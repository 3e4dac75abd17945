"""Datasets turn photos and masks into tensors in the model's geometry, aligned pixel for pixel."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from carvana.core.errors import DataError
from carvana.core.geometry import Size
from carvana.data.augment import Augmenter
from carvana.data.datasets import (CarvanaTestDataset, CarvanaTrainDataset, make_test_loader, make_train_loader,
                                   make_valid_loader)
from carvana.data.images import resize_mask
from carvana.data.layout import load_carvana_data
from carvana.data.loading import collate
from carvana.models.specs import model_geometry
from carvana.run.config import Config
from data_factory import make_tiny_carvana, write_gif_mask, write_jpeg

# The paper's net at a small non-square size: 284x236 in, 100x52 out, 92 px border.
ORIGINAL = model_geometry("unet_original", Size(284, 236))
SAME_SIZE = model_geometry("unet1024", Size(192, 128))


def square_photo(tmp_path: Path, size: Size, top: int, left: int, side: int, name: str = "c0ffee000001_01") -> tuple[Path, Path]:
    """A dark JPEG with a bright square, and a GIF mask of exactly that square."""
    mask = np.zeros((size.height, size.width), np.uint8)
    mask[top:top + side, left:left + side] = 1
    photo = np.full((size.height, size.width, 3), 25, np.uint8)
    photo[mask == 1] = 235
    return (
        write_jpeg(tmp_path / f"{name}.jpg", photo, quality=100),
        write_gif_mask(tmp_path / f"{name}_mask.gif", mask),
    )


def bright_region(image: torch.Tensor) -> np.ndarray:
    """Where a uint8 (3, H, W) photo is bright, as a 0/1 array."""
    return (image.float().mean(0) > 127.5).numpy().astype(np.uint8)


def box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return rows[0], rows[-1], cols[0], cols[-1]


# --- shapes, types, values ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return load_carvana_data(make_tiny_carvana(tmp_path_factory.mktemp("tiny"), cars=3, views=4))


@pytest.mark.parametrize("geometry", [SAME_SIZE, ORIGINAL, model_geometry("unet1024", Size(128, 192))], ids=str)
def test_items_have_the_model_shapes_uint8_photos_and_exact_0_1_masks(tiny, geometry) -> None:
    dataset = CarvanaTrainDataset(tiny.train_image_paths(), tiny.mask_paths(), geometry, Augmenter(), seed=1)
    image, mask = dataset[0]
    assert image.dtype == torch.uint8 and mask.dtype == torch.float32
    assert image.shape == (3, geometry.input_size.height, geometry.input_size.width)
    assert mask.shape == (1, geometry.output_size.height, geometry.output_size.width)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    test_image, name = CarvanaTestDataset(tiny.test_image_paths(), geometry)[1]
    assert test_image.shape == image.shape and name == tiny.test_names[1]


# --- alignment (overlap-tile) ------------------------------------------------------------------


def test_without_resizing_the_mask_is_exactly_the_centre_of_the_padded_photo(tmp_path: Path) -> None:
    covered = ORIGINAL.covered_size  # 100x52: the photo is already this size, nothing is resized
    photo, mask_file = square_photo(tmp_path, covered, top=8, left=61, side=20)
    image, mask = CarvanaTrainDataset([photo], [mask_file], ORIGINAL)[0]

    centre = ORIGINAL.crop_to_covered(image)
    assert centre.shape[1:] == mask.shape[1:] == (covered.height, covered.width)
    assert np.array_equal(bright_region(centre), mask[0].numpy().astype(np.uint8))
    assert box(mask[0].numpy()) == (8, 27, 61, 80)
    # The border is the photo's mirror image (edge pixel not repeated), not zeros.
    border, padded = ORIGINAL.border, bright_region(image)
    assert np.array_equal(padded[:, border - 1 - 20:border - 1], padded[:, border + 21:border + 1:-1])
    assert padded[border - 8 - 1, border + 70] == 1  # the square reflected above the top edge


def test_a_same_size_net_sees_photo_and_mask_at_the_same_pixels(tmp_path: Path) -> None:
    photo, mask_file = square_photo(tmp_path, SAME_SIZE.covered_size, top=90, left=20, side=16)
    image, mask = CarvanaTrainDataset([photo], [mask_file], SAME_SIZE)[0]
    assert SAME_SIZE.border == 0
    assert np.array_equal(bright_region(image), mask[0].numpy().astype(np.uint8))


@pytest.mark.parametrize(
    ("photo_size", "square"),
    [
        (Size(200, 104), (16, 120, 40)),  # 2x the covered size: area resize
        (Size(800, 416), (64, 480, 160)),  # 8x: libjpeg decodes at 1/8, no resize left
        (Size(192, 128), (30, 100, 48)),  # an uneven ratio (1.92 x 2.46)
    ],
    ids=str,
)
def test_after_resizing_the_square_lands_where_expected_within_a_pixel(tmp_path: Path, photo_size, square) -> None:
    top, left, side = square
    photo, mask_file = square_photo(tmp_path, photo_size, top, left, side)
    covered = ORIGINAL.covered_size
    image, mask = CarvanaTrainDataset([photo], [mask_file], ORIGINAL)[0]
    sx, sy = covered.width / photo_size.width, covered.height / photo_size.height
    expected = (top * sy, (top + side) * sy - 1, left * sx, (left + side) * sx - 1)
    for found in (box(mask[0].numpy()), box(bright_region(ORIGINAL.crop_to_covered(image)))):
        assert np.allclose(found, expected, atol=1.0), (found, expected)


def test_augmentation_keeps_the_padded_photo_and_the_mask_aligned(tmp_path: Path) -> None:
    photo, mask_file = square_photo(tmp_path, ORIGINAL.covered_size, top=8, left=61, side=20)
    strong = Augmenter(shift=0.2, scale=0.2, rotate_degrees=20, hflip=0.5, brightness=0.05, contrast=0.05, p=1.0)
    dataset = CarvanaTrainDataset([photo], [mask_file], ORIGINAL, strong, seed=3)
    moved = 0
    for _ in range(6):
        image, mask = dataset[0]
        target = mask[0].numpy().astype(np.uint8)
        disagree = bright_region(ORIGINAL.crop_to_covered(image)) != target
        assert disagree.sum() <= 2 * (target.sum() ** 0.5) * 4  # only along the square's edges
        moved += box(target) != (8, 27, 61, 80)
    assert moved >= 4


# --- loaders -----------------------------------------------------------------------------------


def test_loaders_give_batches_with_masks_or_file_names(tiny) -> None:
    train = make_train_loader(tiny, tiny.train_names, SAME_SIZE, batch_size=5, workers=0, seed=0, augment=Augmenter())
    images, masks = next(iter(train))
    assert images.shape == (5, 3, 128, 192) and masks.shape == (5, 1, 128, 192)
    valid = make_valid_loader(tiny, tiny.train_names[:3], SAME_SIZE, batch_size=2, workers=0)
    assert [len(masks) for _, masks in valid] == [2, 1]
    names = [name for _, batch in make_test_loader(tiny, SAME_SIZE, batch_size=3, workers=0) for name in batch]
    assert names == tiny.test_names


def test_loader_settings_come_from_a_config_unless_given(tiny) -> None:
    config = Config(batch_size=3, workers=0, augment=True, seed=5)
    train = make_train_loader(tiny, tiny.train_names, SAME_SIZE, config)
    assert train.batch_size == 3 and train.num_workers == 0 and isinstance(train.dataset.augment, Augmenter)
    assert make_train_loader(tiny, tiny.train_names, SAME_SIZE, config.replace(augment=False)).dataset.augment is None
    assert make_valid_loader(tiny, tiny.train_names, SAME_SIZE, config, batch_size=4).batch_size == 4
    # Any photos can be predicted, e.g. the validation photos when scoring like Kaggle.
    photos = tiny.train_image_paths(tiny.train_names[:2])
    names = [n for _, batch in make_test_loader(photos, SAME_SIZE, config) for n in batch]
    assert names == tiny.train_names[:2]


def test_collate_keeps_file_names_as_a_list() -> None:
    images, names = collate([(torch.zeros(3, 2, 2), "a_01.jpg"), (torch.ones(3, 2, 2), "a_02.jpg")])
    assert images.shape == (2, 3, 2, 2) and names == ["a_01.jpg", "a_02.jpg"]


def test_validation_is_never_augmented(tiny) -> None:
    valid = make_valid_loader(tiny, tiny.train_names[:2], SAME_SIZE, batch_size=2, workers=0)
    first, second = [torch.cat([images for images, _ in valid]) for _ in range(2)]
    assert torch.equal(first, second)


def test_workers_augment_differently_each_epoch_and_reproducibly_given_the_seed(tiny) -> None:
    # One photo, four times: any difference between items comes from augmentation alone.
    same_photo = [tiny.train_names[0]] * 4

    # Run OpenCV's thread pool here first: workers forked from such a process used to hang.
    big = np.random.default_rng(0).random((1500, 1500), dtype=np.float32)
    cv2.resize(cv2.GaussianBlur(big, (9, 9), 0), (500, 500), interpolation=cv2.INTER_AREA)

    def epochs(seed: int) -> list[torch.Tensor]:
        loader = make_train_loader(tiny, same_photo, SAME_SIZE, batch_size=1, workers=2, seed=seed, augment=Augmenter(p=1.0))
        loader.timeout = 120  # fail instead of hanging if a worker never answers
        return [torch.cat([masks for _, masks in loader]) for _ in range(2)]

    first, second = epochs(seed=11)
    assert len({tuple(m.flatten().tolist()) for m in torch.cat([first, second])}) == 8
    again = epochs(seed=11)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    assert not torch.equal(first, epochs(seed=12)[0])


@pytest.mark.reliability
@pytest.mark.parametrize("workers", [0, 2])
def test_a_broken_photo_read_by_a_worker_is_raised_as_a_one_line_data_error(tmp_path: Path, workers: int) -> None:
    data = load_carvana_data(make_tiny_carvana(tmp_path, cars=2, views=2))
    broken = data.train_image_paths()[1]
    broken.write_bytes(broken.read_bytes()[:300])
    loader = make_train_loader(data, data.train_names, SAME_SIZE, batch_size=2, workers=workers, seed=0)
    loader.timeout = 120 if workers else 0
    with pytest.raises(DataError) as error:
        for _ in loader:
            pass
    assert str(broken) in str(error.value) and "truncated JPEG" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_big_mask_shrinks_like_an_area_average_thresholded_at_half() -> None:
    full = np.zeros((1280, 1918), np.uint8)
    cv2.ellipse(full, (900, 700), (650, 280), 10, 0, 360, 1, thickness=-1)
    full[300:700, 1500:1504] = 1  # an antenna 4 px wide: 0.4 px at 192x128, so it should vanish
    small = resize_mask(full, Size(192, 128))
    reference = cv2.resize(full.astype(np.float32), (192, 128), interpolation=cv2.INTER_AREA) >= 0.5
    assert small.dtype == np.uint8 and set(np.unique(small).tolist()) == {0, 1}
    differ = small != reference
    assert differ.sum() <= 0.02 * reference.sum() and not (differ & ~edge_band(reference)).any()


def edge_band(mask: np.ndarray) -> np.ndarray:
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) != cv2.erode(mask.astype(np.uint8), kernel)


def test_every_loader_ships_uint8_photos_and_float_targets(tmp_path):
    """Photos leave the loaders as uint8 pixels (normalised later, on the model's device)."""
    data = load_carvana_data(make_tiny_carvana(tmp_path, cars=1))
    for model, size in (("unet1024", Size(128, 64)), ("unet_original", Size(316, 268))):
        geometry = model_geometry(model, size)
        images, masks = next(iter(make_train_loader(data, data.train_names[:2], geometry, batch_size=2, workers=0)))
        valid_images, _ = next(iter(make_valid_loader(data, data.train_names[:2], geometry, batch_size=2, workers=0)))
        test_images, names = next(iter(make_test_loader(data, geometry, batch_size=2, workers=0)))
        assert images.dtype == valid_images.dtype == test_images.dtype == torch.uint8
        assert masks.dtype == torch.float32 and len(names) == 2
        assert test_images.shape[-2:] == (geometry.input_size.height, geometry.input_size.width)
