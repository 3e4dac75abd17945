"""Opening a photo or mask file safely and telling its format from its bytes, with one-line errors.

Only regular files are opened, and never in blocking mode, so a FIFO named `x.jpg` cannot hang a
run. The format is taken from the first bytes, whatever the file name says: photos may be JPEG or
PNG, masks GIF or PNG; other formats (WebP, BMP, TIFF, HEIF) are refused by name rather than
guessed at. A file that is complete ends with its format's end marker: libjpeg decodes a JPEG cut
short "successfully", fills the missing part with grey and only prints a warning, so the marker is
checked here before any decode.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from carvana.core.errors import DataError

# The formats a photo or a mask may be stored in.
PHOTO_FORMATS = ("jpeg", "png")
MASK_FORMATS = ("gif", "png")
FORMAT_NAMES = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF"}
# (start, end marker) of each format; a GIF starts with one of two versions.
_MARKERS = {"jpeg": ((b"\xff\xd8",), b"\xff\xd9", "no end-of-image marker FF D9"),
            "png": ((b"\x89PNG\r\n\x1a\n",), b"IEND\xaeB`\x82", "no IEND chunk at the end"),
            "gif": ((b"GIF87a", b"GIF89a"), b"\x3b", "no trailer byte 0x3B at the end")}
_PADDING_LIMIT = 1024  # zero bytes some writers append after the end marker (harmless)


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


def open_image_file(path: Path) -> BinaryIO:
    """`path` opened for reading; DataError unless it is a readable regular file.

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
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DataError(path, f"is {kind_of_entry(mode)}, expected an image file")
    return os.fdopen(fd, "rb")


def read_from(path: Path, file: BinaryIO, count: int = -1) -> bytes:
    """The next `count` bytes of the open file `path` (all by default); DataError when unreadable or empty."""
    try:
        data = file.read(count)
    except OSError as error:
        raise DataError(path, f"cannot be read ({error.strerror or error})") from None
    if not data:
        raise DataError(path, "empty file (0 bytes); delete it and download the data again")
    return data


def read_bytes(path: Path) -> bytes:
    """The bytes of a photo or mask file; DataError when missing, unreadable, not a file or empty."""
    with open_image_file(path) as file:
        return read_from(path, file)


def _format_of(head: bytes) -> str | None:
    """The image format the first bytes announce: jpeg, png, gif, or another name; None when unknown."""
    for kind, (starts, _, _) in _MARKERS.items():
        if head.startswith(starts):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return None


def check_format(path: Path, head: bytes, allowed: tuple[str, ...]) -> str:
    """The format of a file starting with `head`, or a DataError when it is not one of `allowed`."""
    kind = _format_of(head)
    if kind in allowed:
        return kind  # type: ignore[return-value]
    if kind is None:
        raise DataError(path, f"not a JPEG, PNG or GIF file (starts with bytes {head[:4].hex(' ')})")
    wanted = " or ".join(FORMAT_NAMES[k] for k in allowed)
    raise DataError(path, f"is a {FORMAT_NAMES.get(kind, kind)} image, expected {wanted} (whatever the file name "
                          f"says); convert it to {FORMAT_NAMES[allowed[0]]}")


def check_complete(path: Path, data: bytes, allowed: tuple[str, ...]) -> str:
    """Check the format and end marker of an encoded image; return its format ('jpeg', 'png', 'gif')."""
    kind = check_format(path, data[:16], allowed)
    end = len(data)
    while end > 0 and data[end - 1] == 0 and len(data) - end < _PADDING_LIMIT:
        end -= 1
    _, end_marker, missing = _MARKERS[kind]
    if not data[max(0, end - 8):end].endswith(end_marker):
        raise DataError(path, f"truncated {FORMAT_NAMES[kind]} ({missing}); download it again")
    return kind
