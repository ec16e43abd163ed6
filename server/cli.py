"""Consortium commands: ``heroes consortium ...``.

    heroes consortium init --dir DIR --public-address HOST:PORT   CA, TLS and signing keys
    heroes consortium enroll NAME PUBLIC_KEY --dir DIR            register an agency node key
    heroes consortium revoke NAME --dir DIR                       unregister it
    heroes consortium serve --dir DIR                             SuperLink + Fleet-only front
    heroes consortium roster --dir DIR [--out FILE]               sign the member roster
    heroes consortium bundle --dir DIR --out FILE.fab             the app bundle, for review
    heroes consortium train --dir DIR [--run-config K=V ...]      submit, follow, fetch a run
    heroes consortium ledger-heads --dir DIR [--forget NAME]      agencies' last ledger heads

Each subcommand lives in its own function; ``add_commands`` registers the parsers and
``main`` dispatches on ``args.consortium_command``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]
HANDLERS: dict[str, Handler] = {}


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from server import consortium

    parser = subparsers.add_parser("consortium", help="commands for the consortium's aggregator")
    sub = parser.add_subparsers(dest="consortium_command", required=True)
    consortium.add_commands(sub, HANDLERS)


def main(args: argparse.Namespace) -> int:
    return HANDLERS[args.consortium_command](args)
