"""From a model's probability map to the RLE string of a full-size mask (pure functions).

The definition: a pixel is the car where `cv2.resize(probabilities, photo size, INTER_LINEAR)` is
above the threshold; probabilities, not a 0/1 mask, are up-sampled, so edges are smooth rather than
staircases one model pixel wide. `probabilities_to_runs` finds the same runs without the 2.4 million
interpolated floats: bilinear interpolation is separable, so after the columns are interpolated each
full-size row is linear between two source columns and can cross the threshold at most once there;
only those crossings are evaluated, with OpenCV's sample positions and weights.
`probability_batch_to_runs` does the same where the batch lives (on a GPU only run boundaries come
back). Both agree with the definition except for pixels within float32 rounding of the threshold;
float32 rather than uint8, whose fixed-point interpolation flips pixels within ~1/255 of it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from carvana.core.geometry import Size
from carvana.kaggle import rle


def _as_map(probabilities: np.ndarray) -> np.ndarray:
    if probabilities.ndim != 2:
        raise ValueError(f"expected one (height, width) probability map, got shape {tuple(probabilities.shape)}")
    # cv2 resizes C-contiguous float32 without a hidden conversion.
    return np.ascontiguousarray(probabilities, dtype=np.float32)


def probabilities_to_mask(probabilities: np.ndarray, original_size: Size, threshold: float = 0.5) -> np.ndarray:
    """Up-sample an (h, w) probability map bilinearly to `original_size`; return the bool mask > threshold."""
    probabilities = _as_map(probabilities)
    width, height = original_size
    if probabilities.shape != (height, width):
        probabilities = cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR)
    return probabilities > threshold


class LinearTaps(NamedTuple):
    """OpenCV's INTER_LINEAR sampling along one axis: target pixel i = left_weight[i] * source[left[i]]
    + right_weight[i] * source[left[i] + 1]."""

    left: np.ndarray  # int64, in 0 .. source - 2 (0 when source == 1)
    left_weight: np.ndarray  # float32
    right_weight: np.ndarray  # float32


@lru_cache(maxsize=16)
def linear_taps(source: int, target: int) -> LinearTaps:
    """The source samples and weights `cv2.resize(..., INTER_LINEAR)` uses for `source` -> `target` pixels.

    Pixel centres map as x_src = (x + 0.5) * source / target - 0.5, computed in double precision as
    OpenCV 4.x/5.x does; positions left of the first sample take it whole, positions right of the
    last take the last whole (here written as weight 1 on `left + 1`).
    """
    if source < 1 or target < 1:
        raise ValueError(f"sizes must be positive, got {source} -> {target}")
    position = (np.arange(target, dtype=np.float64) + 0.5) * (1.0 / (target / source)) - 0.5
    left = np.floor(position).astype(np.int64)
    fraction = position - left
    before = left < 0
    left[before], fraction[before] = 0, 0.0
    if source == 1:
        left[:], fraction[:] = 0, 0.0
    else:
        after = left >= source - 1
        left[after], fraction[after] = source - 2, 1.0
    taps = LinearTaps(left, (1.0 - fraction).astype(np.float32), fraction.astype(np.float32))
    for array in taps:
        array.flags.writeable = False  # shared through the cache
    return taps


class _ColumnIntervals(NamedTuple):
    """The target columns between each pair of neighbouring source columns j, j + 1."""

    first: np.ndarray  # (source - 1,) int64: the first target column of interval j
    left_weight: np.ndarray  # (source - 1, longest) float32; padding weighs the right sample 1
    right_weight: np.ndarray


@lru_cache(maxsize=16)
def _column_intervals(source: int, target: int) -> _ColumnIntervals:
    taps = linear_taps(source, target)
    intervals = max(source - 1, 0)
    counts = np.bincount(taps.left, minlength=intervals)[:intervals]
    first = np.zeros(intervals, np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    longest = max(int(counts.max(initial=0)), 1)
    # Padding past an interval's end evaluates to exactly its right sample, which is on the far side
    # of the threshold in every interval we look at, so it is never counted as "before the edge".
    left_weight = np.zeros((intervals, longest), np.float32)
    right_weight = np.ones((intervals, longest), np.float32)
    offset = np.arange(target) - first[taps.left] if intervals else np.zeros(0, np.int64)
    if intervals:
        left_weight[taps.left, offset] = taps.left_weight
        right_weight[taps.left, offset] = taps.right_weight
    result = _ColumnIntervals(first, left_weight, right_weight)
    for array in result:
        array.flags.writeable = False
    return result


def probabilities_to_runs(probabilities: np.ndarray, original_size: Size, threshold: float = 0.5) -> np.ndarray:
    """The (start, length) runs (as `rle.encode_runs`) of `probabilities_to_mask(...)`, without building it."""
    probabilities = _as_map(probabilities)
    width, height = original_size
    source_height, source_width = probabilities.shape
    if source_width >= width:
        # Not enlarging the columns: there is nothing to save, and at most one target pixel per interval.
        return rle.encode_runs(probabilities_to_mask(probabilities, original_size, threshold))
    columns = probabilities
    if source_height != height:
        # Only the vertical half of the bilinear up-sampling: (height, source_width), same taps as cv2.
        columns = cv2.resize(probabilities, (source_width, height), interpolation=cv2.INTER_LINEAR)
    above = columns > threshold
    intervals = _column_intervals(source_width, width)
    # The intervals whose two ends lie on both sides of the threshold hold the only edges of the mask.
    # (Flat: np.nonzero of a 2-D comparison is ten times slower; changes across a row's end are dropped.)
    flat = above.reshape(-1)
    rows, js = np.divmod(np.flatnonzero(flat[1:] != flat[:-1]), source_width)
    within_row = js != source_width - 1
    rows, js = rows[within_row], js[within_row]
    values = (columns[rows, js][:, None] * intervals.left_weight[js]
              + columns[rows, js + 1][:, None] * intervals.right_weight[js])
    rising = above[rows, js + 1]
    # Along an interval the value is linear, so the pixels still on the left sample's side come first.
    before_edge = np.count_nonzero((values > threshold) != rising[:, None], axis=1)
    edges = rows * width + intervals.first[js] + before_edge
    # Flat (row-major, 0-based) boundaries: a run starts at a row's first pixel when the row begins
    # inside the car, and ends after its last pixel when it ends inside the car.
    starts = np.concatenate((np.flatnonzero(above[:, 0]) * width, edges[rising]))
    ends = np.concatenate((edges[~rising], (np.flatnonzero(above[:, -1]) + 1) * width))
    # Starts and ends alternate along the image, so sorting each list pairs them up.
    starts.sort()
    ends.sort()
    # An interval whose target pixels all miss a narrow peak gives an empty run; a run that reaches
    # the end of a row and one from the start of the next are one run in the flat image.
    kept = ends > starts
    starts, ends = starts[kept], ends[kept]
    if starts.size == 0:
        return np.zeros((0, 2), np.int64)
    apart = starts[1:] != ends[:-1]
    starts = starts[np.concatenate(([True], apart))]
    ends = ends[np.concatenate((apart, [True]))]
    return np.stack((starts + 1, ends - starts), axis=1)


def probabilities_to_rle(probabilities: np.ndarray, original_size: Size, threshold: float = 0.5) -> str:
    """The Carvana RLE string of `probabilities` up-sampled to `original_size` and thresholded."""
    return rle.runs_to_string(probabilities_to_runs(probabilities, original_size, threshold))


# Images up-sampled at once by `probability_batch_to_runs`: 8 x 1918x1280 float32 is 79 MB of device memory.
DEVICE_CHUNK = 8


def probability_batch_to_runs(probabilities: torch.Tensor, original_size: Size, threshold: float = 0.5,
                              chunk: int = DEVICE_CHUNK) -> list[np.ndarray]:
    """The (start, length) runs of each (h, w) map of a (B, h, w) batch, computed on the batch's device.

    Bilinear up-sampling to `original_size`, the threshold and the run boundaries all run where
    `probabilities` lives; what crosses to the CPU is the boundaries' flat positions only.
    """
    if probabilities.ndim != 3:
        raise ValueError(f"expected a (batch, height, width) probability tensor, got shape {tuple(probabilities.shape)}")
    width, height = original_size
    runs: list[np.ndarray] = []
    for first in range(0, probabilities.shape[0], chunk):
        maps = probabilities[first:first + chunk].detach().float()
        maps = resize_probabilities(maps, original_size)
        car = (maps.reshape(maps.shape[0], -1) > threshold).to(torch.int8)
        # A background pixel on each side of the flat image: every run then has a rising and a
        # falling edge, at flat positions `start` and `end` (exclusive), in that order.
        edges = torch.nonzero(torch.diff(F.pad(car, (1, 1)), dim=1)).cpu().numpy()
        images, positions = edges[:, 0], edges[:, 1]
        bounds = np.searchsorted(images, np.arange(maps.shape[0] + 1))
        for image in range(maps.shape[0]):
            flat = positions[bounds[image]:bounds[image + 1]]
            starts, ends = flat[0::2], flat[1::2]
            runs.append(np.stack((starts + 1, ends - starts), axis=1).astype(np.int64))
    return runs


def resize_probabilities(maps: torch.Tensor, size: Size) -> torch.Tensor:
    """(B, h, w) float32 maps -> (B, height, width), as `cv2.resize(..., INTER_LINEAR)` up-samples each
    (OpenCV's taps, rows first, then columns), on the maps' device."""
    width, height = size
    if maps.shape[2] != width:
        left, right, left_weight, right_weight = _device_taps(maps.shape[2], width, maps.device)
        maps = maps[:, :, left] * left_weight + maps[:, :, right] * right_weight
    if maps.shape[1] != height:
        top, bottom, top_weight, bottom_weight = _device_taps(maps.shape[1], height, maps.device)
        maps = maps[:, top, :] * top_weight[:, None] + maps[:, bottom, :] * bottom_weight[:, None]
    return maps


@lru_cache(maxsize=16)
def _device_taps(source: int, target: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """`linear_taps` as tensors on `device`, made once per size pair (not per batch of the predict loop)."""
    taps = linear_taps(source, target)
    left = torch.tensor(taps.left, device=device)
    right = (left + 1).clamp(max=source - 1)  # a 1-pixel source has weight 0 on its (missing) right sample
    return (left, right, torch.tensor(taps.left_weight, device=device),
            torch.tensor(taps.right_weight, device=device))
