"""How the data stage's helper processes start: DataLoader workers and the decoded cache's pool.

Both decode photos with OpenCV in parallel processes, so both need the same three things: a clean
start (never forked from a busy process), an end with the main process however it ends, and one
thread each for OpenCV and torch.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.context

from carvana.core.process_lifetime import end_with_main_process
from carvana.data.images import set_worker_threads

# What every worker runs: the datasets module imports torch, OpenCV and the cache once, in the server.
_FORKSERVER_PRELOAD = ["carvana.data.datasets"]


def worker_init(worker_id: int | None = None) -> None:
    """Worker start: end with the main process; one thread each for OpenCV and torch.

    A worker must not outlive a main process killed outright (see carvana.core.process_lifetime);
    `set_worker_threads` says why one thread. `worker_id` is the DataLoader's (unused).
    """
    end_with_main_process()
    set_worker_threads()


def worker_context() -> multiprocessing.context.BaseContext:
    """How workers are started: from a clean process, never forked from a busy one.

    A worker forked from a process whose OpenCV thread pool has run inherits the pool's locks in
    whatever state they were in, and reconfiguring the pool there (cv2.setNumThreads) can wait
    forever on a condition variable no thread will signal. "forkserver" forks workers from a small
    server process that never ran OpenCV. The server imports the datasets module (and so torch and
    OpenCV) once, so each worker starts in milliseconds after the first. Windows has only
    "spawn", which is clean too but imports everything in every worker.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_FORKSERVER_PRELOAD)
    return context
