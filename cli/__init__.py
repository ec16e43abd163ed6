"""The ``heroes`` command line: one package, one module per kind of user (see cli/main.py).

``heroes`` is ``cli:main``; ``python -m cli`` runs the same.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The ``heroes`` entry point (cli/main.py), imported when called."""
    from cli.main import main as run

    return run(argv)


__all__ = ["main"]
