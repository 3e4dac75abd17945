"""Advisory locks on folders, so that two processes never write one run or one dataset at the same time.

A lock is `fcntl.flock` on a small file inside the folder that holds the owner's process id. The
kernel drops the lock when its process ends in any way (kill -9 included), so a crashed run never
leaves a folder locked: the file may stay behind, but nobody holds it and the next process takes it.

The owner removes the file when it lets go, while still holding the lock. A process that opened the
file just before and then wins the lock would hold a file that no longer has a name, so after every
`flock` the lock checks that its file is still the one at the path, and starts again if not.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from carvana.core.errors import CarvanaError


class FolderLock:
    """An exclusive lock on `folder`, held through the file `folder/name`."""

    def __init__(self, folder: str | Path, name: str = ".lock"):
        self.folder = Path(folder)
        self.path = self.folder / name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: bool) -> bool:
        """Take the lock; with `wait`, block until the holder lets go. False if held elsewhere (no wait)."""
        if self._fd is not None:
            return True
        while True:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise CarvanaError(f"{self.folder}: cannot lock this folder ({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise CarvanaError(f"{self.folder}: cannot lock this folder ({e.strerror or e})") from None
            except BaseException:  # Ctrl-C while waiting
                os.close(fd)
                raise
            if self._still_named(fd):
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError as e:  # a full disk: say so here, where the path is known
                    self.path.unlink(missing_ok=True)  # still holding it, as `release` does
                    os.close(fd)
                    raise CarvanaError(f"{self.path}: cannot write this lock file ({e.strerror or e})") from None
                self._fd = fd
                return True
            os.close(fd)  # the previous holder removed this file as we took it: take the new one

    def _still_named(self, fd: int) -> bool:
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)

    def holder(self) -> int | None:
        """The process id written by the current holder (None if unknown, e.g. not written yet)."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        """Let go: remove the file (still holding it), then close it, which drops the lock."""
        if self._fd is None:
            return
        try:
            if self._still_named(self._fd):
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a lock file that stays behind is harmless: nobody holds it
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        self.acquire(wait=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()

