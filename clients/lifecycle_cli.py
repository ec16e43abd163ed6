"""Agency commands for using released models and auditing what left the node.

    heroes agency score --model BUNDLE --input FILE --consortium-key PUB --purpose TEXT
                        [--threshold T] [--analyst NAME] [--out FILE] [--state-dir DIR]
                        [--calibrate-with DATA_DIR]
    heroes agency audit verify --state-dir DIR [--public-key PUB]   check the egress receipts
    heroes agency audit show --state-dir DIR [--json]                list them

Registered from clients/cli.py (``add_commands`` and ``main`` below).
"""

from __future__ import annotations

import argparse
from pathlib import Path

COMMANDS = ("score", "audit")


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
    score.add_argument("--calibrate-with", type=Path, default=None, metavar="DATA_DIR",
                       help="fit this agency's calibration (Platt scaling) for this model on "
                       "the labelled training export in DATA_DIR (manifest.json); kept in the "
                       "state folder and used by later runs with the same model")
    score.add_argument("--state-dir", type=Path, default=Path("agency-state"),
                       help="the node's state folder, which holds the consultation log "
                       "(default: ./agency-state)")
    audit = sub.add_parser("audit", help="the node's signed, hash-chained egress receipts")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check every receipt's signature and the chain; name where it breaks")
    show = audit_sub.add_parser("show", help="list every message this node sent")
    for p in (verify, show):
        p.add_argument("--state-dir", type=Path, required=True,
                       help="the node's state folder (holds receipts.jsonl)")
    verify.add_argument("--public-key", type=Path, default=None,
                        help="the node's public key to check against (default: the state "
                        "folder's node.key.pub); an auditor should pass their own copy")
    show.add_argument("--json", action="store_true", help="the raw entries, one per line")


def main(args: argparse.Namespace) -> int:
    if args.agency_command == "score":
        from clients.score import render_report, score_file

        report = score_file(model=args.model, input_path=args.input,
                            consortium_key=args.consortium_key, purpose=args.purpose,
                            state_dir=args.state_dir, analyst=args.analyst,
                            threshold=args.threshold, out=args.out,
                            calibrate_with=args.calibrate_with)
        print(render_report(report))
        return 0
    if args.agency_command == "audit":
        return _audit(args)
    return 2


def _audit(args: argparse.Namespace) -> int:
    from clients import receipts

    if args.audit_command == "show":
        if args.json:
            for _, _, line in receipts.entries(args.state_dir):
                print(line)
        else:
            print(receipts.render_entries(args.state_dir))
        return 0
    key = receipts.trusted_public_key(args.state_dir, args.public_key)
    count, problems = receipts.verify_log(args.state_dir, key)
    if not problems:
        print(f"receipts OK: {count} entries in {args.state_dir / receipts.RECEIPTS}, every "
              "signature valid, chain and signed head intact")
        return 0
    print(f"receipts BROKEN: {len(problems)} problem(s) in {count} entries of "
          f"{args.state_dir / receipts.RECEIPTS}")
    for problem in problems:
        print(f"  {problem}")
    first = problems[0]
    print(f"the chain first breaks at {'entry ' + str(first.entry) if first.entry else 'the log'}"
          f" ({first.check} check)")
    return 1
