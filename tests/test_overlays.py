"""The pictures of a prediction (carvana.train.overlays): colours, where the 1:1 crop goes, the layout's sizes."""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from carvana.train.overlays import (CAPTION_HEIGHT, CROP_SIDE, READABLE_WIDTH, densest_window, error_overlay,
                                    mask_edge, truth_overlay, validation_picture, worst_edge_window)


def test_error_overlay_paints_hits_green_misses_red_and_false_alarms_blue():
    photo = np.full((1, 4, 3), 128, np.uint8)
    truth = np.array([[1, 1, 0, 0]], bool)
    predicted = np.array([[1, 0, 1, 0]], bool)

    hit, miss, false_alarm, background = error_overlay(photo, truth, predicted)[0].astype(int)

    assert hit[1] > hit[0] and hit[1] > hit[2]  # green
    assert miss[0] > miss[1] and miss[0] > miss[2]  # red
    assert false_alarm[2] > false_alarm[0] and false_alarm[2] > false_alarm[1]  # blue
    assert (background == background[0]).all() and background[0] < 128  # dimmed grey photo


def test_truth_overlay_paints_the_true_mask_yellow_over_the_dimmed_photo():
    car, background = truth_overlay(np.full((1, 2, 3), 128, np.uint8), np.array([[1, 0]]))[0].astype(int)
    assert car[0] > car[2] and car[1] > car[2]  # yellow
    assert (background == background[0]).all() and background[0] < 128


@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))), st.integers(1, 14))
def test_the_densest_window_holds_as_many_points_as_any_window(points, side):
    window = densest_window(points, side)
    height, width = points.shape
    clipped = min(side, height, width)
    assert window.side == clipped
    assert 0 <= window.top <= height - clipped and 0 <= window.left <= width - clipped
    best = max(points[y:y + clipped, x:x + clipped].sum()
               for y in range(height - clipped + 1) for x in range(width - clipped + 1))
    assert window.of(points).sum() == best


def test_the_crop_goes_where_the_errors_are_and_to_the_cars_edge_when_there_are_none():
    truth = np.zeros((400, 600), bool)
    truth[100:300, 100:500] = True
    predicted = truth.copy()
    predicted[280:300, 450:500] = False  # a missed corner

    window = worst_edge_window(truth, predicted, side=64)
    assert window.of(truth != predicted).sum() == 20 * 50  # all of them

    perfect = worst_edge_window(truth, truth, side=64)
    assert window.side == perfect.side == 64 and perfect.of(mask_edge(truth)).any()


def _photo(width: int, height: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_large_photo_is_shown_at_the_readable_width_beside_a_1_to_1_crop_of_the_photo():
    photo = _photo(1918, 1280)
    truth = np.zeros((1280, 1918), bool)
    truth[400:1000, 300:1600] = True
    predicted = np.roll(truth, 7, axis=1)

    picture = validation_picture(photo, truth, predicted, "caption")

    assert picture.shape == (CAPTION_HEIGHT + round(1280 * READABLE_WIDTH / 1918), READABLE_WIDTH + CROP_SIDE, 3)
    window = worst_edge_window(truth, predicted)
    crop = picture[CAPTION_HEIGHT:CAPTION_HEIGHT + CROP_SIDE, READABLE_WIDTH:]
    assert np.array_equal(crop, window.of(photo))  # one picture pixel per photo pixel
    below = picture[CAPTION_HEIGHT + CROP_SIDE:CAPTION_HEIGHT + 2 * CROP_SIDE, READABLE_WIDTH:]
    assert np.array_equal(below, window.of(error_overlay(photo, truth, predicted)))


def test_a_photo_narrower_than_the_readable_width_is_shown_at_its_own_size_never_enlarged():
    photo = _photo(300, 200)
    truth = np.zeros((200, 300), bool)
    truth[50:150, 60:240] = True

    picture = validation_picture(photo, truth, ~truth, "caption")

    # The photo at 1:1 (300 px), then the crop, clipped to the photo's height.
    assert picture.shape == (CAPTION_HEIGHT + 2 * 200, 300 + 200, 3)
    overview = picture[CAPTION_HEIGHT:CAPTION_HEIGHT + 200, :300]
    differs = overview != error_overlay(photo, truth, ~truth)
    assert differs.any(axis=2).mean() < 0.02  # only the outline of the crop's window is drawn over it
