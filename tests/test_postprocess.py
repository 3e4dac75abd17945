"""The submission row's runs come straight from the probabilities, equal to thresholding cv2's up-sampling."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from carvana.core.geometry import Size
from carvana.kaggle import rle
from carvana.predict.postprocess import (
    linear_taps,
    probabilities_to_mask,
    probabilities_to_rle,
    probabilities_to_runs,
    probability_batch_to_runs,
)

PHOTO = Size(1918, 1280)
# float32 rounding of two products and a sum, in another order than OpenCV's (values are in [0, 1]).
ROUNDING = 1e-6


def opencv_probabilities(probabilities: np.ndarray, size: Size) -> np.ndarray:
    return cv2.resize(probabilities, tuple(size), interpolation=cv2.INTER_LINEAR)


def car_probabilities(size: Size, seed: int = 0) -> np.ndarray:
    """A soft car-like map: a full-size silhouette shrunk by area averaging, as a network's output looks."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((PHOTO.height, PHOTO.width), np.uint8)
    cx, cy = PHOTO.width // 2 + int(rng.integers(-80, 80)), int(PHOTO.height * 0.55)
    cv2.ellipse(mask, (cx, cy), (730, 205), 0, 0, 360, 1, -1)
    cv2.ellipse(mask, (cx - 40, cy - 150), (380, 150), 0, 180, 360, 1, -1)
    cv2.circle(mask, (cx - 480, cy + 150), 100, 1, -1)
    cv2.circle(mask, (cx + 480, cy + 150), 100, 1, -1)
    return cv2.resize(mask.astype(np.float32), tuple(size), interpolation=cv2.INTER_AREA)


def assert_matches_opencv(probabilities: np.ndarray, size: Size, threshold: float) -> int:
    """Compare with cv2.resize > threshold; pixels may differ only within rounding of the threshold."""
    runs = probabilities_to_runs(probabilities, size, threshold)
    ours = rle.runs_to_mask(rle.parse_runs(rle.runs_to_string(runs), size.height, size.width), size.height, size.width)
    values = opencv_probabilities(probabilities, size)
    differ = ours.astype(bool) != (values > threshold)
    assert np.all(np.abs(values[differ] - threshold) <= ROUNDING), "a pixel away from the threshold differs"
    return int(differ.sum())


@pytest.mark.parametrize("model_size", [Size(192, 128), Size(384, 256), Size(388, 388), Size(1024, 1024)])
def test_a_car_map_gives_exactly_the_runs_of_the_thresholded_opencv_upsampling(model_size):
    for seed in range(2):
        probabilities = car_probabilities(model_size, seed)
        expected = rle.encode_runs(opencv_probabilities(probabilities, PHOTO) > 0.5)
        assert np.array_equal(probabilities_to_runs(probabilities, PHOTO), expected)
        assert probabilities_to_rle(probabilities, PHOTO) == rle.encode(probabilities_to_mask(probabilities, PHOTO))


@settings(max_examples=60, deadline=None)
@given(
    source=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    scale=st.tuples(st.floats(1.0, 9.0), st.floats(0.3, 9.0)),
    threshold=st.sampled_from([0.5, 0.3, 0.9]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_maps_differ_from_opencv_only_within_rounding_of_the_threshold(source, scale, threshold, seed):
    width, height = source
    size = Size(max(width, round(width * scale[0])), max(1, round(height * scale[1])))
    probabilities = np.random.default_rng(seed).random((height, width), dtype=np.float32)
    # Runs of ones too, and exact 0/1 plateaus, whose edges sit where interpolation meets the threshold.
    probabilities[probabilities < 0.2] = 0.0
    probabilities[probabilities > 0.8] = 1.0
    assert_matches_opencv(probabilities, size, threshold)


def test_random_full_scale_maps_differ_from_opencv_in_at_most_a_few_rounding_pixels():
    rng = np.random.default_rng(7)
    for model_size in (Size(192, 128), Size(384, 256)):
        assert assert_matches_opencv(rng.random((model_size.height, model_size.width), dtype=np.float32),
                                     PHOTO, 0.5) <= 5


def test_a_run_that_reaches_the_end_of_a_row_continues_on_the_next_row():
    probabilities = np.zeros((4, 6), np.float32)
    probabilities[1:3, :] = 1.0  # two whole rows of the car
    probabilities[3, :3] = 1.0
    size = Size(24, 16)
    runs = probabilities_to_runs(probabilities, size)
    assert np.array_equal(runs, rle.encode_runs(opencv_probabilities(probabilities, size) > 0.5))
    # The whole rows of the band are one run, longer than a row, that goes on into the next rows.
    assert runs[0, 1] > size.width


def test_empty_and_full_maps():
    assert probabilities_to_runs(np.zeros((128, 192), np.float32), PHOTO).shape == (0, 2)
    assert probabilities_to_rle(np.ones((128, 192), np.float32), PHOTO) == f"1 {PHOTO.width * PHOTO.height}"


def test_a_narrow_peak_between_target_pixels_leaves_no_empty_run():
    probabilities = np.array([[0.0, 0.55, 0.0]], np.float32)  # the peak falls between two target pixels
    size = Size(10, 1)
    assert not (opencv_probabilities(probabilities, size) > 0.5).any()
    assert probabilities_to_runs(probabilities, size).shape == (0, 2)


def test_maps_that_are_not_enlarged_sideways_are_thresholded_after_opencv_resizing():
    rng = np.random.default_rng(3)
    probabilities = rng.random((40, 50), dtype=np.float32)
    for size in (Size(50, 40), Size(30, 90), Size(50, 10)):
        expected = rle.encode_runs(opencv_probabilities(probabilities, size) > 0.4)
        assert np.array_equal(probabilities_to_runs(probabilities, size, 0.4), expected)


def test_linear_taps_reproduce_opencv_interpolation_of_each_source_pixel():
    for source, target in ((192, 1918), (128, 1280), (7, 30), (1, 5), (10, 10)):
        identity = np.eye(source, dtype=np.float32)
        # Row i of the resized identity: the weight of source pixel i at every target pixel.
        weights = cv2.resize(identity, (target, source), interpolation=cv2.INTER_LINEAR)
        taps = linear_taps(source, target)
        ours = np.zeros_like(weights)
        columns = np.arange(target)
        ours[taps.left, columns] += taps.left_weight
        ours[np.minimum(taps.left + 1, source - 1), columns] += taps.right_weight
        np.testing.assert_allclose(ours, weights, atol=1e-7)


def test_a_batch_instead_of_one_map_is_refused():
    with pytest.raises(ValueError, match="one \\(height, width\\) probability map"):
        probabilities_to_runs(np.zeros((2, 8, 8), np.float32), PHOTO)


# --------------------------------------------------------------------------- a batch on the model's device


def batch_matches_opencv(maps: np.ndarray, size: Size, threshold: float, chunk: int = 8) -> None:
    """The batch way (run here on the CPU, as it runs on a GPU) against cv2.resize > threshold, map by map."""
    runs = probability_batch_to_runs(torch.from_numpy(maps), size, threshold, chunk=chunk)
    assert len(runs) == len(maps)
    for image_runs, probabilities in zip(runs, maps):
        ours = rle.runs_to_mask(rle.parse_runs(rle.runs_to_string(image_runs), size.height, size.width),
                                size.height, size.width)
        values = opencv_probabilities(probabilities, size)
        differ = ours.astype(bool) != (values > threshold)
        assert np.all(np.abs(values[differ] - threshold) <= ROUNDING), "a pixel away from the threshold differs"


@pytest.mark.parametrize("model_size", [Size(192, 128), Size(388, 388), Size(1024, 1024)])
def test_a_batch_of_car_maps_gives_the_runs_of_each_map_as_the_cpu_row_does(model_size):
    maps = np.stack([car_probabilities(model_size, seed) for seed in range(3)])
    runs = probability_batch_to_runs(torch.from_numpy(maps), PHOTO, chunk=2)
    for image_runs, probabilities in zip(runs, maps):
        assert np.array_equal(image_runs, probabilities_to_runs(probabilities, PHOTO))


@settings(max_examples=40, deadline=None)
@given(
    source=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    target=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    batch=st.integers(1, 4),
    threshold=st.sampled_from([0.5, 0.3, 0.9]),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_batch_of_random_maps_differs_from_opencv_only_within_rounding(source, target, batch, threshold, seed):
    maps = np.random.default_rng(seed).random((batch, source[1], source[0]), dtype=np.float32)
    maps[maps < 0.2], maps[maps > 0.8] = 0.0, 1.0
    batch_matches_opencv(maps, Size(*target), threshold, chunk=3)


def test_a_batch_of_empty_full_and_half_precision_maps():
    maps = torch.stack([torch.zeros(16, 24), torch.ones(16, 24), torch.full((16, 24), 0.5)])
    for dtype in (torch.float32, torch.bfloat16):
        empty, full, at_threshold = probability_batch_to_runs(maps.to(dtype), Size(48, 32))
        assert empty.shape == (0, 2) and at_threshold.shape == (0, 2)
        assert full.tolist() == [[1, 48 * 32]]


def test_a_single_map_instead_of_a_batch_is_refused_by_the_batch_way():
    with pytest.raises(ValueError, match="batch, height, width"):
        probability_batch_to_runs(torch.zeros(8, 8), PHOTO)
