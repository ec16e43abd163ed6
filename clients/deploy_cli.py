"""``heroes agency init|serve|status``: the agency node in a real deployment (clients/agency.py).

    heroes agency init --dir DIR --name NAME --data-dir DATA --consortium HOST:PORT \\
        --ca-cert ca.crt --consortium-key signing.pub --max-epsilon 10 --delta 1e-5
    heroes agency serve --dir DIR [--insecure]
    heroes agency status --dir DIR [--json]
    heroes agency approve TARGET --dir DIR [--yes]   a roster, a .fab, or a refused bundle's digest
    heroes agency approvals --dir DIR [--json]       what this agency approved; checks the log
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from federation.ledger import Policy

Handler = Callable[[argparse.Namespace], int]
HANDLERS: dict[str, Handler] = {}


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="make this node's key and policy; install the consortium's "
                       "CA certificate and signing key")
    p.add_argument("--dir", type=Path, required=True, help="the node's state folder")
    p.add_argument("--name", required=True, help="the agency's name as the consortium knows it")
    p.add_argument("--data-dir", type=Path, required=True,
                   help="the export folder (manifest.json and the files it names)")
    p.add_argument("--consortium", required=True, help="the consortium's address, HOST:PORT")
    p.add_argument("--ca-cert", type=Path, required=True,
                   help="the consortium's ca.crt (received out of band)")
    p.add_argument("--consortium-key", type=Path, required=True,
                   help="the consortium's signing.pub (received out of band)")
    p.add_argument("--max-epsilon", type=float, required=True,
                   help="lifetime privacy budget per dataset (unit: one advert record)")
    p.add_argument("--delta", type=float, required=True,
                   help="delta for every epsilon; well below 1/(training records)")
    p.add_argument("--accountant", choices=("rdp", "prv"), default="rdp")
    p.add_argument("--on-budget", choices=("stretch", "stop"), default="stretch",
                   help="stretch: fit noise to the budget left; stop: refuse past it")
    p.add_argument("--allow-non-private", action="store_true",
                   help="accept runs with DP off (never spends budget, still logged)")
    p.add_argument("--require-secure-aggregation", action="store_true",
                   help="refuse every round that is not securely aggregated (the update and "
                   "figures then never leave in the clear)")
    p.add_argument("--secure-min-agencies", type=int, default=3,
                   help="the smallest number of agencies in a secure sum this node joins")
    p.add_argument("--secure-min-threshold", type=float, default=0.5,
                   help="unmasking must need MORE than this share of the node's "
                   "neighbourhood (0.5: strict majority; raise it against colluding agencies)")
    p.add_argument("--share-local-metrics", action="store_true",
                   help="send per-agency figures (loss, epsilon, evaluation) in the clear; "
                   "off: only secure sums and statuses leave")
    p.add_argument("--allowed-task", action="append", default=None,
                   help="task this node agrees to train (repeatable; default: advert-risk)")
    p.add_argument("--dataset-id", default="", help="a stable name for the ledger's key")
    p.add_argument("--runtime-port", type=int, default=9094,
                   help="local Runtime API port (loopback; differs per node on one host)")
    p.add_argument("--health-port", type=int, default=9098, help="local gRPC health port")
    HANDLERS["init"] = _init

    p = sub.add_parser("serve", help="validate the export, then run the node (SuperNode and "
                       "the signature-checking SuperExec)")
    p.add_argument("--dir", type=Path, required=True, help="the node's state folder")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext, no node key: only for a lab on one machine (warns)")
    HANDLERS["serve"] = _serve

    p = sub.add_parser("status", help="health, connection, last round and budget left")
    p.add_argument("--dir", type=Path, required=True, help="the node's state folder")
    p.add_argument("--json", action="store_true")
    HANDLERS["status"] = _status

    p = sub.add_parser("approve", help="approve a roster (the peers of secure aggregation) or "
                       "an app bundle (the code the node runs), after showing what changed")
    p.add_argument("target", metavar="TARGET",
                   help="roster.json, an app bundle .fab, or the manifest digest of a bundle "
                   "the node refused (kept in DIR/approvals/pending)")
    p.add_argument("--dir", type=Path, required=True, help="the node's state folder")
    p.add_argument("--yes", action="store_true",
                   help="approve without asking (after showing everything); for scripts")
    HANDLERS["approve"] = _approve

    p = sub.add_parser("approvals", help="list what this agency approved and check the signed "
                       "log (exit 1 when it is broken)")
    p.add_argument("--dir", type=Path, required=True, help="the node's state folder")
    p.add_argument("--json", action="store_true")
    HANDLERS["approvals"] = _approvals


def _init(args: argparse.Namespace) -> int:
    from clients import agency

    policy = Policy(max_epsilon=args.max_epsilon, delta=args.delta, accountant=args.accountant,
                    allow_non_private=args.allow_non_private, on_budget=args.on_budget,
                    secure_min_threshold=args.secure_min_threshold,
                    secure_min_agencies=args.secure_min_agencies,
                    require_secure_aggregation=args.require_secure_aggregation,
                    share_local_metrics=args.share_local_metrics)
    home = agency.init(args.dir, name=args.name, data_dir=args.data_dir,
                       consortium=args.consortium, ca_cert=args.ca_cert,
                       consortium_key=args.consortium_key, policy=policy,
                       allowed_tasks=args.allowed_task or list(agency.DEFAULT_TASKS),
                       runtime_port=args.runtime_port, health_port=args.health_port,
                       dataset_id=args.dataset_id)
    print(f"node {args.name} initialised in {home.root}\n"
          f"  send to the consortium: {home.node_pub} (public; the private node.key stays "
          "here)\n"
          f"  policy and budget: {home.policy_path}\n"
          f"  next: `heroes agency serve --dir {home.root}` once the consortium enrolled you")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from clients import agency

    return agency.serve(args.dir, insecure=args.insecure)


def _approve(args: argparse.Namespace) -> int:
    from clients.approve import approve_target

    return approve_target(args.dir, args.target, yes=args.yes, stdin=sys.stdin, out=sys.stdout)


def _approvals(args: argparse.Namespace) -> int:
    from clients.approve import list_approvals

    return list_approvals(args.dir, as_json=args.json, out=sys.stdout)


def _fmt(v: object) -> str:
    return "n/a" if not isinstance(v, float) or math.isnan(v) else f"{v:.3f}"


def _status(args: argparse.Namespace) -> int:
    from clients import agency
    from federation.ledger import json_safe

    s: dict[str, Any] = agency.status(args.dir)
    if args.json:  # strict JSON: an infinite epsilon (trained without DP) becomes null
        print(json.dumps(json_safe(s), indent=2, default=lambda v: None, allow_nan=False))
        return 0
    print(f"agency {s['agency']} -> consortium {s['consortium']}")
    for warning in s["permissions"]:  # first: a key or ledger others can read matters most
        print(f"  WARNING: {warning}")
    print(f"  processes: {s['processes']}")
    print(f"  health: {s['health']}; connection: {s['connection']}")
    print(f"  runs only bundles signed by {s['consortium_key']} and approved here")
    print(f"  {s['approvals']}")
    budget = s["budget"]
    for d in s["datasets"]:
        eps = d["epsilon"]
        last = d["last_round"]
        print(f"  dataset {d['dataset']}: epsilon {_fmt(eps.get('rdp'))} (RDP) / "
              f"{_fmt(eps.get('prv'))} (PRV) at delta={d['delta']:g} per {d['unit']}, over "
              "every round of every run")
        if budget:
            print(f"    budget {budget['max_epsilon']:g} ({budget['accountant']}), remaining "
                  f"{_fmt(d['remaining'])}")
        if last:
            print(f"    last round: run {last['run']} round {last['round']} at {last['at']} "
                  f"({last['status']})")
    if s["ledger"] != "ok":
        print(f"  privacy ledger {s['ledger']}")
    elif not s["datasets"]:
        print("  no rounds trained yet: no privacy spent")
    local = s["local"]
    for kind in ("train", "evaluate"):
        if kind in local:
            e = local[kind]
            shown = ", ".join(f"{k} {_fmt(float(v))}" for k, v in sorted(e["figures"].items()))
            print(f"  last {kind} (run {e['run_id']} round {e['round']}, {e['status']}): {shown}")
    print("  these figures stay at this agency" if not local["shared_with_consortium"] else
          "  these figures are shared with the consortium ([sharing] share_local_metrics)")
    return 0
