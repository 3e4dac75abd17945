"""Decoding photos (OpenCV) and masks (Pillow for GIF), fast, with one-line errors for broken files.

Each file is read once and checked before it is decoded (`carvana.data.image_files`): an empty,
mislabelled or truncated file raises a `DataError` naming it. Sizes come from the header (Pillow).
Photos are decoded at libjpeg's 1/2, 1/4 or 1/8 scale where the network's size allows (several times
faster, and itself an area-like downscale), then resized with `INTER_AREA`. EXIF Orientation is
ignored everywhere: Kaggle's masks and RLE are defined on the stored pixel grid.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image

from carvana.core.errors import DataError
from carvana.core.geometry import Size
from carvana.data.image_files import (FORMAT_NAMES, MASK_FORMATS, PHOTO_FORMATS, check_complete, check_format,
                                      open_image_file, read_bytes, read_from)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Stored pixel grid only: the Kaggle masks and RLE ignore any EXIF Orientation tag.
_IGNORE_ORIENTATION = cv2.IMREAD_IGNORE_ORIENTATION
_MASK_SAMPLES = 4  # per side of an output pixel, when shrinking a mask a lot
# (reduction factor, imread flag), largest first.
_JPEG_REDUCTIONS = (
    (8, cv2.IMREAD_REDUCED_COLOR_8 | _IGNORE_ORIENTATION),
    (4, cv2.IMREAD_REDUCED_COLOR_4 | _IGNORE_ORIENTATION),
    (2, cv2.IMREAD_REDUCED_COLOR_2 | _IGNORE_ORIENTATION),
)
_FULL_COLOR = cv2.IMREAD_COLOR | _IGNORE_ORIENTATION
_MASK_GREY = cv2.IMREAD_GRAYSCALE | _IGNORE_ORIENTATION | cv2.IMREAD_ANYDEPTH  # a 16-bit PNG mask as it is


def quiet_opencv() -> None:
    """Keep OpenCV's own warnings ("can't open/read file") off stderr: we raise DataError instead."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # builds without the logging module
        pass


quiet_opencv()


def set_worker_threads() -> None:
    """One thread each for OpenCV and torch inside a DataLoader worker.

    The workers already run in parallel; letting each also start a thread pool per core
    oversubscribes the CPU and makes loading slower, not faster.
    """
    import torch  # only worker processes need it; this module is also used without torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _stored_size(path: Path, stream: BinaryIO, kind: str) -> Size:
    """The size the header of an image of format `kind` gives (the stored grid; Pillow reads only the header)."""
    try:
        with Image.open(stream, formats=[FORMAT_NAMES[kind]]) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(path, f"corrupt {FORMAT_NAMES[kind]}: its header cannot be read ({error}); "
                              "download it again") from None
    if not (width and height):
        raise DataError(path, f"corrupt {FORMAT_NAMES[kind]}: its header says {width}x{height}; download it again")
    return Size(width, height)


def header_size(path: Path, allowed: tuple[str, ...] = PHOTO_FORMATS) -> Size:
    """The pixel size of an image from its header only, without decoding it.

    The size is the stored grid, the one the decoders here return. `allowed` are the formats the
    file may hold (PHOTO_FORMATS or MASK_FORMATS); anything else is a DataError naming the file.
    """
    path = Path(path)
    with open_image_file(path) as file:
        kind = check_format(path, read_from(path, file, 16), allowed)
        file.seek(0)
        return _stored_size(path, file, kind)


def image_size(path: Path) -> Size:
    """The size of a photo (JPEG or PNG) from its header."""
    return header_size(Path(path), PHOTO_FORMATS)


def _decode(path: Path, data: bytes, flags: int) -> np.ndarray:
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise DataError(path, "corrupt image: OpenCV cannot decode it; download it again")
    return image


def _reduction_flag(original: Size, min_size: Size) -> tuple[int, int]:
    """The largest libjpeg reduction whose result is still at least `min_size` on both sides."""
    for factor, flag in _JPEG_REDUCTIONS:
        # libjpeg rounds scaled sizes up.
        if -(-original.width // factor) >= min_size.width and -(-original.height // factor) >= min_size.height:
            return factor, flag
    return 1, _FULL_COLOR


def decode_image(path: Path, min_size: Size | None = None) -> tuple[np.ndarray, Size]:
    """Decode a photo as BGR uint8, possibly reduced, and return it with its full (on-disk) size.

    Greyscale, CMYK, 16-bit and RGBA photos come back as 8-bit BGR; EXIF orientation is ignored.

    With `min_size`, a JPEG is decoded at the smallest libjpeg scale (1/2, 1/4, 1/8) that still
    has at least `min_size` pixels on each side; the caller resizes the rest of the way.
    """
    path = Path(path)
    data = read_bytes(path)
    kind = check_complete(path, data, PHOTO_FORMATS)
    original = _stored_size(path, io.BytesIO(data), kind) if kind == "jpeg" else None
    factor, flag = (1, _FULL_COLOR)
    if min_size is not None and original is not None:
        factor, flag = _reduction_flag(original, min_size)
    image = _decode(path, data, flag)
    if original is None:
        original = Size(image.shape[1], image.shape[0])
    elif (image.shape[1], image.shape[0]) != (-(-original.width // factor), -(-original.height // factor)):
        raise DataError(path, f"corrupt JPEG: header says {original} but it decodes to {image.shape[1]}x{image.shape[0]}")
    return image, original


def read_image(path: Path, min_size: Size | None = None) -> np.ndarray:
    """A photo as RGB uint8 (H, W, 3); with `min_size` it may come back reduced (see decode_image)."""
    image, _ = decode_image(path, min_size)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_image(path: Path, size: Size) -> tuple[np.ndarray, Size]:
    """A photo as RGB uint8 at exactly `size`, and its size on disk (to check its mask against)."""
    image, original = decode_image(path, min_size=size)
    image = resize_image(image, size)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), original


def resize_image(image: np.ndarray, size: Size) -> np.ndarray:
    """Resize a photo: area averaging when shrinking (no aliasing), linear when enlarging."""
    height, width = image.shape[:2]
    if (width, height) == tuple(size):
        return image
    shrinking = size.width <= width and size.height <= height
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _decode_gif_grey(path: Path, data: bytes) -> np.ndarray:
    """A GIF's first frame as grey levels (as OpenCV's greyscale decode gives), or 0/1, via Pillow.

    Pillow decodes the LZW data about three times faster than OpenCV and hands back the palette
    indices; Kaggle's masks use index 0 = black and 1 = white, so those already are the 0/1 mask.
    Other palettes are mapped to grey (ITU-R 601 weights, as OpenCV does) and checked by the caller.
    """
    try:
        with Image.open(io.BytesIO(data), formats=["GIF"]) as image:
            image.load()
            if getattr(image, "is_animated", False):
                raise DataError(path, f"animated GIF ({image.n_frames} frames); a mask must be a single "
                                      "image: save its first frame alone")
            if image.mode == "P":
                palette = np.array(image.getpalette() or [0, 0, 0], np.float32).reshape(-1, 3)
                indices = np.array(image)
                grey = np.zeros(256, np.uint8)
                grey[: len(palette)] = np.rint(palette @ np.array([0.299, 0.587, 0.114], np.float32))
                if grey[0] == 0 and grey[1] == 255 and indices.max() <= 1:
                    return indices  # black/white: the indices are the 0/1 mask
                return cv2.LUT(indices, grey)
            return np.array(image.convert("L"))
    except (OSError, ValueError, SyntaxError):
        raise DataError(path, "corrupt GIF: it cannot be decoded; download it again") from None


def read_mask(path: Path, expected_size: Size | None = None) -> np.ndarray:
    """A mask as uint8 0/1 (H, W).

    Kaggle's masks are palette GIFs whose two colours are black and white (0/255 in grey);
    masks saved as plain 0/1, greyscale GIFs and PNGs (even named .gif) are accepted too. Anything
    else (grey edges, a third colour, an animation) is an error rather than a silent threshold,
    because it means the file is not a Carvana mask.
    `expected_size` is the size of the mask's photo.
    """
    path = Path(path)
    data = read_bytes(path)
    if check_complete(path, data, MASK_FORMATS) == "gif":
        mask = _decode_gif_grey(path, data)
    else:
        mask = _sixteen_to_eight_bits(path, _decode(path, data, _MASK_GREY))
    if expected_size is not None and (mask.shape[1], mask.shape[0]) != tuple(expected_size):
        raise DataError(
            path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {Size(*expected_size)}"
        )
    highest = int(mask.max())
    if highest <= 1:
        return mask
    if highest != 255 or cv2.countNonZero(cv2.inRange(mask, 1, 254)) > 0:
        values = np.unique(mask)
        shown = ", ".join(map(str, values[:6].tolist())) + (", ..." if values.size > 6 else "")
        raise DataError(path, f"mask has values other than 0/1 or 0/255 (found {shown})")
    return np.minimum(mask, 1, out=mask)


def _sixteen_to_eight_bits(path: Path, mask: np.ndarray) -> np.ndarray:
    """A 16-bit mask's 0/1 or 0/65535 as 8-bit 0/1 (OpenCV's own conversion would make 0/1 all background)."""
    if mask.dtype != np.uint16:
        return mask
    values = np.unique(mask)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 65535}):
        shown = ", ".join(map(str, values[:6].tolist())) + (", ..." if values.size > 6 else "")
        raise DataError(path, f"16-bit mask has values other than 0/1 or 0/65535 (found {shown})")
    return (mask > 0).astype(np.uint8)


# A mask pixel is car when at least half of its area is: 128 of 255, the threshold `mask_from_fractions`
# applies and the one a float fraction (value / 255) >= 0.5 gives too.
HALF_COVERED = 128


def mask_area_fractions(mask: np.ndarray, size: Size) -> np.ndarray:
    """The share of each pixel of `size` that the car of a 0/1 mask covers, as uint8 0..255 (255: all car).

    Soft training targets are these shares; a 0/1 mask at `size` is them cut at half (`resize_mask`).
    Area-averaging a full 1918x1280 mask costs more than decoding the photo, so a big shrink first
    takes a 4x4 grid of samples at the centres of each output pixel's sixteenths and averages those:
    the shares then come in sixteenths. Enlarging copies the nearest pixel (shares stay 0 or 255).
    """
    height, width = mask.shape[:2]
    if (width, height) == tuple(size):
        return mask * np.uint8(255)
    if size.width > width or size.height > height:
        return cv2.resize(mask, tuple(size), interpolation=cv2.INTER_NEAREST_EXACT) * np.uint8(255)
    grid = _MASK_SAMPLES
    if width >= grid * size.width and height >= grid * size.height:
        mask = cv2.resize(mask, (size.width * grid, size.height * grid), interpolation=cv2.INTER_NEAREST_EXACT)
    return cv2.resize(mask * np.uint8(255), tuple(size), interpolation=cv2.INTER_AREA)


def mask_from_fractions(fractions: np.ndarray) -> np.ndarray:
    """Area shares (uint8 0..255) -> a 0/1 uint8 mask: car where at least half of the pixel is."""
    return (fractions >= HALF_COVERED).astype(np.uint8)


def resize_mask(mask: np.ndarray, size: Size) -> np.ndarray:
    """Resize a 0/1 mask so it stays 0/1: a pixel is car when at least half of its area was.

    Averaging keeps thin parts (antennas, mirrors) where their share of the pixel is large, which
    nearest-neighbour sampling would drop or keep at random.
    """
    height, width = mask.shape[:2]
    if (width, height) == tuple(size):
        return mask
    return mask_from_fractions(mask_area_fractions(mask, size))


def load_mask(path: Path, size: Size, expected_size: Size | None = None) -> np.ndarray:
    """A mask as uint8 0/1 at exactly `size`."""
    return resize_mask(read_mask(path, expected_size), size)


def load_mask_fractions(path: Path, size: Size, expected_size: Size | None = None) -> np.ndarray:
    """A mask as the car's share of each pixel at exactly `size`, uint8 0..255 (see mask_area_fractions)."""
    return mask_area_fractions(read_mask(path, expected_size), size)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
