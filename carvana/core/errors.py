"""Errors the user can act on.

Anything raised as a `CarvanaError` is printed by the CLI as one line (no traceback) and turns into a
non-zero exit code. The message must name the file or setting at fault and say what is wrong with it.
"""
from __future__ import annotations

from pathlib import Path


class CarvanaError(Exception):
    """A problem with the user's input, data or environment, explained in one line."""

    exit_code = 1


class DataError(CarvanaError):
    """A file in the data dir is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class KaggleError(CarvanaError):
    """Talking to Kaggle failed: credentials, rules, network."""


class SubmissionError(CarvanaError):
    """A submission file does not have the shape Kaggle expects."""


class ConfigError(CarvanaError):
    """A setting (flag, preset, input size) that cannot work."""


class CheckpointError(CarvanaError):
    """A checkpoint that cannot be loaded into this model."""


class TrainingDiverged(CarvanaError):
    """The loss became NaN or infinite."""


class StoppedBySignal(CarvanaError):
    """Ctrl-C or SIGTERM stopped a stage, which cleaned up; under torchrun every process got the signal."""
    exit_code = 130


def os_error_line(error: OSError) -> str:
    """An OSError as one line naming the path it is about (`PATH: Read-only file system`), for the CLI's last
    resort: a failure no stage turned into a CarvanaError still reads as one line, never a traceback."""
    what = error.strerror or str(error) or type(error).__name__
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {what}" if paths else what
