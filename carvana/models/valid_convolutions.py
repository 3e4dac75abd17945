"""The arithmetic of UNetOriginal's valid (unpadded) convolutions, as pure functions.

UNetOriginal uses valid 3x3 convolutions, as in Ronneberger et al. 2015: each of the four encoder
levels loses 4 pixels to its two convolutions and halves at the max-pool, the bottom loses 4 more,
and each decoder level doubles and loses 4 again. Its output is therefore the centre of its input,
184 pixels smaller (a 92-pixel border on every side): 572 -> 388.

To predict the *whole* image, the paper's overlap-tile strategy is used: the image is resized to
the output size and mirror-padded by the 92-pixel border, so the 388x388 output lines up pixel
for pixel with the resized image (and with the mask resized to the same size).
"""
from __future__ import annotations

from carvana.core.errors import ConfigError
from carvana.core.geometry import Geometry, Size

ORIGINAL_DEPTH = 4  # max-pools in the paper's U-Net
ORIGINAL_BORDER = 92  # (input - output) / 2 for depth 4 with two valid 3x3 convs per level


def original_output_side(input_side: int, depth: int = ORIGINAL_DEPTH) -> int | None:
    """Output side of the valid-convolution U-Net for one input side, or None if it cannot take it."""
    side = input_side
    for _ in range(depth):
        side -= 4
        if side <= 0 or side % 2:
            return None
        side //= 2
    side -= 4  # bottom block
    if side <= 0:
        return None
    for _ in range(depth):
        side = side * 2 - 4
        if side <= 0:
            return None
    return side


def original_valid_input_sides(lo: int, hi: int, depth: int = ORIGINAL_DEPTH) -> list[int]:
    """All input sides in [lo, hi] that the valid-convolution U-Net can take."""
    return [s for s in range(lo, hi + 1) if original_output_side(s, depth) is not None]


def _nearest_valid(side: int, depth: int = ORIGINAL_DEPTH) -> str:
    """The valid input sides within 16 of `side`, for an error message."""
    valid = original_valid_input_sides(max(1, side - 16), side + 16, depth)
    return ", ".join(map(str, valid)) or "none nearby"


def original_geometry(model: str, input_size: Size, depth: int = ORIGINAL_DEPTH) -> Geometry:
    """Geometry of the valid-convolution U-Net named `model` at `input_size`; a ConfigError naming
    valid sides nearby when a side cannot be taken."""
    out = []
    for side in input_size:
        o = original_output_side(side, depth)
        if o is None:
            raise ConfigError(
                f"input size {input_size}: {model} cannot take a side of {side} "
                f"(valid sides nearby: {_nearest_valid(side, depth)}; sides are 16k+124, e.g. 572)"
            )
        out.append(o)
    output = Size(*out)
    return Geometry(model, input_size, output, (input_size.width - output.width) // 2)


def original_valid_sides(most_pixels: float, depth: int = ORIGINAL_DEPTH) -> list[int]:
    """The input sides the valid-convolution U-Net can take, smallest first, that leave room for its
    smallest side as the other side within `most_pixels`."""
    smallest = original_valid_input_sides(1, 1 << 12, depth)[0]
    return original_valid_input_sides(smallest, int(most_pixels // smallest), depth)
