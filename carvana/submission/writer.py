"""Stream probability maps into a gzip submission CSV, post-processing them off the caller's thread.

`add_batch` copies the maps and returns (blocking only while `max_pending_batches` wait); a pool of
threads resizes, thresholds and run-length encodes each image (`add_runs` takes runs a GPU already
found), and a writer thread writes the rows in submission order. Threads, not processes: cv2, numpy
and zlib release the GIL, and no megabyte of probabilities per image is pickled. gzip for `.gz`,
plain for `.csv`, any other name refused. The file is a temporary one beside `path`, renamed by
`close()`; an error, Ctrl-C or `abort()` removes it, so a truncated submission never has the real name.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from carvana.core.atomic import atomic_path
from carvana.core.errors import CarvanaError
from carvana.core.geometry import Size
from carvana.kaggle.rle import runs_to_string
from carvana.kaggle.rle_csv import DEFAULT_COMPRESSLEVEL, format_rle_row, is_gzip_name, open_rle_stream
from carvana.predict.cleanup import clean_probabilities
from carvana.predict.postprocess import probabilities_to_rle

DEFAULT_MAX_PENDING_BATCHES = 4


def default_workers() -> int:
    """Post-processing threads: one core is left to the model loop, at most 4 are needed."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores - 1))


def _find_malloc_trim():
    """glibc's `malloc_trim`, or None where the C library is another one (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


# glibc keeps the freed megabyte-sized row buffers of the worker threads in its heaps (its mmap
# threshold rises after the first ones are freed), so the resident memory of a long prediction
# would creep up to ~100 MB above its start; giving the free pages back after each written batch
# keeps it flat (measured: bench/bench_memory.py) for a fraction of a millisecond per batch.
_malloc_trim = _find_malloc_trim()


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc only; a no-op elsewhere)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def encode_row(name: str, probabilities: np.ndarray, original_size: Size, threshold: float,
               cleanup: str = "none") -> bytes:
    """One `img,rle_mask` CSV line, ready for the gzip stream (the map cleaned up first, see carvana.predict.cleanup)."""
    probabilities = clean_probabilities(probabilities, threshold, cleanup)
    return format_rle_row(name, probabilities_to_rle(probabilities, original_size, threshold))


def format_row(name: str, runs: np.ndarray) -> bytes:
    """One `img,rle_mask` CSV line of already computed (start, length) runs."""
    return format_rle_row(name, runs_to_string(runs))


class _Aborted(Exception):
    """Thrown into carvana.core.atomic's context to make it remove the temporary file."""


_END = object()  # the last item of the pending queue


class SubmissionWriter:
    """Write `img,rle_mask` rows of probability maps to a CSV at `path` (gzip for `.gz`), atomically.

    Use as a context manager (commits on success, aborts on any exception), or call `close()` /
    `abort()` yourself. Rows come out in the order `add_batch` was called. `cleanup` (one of
    `config.MASK_CLEANUPS`) is applied to each map of `add_batch` before it is up-sampled.
    """

    def __init__(
        self,
        path: Path,
        original_size: Size,
        threshold: float = 0.5,
        workers: int | None = None,
        max_pending_batches: int = DEFAULT_MAX_PENDING_BATCHES,
        compresslevel: int = DEFAULT_COMPRESSLEVEL,
        cleanup: str = "none",
    ):
        if max_pending_batches < 1:
            raise ValueError(f"max_pending_batches must be at least 1, got {max_pending_batches}")
        self.path = Path(path)
        is_gzip_name(self.path)  # refuse a name the content would not agree with, before any file exists
        self.original_size = Size(*original_size)
        self.threshold = float(threshold)
        self.cleanup = cleanup
        self.workers = workers or default_workers()
        self._rows_written = 0
        self._failure: BaseException | None = None
        self._finished = False
        self._aborting = threading.Event()

        self._atomic = atomic_path(self.path)
        self.temp_path: Path = self._atomic.__enter__()
        # Safety net for a process that dies without close()/abort(): never leave the temp file behind.
        self._cleanup_at_exit = weakref.finalize(self, Path.unlink, self.temp_path, missing_ok=True)
        try:
            self._file: BinaryIO = open(self.temp_path, "wb")
            self._out = open_rle_stream(self._file, self.path, compresslevel)
        except BaseException:
            self._discard_temp()
            raise
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="submission-rle")
        self._pending: queue.Queue = queue.Queue(maxsize=max_pending_batches)
        # A daemon thread: if the caller dies without close(), the interpreter must still be able to exit.
        self._writer = threading.Thread(target=self._write_in_order, name="submission-writer", daemon=True)
        self._writer.start()

    @property
    def rows_written(self) -> int:
        """Rows written to the gzip stream so far (all rows once `close()` returned)."""
        return self._rows_written

    def __enter__(self) -> "SubmissionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add_batch(self, names: Sequence[str], probabilities: np.ndarray) -> None:
        """Queue a batch: `names` (B,) image file names, `probabilities` (B, h, w) in [0, 1].

        The probabilities are copied, so the caller may reuse its buffer at once. Blocks only while
        `max_pending_batches` earlier batches are still waiting to be written.
        """
        self._raise_if_unusable()
        if probabilities.ndim != 3 or probabilities.shape[0] != len(names):
            raise ValueError(f"expected probabilities of shape ({len(names)}, height, width) for {len(names)} "
                             f"names, got {tuple(probabilities.shape)}")
        batch = np.array(probabilities, dtype=np.float32, copy=True)
        jobs = [self._pool.submit(encode_row, name, batch[i], self.original_size, self.threshold, self.cleanup)
                for i, name in enumerate(names)]
        self._pending.put(jobs)

    def add_runs(self, names: Sequence[str], runs: Sequence[np.ndarray]) -> None:
        """Queue a batch whose masks are already (start, length) runs (as `rle.encode_runs` gives them),
        e.g. computed on a GPU by `postprocess.probability_batch_to_runs`; only the text is left to do.
        """
        self._raise_if_unusable()
        if len(runs) != len(names):
            raise ValueError(f"expected runs for {len(names)} names, got {len(runs)}")
        jobs = [self._pool.submit(format_row, name, image_runs) for name, image_runs in zip(names, runs)]
        self._pending.put(jobs)

    def close(self) -> int:
        """Wait for every queued row, then rename the complete file onto `path`; return the row count."""
        self._raise_if_unusable()
        try:
            self._pending.put(_END)
            self._writer.join()
            self._pool.shutdown(wait=True)
            if self._failure is not None:
                raise self._failure
            self._out.close()
            self._file.close()
        except OSError as e:
            self.abort()
            raise self._write_error(e) from None
        except BaseException:
            self.abort()
            raise
        self._finished = True
        self._atomic.__exit__(None, None, None)  # fsync and rename onto `path`
        self._cleanup_at_exit.detach()
        return self._rows_written

    def abort(self) -> None:
        """Stop writing and remove the temporary file; a previous `path` is left as it was. Idempotent."""
        if self._finished:
            return
        self._aborting.set()
        # Empty the queue so that the end marker fits and the writer thread stops after its current batch.
        while True:
            try:
                jobs = self._pending.get_nowait()
            except queue.Empty:
                break
            if jobs is not _END:
                for job in jobs:
                    job.cancel()
        self._pending.put(_END)
        self._writer.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._discard_temp()

    def _raise_if_unusable(self) -> None:
        if self._finished:
            raise RuntimeError(f"{self.path}: the submission writer is already closed")
        if self._failure is not None:
            self.abort()
            if isinstance(self._failure, OSError):
                raise self._write_error(self._failure) from None
            raise self._failure

    def _write_error(self, error: OSError) -> CarvanaError:
        return CarvanaError(f"{self.path}: could not be written ({error.strerror or error}); nothing was replaced")

    def _write_in_order(self) -> None:
        """Writer thread: take batches in submission order, wait for their rows, append them."""
        while True:
            jobs = self._pending.get()
            if jobs is _END:
                return
            if self._failure is not None or self._aborting.is_set():
                for job in jobs:
                    job.cancel()
                continue  # keep taking batches so that a blocked add_batch wakes up
            try:
                rows = [job.result() for job in jobs]
                self._out.write(b"".join(rows))
                self._rows_written += len(rows)
                del rows, jobs
                release_free_memory()
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread by _raise_if_unusable
                self._failure = e

    def _discard_temp(self) -> None:
        """Close the files quietly and let carvana.core.atomic remove the temporary file."""
        if self._finished:
            return
        self._finished = True
        for closing in (getattr(self, "_out", None), getattr(self, "_file", None)):
            try:
                if closing is not None:
                    closing.close()
            except (OSError, ValueError):
                pass
        self._atomic.__exit__(_Aborted, _Aborted(), None)
        self._cleanup_at_exit.detach()
