"""Mask clean-up on the probability map at the model's output size, before it is up-sampled (pure functions).

A car is one solid object, so a speck of "car" off the car and a hole of background inside it can be
undone by shape alone, found on the small map (the same regions as the full mask, 1% of the pixels).
Only the probabilities of the pixels removed or filled change, so the up-sampled edges stay where
they were and the CPU and GPU submission paths both apply it by taking the cleaned map.
"largest": every 8-connected car region but the largest gets 0. "fill": 4-connected background
regions off the border get at least `FILL_LEVEL`, safely above the threshold. "largest+fill": both.
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
