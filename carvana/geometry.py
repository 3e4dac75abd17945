"""Input/output geometry of the two U-Nets, as pure functions.

UNetOriginal uses valid (unpadded) 3x3 convolutions, as in Ronneberger et al. 2015: each of the
four encoder levels loses 4 pixels to its two convolutions and halves at the max-pool, the
bottom loses 4 more, and each decoder level doubles and loses 4 again. Its output is therefore the
centre of its input, 184 pixels smaller (a 92-pixel border on every side): 572 -> 388.

To predict the *whole* image, the paper's overlap-tile strategy is used: the image is resized to
the output size and mirror-padded by the 92-pixel border, so the 388x388 output lines up pixel
for pixel with the resized image (and with the mask resized to the same size).

UNet1024 uses padded convolutions and six 2x2 pools: output size = input size, and each side
must be divisible by 64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from carvana.errors import ConfigError

UNET_ORIGINAL = "unet_original"
UNET1024 = "unet1024"
MODEL_NAMES = (UNET_ORIGINAL, UNET1024)

ORIGINAL_DEPTH = 4  # max-pools in the paper's U-Net
ORIGINAL_BORDER = 92  # (input - output) / 2 for depth 4 with two valid 3x3 convs per level
UNET1024_DIVISOR = 64  # 2 ** 6 max-pools


class Size(NamedTuple):
    """An image size. Written WxH everywhere users see it (1918x1280), like the photos."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @classmethod
    def parse(cls, text: str) -> "Size":
        """Parse '572', '572x572' or '384x256' (width x height); each side a positive whole number."""
        parts = text.strip().lower().replace("×", "x").split("x")
        sides: list[int] = []
        for part in parts if len(parts) in (1, 2) else ():
            part = part.strip()
            if not (part.isascii() and part.isdigit()) or int(part) < 1:  # also refuses signs, decimals and '1e3'
                break
            sides.append(int(part))
        else:
            if len(sides) == 1:
                return cls(sides[0], sides[0])
            if len(sides) == 2:
                return cls(sides[0], sides[1])
        raise ConfigError(f"size {text!r}: expected WIDTHxHEIGHT in whole pixels above 0, e.g. 384x256, "
                          "or one number for a square")


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


def original_input_side_for_output(output_side: int, depth: int = ORIGINAL_DEPTH) -> int | None:
    """The input side whose output is exactly `output_side`, or None if no input gives it."""
    smallest = next(s for s in range(1, 1 << 12) if original_output_side(s, depth) is not None)
    side = output_side + smallest - original_output_side(smallest, depth)
    return side if original_output_side(side, depth) == output_side else None


def _nearest_valid(side: int, depth: int = ORIGINAL_DEPTH) -> str:
    valid = original_valid_input_sides(max(1, side - 16), side + 16, depth)
    return ", ".join(map(str, valid)) or "none nearby"


@dataclass(frozen=True)
class Geometry:
    """How images map onto a model: what size goes in, what comes out, and the border between."""

    model: str
    input_size: Size
    output_size: Size
    border: int  # pixels of mirror padding on each side (0 for same-size nets)

    @property
    def covered_size(self) -> Size:
        """The size an image (and its mask) is resized to; the output covers exactly this."""
        return self.output_size


def model_geometry(model: str, input_size: Size, depth: int = ORIGINAL_DEPTH) -> Geometry:
    """Geometry of `model` at `input_size`; raises ConfigError with valid sizes when it can't work."""
    if model == UNET_ORIGINAL:
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
    if model == UNET1024:
        for side in input_size:
            if side <= 0 or side % UNET1024_DIVISOR:
                raise ConfigError(
                    f"input size {input_size}: {model} needs sides divisible by {UNET1024_DIVISOR} "
                    f"({side} is not; e.g. 1024x1024, 1536x1024, 384x256)"
                )
        return Geometry(model, input_size, input_size, 0)
    raise ConfigError(f"model {model!r}: unknown (choose from {', '.join(MODEL_NAMES)})")


# --------------------------------------------------------------------------- input size for the photos

# A size chosen for the photos may have at most this many times the preset's input pixels: the preset's
# batch size was fitted to its input's memory, and a little more keeps the photos' shape within reach.
PIXEL_ALLOWANCE = 1.3
# A preset whose output is within this share of the photos' aspect was drawn at their shape.
SHAPE_TOLERANCE = 0.10


def _valid_sides(model: str, most_pixels: float) -> list[int]:
    """The input sides `model` can take, smallest first, that leave room for the smallest other side."""
    if model == UNET_ORIGINAL:
        smallest = original_valid_input_sides(1, 1 << 12)[0]
        return original_valid_input_sides(smallest, int(most_pixels // smallest))
    if model == UNET1024:
        return list(range(UNET1024_DIVISOR, int(most_pixels // UNET1024_DIVISOR) + 1, UNET1024_DIVISOR))
    raise ConfigError(f"model {model!r}: unknown (choose from {', '.join(MODEL_NAMES)})")


def _aspect(size: Size) -> float:
    return size.width / size.height


def input_size_for_photos(model: str, preset_input: Size, photos: Size, *, drawn_for: Size) -> Size:
    """The input size `model` should take for photos of size `photos`, given the preset's `preset_input`.

    A preset's input size is drawn for photos of one size, `drawn_for` (Kaggle's 1918x1280). A preset
    drawn at their shape (the cpu preset's 3:2 192x128) follows the photos' shape, so square photos
    get a square input and portrait photos a portrait one. A preset whose shape differs from theirs
    on purpose (the unet1024 preset's 1024x1024 squashes their width by 1.5, as the winning solutions
    did; the paper's 572x572) keeps its size for any photos: its shape is a choice, not the photos'.

    Among the sizes the model can take with at most PIXEL_ALLOWANCE times the preset's input pixels,
    the one nearest both the photos' aspect and the preset's pixel count wins; both distances are
    measured as the log of a side's scale, so a side 10% off the aspect costs as much as sides 10%
    short. The photos' size sets the shape only, never the pixel count: photos smaller than the
    preset's input are up-sampled to it, as the network's depth needs (UNet1024 takes no side below 64).
    """
    preset_output = model_geometry(model, preset_input).output_size
    if aspect_difference(preset_output, drawn_for) > SHAPE_TOLERANCE:
        return preset_input
    target = _aspect(photos)
    budget = preset_input.width * preset_input.height
    most_pixels = PIXEL_ALLOWANCE * budget
    sides = _valid_sides(model, most_pixels)
    best: tuple[float, int, int] | None = None
    chosen = preset_input
    for width in sides:
        for height in sides:
            pixels = width * height
            if pixels > most_pixels:
                break
            output = model_geometry(model, Size(width, height)).output_size
            cost = abs(math.log(_aspect(output) / target)) + abs(math.log(pixels / budget)) / 2
            key = (cost, -pixels, width)  # ties: the larger, then the narrower size
            if best is None or key < best:
                best, chosen = key, Size(width, height)
    return chosen


def aspect_difference(a: Size, b: Size) -> float:
    """How far apart two sizes' shapes are, as a fraction: 0 for the same aspect, 0.5 for 3:2 against 1:1."""
    wider, narrower = sorted((_aspect(a), _aspect(b)), reverse=True)
    return wider / narrower - 1


# --------------------------------------------------------------------------- the coarse phase's input

COARSE_SCALE = 0.5  # the coarse phase trains on inputs half as wide and half as high: a quarter of the pixels


def coarse_input_size(model: str, input_size: Size) -> Size:
    """The input size of a run's coarse phase (progressive resizing): `input_size` scaled by
    COARSE_SCALE, each side rounded to the nearest one `model` can take (the larger on a tie).

    Only for same-size nets (UNet1024), whose output follows any input; 384x256 -> 192x128.
    """
    if model != UNET1024:
        raise ConfigError(f"coarse epochs: {model} is not a same-size net; the coarse phase needs {UNET1024}")
    sides = _valid_sides(model, max(input_size) * UNET1024_DIVISOR)
    return Size(*(min(sides, key=lambda valid: (abs(valid - side * COARSE_SCALE), -valid)) for side in input_size))
