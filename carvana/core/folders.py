"""Whether a folder can be written, asked before any work that would write there.

`os.access` answers yes to root on a read-only file system (a Kaggle notebook's /kaggle/input, a
read-only mount), so the file system's own read-only flag is asked too.
"""
from __future__ import annotations

import os
from pathlib import Path

from carvana.core.errors import ConfigError


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def writable_problem(folder: Path) -> str | None:
    """Why files cannot be made in `folder` (None when they can), judged on its nearest existing part,
    so nothing is created on disk."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if _read_only_mount(existing):
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    return None


def check_writable_dir(folder: Path, what: str) -> None:
    """ConfigError unless `folder` exists or can be created, and `what` can be written in it."""
    problem = writable_problem(folder)
    if problem is not None:
        raise ConfigError(f"{folder}: cannot write {what} here ({problem})")


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False
