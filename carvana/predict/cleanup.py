"""Mask clean-up on the probability map at the model's output size, before it is up-sampled (pure functions).

A car is one solid object, so two kinds of error a model makes can be undone by shape alone: a
speck of "car" away from the car (a reflection, a lamp on the studio wall) and a hole of background
inside it (a window of the same grey as the wall). The thresholded map at the model's size has the
same regions as the full-size mask, at a hundredth of the pixels, so the regions are found there.

What is changed is the probabilities, not a mask, and only those of the pixels being removed or
filled: the submission path (`postprocess`) then up-samples and thresholds the result exactly as it
would any map, so the car's edges keep their sub-pixel position and the CPU row path and the GPU
batch path both apply the clean-up by being handed the cleaned map.

- "largest": pixels of every car region but the largest get probability 0. Regions are
  8-connected, so no pixel of the largest region touches a removed one and the up-sampled edges
  of the car stay where they were.
- "fill": background regions that do not touch the map's border are holes; their pixels get at
  least `FILL_LEVEL`, a probability safely above the threshold (a value just above it could round
  below it in the interpolation). Background is 4-connected, the complement of 8-connected car.
- "largest+fill": the first, then the second (a hole left by a removed speck is filled too).
"""
from __future__ import annotations

import cv2
import numpy as np

from carvana.run.fields import MASK_CLEANUPS

NONE, LARGEST, FILL, LARGEST_AND_FILL = MASK_CLEANUPS


def fill_level(threshold: float) -> np.float32:
    """The probability a filled hole pixel gets at least: a hundredth of the way from the threshold to 1."""
    return np.float32(threshold + 0.01 * (1.0 - threshold))


def car_regions(probabilities: np.ndarray, threshold: float) -> tuple[int, np.ndarray, np.ndarray]:
    """The 8-connected regions of `probabilities > threshold`: (count, labels, pixel area of each label)."""
    car = (probabilities > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(car, connectivity=8)
    return count, labels, stats[:, cv2.CC_STAT_AREA]


def keep_largest_component(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """The (h, w) map with every car region but the largest at probability 0 (a copy if any is removed)."""
    count, labels, areas = car_regions(probabilities, threshold)
    if count <= 2:  # background only, or one region: nothing to remove
        return probabilities
    largest = 1 + int(np.argmax(areas[1:]))
    removed = (labels != largest) & (labels != 0)
    cleaned = np.array(probabilities, dtype=np.float32, copy=True)
    cleaned[removed] = 0.0
    return cleaned


def fill_holes(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """The (h, w) map with background enclosed by the car raised to `fill_level(threshold)` (a copy if any is)."""
    background = (probabilities <= threshold).astype(np.uint8)
    count, labels = cv2.connectedComponents(background, connectivity=4)  # car pixels are label 0
    if count < 2:  # no background at all
        return probabilities
    border = np.unique(np.concatenate((labels[0], labels[-1], labels[:, 0], labels[:, -1])))
    holes = (labels != 0) & ~np.isin(labels, border)
    if not holes.any():
        return probabilities
    cleaned = np.array(probabilities, dtype=np.float32, copy=True)
    cleaned[holes] = np.maximum(cleaned[holes], fill_level(threshold))
    return cleaned


def clean_probabilities(probabilities: np.ndarray, threshold: float, cleanup: str) -> np.ndarray:
    """The (h, w) map after `cleanup` (one of MASK_CLEANUPS); the map itself, uncopied, for "none"."""
    if cleanup == NONE:
        return probabilities
    if cleanup not in MASK_CLEANUPS:
        raise ValueError(f"mask cleanup {cleanup!r}: choose from {', '.join(MASK_CLEANUPS)}")
    probabilities = np.ascontiguousarray(probabilities, dtype=np.float32)
    if cleanup in (LARGEST, LARGEST_AND_FILL):
        probabilities = keep_largest_component(probabilities, threshold)
    if cleanup in (FILL, LARGEST_AND_FILL):
        probabilities = fill_holes(probabilities, threshold)
    return probabilities
