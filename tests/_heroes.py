"""How the tests run the real ``heroes`` command: one place, so that a new entry point is
one edit.

``HEROES`` is the command line of a fresh process (``python -m cli`` with this interpreter,
the module the installed ``heroes`` script calls: the code under test, not an installed
copy); ``heroes()`` runs it to its end with output captured; ``main`` is the same entry
point in process (cli/main.py), for tests that read its output with capsys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cli.main import main
from tests._wait import DEADLINE_S, RUN_DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
HEROES: list[str] = [sys.executable, "-m", "cli"]


def heroes_env() -> dict[str, str]:
    """No telemetry; warnings silenced in the child (its stderr is read by the tests)."""
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONWARNINGS": "ignore"}


def heroes(args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``heroes ARGS`` to its end, output captured. Bounded by ``timeout``; by default
    a whole run's deadline for `simulate`, a command's for anything else."""
    if timeout is None:
        timeout = RUN_DEADLINE_S if args[:1] == ["simulate"] else DEADLINE_S
    return subprocess.run([*HEROES, *args], cwd=ROOT, env=heroes_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


__all__ = ["HEROES", "heroes", "heroes_env", "main"]
