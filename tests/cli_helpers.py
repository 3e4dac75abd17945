"""Run the command line as a user would type it, in-process or as a real `main.py` process, and read what it prints."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from carvana import cli
from conftest import REPO_ROOT


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """`python main.py ARGS` in this process (paths may be Path objects); returns (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def default_sigint() -> None:
    """In the child before main.py starts: Ctrl-C at its default action, as in a terminal.

    A suite started in the background (`make test &`, nohup) inherits SIGINT ignored, and so would
    its children; Python keeps an ignored SIGINT ignored, so Ctrl-C would never reach main.py.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_main(args: list, cwd: Path, new_session: bool = False, threads: int = 2,
               preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    """`python main.py ARGS` as a real process with pipes for stdout/stderr and Ctrl-C at its default action.

    `preexec_fn` runs in the child after SIGINT is reset (e.g. to set a resource limit).
    """
    def prepare_child() -> None:
        default_sigint()
        if preexec_fn is not None:
            preexec_fn()

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "main.py"), *map(str, args)], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=new_session, preexec_fn=prepare_child)


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll `condition()` until true; fail the test if `process` ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"main.py ended (exit {process.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def one_line_error(err: str) -> str:
    """The single line a failure prints on stderr (asserting there is one, and no traceback)."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def epochs_printed(stdout: str) -> list[int]:
    """The epoch numbers of the `epoch N/M ...` lines training printed."""
    return [int(line.split()[1].split("/")[0]) for line in stdout.splitlines() if line.startswith("epoch ")]
