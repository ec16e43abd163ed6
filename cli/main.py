"""The ``heroes`` entry point: one parser, built from one module per kind of user.

    cli/agency.py      heroes agency ...       an agency's node (IT team)
    cli/consortium.py  heroes consortium ...   the aggregator (consortium operators)
    cli/privacy.py     heroes privacy ...      privacy accounting and planning
    cli/research.py    heroes simulate|bench|sweep-table|report   researchers (Hydra)

Each module has ``register(subparsers)`` and registers its commands with
cli/_register.py; exit codes are cli/exit.py's. The user modules import only the standard
library at import time, so ``heroes --help`` and the commands that only read state start
fast: each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cli import agency, consortium, exit, privacy, research
from federation.errors import HeroesError

DESCRIPTION = "Federated, differentially private training across police agencies and NGOs."


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``heroes`` parser, and its top-level commands by name."""
    parser = argparse.ArgumentParser(prog="heroes", description=DESCRIPTION,
                                     epilog=exit.EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (research, privacy, agency, consortium):
        module.register(sub)
    return parser, dict(sub.choices)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``heroes`` command; return its exit code (cli/exit.py).

    A HeroesError (bad configuration, input or state, whose message names the rule and the
    fix) is printed without a traceback and gives exit 2; argparse's own usage errors exit 2
    too (SystemExit, as argparse does)."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser()
    raw_run = commands[words[0]].get_default("raw_run") if words and words[0] in commands \
        else None
    if raw_run is not None:
        # A command registered raw (``simulate``) takes the rest of the line unparsed: Hydra
        # owns -m, --help, --cfg job and the overrides, in their order.
        return _guarded(f"heroes {words[0]}", lambda: int(raw_run(words[1:])))
    args = parser.parse_args(words)
    return _guarded(args.command_name, lambda: int(args.run(args)))


def _guarded(name: str, run: Callable[[], int]) -> int:
    try:
        return run()
    except HeroesError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return exit.USAGE
