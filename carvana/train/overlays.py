"""Pictures of a prediction against the truth, at the photo's own resolution (pure numpy functions).

One colour code everywhere (TensorBoard, the README picture): over the dimmed photo, green is car
the model found, red car it missed, blue background it took for car; the true mask alone is
yellow. A whole 1918x1280 photo shown at a readable width hides the errors that matter, which are
a few pixels wide along the car's edge, so `validation_picture` puts a 1:1 crop of the window with
the most errors beside the overview: there one screen pixel is one photo pixel, as Kaggle scores it.

All images are RGB uint8 (H, W, 3); masks are (H, W) bool or 0/1 at the photo's size.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

TRUE_POSITIVE = (0, 255, 0)  # green: car, predicted car
FALSE_NEGATIVE = (255, 0, 0)  # red: car the model missed
FALSE_POSITIVE = (51, 102, 255)  # blue: background the model called car
TRUTH = (255, 217, 0)  # yellow: the true mask
DIM = 0.45  # photo brightness under the overlay, so that the colours stand out on white cars
ALPHA = 0.55  # overlay opacity: the photo's edge stays visible under the colour
READABLE_WIDTH = 960  # the overview's width; a smaller photo is shown at its own width, never enlarged
CROP_SIDE = 256  # side of the 1:1 crop, in photo pixels
CAPTION_HEIGHT = 30
CROP_OUTLINE = (255, 255, 255)


class Window(NamedTuple):
    """A square of the photo: top-left corner and side, in photo pixels."""

    top: int
    left: int
    side: int

    def of(self, image: np.ndarray) -> np.ndarray:
        return image[self.top:self.top + self.side, self.left:self.left + self.side]


def _overlay(photo: np.ndarray, classes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The dimmed photo with `colours[c]` blended in where `classes` is c > 0 (c = 0 stays dim).

    OpenCV's saturating uint8 arithmetic: a 1918x1280 photo takes milliseconds, not the tenths of
    a second of float arithmetic over boolean indices, and TensorBoard draws six per epoch.
    """
    table = np.zeros((256, 1, 3), np.uint8)
    table[:len(colours), 0] = colours
    painted = cv2.LUT(cv2.merge([classes, classes, classes]), table)
    dimmed = cv2.convertScaleAbs(photo, alpha=DIM)
    blended = cv2.addWeighted(dimmed, 1 - ALPHA, painted, ALPHA, 0)
    return cv2.copyTo(blended, classes, dimmed)  # `dimmed` where the class is 0


def truth_overlay(photo: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The true mask in yellow over the dimmed photo."""
    return _overlay(photo, truth.astype(np.uint8), np.array([(0, 0, 0), TRUTH], np.uint8))


_ERROR_COLOURS = np.array([(0, 0, 0), FALSE_NEGATIVE, FALSE_POSITIVE, TRUE_POSITIVE], np.uint8)


def error_overlay(photo: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Hits green, misses red, false alarms blue over the dimmed photo; true background stays dim."""
    classes = truth.astype(np.uint8) | (predicted.astype(np.uint8) << 1)  # 1 miss, 2 false alarm, 3 hit
    return _overlay(photo, classes, _ERROR_COLOURS)


def comparison_panel(photo: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """photo | truth (yellow) | errors, side by side at the photo's size."""
    return np.hstack([photo, truth_overlay(photo, truth), error_overlay(photo, truth, predicted)])


def mask_edge(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` with a 4-neighbour outside it (bool)."""
    inside = mask.astype(np.uint8)
    eroded = cv2.erode(inside, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return (inside > 0) & (eroded == 0)


def densest_window(points: np.ndarray, side: int) -> Window:
    """The `side` x `side` window inside the image holding the most True pixels of `points`.

    Ties go to the first window in row-major order; with no points at all, the centre window.
    The side is clipped to the image.
    """
    height, width = points.shape
    side = max(1, min(side, height, width))
    if not points.any():
        return Window((height - side) // 2, (width - side) // 2, side)
    sums = cv2.integral(points.astype(np.uint8), sdepth=cv2.CV_32S)  # (H+1, W+1), sums[y, x] = points[:y, :x].sum()
    counts = sums[side:, side:] - sums[:-side, side:] - sums[side:, :-side] + sums[:-side, :-side]
    top, left = np.unravel_index(int(np.argmax(counts)), counts.shape)
    return Window(int(top), int(left), side)


def worst_edge_window(truth: np.ndarray, predicted: np.ndarray, side: int = CROP_SIDE) -> Window:
    """Where to look: the window with the most wrong pixels, or, when none is wrong, the most car edge."""
    wrong = truth.astype(bool) != predicted.astype(bool)
    return densest_window(wrong if wrong.any() else mask_edge(truth), side)


def readable_width(photo_width: int, width: int = READABLE_WIDTH) -> int:
    """The overview's width: `width`, or the photo's own when it is narrower (no enlarging)."""
    return min(photo_width, width)


def _resize_to_width(image: np.ndarray, width: int) -> np.ndarray:
    if image.shape[1] == width:
        return image
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _caption(text: str, width: int) -> np.ndarray:
    band = np.zeros((CAPTION_HEIGHT, width, 3), np.uint8)
    cv2.putText(band, text, (8, CAPTION_HEIGHT - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1,
                cv2.LINE_AA)
    return band


def validation_picture(photo: np.ndarray, truth: np.ndarray, predicted: np.ndarray, caption: str = "",
                       width: int = READABLE_WIDTH, crop_side: int = CROP_SIDE) -> np.ndarray:
    """One picture of a prediction: a caption band above [error overlay at a readable width | 1:1 crops].

    The overview is the whole error overlay at `readable_width(photo width)` with the crop's window
    outlined; to its right, the photo and the error overlay of the worst-edge window at 1:1, one
    above the other. The picture is `readable_width + crop side` wide.
    """
    errors = error_overlay(photo, truth, predicted)
    window = worst_edge_window(truth, predicted, crop_side)
    overview = _resize_to_width(errors, readable_width(photo.shape[1], width)).copy()
    scale = overview.shape[1] / photo.shape[1]
    cv2.rectangle(overview, (int(window.left * scale), int(window.top * scale)),
                  (int((window.left + window.side) * scale) - 1, int((window.top + window.side) * scale) - 1),
                  CROP_OUTLINE, 1)
    crops = np.vstack([window.of(photo), window.of(errors)])
    height = max(overview.shape[0], crops.shape[0])
    body = np.zeros((height, overview.shape[1] + crops.shape[1], 3), np.uint8)
    body[:overview.shape[0], :overview.shape[1]] = overview
    body[:crops.shape[0], overview.shape[1]:] = crops
    return np.vstack([_caption(caption, body.shape[1]), body])
