"""The `heroes` command as the tests run it in a subprocess: one command prefix, one helper.

A test that runs the real entry point in a fresh interpreter goes through ``heroes()`` (or
builds on ``HEROES``), so that moving the entry point changes one line here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests._wait import DEADLINE_S, RUN_DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
# `python -m <entry module>` with this interpreter: the code under test, not an installed copy
HEROES = [sys.executable, "-m", "simulation.cli"]


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
