"""The consortium's deployment commands (filled in by the deployment work)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, MutableMapping

Handler = Callable[[argparse.Namespace], int]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 handlers: MutableMapping[str, Handler]) -> None:
    """Register ``heroes consortium`` subcommands and their handlers."""
