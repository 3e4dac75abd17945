"""Run `main.py` (or a script) under torchrun on this machine, as a user would: `sys.executable -m
torch.distributed.run`, the venv's torchrun, its rendezvous on the loopback interface only."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

MAIN = REPO_ROOT / "main.py"


def skip_without_gloo() -> None:
    """Skip the calling test module when this torch cannot run CPU processes as one group."""
    import torch.distributed

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)
    if not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed has no gloo backend (needed between CPU processes)", allow_module_level=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment of torchrun and its workers: one thread each (they share the cores), the
    repository importable (for scripts that import carvana), output unbuffered."""
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path}


def torchrun_command(program: Path, args: list, nproc: int = 2, rendezvous: list[str] | None = None) -> list[str]:
    """`torchrun --standalone --nproc_per_node=NPROC PROGRAM ARGS`, or with `rendezvous` flags in place of
    `--standalone` (e.g. several "nodes" meeting at 127.0.0.1:PORT)."""
    meeting = rendezvous if rendezvous is not None else ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", *meeting, f"--nproc_per_node={nproc}", str(program),
            *map(str, args)]


def run_torchrun(args: list, cwd: Path, nproc: int = 2, program: Path = MAIN,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=NPROC main.py ARGS` in `cwd`, to its end."""
    return subprocess.run(torchrun_command(program, args, nproc), cwd=cwd, env=child_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start_torchrun(args: list, cwd: Path, nproc: int = 2, program: Path = MAIN,
                   rendezvous: list[str] | None = None) -> subprocess.Popen:
    """torchrun as a running process with pipes for stdout/stderr, in a session of its own (so a test
    that fails can stop it and its workers together: `stop_session`)."""
    return subprocess.Popen(torchrun_command(program, args, nproc, rendezvous), cwd=cwd, env=child_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def stop_session(process: subprocess.Popen) -> tuple[str, str]:
    """Kill a process started by `start_torchrun` and everything it started, if it still runs; returns
    what it printed that was not read yet (stdout, stderr)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process.stdout is None or process.stdout.closed:
        return "", ""
    return process.communicate()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:  # the process ended meanwhile
        pass
    return found


def _rank_of(pid: int) -> int | None:
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for variable in variables:
        if variable.startswith(b"RANK="):
            return int(variable[len(b"RANK="):])
    return None


def worker_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the worker of `rank` that torchrun (`launcher`) started, None while there is none
    (read from the workers' environment in /proc: Linux)."""
    pending = _children(launcher.pid)
    while pending:
        pid = pending.pop()
        if _rank_of(pid) == rank:
            return pid
        pending += _children(pid)
    return None
