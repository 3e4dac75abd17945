"""Write files so that a crash never leaves a half-written one under the final name.

Everything the pipeline produces (checkpoints, the submission, CSVs, the dataset's completion
markers) goes through `atomic_path`: the data is written next to the target under a temporary
name, flushed to disk, and only then renamed over the target. `os.replace` is atomic on POSIX
within one file system, so readers see either the old complete file or the new complete one.

The temporary name carries the writing process's id (`.tmp-<target>.<pid>.<random>`). A process
killed outright (kill -9, power loss) cannot remove its temporary file; the next write of the same
target removes those whose process no longer runs, so they do not pile up.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from carvana.core.errors import CarvanaError
from carvana.core.process_lifetime import process_runs

TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` if the block succeeds.

    On any exception (disk full, Ctrl-C, bad data) the temporary file is removed and `target`
    is left as it was.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.{os.getpid()}.", dir=target.parent)
    except OSError as e:
        raise CarvanaError(f"{target.parent}: cannot write here ({e.strerror or e})") from None
    # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CarvanaError(f"{target}: could not be written ({e.strerror or e}); nothing was replaced") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def remove_stale_temp_files(target: str | Path) -> list[Path]:
    """Remove the temporary files of `target` left by processes that no longer run; return them."""
    target = Path(target)
    removed = []
    prefix = f"{TEMP_PREFIX}{target.name}."
    for candidate in target.parent.glob(f"{TEMP_PREFIX}*"):
        pid = candidate.name[len(prefix):].split(".", 1)[0] if candidate.name.startswith(prefix) else ""
        if pid.isdigit() and not process_runs(int(pid)) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
