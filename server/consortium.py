"""The consortium's deployment commands (filled in by the deployment work)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, MutableMapping
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 handlers: MutableMapping[str, Handler]) -> None:
    """Register ``heroes consortium`` subcommands and their handlers."""
    _add_release(sub, handlers)


def _add_release(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 handlers: MutableMapping[str, Handler]) -> None:
    parser = sub.add_parser(
        "release", help="turn a finished run into a signed model bundle with a model card")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a finished run: a simulation outputs/<date>/<time> folder or the "
                        "aggregator's output folder (model.pt and metrics.json)")
    parser.add_argument("--signing-key", type=Path, required=True,
                        help="the consortium's Ed25519 private key (PEM)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the bundle folder to create (default: RUN_DIR/release)")
    parser.add_argument("--app-bundle", type=Path, default=None,
                        help="the signed Flower app bundle (.fab) the run used; its sha256 "
                        "goes on the card (default: recorded as unknown)")
    handlers["release"] = _release


def _release(args: argparse.Namespace) -> int:
    from server.release import release_run

    bundle = release_run(args.run_dir, signing_key=args.signing_key, out=args.out,
                         app_bundle=args.app_bundle)
    print(f"released {bundle} (model card: {bundle / 'model_card.md'}; "
          f"signature: {bundle / 'model_card.json.sig'})")
    return 0
