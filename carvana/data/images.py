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

Photos may be JPEG or PNG and masks GIF or PNG, whatever their file name says: the format is
taken from the bytes. Other formats (WebP, BMP, TIFF, HEIF) are refused by name rather than
guessed at. One rule for orientation: the Kaggle masks and RLE are defined on the stored pixel
grid, so an EXIF Orientation tag is ignored everywhere (header size, full decode, reduced decode).
Only regular files are opened, and never in blocking mode, so a FIFO named `x.jpg` cannot hang
a run.
"""
from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carvana.core.errors import DataError
from carvana.core.geometry import Size

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
# The first read of a header; a JPEG whose EXIF or ICC segments are larger is read on in bigger steps.
_HEADER_FIRST_READ = 4096
# The formats a photo or a mask may be stored in; a file's format is read from its first bytes.
PHOTO_FORMATS = ("jpeg", "png")
MASK_FORMATS = ("gif", "png")
_FORMAT_NAMES = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF"}
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
_FULL_GREY = cv2.IMREAD_GRAYSCALE | _IGNORE_ORIENTATION
_MASK_GREY = _FULL_GREY | cv2.IMREAD_ANYDEPTH  # a 16-bit PNG mask as it is, not shifted down to 8 bits


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


def _open_regular(path: Path) -> tuple[int, int]:
    """An open file descriptor of `path` and its size; DataError unless it is a readable regular file.

    Opened non-blocking, so that a FIFO (named pipe) is reported instead of waiting forever for
    a writer; anything that is not a regular file is refused before a byte is read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(path, f"broken symbolic link (it points to {os.readlink(path)}, which does not exist); "
                                  "copy the file itself there or remove the link") from None
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, expected an image file") from None
    except PermissionError:
        raise DataError(path, "no permission to read it; run 'chmod a+r' on it") from None
    except OSError as error:
        raise DataError(path, f"cannot be read ({error.strerror or error})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise DataError(path, f"is {kind_of_entry(info.st_mode)}, expected an image file")
    return fd, info.st_size


def kind_of_entry(mode: int) -> str:
    """What a file system entry that is not a regular file is, for a message ("a FIFO (named pipe)")."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_file(path: Path) -> np.ndarray:
    """The bytes of `path` as a uint8 array; DataError when missing, unreadable, not a file or empty."""
    fd, _ = _open_regular(path)
    try:
        with os.fdopen(fd, "rb", closefd=True) as file:
            data = np.fromfile(file, dtype=np.uint8)
    except OSError as error:
        raise DataError(path, f"cannot be read ({error.strerror or error})") from None
    if data.size == 0:
        raise DataError(path, "empty file (0 bytes); delete it and download the data again")
    return data


def _format_of(head: bytes) -> str | None:
    """The image format the first bytes announce: jpeg, png, gif, or another name; None when unknown."""
    if head.startswith(_JPEG_START):
        return "jpeg"
    if head.startswith(_PNG_START):
        return "png"
    if head[:6] in _GIF_STARTS:
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return None


def _check_format(path: Path, head: bytes, allowed: tuple[str, ...]) -> str:
    """The format of a file starting with `head`, or a DataError when it is not one of `allowed`."""
    kind = _format_of(head)
    if kind in allowed:
        return kind  # type: ignore[return-value]
    wanted = " or ".join(_FORMAT_NAMES[k] for k in allowed)
    if kind is None:
        raise DataError(path, f"not a JPEG, PNG or GIF file (starts with bytes {head[:4].hex(' ')})")
    shown = _FORMAT_NAMES.get(kind, kind)
    raise DataError(path, f"is a {shown} image, expected {wanted} (whatever the file name says); "
                          f"convert it to {_FORMAT_NAMES[allowed[0]]}")


def _check_complete(path: Path, data: np.ndarray, allowed: tuple[str, ...] = ("jpeg", "png", "gif")) -> str:
    """Check the format and end marker of an encoded image; return its format ('jpeg', 'png', 'gif')."""
    head = data[:16].tobytes()
    kind = _check_format(path, head, allowed)
    # Some writers pad files with zero bytes after the end marker; that is harmless.
    tail_end = len(data)
    while tail_end > 0 and data[tail_end - 1] == 0 and len(data) - tail_end < 1024:
        tail_end -= 1
    tail = data[max(0, tail_end - 8):tail_end].tobytes()
    if kind == "jpeg" and not tail.endswith(_JPEG_END):
        raise DataError(path, "truncated JPEG (no end-of-image marker FF D9); download it again")
    if kind == "png" and not tail.endswith(_PNG_END):
        raise DataError(path, "truncated PNG (no IEND chunk at the end); download it again")
    if kind == "gif" and not tail.endswith(_GIF_END):
        raise DataError(path, "truncated GIF (no trailer byte 0x3B at the end); download it again")
    return kind


def _scan_jpeg(buf: bytes) -> tuple[Size | None, bool]:
    """(size from the start-of-frame header, whether `buf` ended before the header was reached)."""
    i = 2
    while i + 9 < len(buf):
        if buf[i] != 0xFF:
            return None, False
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_SOF_MARKERS:
            height = int.from_bytes(buf[i + 5:i + 7], "big")
            width = int.from_bytes(buf[i + 7:i + 9], "big")
            return (Size(width, height) if width and height else None), False
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length field
            i += 2
            continue
        i += 2 + int.from_bytes(buf[i + 2:i + 4], "big")
    return None, True


def jpeg_size(data: np.ndarray | bytes) -> Size | None:
    """Width and height from a JPEG's start-of-frame header, or None if there is none."""
    # The frame header follows the APPn segments (an EXIF segment is at most 64 KiB).
    buf = data[:_JPEG_HEADER_BYTES].tobytes() if isinstance(data, np.ndarray) else data[:_JPEG_HEADER_BYTES]
    return _scan_jpeg(buf)[0]


def _header_size(kind: str, head: bytes) -> Size | None:
    """The size a PNG (IHDR) or GIF (logical screen) header gives; None when it holds none."""
    if kind == "png" and head[12:16] == b"IHDR":
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    elif kind == "gif":
        width, height = int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    else:
        return None
    return Size(width, height) if width and height else None


def header_size(path: Path, allowed: tuple[str, ...] = PHOTO_FORMATS) -> Size:
    """The pixel size of an image from its header only, without decoding it.

    Reads a few kB (more only for a JPEG whose metadata segments come first and are larger).
    The size is the stored grid, the one the decoders here return. `allowed` are the formats the
    file may hold (PHOTO_FORMATS or MASK_FORMATS); anything else is a DataError naming the file.
    """
    path = Path(path)
    fd, file_size = _open_regular(path)
    try:
        want = _HEADER_FIRST_READ
        while True:
            try:
                head = _read_head(fd, min(want, file_size))
            except OSError as error:
                raise DataError(path, f"cannot be read ({error.strerror or error})") from None
            if not head:
                raise DataError(path, "empty file (0 bytes); delete it and download the data again")
            kind = _check_format(path, head, allowed)
            if kind != "jpeg":
                size = _header_size(kind, head)
                break
            size, ran_out = _scan_jpeg(head)
            if not ran_out or len(head) >= file_size:
                break
            want *= 16
    finally:
        os.close(fd)
    if size is None:
        what = {"jpeg": "no start-of-frame header", "png": "no IHDR header", "gif": "no screen size"}[kind]
        raise DataError(path, f"corrupt {_FORMAT_NAMES[kind]} ({what}); download it again")
    return size


def _read_head(fd: int, count: int) -> bytes:
    """The first `count` bytes (os.pread where the platform has it: one system call, no seek)."""
    if hasattr(os, "pread"):
        return os.pread(fd, count, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, count)


def image_size(path: Path) -> Size:
    """The size of a photo (JPEG or PNG) from its header."""
    return header_size(Path(path), PHOTO_FORMATS)


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
    return 1, _FULL_COLOR


def decode_image(path: Path, min_size: Size | None = None) -> tuple[np.ndarray, Size]:
    """Decode a photo as BGR uint8, possibly reduced, and return it with its full (on-disk) size.

    Greyscale, CMYK, 16-bit and RGBA photos come back as 8-bit BGR; EXIF orientation is ignored.

    With `min_size`, a JPEG is decoded at the smallest libjpeg scale (1/2, 1/4, 1/8) that still
    has at least `min_size` pixels on each side; the caller resizes the rest of the way.
    """
    path = Path(path)
    data = read_file(path)
    kind = _check_complete(path, data, PHOTO_FORMATS)
    original = jpeg_size(data) if kind == "jpeg" else None
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


def _decode_gif_grey(path: Path, data: np.ndarray) -> np.ndarray:
    """A GIF's first frame as grey levels (as OpenCV's greyscale decode gives), or 0/1, via Pillow.

    Pillow decodes the LZW data about three times faster than OpenCV and hands back the palette
    indices; Kaggle's masks use index 0 = black and 1 = white, so those already are the 0/1 mask.
    Other palettes are mapped to grey (ITU-R 601 weights, as OpenCV does) and checked by the caller.
    """
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
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
    data = read_file(path)
    if _check_complete(path, data, MASK_FORMATS) == "gif":
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
