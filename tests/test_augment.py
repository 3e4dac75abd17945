"""Augmentation moves the photo and its mask together and keeps the mask 0/1."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from carvana.data.augment import Augmenter, affine_matrix, jitter_colour, warp_pair
from carvana.errors import ConfigError

HEIGHT, WIDTH = 64, 96
STRONG = Augmenter(shift=0.2, scale=0.3, rotate_degrees=30, hflip=0.5, brightness=0.1, contrast=0.1, hue_degrees=20, p=1.0)


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
    flip_only = Augmenter(shift=0, scale=0, rotate_degrees=0, hflip=1.0, brightness=0, contrast=0, hue_degrees=0, p=0)
    out_image, out_mask = flip_only(image, mask, np.random.default_rng(0))
    assert np.array_equal(out_mask, mask[:, ::-1]) and np.array_equal(out_image, image[:, ::-1])


@pytest.mark.parametrize("seed", range(20))
def test_the_mask_stays_exactly_0_1(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = (rng.random((HEIGHT, WIDTH)) > 0.5).astype(np.uint8)
    _, out_mask = STRONG(image, mask, rng)
    assert out_mask.dtype == np.uint8
    assert set(np.unique(out_mask).tolist()) <= {0, 1}


def test_colour_jitter_changes_the_image_but_never_the_mask() -> None:
    colour_only = Augmenter(shift=0, scale=0, rotate_degrees=0, hflip=0, brightness=0.2, contrast=0.2, hue_degrees=40, p=1.0)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    _, mask = square_pair()
    for _ in range(5):
        out_image, out_mask = colour_only(image, mask, rng)
        assert np.array_equal(out_mask, mask)
        assert not np.array_equal(out_image, image)


def test_neutral_colour_jitter_is_the_identity_and_hue_turns_colours() -> None:
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(jitter_colour(image, brightness=0.0, contrast=1.0, hue_shift_degrees=0.0), image)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    turned = jitter_colour(red, brightness=0.0, contrast=1.0, hue_shift_degrees=120.0)
    assert turned[0, 0, 1] > 150 and turned[0, 0, 0] < 50  # red turned to green


def test_the_identity_transform_leaves_the_pair_unchanged() -> None:
    image, mask = square_pair()
    same_image, same_mask = warp_pair(image, mask, affine_matrix(WIDTH, HEIGHT, 0.0, 1.0, 0.0, 0.0))
    assert np.array_equal(same_image, image) and np.array_equal(same_mask, mask)


def test_the_same_generator_state_gives_the_same_augmentation() -> None:
    image, mask = square_pair()
    first = STRONG(image, mask, np.random.default_rng(42))
    again = STRONG(image, mask, np.random.default_rng(42))
    other = STRONG(image, mask, np.random.default_rng(43))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize(
    "kwargs", [{"p": 1.5}, {"hflip": -0.1}, {"shift": 1.0}, {"scale": -0.1}, {"rotate_degrees": 400}]
)
def test_impossible_settings_raise_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        Augmenter(**kwargs)
