"""Run the command line in-process, as a user would type it, and capture what it prints."""
from __future__ import annotations

from carvana import cli


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """`python main.py ARGS` in this process (paths may be Path objects); returns (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
