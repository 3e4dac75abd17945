"""Run-length encoding as the Carvana competition defines it.

Pixels are numbered row-major (left to right, then top to bottom) starting at 1, and a mask is
written as space-separated `start length` pairs of its runs of ones. All functions are pure.
"""
from __future__ import annotations

import numpy as np


class RLEError(ValueError):
    """An RLE string that does not describe a mask of the given size."""


# Pixel numbers stay below this, so the sum of a start and a length never overflows int64.
MAX_PIXELS = 2**62


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any dtype; non-zero is foreground) as a Carvana RLE string."""
    return runs_to_string(encode_runs(mask))


def encode_runs(mask: np.ndarray) -> np.ndarray:
    """Return the (start, length) pairs of a mask's runs as an int array of shape (n, 2)."""
    flat = np.ascontiguousarray(mask).reshape(-1)
    # Compare neighbours in the mask's own dtype (one temporary, no converted copy of the mask:
    # at 1918x1280 a second large temporary costs more than the whole comparison), then drop the
    # changes between two non-zero values (1 -> 255), which are not edges of a run.
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat.dtype != np.bool_:
        edges = edges[(flat[edges] != 0) != (flat[edges - 1] != 0)]
    # A run that touches either end of the image has no neighbour there to change from.
    if flat.size and flat[0]:
        edges = np.concatenate(([0], edges))
    if flat.size and flat[-1]:
        edges = np.concatenate((edges, [flat.size]))
    runs = edges.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]
    runs[:, 0] += 1
    return runs


def runs_to_string(runs: np.ndarray) -> str:
    return " ".join(map(str, runs.reshape(-1).tolist()))


def parse_runs(rle: str, height: int, width: int) -> np.ndarray:
    """Parse and check an RLE string; return its runs as an (n, 2) array of 1-based starts.

    Raises RLEError when the string is not what Kaggle accepts: an odd number of values, a value
    that is not a positive integer (or too large for any image), runs that are not ascending and
    disjoint, or a run that goes past the last of the height × width pixels. Starts and lengths
    are bounded by the pixel count before any end is computed, so no sum can overflow int64.
    """
    total = int(height) * int(width)
    if height < 1 or width < 1 or total > MAX_PIXELS:
        raise ValueError(f"image size {width}x{height}: both sides must be positive and the image "
                         f"at most {MAX_PIXELS} pixels")
    text = rle.strip() if isinstance(rle, str) else ""
    if not text:
        return np.zeros((0, 2), dtype=np.int64)
    if not text.isascii():
        bad = next(c for c in text if not c.isascii())
        raise RLEError(f"character {bad!r} is not a digit or a space")
    tokens = text.split()
    if len(tokens) % 2:
        raise RLEError(f"odd number of values ({len(tokens)}): RLE needs start/length pairs")
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        raise RLEError(_describe_bad_value(tokens)) from None
    runs = values.reshape(-1, 2)
    starts, lengths = runs[:, 0], runs[:, 1]
    if (starts < 1).any():
        raise RLEError(f"start {int(starts[starts < 1][0])} is not a positive pixel number")
    if (lengths < 1).any():
        raise RLEError(f"run length {int(lengths[lengths < 1][0])} is not positive")
    if (starts > total).any():
        raise RLEError(f"start {int(starts[starts > total][0])} is past the last pixel {total} "
                       f"of a {width}x{height} image")
    if (lengths > total).any():
        raise RLEError(f"run length {int(lengths[lengths > total][0])} is longer than the {total} pixels "
                       f"of a {width}x{height} image")
    ends = starts + lengths - 1  # last pixel of each run, 1-based; at most 2 x total
    if (starts[1:] <= ends[:-1]).any():
        i = int(np.flatnonzero(starts[1:] <= ends[:-1])[0])
        raise RLEError(f"run starting at {int(starts[i + 1])} is not after the run ending at {int(ends[i])}")
    if ends.size and ends[-1] > total:
        raise RLEError(f"run ends at pixel {int(ends[-1])}, past the last pixel {total} of a {width}x{height} image")
    return runs


def _describe_bad_value(tokens: list[str]) -> str:
    """Why numpy could not read `tokens` as int64: the first value that is not a digit string, or too large."""
    for token in tokens:
        if not token.lstrip("+").isdigit():
            return f"value {token[:20]!r} is not an integer"
    too_large = next((t for t in tokens if int(t) > MAX_PIXELS), tokens[0])
    return f"value {too_large[:24]} is too large to be a pixel number"


def decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode a Carvana RLE string into a (height, width) uint8 mask of 0/1."""
    return runs_to_mask(parse_runs(rle, height, width), height, width)


def runs_to_mask(runs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Paint checked (start, length) runs into a (height, width) uint8 mask of 0/1."""
    starts = runs[:, 0] - 1
    # The image alternates gap, run, gap, run, ..., gap: repeat 0/1 by those lengths.
    bounds = np.empty(2 * len(runs) + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2] = starts
    bounds[2:-1:2] = starts + runs[:, 1]
    values = np.zeros(2 * len(runs) + 1, dtype=np.uint8)
    values[1::2] = 1
    return np.repeat(values, np.diff(bounds)).reshape(height, width)
