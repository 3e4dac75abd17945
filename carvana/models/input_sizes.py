"""Input sizes chosen for a run: the photos' shape (`input_size_for_photos`) and the coarse phase's
smaller input (`coarse_input_size`), each a size the model's spec says it can take."""
from __future__ import annotations

import math

from carvana.core.errors import ConfigError
from carvana.core.geometry import Size, aspect, aspect_difference
from carvana.models.specs import MODEL_SPECS, model_spec

# A size chosen for the photos may have at most this many times the preset's input pixels: the preset's
# batch size was fitted to its input's memory, and a little more keeps the photos' shape within reach.
PIXEL_ALLOWANCE = 1.3
# A preset whose output is within this share of the photos' aspect was drawn at their shape.
SHAPE_TOLERANCE = 0.10


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
    spec = model_spec(model)
    preset_output = spec.geometry(preset_input).output_size
    if aspect_difference(preset_output, drawn_for) > SHAPE_TOLERANCE:
        return preset_input
    target = aspect(photos)
    budget = preset_input.width * preset_input.height
    most_pixels = PIXEL_ALLOWANCE * budget
    sides = spec.valid_sides(most_pixels)
    best: tuple[float, int, int] | None = None
    chosen = preset_input
    for width in sides:
        for height in sides:
            pixels = width * height
            if pixels > most_pixels:
                break
            output = spec.geometry(Size(width, height)).output_size
            cost = abs(math.log(aspect(output) / target)) + abs(math.log(pixels / budget)) / 2
            key = (cost, -pixels, width)  # ties: the larger, then the narrower size
            if best is None or key < best:
                best, chosen = key, Size(width, height)
    return chosen


COARSE_SCALE = 0.5  # the coarse phase trains on inputs half as wide and half as high: a quarter of the pixels


def coarse_input_size(model: str, input_size: Size) -> Size:
    """The input size of a run's coarse phase (progressive resizing): `input_size` scaled by
    COARSE_SCALE, each side rounded to the nearest one `model` can take (the larger on a tie).

    Only for same-size nets (UNet1024), whose output follows any input; 384x256 -> 192x128.
    """
    spec = model_spec(model)
    if not spec.same_size:
        same_size = ", ".join(name for name, other in MODEL_SPECS.items() if other.same_size)
        raise ConfigError(f"coarse epochs: {model} is not a same-size net; the coarse phase needs {same_size}")
    # Every side the net can take up to the input's pixels: each of `input_size`'s own sides among them.
    sides = spec.valid_sides(input_size.width * input_size.height)
    return Size(*(min(sides, key=lambda valid: (abs(valid - side * COARSE_SCALE), -valid)) for side in input_size))


def padded_input_size(model: str, photos: Size) -> Size:
    """The smallest input `model` takes that holds `photos` whole (--crop): 1918x1280 -> 1920x1280 for
    UNet1024, whose sides are multiples of 64."""
    spec = model_spec(model)
    if not spec.same_size:
        raise ConfigError(f"{model} is not a same-size net: it cannot predict a padded photo whole")
    sides = spec.valid_sides(float((2 * max(photos) + 128) ** 2))  # every side up to well past the photos'
    return Size(*(next(valid for valid in sides if valid >= side) for side in photos))
