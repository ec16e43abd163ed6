"""The one way a ``heroes`` subcommand is registered.

Every user module (agency, consortium, privacy, research) has ``register(subparsers)``,
which adds its group and calls :func:`command` once per command. A command is a function
taking the parsed arguments and returning an exit code (cli/exit.py); :func:`command`
stores it as ``args.run`` and the command's full name (``heroes agency ledger``) as
``args.command_name``, which error messages start with.

A command that hands its whole command line to another parser (``heroes simulate`` to
Hydra) is registered with ``raw=True``: its function then takes the list of the remaining
arguments, unparsed and in order.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeAlias

#: argparse's subparsers (a string: the class is generic only to type checkers)
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Run = Callable[[argparse.Namespace], int]
RawRun = Callable[[list[str]], int]


def group(sub: Subparsers, name: str, *, help: str, dest: str,
          description: str | None = None) -> Subparsers:
    """A group of commands (``heroes agency``): its parser, and the subparsers to add to."""
    parser = sub.add_parser(name, help=help, description=description or help)
    return parser.add_subparsers(dest=dest, required=True, metavar="COMMAND")


def command(sub: Subparsers, name: str, run: Run, *, help: str,
            **kwargs: Any) -> argparse.ArgumentParser:
    """Add command ``name`` that ``run`` carries out; return its parser for the flags."""
    parser = sub.add_parser(name, help=help, description=kwargs.pop("description", help),
                            **kwargs)
    parser.set_defaults(run=run, command_name=parser.prog)
    return parser


def raw_command(sub: Subparsers, name: str, run: RawRun, *, help: str) -> None:
    """Add command ``name`` whose arguments ``run`` parses itself (they are not parsed here)."""
    parser = sub.add_parser(name, help=help, add_help=False)
    parser.add_argument("arguments", nargs=argparse.REMAINDER,
                        help=f"everything after `{name}` (see `heroes {name} --help`)")
    parser.set_defaults(raw_run=run, command_name=parser.prog)
