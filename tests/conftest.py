"""Suite-wide hygiene: every test leaves Python's logging as it found it.

Several tests call the real `heroes` entry point in-process (simulation/cli.py main), and
Hydra's `@hydra.main` configures logging with `logging.config.dictConfig`: it replaces the
root logger's handlers with stream handlers bound to whatever sys.stdout and sys.stderr are
at that moment, which inside a test are pytest's capture buffers. Those buffers are closed
when the test ends, so the next log record anywhere in the process (Flower, Ray, our own)
wrote to a closed file: "I/O operation on closed file", and once even "lost sys.stderr",
which ended the whole test run. Restoring the logging state after each test keeps the
in-process calls real without letting one test's configuration leak into the next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {name: (lg.handlers[:], lg.level, lg.propagate, lg.disabled)
               for name, lg in logging.Logger.manager.loggerDict.items()
               if isinstance(lg, logging.Logger)}
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()  # Hydra's job-log file handler, a stream handler on a capture
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    for name, lg in logging.Logger.manager.loggerDict.items():
        if not isinstance(lg, logging.Logger):
            continue
        if name in loggers:
            lg.handlers[:], lg.level, lg.propagate, lg.disabled = (
                loggers[name][0], loggers[name][1], loggers[name][2], loggers[name][3])
        else:  # a logger created during the test keeps nothing bound to its streams
            for handler in lg.handlers[:]:
                lg.removeHandler(handler)
                handler.close()


@pytest.fixture(autouse=True)
def _restore_std_streams() -> Iterator[None]:
    """The same for sys.stdout and sys.stderr: an in-process entry point may leave them
    pointing at a stream that is closed once the test's capture ends."""
    import sys

    out, err = sys.stdout, sys.stderr
    yield
    sys.stdout, sys.stderr = out, err
