"""Extract a downloaded zip without trusting it.

A zip's member names, types and sizes are claims made by whoever built it. Before anything is
written, every member is checked: no absolute paths, no `..`, no symlinks or device files, no
absurd compression ratio, and the declared total must fit on the disk. While writing, a member
that produces more bytes than it declared is stopped, and zipfile checks each member's CRC.

Everything is first extracted into a hidden staging folder inside `dest_dir`; only when the whole
archive has been written and verified are its top-level entries renamed into place. A crash
therefore leaves at most a `.extract-*` folder (removed on the next attempt, or continued with
`resume`), never a `train/` that looks complete but is not.
"""
from __future__ import annotations

import json
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from carvana.core.errors import DataError

STAGING_PREFIX = ".extract-"
# Photos and GIF masks barely compress; even the RLE CSVs stay far below this. A member this many
# times larger than its compressed bytes is a zip bomb, not Carvana data.
MAX_COMPRESSION_RATIO = 200.0
# Tiny members may compress absurdly well (a file of blanks) without harming anyone.
RATIO_CHECK_MIN_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024


class ArchiveRejected(DataError):
    """The archive itself is at fault (unsafe or corrupt); downloading it again may help, retrying will not."""


def extract_zip(
    archive: Path,
    dest_dir: Path,
    *,
    max_ratio: float = MAX_COMPRESSION_RATIO,
    progress: bool = False,
    resume: bool = False,
) -> list[Path]:
    """Extract `archive` into `dest_dir`; return the top-level paths it created there.

    Raises DataError (naming the archive and, where one is at fault, the member) for an unsafe or
    corrupt archive; `dest_dir` is then left as it was. `resume`: an extraction of this very archive
    (same size and modification time) that was cut keeps its staging folder, and the next call
    continues it, skipping the members already written whole (a 100,064-photo test.zip need not
    start over).
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    staging = dest_dir / f"{STAGING_PREFIX}{archive.name}"
    stamp = dest_dir / f"{STAGING_PREFIX}{archive.name}.json"
    replaced = dest_dir / f"{STAGING_PREFIX}{archive.name}.replaced"
    keep_staging = False
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        _remove(replaced)
        identity = _identity(archive)
        if not (resume and _read_stamp(stamp) == identity):
            _remove(staging)
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            _check_members(archive, members, max_ratio)
            done = {m.filename for m in members if _is_written(staging, archive, m)}
            _check_free_space(archive, [m for m in members if m.filename not in done], dest_dir)
            staging.mkdir(exist_ok=True)
            if resume:
                stamp.write_text(json.dumps(identity))
            keep_staging = resume
            total = sum(m.file_size for m in members)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extract {archive.name}",
                      disable=not progress, leave=False,
                      initial=sum(m.file_size for m in members if m.filename in done)) as bar:
                for member in members:
                    if member.filename not in done:
                        _extract_member(zf, member, archive, staging, bar)
        keep_staging = False
        return _move_into_place(staging, dest_dir, replaced)
    except (ArchiveRejected, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        keep_staging = False  # the archive is at fault: what it wrote is not worth keeping
        raise _rejection(archive, e) from None
    except OSError as e:
        raise DataError(archive, f"cannot extract into {dest_dir} ({e.strerror or e})") from None
    finally:
        if not keep_staging:
            _remove(staging)
            _remove(stamp)
        _remove(replaced)


def _rejection(archive: Path, error: Exception) -> ArchiveRejected:
    if isinstance(error, ArchiveRejected):
        return error
    if isinstance(error, NotImplementedError):  # a compression method zipfile cannot read
        return ArchiveRejected(archive, f"unsupported zip archive ({error})")
    if isinstance(error, zipfile.BadZipFile):
        return ArchiveRejected(archive, f"corrupt zip archive ({error})")
    return ArchiveRejected(archive, f"corrupt zip archive ({type(error).__name__}: {error})")


def _identity(archive: Path) -> list[int]:
    """What tells this archive from another of the same name: its size and modification time."""
    info = archive.stat()
    return [info.st_size, info.st_mtime_ns]


def _read_stamp(stamp: Path) -> object:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def _is_written(staging: Path, archive: Path, member: zipfile.ZipInfo) -> bool:
    """Whether a cut extraction already wrote `member` whole (members are written front to back, so a
    file of the declared size is complete; zipfile checked its CRC as it was written)."""
    if member.is_dir():
        return False
    target = staging.joinpath(*member_parts(archive, member))
    try:
        return target.stat().st_size == member.file_size
    except OSError:
        return False


def member_parts(archive: Path, member: zipfile.ZipInfo) -> list[str]:
    """The path components of a member, or DataError when its name could escape the destination."""
    name = member.filename
    # Both separators count: a `..\\` member is harmless on Linux but not once copied to Windows.
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ArchiveRejected(archive, f"member {name!r} has an absolute path; refusing to extract")
    parts = [p for p in re.split(r"[\\/]", name) if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRejected(archive, f"member {name!r} points outside the destination ('..'); refusing to extract")
    if not parts:
        raise ArchiveRejected(archive, f"member {name!r} has an empty name; refusing to extract")
    return parts


def _check_members(archive: Path, members: list[zipfile.ZipInfo], max_ratio: float) -> None:
    seen: set[tuple[str, ...]] = set()
    for member in members:
        parts = tuple(member_parts(archive, member))
        name = member.filename
        if parts in seen:
            raise ArchiveRejected(archive, f"member {name!r} appears twice; refusing an ambiguous archive")
        seen.add(parts)
        file_type = stat.S_IFMT(member.external_attr >> 16)
        if file_type == stat.S_IFLNK:
            raise ArchiveRejected(archive, f"member {name!r} is a symbolic link; refusing to extract")
        if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveRejected(archive, f"member {name!r} is not a regular file; refusing to extract")
        if member.flag_bits & 0x1:
            raise ArchiveRejected(archive, f"member {name!r} is encrypted; Kaggle archives never are")
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size >= RATIO_CHECK_MIN_BYTES and ratio > max_ratio:
            raise ArchiveRejected(archive, f"member {name!r} claims to expand {ratio:.0f}x "
                                     f"({member.file_size} bytes); refusing a likely zip bomb")


def _check_free_space(archive: Path, members: list[zipfile.ZipInfo], dest_dir: Path) -> None:
    needed = sum(m.file_size for m in members)
    free = shutil.disk_usage(dest_dir).free
    if needed > free:
        raise DataError(archive, f"needs {needed / 2**30:.1f} GiB to extract but {dest_dir} has only "
                                 f"{free / 2**30:.1f} GiB free")


def _extract_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, archive: Path, staging: Path, bar: tqdm) -> None:
    target = staging.joinpath(*member_parts(archive, member))
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # the partial member of a cut extraction that is resumed
    try:
        with zf.open(member) as source, open(target, "xb") as out:
            written = _copy_bounded(source, out, member, archive, bar)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        # A CRC mismatch also catches a member whose real content is longer than it declares.
        raise ArchiveRejected(archive, f"member {member.filename!r} is corrupt ({e})") from None
    # zipfile raised BadZipFile on a CRC mismatch at the end of the member; a short one is caught here.
    if written != member.file_size:
        raise ArchiveRejected(archive, f"member {member.filename!r} holds {written} bytes, "
                                 f"not the {member.file_size} it declares")


def _copy_bounded(source: BinaryIO, out: BinaryIO, member: zipfile.ZipInfo, archive: Path, bar: tqdm) -> int:
    """Copy at most the member's declared size: declared sizes can lie, the disk must not pay."""
    written = 0
    while chunk := source.read(CHUNK_BYTES):
        written += len(chunk)
        if written > member.file_size:
            raise ArchiveRejected(archive, f"member {member.filename!r} expands beyond its declared "
                                     f"{member.file_size} bytes; refusing a likely zip bomb")
        out.write(chunk)
        bar.update(len(chunk))
    return written


def _move_into_place(staging: Path, dest_dir: Path, replaced: Path) -> list[Path]:
    """Rename each verified top-level entry into `dest_dir`, replacing an older copy of it."""
    placed = []
    for entry in sorted(staging.iterdir()):
        target = dest_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            replaced.mkdir(exist_ok=True)
            target.rename(replaced / entry.name)
            try:
                entry.replace(target)
            except OSError:
                (replaced / entry.name).rename(target)  # keep the old copy rather than nothing
                raise
        else:
            entry.replace(target)
        placed.append(target)
    return placed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
