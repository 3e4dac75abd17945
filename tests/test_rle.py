"""RLE as Kaggle reads it: row-major, 1-indexed `start length` pairs."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from carvana.kaggle import rle

shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))


@given(shapes.flatmap(lambda s: arrays(np.uint8, s, elements=st.integers(0, 1))))
def test_decode_inverts_encode_for_random_masks(mask):
    h, w = mask.shape
    assert np.array_equal(rle.decode(rle.encode(mask), h, w), mask)


@given(shapes, st.sampled_from(["empty", "full", "top_left", "bottom_right", "top_right", "bottom_left"]))
def test_decode_inverts_encode_for_edge_cases(shape, kind):
    h, w = shape
    mask = np.ones(shape, np.uint8) if kind == "full" else np.zeros(shape, np.uint8)
    corners = {"top_left": (0, 0), "bottom_right": (h - 1, w - 1), "top_right": (0, w - 1), "bottom_left": (h - 1, 0)}
    if kind in corners:
        mask[corners[kind]] = 1
    assert np.array_equal(rle.decode(rle.encode(mask), h, w), mask)


@given(shapes.flatmap(lambda s: st.tuples(st.just(s), st.integers(0, s[0] * s[1] - 1))))
def test_single_pixel_mask_is_one_run_of_one(args):
    (h, w), index = args
    mask = np.zeros((h, w), np.uint8)
    mask.flat[index] = 1
    assert rle.encode(mask) == f"{index + 1} 1"


def test_runs_are_row_major_and_one_indexed():
    mask = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    # Row-major numbering: pixels 2 and 3 in the first row, pixel 4 starts the second row.
    assert rle.encode(mask) == "2 3"
    assert rle.encode(np.array([[1, 0], [0, 1]])) == "1 1 4 1"


def test_first_and_last_pixel_set():
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 0] = mask[-1, -1] = 1
    assert rle.encode(mask) == "1 1 12 1"
    assert rle.encode(np.ones((3, 4))) == "1 12"
    assert rle.encode(np.zeros((3, 4))) == ""


def test_any_nonzero_value_is_foreground():
    mask = np.array([[0, 255, 1, 7, 0]], np.uint8)
    assert rle.encode(mask) == "2 3"
    assert rle.encode(mask.astype(bool)) == "2 3"
    assert rle.encode(mask.astype(np.float32)) == "2 3"


def test_touching_runs_decode_to_one_region():
    assert rle.decode("1 2 3 2", 2, 3).tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("1 2 3", "odd number"),
        ("1 x", "not an integer"),
        ("0 2", "not a positive pixel"),
        ("1 0", "not positive"),
        ("5 2 1 1", "not after"),
        ("1 3 2 2", "not after"),
        ("11 3", "past the last pixel"),
        ("99999999999999999999 1", "too large"),
        ("9223372036854775807 10", "start 9223372036854775807 is past the last pixel 12"),
        ("1 9223372036854775807", "longer than the 12 pixels"),
        ("9223372036854775807 9223372036854775807", "past the last pixel"),
        ("1e3 5", "'1e3' is not an integer"),
        ("1 -1", "not positive"),
        ("1 2\u00a03 4", "not a digit or a space"),
    ],
)
def test_malformed_rle_is_rejected_with_the_reason(text, problem):
    with pytest.raises(rle.RLEError, match=problem):
        rle.decode(text, 3, 4)


def test_empty_string_is_an_empty_mask():
    assert not rle.decode("", 3, 4).any()
    assert not rle.decode("  ", 3, 4).any()


def test_an_image_size_that_is_not_positive_is_a_caller_error():
    with pytest.raises(ValueError, match="must be positive"):
        rle.parse_runs("1 1", 0, 4)
