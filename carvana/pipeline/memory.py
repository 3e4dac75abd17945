"""Running out of memory (RAM or GPU) in a stage, turned into one line that says what to lower.
"""
from __future__ import annotations

import contextlib
from typing import Any

from carvana.core.errors import CarvanaError
from carvana.run.config import Config


def explain_out_of_memory(config: Config, stage: str) -> contextlib.AbstractContextManager[None]:
    """Turn running out of memory (CPU or GPU) in `stage` into one line that says what to lower."""
    return _OutOfMemory(config, stage)


class _OutOfMemory(contextlib.AbstractContextManager):
    def __init__(self, config: Config, stage: str):
        self.config, self.stage = config, stage

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        if error is None or not _is_out_of_memory(error):
            return None
        device = "GPU" if "CUDA" in str(error) or type(error).__name__ == "OutOfMemoryError" else "memory"
        size = f"--crop {self.config.crop}" if self.config.crop is not None else f"--input-size {self.config.input_size}"
        raise CarvanaError(
            f"--batch-size {self.config.batch_size}: out of {device} while {self.stage} at {size}; lower "
            f"--batch-size or {size.split()[0]}, or use --amp bf16"
        ) from None


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in text for sign in ("can't allocate memory", "out of memory", "Cannot allocate memory"))
