"""Augmentation moves the photo and its mask together and keeps the mask 0/1."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from carvana.core.errors import ConfigError
from carvana.data.augment import Augmenter

HEIGHT, WIDTH = 64, 96
STRONG = Augmenter(shift=0.2, scale=0.3, rotate_degrees=30, hflip=0.5, brightness=0.1, contrast=0.1, hue_degrees=20, p=1.0)
NOTHING = dict(shift=0, scale=0, zoom_out=0, rotate_degrees=0, hflip=0, brightness=0, contrast=0, hue_degrees=0)


def square_pair(top: int = 6, left: int = 4, side: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A dark photo with a bright square exactly where the mask is 1 (near the top-left edge)."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[top:top + side, left:left + side + 10] = 1
    image = np.full((HEIGHT, WIDTH, 3), 30, np.uint8)
    image[mask == 1] = (230, 220, 210)
    return image, mask


def edge_band(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of the mask's outline, where linear and nearest sampling may differ."""
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)


@pytest.mark.parametrize("seed", range(12))
def test_the_bright_square_and_the_mask_move_together(seed: int) -> None:
    image, mask = square_pair()
    out_image, out_mask = STRONG(image, mask, np.random.default_rng(seed))
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert not np.array_equal(out_mask, mask)  # it really moved
    bright = cv2.cvtColor(out_image, cv2.COLOR_RGB2GRAY) > 127
    disagree = (bright != (out_mask == 1)) & ~edge_band(out_mask)
    assert disagree.sum() == 0


def test_a_flip_alone_mirrors_both() -> None:
    image, mask = square_pair()
    flip_only = Augmenter(**{**NOTHING, "hflip": 1.0}, p=0)
    out_image, out_mask = flip_only(image, mask, np.random.default_rng(0))
    assert np.array_equal(out_mask, mask[:, ::-1]) and np.array_equal(out_image, image[:, ::-1])


def test_an_augmenter_that_changes_nothing_returns_the_pair_unchanged() -> None:
    image, mask = square_pair()
    identity = Augmenter(**NOTHING, p=1.0)
    out_image, out_mask = identity(image, mask, np.random.default_rng(0))
    assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)


@pytest.mark.parametrize("seed", range(20))
def test_the_mask_stays_exactly_0_1(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = (rng.random((HEIGHT, WIDTH)) > 0.5).astype(np.uint8)
    out_image, out_mask = STRONG(image, mask, rng)
    assert out_mask.dtype == np.uint8 and out_image.dtype == np.uint8
    assert set(np.unique(out_mask).tolist()) <= {0, 1}
    assert out_image.flags.c_contiguous and out_mask.flags.c_contiguous


def test_the_zoom_goes_out_to_a_smaller_car_and_in_no_further_than_scale() -> None:
    # A car-sized block in the middle of the frame: zooming out (down to 0.7) shrinks its area to
    # as little as 0.49x, zooming in (up to 1.1) grows it to at most 1.21x.
    zoom_only = Augmenter(**{**NOTHING, "scale": 0.1, "zoom_out": 0.3}, p=1.0)
    image = np.full((HEIGHT, WIDTH, 3), 50, np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[HEIGHT // 4: 3 * HEIGHT // 4, WIDTH // 4: 3 * WIDTH // 4] = 1
    ratios = [zoom_only(image, mask, np.random.default_rng(seed))[1].sum() / mask.sum() for seed in range(40)]
    assert 0.45 < min(ratios) < 0.6
    assert 1.0 < max(ratios) < 1.3


@pytest.mark.parametrize("seed", range(8))
def test_a_frame_filled_by_the_car_stays_all_car_after_rotating_and_shrinking(seed: int) -> None:
    # The uncovered corners are filled by reflection in both the photo and the mask: no black
    # corners in the photo, no background corners in the mask.
    geometry_only = Augmenter(**{**NOTHING, "scale": 0.3, "zoom_out": 0.3, "rotate_degrees": 30}, p=1.0)
    image = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
    mask = np.ones((HEIGHT, WIDTH), np.uint8)
    out_image, out_mask = geometry_only(image, mask, np.random.default_rng(seed))
    assert out_mask.min() == 1
    assert out_image.min() == 200


def test_colour_jitter_changes_the_image_but_never_the_mask() -> None:
    colour_only = Augmenter(**{**NOTHING, "brightness": 0.2, "contrast": 0.2, "hue_degrees": 40}, p=1.0)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    _, mask = square_pair()
    for _ in range(5):
        out_image, out_mask = colour_only(image, mask, rng)
        assert np.array_equal(out_mask, mask)
        assert not np.array_equal(out_image, image)


def test_brightness_moves_a_grey_photo_by_at_most_its_fraction_of_255() -> None:
    brightness_only = Augmenter(**{**NOTHING, "brightness": 0.1}, p=1.0)
    grey = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    rng = np.random.default_rng(3)
    offsets = set()
    for _ in range(10):
        out_image, _ = brightness_only(grey, mask, rng)
        assert len(np.unique(out_image)) == 1  # the whole photo moves together
        offsets.add(int(out_image[0, 0, 0]) - 128)
    assert all(abs(offset) <= 0.1 * 255 + 1 for offset in offsets) and len(offsets) > 1


def test_hue_turns_colours_and_leaves_greys_grey() -> None:
    hue_only = Augmenter(**{**NOTHING, "hue_degrees": 60}, p=1.0)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:, : WIDTH // 2] = (200, 0, 0)  # red
    image[:, WIDTH // 2:] = 120  # grey
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    rng = np.random.default_rng(1)
    turned = [hue_only(image, mask, rng)[0] for _ in range(6)]
    assert any(not np.array_equal(out[:, : WIDTH // 2], image[:, : WIDTH // 2]) for out in turned)
    assert all(np.array_equal(out[:, WIDTH // 2:], image[:, WIDTH // 2:]) for out in turned)


def test_the_same_generator_state_gives_the_same_augmentation() -> None:
    image, mask = square_pair()
    first = STRONG(image, mask, np.random.default_rng(42))
    again = STRONG(image, mask, np.random.default_rng(42))
    other = STRONG(image, mask, np.random.default_rng(43))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_the_augmentation_depends_on_the_given_generator_alone() -> None:
    # The global random and numpy states (which other code reseeds) must not leak in, and a
    # generator that runs on gives a new augmentation each time it is used.
    image, mask = square_pair()
    random.seed(1)
    np.random.seed(1)
    rng = np.random.default_rng(7)
    first, second = STRONG(image, mask, rng), STRONG(image, mask, rng)
    random.seed(2)
    np.random.seed(2)
    rng = np.random.default_rng(7)
    assert all(np.array_equal(a, b) for a, b in zip(first, STRONG(image, mask, rng)))
    assert all(np.array_equal(a, b) for a, b in zip(second, STRONG(image, mask, rng)))
    assert not np.array_equal(first[1], second[1])


def test_images_and_masks_of_different_sizes_are_refused() -> None:
    image, mask = square_pair()
    with pytest.raises(ValueError, match="differ in size"):
        STRONG(image, mask[:, :-1], np.random.default_rng(0))


@pytest.mark.parametrize(
    "kwargs", [{"p": 1.5}, {"hflip": -0.1}, {"shift": 1.0}, {"scale": -0.1}, {"zoom_out": 1.0}, {"rotate_degrees": 400}]
)
def test_impossible_settings_raise_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        Augmenter(**kwargs)
