"""How the processes of a run end: SIGTERM stops it like Ctrl-C, and helper processes never outlive it.

SIGTERM (`docker stop`, Slurm, `timeout`, a stopped Kaggle kernel) raises `Terminated`, a
KeyboardInterrupt, in the main thread, so Ctrl-C's clean-up runs for it too; the CLI exits 143.
Helpers (loader workers, the sample generator's pool) call `end_with_main_process` when they start:
a main process killed outright runs no clean-up, and helpers left alive would keep their memory and
the caller's stdout, so `main.py | tee` would wait for an end of file that never comes.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Iterator

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's code for a process ended by Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, the shell's code for a process ended by SIGTERM
EXIT_ORPHANED = 1  # a helper process whose main process has gone
POLL_SECONDS = 0.2  # how often a helper checks on its main process where it cannot wait on a pidfd

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that the same clean-up runs."""

    exit_code = EXIT_TERMINATED

    def __init__(self, message: str = "terminated by SIGTERM"):
        super().__init__(message)


def interrupt_exit_code(interrupt: BaseException) -> int:
    """The exit code for a run stopped by `interrupt`: 143 for SIGTERM, 130 for Ctrl-C."""
    return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED


def stopped_by(interrupt: BaseException) -> str:
    """How a run was stopped, for messages: "stopped by SIGTERM" or "interrupted"."""
    return "stopped by SIGTERM" if isinstance(interrupt, Terminated) else "interrupted"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, the first SIGTERM raises `Terminated` in the main thread.

    A second SIGTERM gets the default action (the process ends at once), so a clean-up that hangs
    can still be stopped; files are written atomically, so that leaves no half-written output.
    Nothing changes outside the main thread (signal handlers can only be set there) or when SIGTERM
    is not at its default action: a caller that ignores or handles it has chosen so.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        # Not SIG_DFL: a SIGTERM that lands while Python swaps in a default handler is reported as
        # "OSError: Signal 15 ignored due to race condition" (torchrun sends them in bursts).
        signal.signal(signal.SIGTERM, end_at_once)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def end_at_once(signum: int, frame: FrameType | None) -> None:
    """A second SIGTERM: end now, with the exit code SIGTERM's default action gives in a shell."""
    sys.stderr.flush()
    os._exit(EXIT_TERMINATED)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM that arrive inside the block until it has finished, then raise them.

    For steps that an exception must not cut in half: torch's DataLoader iterator, interrupted while
    it starts its workers, can no longer shut them down and prints a traceback when collected.
    Only in the main thread, and only for signals whose handler raises (Python's Ctrl-C handler,
    `sigterm_as_interrupt`'s); ignored or default signals keep their action.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    replaced: dict[int, Callable[[int, FrameType | None], Any]] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if callable(handler):
            replaced[signum] = handler
            signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
        if held:
            replaced[held[0]](held[0], None)  # raises KeyboardInterrupt or Terminated, now


def end_with_main_process() -> None:
    """Make this helper process end as soon as the main process of the run ends, however it ends.

    Called first thing in a DataLoader worker (`worker_init_fn`) or a pool worker (`initializer`).
    On Linux the kernel sends SIGKILL when the direct parent ends (PR_SET_PDEATHSIG; for a
    DataLoader worker that is the forkserver). The main process, which may be the grandparent, is
    watched by a daemon thread: it waits on a pidfd (Linux) or checks every POLL_SECONDS, and ends
    this process when the main one has ended. Errors reach the main process as before: workers
    hand them back through the loader's queues, and stderr stays the caller's.
    """
    main = multiprocessing.parent_process()
    if main is None or main.pid is None:
        return  # not a multiprocessing child: the main process itself, which must not die with its shell
    parent = os.getppid()
    _kill_me_when_my_parent_ends()
    if os.getppid() != parent:  # the parent ended before the kernel could be told
        os._exit(EXIT_ORPHANED)
    _watch(main.pid)


def _kill_me_when_my_parent_ends() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError:
        return
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _watch(pid: int) -> None:
    pidfd: int | None = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            os._exit(EXIT_ORPHANED)  # already gone
        except OSError:
            pidfd = None  # a kernel without pidfds (before Linux 5.3): poll instead
    if pidfd is None and not process_runs(pid):
        os._exit(EXIT_ORPHANED)
    threading.Thread(target=_exit_when_ended, args=(pid, pidfd), name=f"end-with-{pid}", daemon=True).start()


def _exit_when_ended(pid: int, pidfd: int | None) -> None:
    if pidfd is not None:
        select.select([pidfd], [], [])  # readable once the process has ended
    else:
        while process_runs(pid):
            time.sleep(POLL_SECONDS)
    os._exit(EXIT_ORPHANED)


def process_runs(pid: int) -> bool:
    """Whether process `pid` exists (a zombie counts until its parent collects it)."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno != errno.ESRCH  # EPERM: it runs, as another user
    return True
