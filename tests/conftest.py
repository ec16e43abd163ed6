"""Suite-wide hygiene: every test leaves Python's logging as it found it.

Several tests call the real `heroes` entry point in-process (cli/main.py main), and
Hydra's `@hydra.main` configures logging with `logging.config.dictConfig`: it replaces the
root logger's handlers with stream handlers bound to whatever sys.stdout and sys.stderr are
at that moment, which inside a test are pytest's capture buffers. Those buffers are closed
when the test ends, so the next log record anywhere in the process (Flower, Ray, our own)
wrote to a closed file: "I/O operation on closed file", and once even "lost sys.stderr",
which ended the whole test run. Restoring the logging state after each test keeps the
in-process calls real without letting one test's configuration leak into the next.

And one shared run: the slow tests that only read what the quick preset's `heroes simulate`
leaves behind share one run of it per session (`quick_run`, ``QUICK_RUN``), instead of
each paying for its own. A test that must write into a run copies it first; the fixture
checks at the end of the session that nobody wrote into the shared one.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._heroes import heroes
from tests._wait import RUN_DEADLINE_S


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


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


#: What the shared quick run is: the quick preset with the centralised baseline on, at
#: epsilon 8 (tests/test_simulation.py checks that two rounds learn; at epsilon 3 those small
#: agencies' pooled ROC-AUC ranged 0.54 to 0.71 between runs, DP noise being unseeded).
QUICK_RUN = ["experiment=quick", "baseline=true", "privacy=eps8"]


@pytest.fixture(scope="session")
def quick_run_proc(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """The shared quick run's folder and its finished process (stdout, stderr): one real
    `heroes simulate` of ``QUICK_RUN`` (three agencies, two rounds, secure aggregation) per
    session, in a subprocess. Read it; copy it (shutil.copytree) before writing anything
    into it: the fixture checks at the end of the session that nobody wrote into it."""
    run = tmp_path_factory.mktemp("quick") / "run"
    proc = heroes(["simulate", *QUICK_RUN, f"hydra.run.dir={run}"], timeout=RUN_DEADLINE_S)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    before = _tree(run)
    yield run, proc
    after = _tree(run)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared quick run (copy it first): {changed}"


@pytest.fixture(scope="session")
def quick_run(quick_run_proc: tuple[Path, subprocess.CompletedProcess[str]]) -> Path:
    """The output folder of the shared quick run (``quick_run_proc``)."""
    return quick_run_proc[0]
