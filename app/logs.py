"""Where the engine's log messages go: one handler on the `easyspec` logger, set up by the front ends.

What it is: `configure()`, called by the command line (`cli.main`) and the dashboard's launch
(`dashboard.serve`). core/ logs through module loggers (`easyspec.core.*`); this shows their INFO
and above on stderr as bare messages, the text the command line has always shown. Calling it again
adds nothing.
What it is not: a log file or a format of its own; a program that imports the engine as a library
configures `logging` itself (with nothing configured, Python shows warnings and errors only).
"""
from __future__ import annotations

import logging
import sys


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted, not when the handler was made, so
    a later redirect (pytest's capture included) sees the messages."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns one; the property decides
        pass


def configure(level: int = logging.INFO) -> logging.Logger:
    """Show the `easyspec` loggers' messages at `level` and above on stderr; idempotent."""
    logger = logging.getLogger("easyspec")
    logger.setLevel(level)
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        logger.addHandler(StderrHandler())
    return logger
