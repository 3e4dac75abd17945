"""The console: the package's messages go through `logging` and appear as plain lines, as print would show them.

Modules log with `logging.getLogger(__name__)`. `setup_console`, run when the package is imported
(the command line and library use alike), gives the package's logger one `ConsoleHandler`: each
message exactly as written, no level or logger name; information on stdout, warnings and errors on
stderr. Records also propagate to the root logger, so an application's own logging configuration
and pytest's caplog see them.

The handler writes through `tqdm.write`, which clears the progress bars, writes the line and draws
the bars again below it, and it looks sys.stdout and sys.stderr up at each message, so a stream
replaced after the import (pytest's capsys, contextlib.redirect_stdout) receives it.

Under torchrun one process speaks for the run: the others (rank > 0, `carvana.core.distributed`)
show errors only, and no progress bars (`bars_disabled`).
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
