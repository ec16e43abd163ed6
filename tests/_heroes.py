"""How the tests run the real ``heroes`` command: one place, so that a new entry point is
one edit.

``HEROES`` is the command line of a fresh process (``python -m cli`` in the repository root,
the module the installed ``heroes`` script calls); ``main`` is the same entry point in
process (cli/main.py), for tests that read its output with capsys."""

from __future__ import annotations

import sys

from cli.main import main

HEROES: list[str] = [sys.executable, "-m", "cli"]

__all__ = ["HEROES", "main"]
