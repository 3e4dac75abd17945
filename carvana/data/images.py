"""Decoding photos (OpenCV) and masks (Pillow for GIF), fast, with one-line errors for broken files.

Every file is read into memory once and checked before it is decoded: a zero-byte file, a file
that is not the format its name says, or a JPEG/GIF/PNG cut short (no end marker) raises a
`DataError` naming it. Checking the end marker ourselves matters because libjpeg decodes a
truncated JPEG "successfully", fills the missing part with grey and only prints a warning. (Bytes
damaged in the middle of an otherwise complete JPEG still decode with libjpeg's own warning on
stderr; only a full decode with a stricter decoder could catch those.)

Speed: a Carvana photo is 1918x1280 but the networks see 192x128 to 1024x1024. libjpeg can
decode at 1/2, 1/4 or 1/8 scale by dropping DCT coefficients (`IMREAD_REDUCED_COLOR_*`), which is
several times faster than a full decode and is itself an area-like downscale; the rest of the way
is done with `INTER_AREA`, which averages instead of skipping pixels.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carvana.errors import DataError
from carvana.geometry import Size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
_GIF_STARTS = (b"GIF87a", b"GIF89a")
_GIF_END = b"\x3b"
# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the size.
_JPEG_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_HEADER_BYTES = 1 << 18
_MASK_SAMPLES = 4  # per side of an output pixel, when shrinking a mask a lot
# (reduction factor, imread flag), largest first.
_JPEG_REDUCTIONS = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


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
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def read_file(path: Path) -> np.ndarray:
    """The bytes of `path` as a uint8 array; DataError when missing, unreadable or empty."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, expected an image file") from None
    except OSError as error:
        raise DataError(path, f"cannot be read ({error.strerror or error})") from None
    if data.size == 0:
        raise DataError(path, "empty file (0 bytes); delete it and download the data again")
    return data


def _check_complete(path: Path, data: np.ndarray) -> str:
    """Check the start and end markers of an encoded image; return its format ('jpeg', 'png', 'gif')."""
    head = data[:8].tobytes()
    # Some writers pad files with zero bytes after the end marker; that is harmless.
    tail_end = len(data)
    while tail_end > 0 and data[tail_end - 1] == 0 and len(data) - tail_end < 1024:
        tail_end -= 1
    tail = data[max(0, tail_end - 8):tail_end].tobytes()
    if head.startswith(_JPEG_START):
        if not tail.endswith(_JPEG_END):
            raise DataError(path, "truncated JPEG (no end-of-image marker FF D9); download it again")
        return "jpeg"
    if head.startswith(_PNG_START):
        if not tail.endswith(_PNG_END):
            raise DataError(path, "truncated PNG (no IEND chunk at the end); download it again")
        return "png"
    if head[:6] in _GIF_STARTS:
        if not tail.endswith(_GIF_END):
            raise DataError(path, "truncated GIF (no trailer byte 0x3B at the end); download it again")
        return "gif"
    raise DataError(path, f"not a JPEG, PNG or GIF file (starts with bytes {head[:4].hex(' ')})")


def jpeg_size(data: np.ndarray | bytes) -> Size | None:
    """Width and height from a JPEG's start-of-frame header, or None if there is none."""
    # The frame header follows the APPn segments (an EXIF segment is at most 64 KiB).
    buf = data[:_JPEG_HEADER_BYTES].tobytes() if isinstance(data, np.ndarray) else data[:_JPEG_HEADER_BYTES]
    i = 2
    while i + 9 < len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_SOF_MARKERS:
            height = int.from_bytes(buf[i + 5:i + 7], "big")
            width = int.from_bytes(buf[i + 7:i + 9], "big")
            return Size(width, height) if width and height else None
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length field
            i += 2
            continue
        i += 2 + int.from_bytes(buf[i + 2:i + 4], "big")
    return None


def image_size(path: Path) -> Size:
    """The size of a photo from its header (JPEG) or, for other formats, by decoding it."""
    path = Path(path)
    data = read_file(path)
    if _check_complete(path, data) == "jpeg":
        size = jpeg_size(data)
        if size is not None:
            return size
    image = _decode(path, data, cv2.IMREAD_COLOR)
    return Size(image.shape[1], image.shape[0])


def _decode(path: Path, data: np.ndarray, flags: int) -> np.ndarray:
    try:
        image = cv2.imdecode(data, flags)
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
    return 1, cv2.IMREAD_COLOR


def decode_image(path: Path, min_size: Size | None = None) -> tuple[np.ndarray, Size]:
    """Decode a photo as BGR uint8, possibly reduced, and return it with its full (on-disk) size.

    With `min_size`, a JPEG is decoded at the smallest libjpeg scale (1/2, 1/4, 1/8) that still
    has at least `min_size` pixels on each side; the caller resizes the rest of the way.
    """
    path = Path(path)
    data = read_file(path)
    kind = _check_complete(path, data)
    original = jpeg_size(data) if kind == "jpeg" else None
    factor, flag = (1, cv2.IMREAD_COLOR)
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


def _decode_gif_grey(path: Path, data: np.ndarray) -> np.ndarray:
    """A GIF's first frame as grey levels (as OpenCV's greyscale decode gives), or 0/1, via Pillow.

    Pillow decodes the LZW data about three times faster than OpenCV and hands back the palette
    indices; Kaggle's masks use index 0 = black and 1 = white, so those already are the 0/1 mask.
    Other palettes are mapped to grey (ITU-R 601 weights, as OpenCV does) and checked by the caller.
    """
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            image.load()
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
    masks saved as plain 0/1 are accepted too. Anything else (grey edges, a third colour) is an
    error rather than a silent threshold, because it means the file is not a Carvana mask.
    `expected_size` is the size of the mask's photo.
    """
    path = Path(path)
    data = read_file(path)
    if _check_complete(path, data) == "gif":
        mask = _decode_gif_grey(path, data)
    else:
        mask = _decode(path, data, cv2.IMREAD_GRAYSCALE)
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


def resize_mask(mask: np.ndarray, size: Size) -> np.ndarray:
    """Resize a 0/1 mask so it stays 0/1: a pixel is car when at least half of its area was.

    Averaging keeps thin parts (antennas, mirrors) where their share of the pixel is large, which
    nearest-neighbour sampling would drop or keep at random. Area-averaging a full 1918x1280 mask
    costs more than decoding the photo, so a big shrink first takes a 4x4 grid of samples at the
    centres of each output pixel's sixteenths and averages those.
    """
    height, width = mask.shape[:2]
    if (width, height) == tuple(size):
        return mask
    if size.width > width or size.height > height:
        return cv2.resize(mask, tuple(size), interpolation=cv2.INTER_NEAREST_EXACT)
    grid = _MASK_SAMPLES
    if width >= grid * size.width and height >= grid * size.height:
        mask = cv2.resize(mask, (size.width * grid, size.height * grid), interpolation=cv2.INTER_NEAREST_EXACT)
    area = cv2.resize(mask * np.uint8(255), tuple(size), interpolation=cv2.INTER_AREA)
    return (area >= 128).astype(np.uint8)


def load_mask(path: Path, size: Size, expected_size: Size | None = None) -> np.ndarray:
    """A mask as uint8 0/1 at exactly `size`."""
    return resize_mask(read_mask(path, expected_size), size)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
