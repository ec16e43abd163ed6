"""Agency commands for using released models and auditing what left the node.

    heroes agency score --model BUNDLE --input FILE --consortium-key PUB --purpose TEXT
                        [--threshold T] [--analyst NAME] [--out FILE] [--state-dir DIR]

Registered from clients/cli.py (``add_commands`` and ``main`` below).
"""

from __future__ import annotations

import argparse
from pathlib import Path

COMMANDS = ("score",)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    score = sub.add_parser(
        "score", help="score adverts with a signed model release; every use is logged")
    score.add_argument("--model", type=Path, required=True,
                       help="the released bundle folder (heroes consortium release)")
    score.add_argument("--input", type=Path, required=True,
                       help="adverts to score: .csv, .jsonl or .parquet with advert_id and text")
    score.add_argument("--consortium-key", type=Path, required=True,
                       help="the consortium's public signing key (PEM or OpenSSH)")
    score.add_argument("--purpose", required=True,
                       help="why these adverts are being scored (recorded in the log)")
    score.add_argument("--threshold", type=float, default=0.5,
                       help="flag adverts whose probability is at or above this (default 0.5)")
    score.add_argument("--analyst", default=None,
                       help="who is consulting the model (default: the OS user)")
    score.add_argument("--out", type=Path, default=None,
                       help="results file, .jsonl or .csv (default: STATE_DIR/scores/...)")
    score.add_argument("--state-dir", type=Path, default=Path("agency-state"),
                       help="the node's state folder, which holds the consultation log "
                       "(default: ./agency-state)")


def main(args: argparse.Namespace) -> int:
    if args.agency_command == "score":
        from clients.score import render_report, score_file

        report = score_file(model=args.model, input_path=args.input,
                            consortium_key=args.consortium_key, purpose=args.purpose,
                            state_dir=args.state_dir, analyst=args.analyst,
                            threshold=args.threshold, out=args.out)
        print(render_report(report))
        return 0
    return 2
