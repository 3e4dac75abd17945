"""The decoded cache: a run's training photos and masks, decoded and resized once, then memory-mapped.

Decoding a 1918x1280 JPEG and its GIF mask costs about a small model's training step, every epoch.
Row i of one uint8 array (N, H, W, 4) holds photo i as RGB and its mask as the car's share of each
pixel (0..255), so one cache serves hard and soft targets and a batch is the same with or without it.
The .npy lives under `<output>/cache/<key>/`, the key hashing the covered size and every file's path,
size and mtime (a stale cache is never read); workers share it through `np.load(mmap_mode="r")`.
It is built by a pool of loader workers into a temporary file under a lock (two runs build it once),
broken files raise the usual DataError, and it is skipped, with a note, when too large for the disk.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from carvana.core.atomic import atomic_path
from carvana.core.console import bars_disabled
from carvana.core.errors import DataError
from carvana.core.geometry import Size
from carvana.core.locks import FolderLock
from carvana.data.images import load_image, mask_area_fractions, read_mask
from carvana.data.workers import worker_context, worker_init

FORMAT_VERSION = 1  # bump when what a row holds changes: old caches then get a new key and are rebuilt
CHANNELS = 4  # R, G, B, the mask's area share
ARRAY_NAME = "pairs.npy"
LIMIT_BYTES = 4 << 30
FREE_DISK_FACTOR = 2  # build only when the disk has this many times the cache's size free


class DecodedCache:
    """Read access to a built cache: the decoded pair of a photo, by its path, from a read-only memory map.

    Picklable for loader workers: the map is not pickled; each process opens its own on first use.
    """

    def __init__(self, path: Path, image_paths: Sequence[Path], size: Size):
        self.path = Path(path)
        self.size = size
        self._rows = {str(Path(p)): row for row, p in enumerate(image_paths)}
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, image_paths: Sequence[Path]) -> list[int]:
        """The rows of these photos; ValueError for one the cache was not built with."""
        missing = [p for p in image_paths if str(Path(p)) not in self._rows]
        if missing:
            raise ValueError(f"{missing[0]}: not in the decoded cache {self.path} ({len(missing)} photos are not)")
        return [self._rows[str(Path(p))] for p in image_paths]

    def array(self) -> np.ndarray:
        """The whole (N, H, W, 4) uint8 array, memory-mapped read-only (opened once per process)."""
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def pair(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Photo `row` as RGB uint8 (H, W, 3) and its mask's area shares uint8 (H, W), both writable copies."""
        item = self.array()[row]
        return np.ascontiguousarray(item[..., :3]), np.ascontiguousarray(item[..., 3])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None
        return state


class OpenedCache(NamedTuple):
    """What `open_decoded_cache` found or made: the cache (None when skipped) and one line to show."""

    cache: DecodedCache | None
    note: str


def cache_key(image_paths: Sequence[Path], mask_paths: Sequence[Path], size: Size) -> str:
    """A hash of everything a cache's content depends on: format, size, and each file's path, bytes and mtime.

    DataError naming a file that cannot be looked at (missing, unreadable folder).
    """
    digest = hashlib.sha256(f"carvana decoded cache v{FORMAT_VERSION} {size.width}x{size.height}\n".encode())
    for path in (*image_paths, *mask_paths):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise DataError(path, "file not found") from None
        except OSError as error:
            raise DataError(path, f"cannot be read ({error.strerror or error})") from None
        digest.update(f"{os.path.abspath(path)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def cache_bytes(count: int, size: Size) -> int:
    return count * size.height * size.width * CHANNELS


def open_decoded_cache(
    image_paths: Sequence[Path], mask_paths: Sequence[Path], size: Size, root: Path, workers: int,
    progress: bool = True,
) -> OpenedCache:
    """The cache of these photo/mask pairs at `size` under `root`: reused if built, built if not, or skipped.

    Row i is pair i. `workers` processes decode while building (0: this process).
    """
    if len(image_paths) != len(mask_paths):
        raise ValueError(f"{len(image_paths)} photos but {len(mask_paths)} masks")
    image_paths, mask_paths = [Path(p) for p in image_paths], [Path(p) for p in mask_paths]
    count, needed = len(image_paths), cache_bytes(len(image_paths), size)
    what = f"{count} photos and masks at {size}, {_human(needed)}"
    if needed > LIMIT_BYTES:
        return OpenedCache(None, f"Decoded cache: off ({what}, over its {_human(LIMIT_BYTES)} limit); "
                                 "photos are decoded every epoch")
    folder = Path(root) / cache_key(image_paths, mask_paths, size)
    path = folder / ARRAY_NAME
    cache = DecodedCache(path, image_paths, size)
    if _complete(path, count, size):
        return OpenedCache(cache, f"Decoded cache: {path} ({what}, reused)")
    free = shutil.disk_usage(_existing_parent(folder)).free
    if free < FREE_DISK_FACTOR * needed:
        return OpenedCache(None, f"Decoded cache: off ({what}; {_existing_parent(folder)} has only "
                                 f"{_human(free)} free); photos are decoded every epoch")
    try:
        with FolderLock(folder):  # a second run waits here, then finds the cache complete
            if _complete(path, count, size):
                return OpenedCache(cache, f"Decoded cache: {path} ({what}, reused)")
            start = time.monotonic()
            _build(path, image_paths, mask_paths, size, workers, progress)
    except BaseException:
        with contextlib.suppress(OSError):  # nothing was built: leave no empty folder (unless another run's)
            folder.rmdir()
        raise
    seconds = time.monotonic() - start
    return OpenedCache(cache, f"Decoded cache: {path} ({what}, built in {seconds:.0f}s; runs on the same files "
                              "reuse it, --no-cache turns it off)")


def _complete(path: Path, count: int, size: Size) -> bool:
    """Whether `path` is a cache of `count` rows at `size` (only complete files ever get its name)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return array.dtype == np.uint8 and array.shape == (count, size.height, size.width, CHANNELS)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _human(count: int) -> str:
    return f"{count / (1 << 30):.1f} GiB" if count >= 1 << 30 else f"{count / (1 << 20):.0f} MiB"


@dataclass(frozen=True)
class _Failure:
    """A DataError from a pool worker: DataError(path, problem) does not survive pickling as itself."""

    path: Path
    problem: str


def decode_row(job: tuple[Path, Path, Size]) -> np.ndarray | _Failure:
    """One row of the cache: the photo as `load_image` gives it, and its mask's area shares."""
    image_path, mask_path, size = job
    try:
        image, original = load_image(image_path, size)
        fractions = mask_area_fractions(read_mask(mask_path, original), size)
    except DataError as error:
        return _Failure(error.path, error.problem)
    return np.concatenate([image, fractions[..., np.newaxis]], axis=2)


def _pool_worker_init() -> None:
    # Ctrl-C goes to the whole process group; the main process alone handles it (and stops the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_init()


def _decoded_rows(jobs: list[tuple[Path, Path, Size]], workers: int) -> Iterator[np.ndarray | _Failure]:
    if workers == 0:
        yield from map(decode_row, jobs)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=worker_context(), initializer=_pool_worker_init)
    try:
        yield from pool.map(decode_row, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a failure, the queued rows are dropped


def _build(path: Path, image_paths: list[Path], mask_paths: list[Path], size: Size, workers: int,
           progress: bool) -> None:
    from tqdm import tqdm

    jobs = [(image, mask, size) for image, mask in zip(image_paths, mask_paths)]
    shape = (len(jobs), size.height, size.width, CHANNELS)
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            with tqdm(total=len(jobs), desc="Decoding photos for the cache", unit="img", leave=False,
                      disable=bars_disabled(None) if progress else True) as bar, \
                    contextlib.closing(_decoded_rows(jobs, workers)) as rows:
                for row, decoded in enumerate(rows):
                    if isinstance(decoded, _Failure):
                        raise DataError(decoded.path, decoded.problem)
                    array[row] = decoded
                    bar.update()
            array.flush()
        finally:
            del array
