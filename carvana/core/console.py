"""The console: the package's messages go through `logging` and appear as plain lines, as print would show them.

`setup_console` (run at import) gives the package's logger one handler: each message as written,
information on stdout, warnings and errors on stderr, through `tqdm.write` so progress bars are
redrawn below it; streams are looked up per message (capsys, redirect_stdout work), and records also
propagate to the root logger. Under torchrun ranks above 0 show errors only and no bars.
"""
from __future__ import annotations

import logging
import sys

from tqdm import tqdm

from carvana.core import ranks

PACKAGE_LOGGER = "carvana"


class ConsoleHandler(logging.Handler):
    """One plain line per record: below WARNING on stdout, WARNING and above on stderr, flushed at once."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            if stream is None:  # no console at all (pythonw)
                return
            tqdm.write(message, file=stream)
            stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own convention: report the failure, go on
            self.handleError(record)


def setup_console(level: int = logging.INFO) -> ConsoleHandler:
    """Show the package's messages from `level` up on the console (errors only on a rank other than 0);
    calling it again changes only the level."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(level if ranks.is_main() else max(level, logging.ERROR))
    for handler in logger.handlers:
        if isinstance(handler, ConsoleHandler):
            return handler
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return handler


def bars_disabled(progress: bool | None) -> bool | None:
    """tqdm's `disable` for a progress setting (True/False; None = only on a terminal), never a bar
    on a rank other than 0."""
    if not ranks.is_main():
        return True
    return None if progress is None else not progress
