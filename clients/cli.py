"""Agency-side commands: ``heroes agency ...``.

    heroes agency ledger --state-dir DIR [--json]   privacy spent and left, per dataset
    heroes agency check --data-dir DIR [--report-dir DIR]
                                                    validate the export; quarantine report
                                                    (exit 0 usable, 2 not: the rule and fix)
    heroes agency init|serve|status --dir DIR       a deployed node (clients/deploy_cli.py)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from clients import deploy_cli, lifecycle_cli
from federation.data import load_agency
from federation.errors import HeroesError
from federation.ledger import Ledger, LedgerError, json_safe
from federation.policy import Policy, load_policy
from federation.quarantine import render_summary, write_quarantine_report


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agency = subparsers.add_parser("agency", help="commands for an agency's node")
    sub = agency.add_subparsers(dest="agency_command", required=True)
    deploy_cli.add_commands(sub)
    lifecycle_cli.add_commands(sub)
    ledger = sub.add_parser(
        "ledger", help="privacy spent and remaining per dataset, from the node's ledger")
    ledger.add_argument("--state-dir", type=Path, required=True,
                        help="the node's state folder (holds privacy-ledger.sqlite)")
    ledger.add_argument("--json", action="store_true", help="machine-readable output")
    check = sub.add_parser(
        "check", help="validate the data directory; report rows set aside (never their content)")
    check.add_argument("--data-dir", type=Path, required=True,
                       help="the export folder (manifest.json and the files it names)")
    check.add_argument("--report-dir", type=Path,
                       help="also write quarantine-report.json and .txt here")


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return "inf" if math.isinf(v) else f"{v:.3f}"


def render_ledger(report: list[dict[str, Any]], policy: Policy | None) -> str:
    if not report:
        return "no releases recorded: no privacy spent yet"
    lines = []
    for item in report:
        d = item["delta"]
        lines.append(f"dataset {item['dataset']} (unit of privacy: {item['unit']})")
        lines.append(f"  {'#':>4} {'recorded':<21}{'run':>12}{'round':>6}{'sigma':>8}"
                     f"{'q':>8}{'steps':>6}  {'epsilon rdp':>11}{'epsilon prv':>12}  status")
        for e in item["releases"]:
            c = e["cumulative_epsilon"]
            no_dp = "" if e["noise_multiplier"] > 0 else " (trained without DP)"
            lines.append(f"  {e['seq']:>4} {e['recorded_at']:<21}{e['run_id'][-12:]:>12}"
                         f"{e['round']:>6}{e['noise_multiplier']:>8.3f}{e['sample_rate']:>8.4f}"
                         f"{e['steps']:>6}  {_fmt(c['rdp']):>11}{_fmt(c['prv']):>12}  "
                         f"{e['status']}{no_dp}")
        eps = item["epsilon"]
        if item.get("epsilon_infinite"):
            lines.append(f"  total: epsilon inf (trained without DP) at delta={d:g}, over "
                         f"{len(item['releases'])} release(s) in every run, "
                         f"{item.get('non_private_releases', 0)} of them without DP: no later "
                         "DP training can give this dataset a finite guarantee")
        else:
            lines.append(f"  total: epsilon {_fmt(eps['rdp'])} (RDP) / {_fmt(eps['prv'])} "
                         f"(PRV) at delta={d:g}, over {len(item['releases'])} release(s) in "
                         "every run")
        if policy is not None:
            lines.append(f"  budget {policy.max_epsilon:g} ({policy.accountant}): "
                         f"remaining {_fmt(item['remaining'])}")
        if item["not_completed"]:
            lines.append(f"  {item['not_completed']} release(s) reserved but not completed "
                         "(the node stopped between recording and sending): counted anyway, "
                         "since the update may have left")
    return "\n".join(lines)


def check_data(args: argparse.Namespace) -> int:
    """``heroes agency check``: 0 when the export is usable, 2 (with the rule broken and its
    fix, never a value from the files) when it is not.

    The export is read exactly as the node reads it before every round (federation/data.py,
    within the limits of federation/limits.py), so an export that passes here trains.
    """
    try:
        data = load_agency(args.data_dir)
        report = None
        if args.report_dir is not None:
            report = write_quarantine_report(data, args.report_dir)
    except HeroesError as exc:
        print(f"heroes agency check: {exc}", file=sys.stderr)
        return 2
    print(render_summary(data))
    if report is not None:
        print(f"quarantine report: {report} (and {report.with_suffix('.txt').name})")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.agency_command in lifecycle_cli.COMMANDS:
        return lifecycle_cli.main(args)
    if args.agency_command in deploy_cli.HANDLERS:
        return deploy_cli.HANDLERS[args.agency_command](args)
    if args.agency_command == "check":
        return check_data(args)
    if args.agency_command == "ledger":
        try:
            policy: Policy | None = load_policy(args.state_dir)
        except LedgerError:
            policy = None
        try:
            with Ledger.open(args.state_dir, create=False) as ledger:
                report = ledger.report(policy)
        except LedgerError as exc:
            print(f"heroes agency ledger: {exc}")
            return 2
        if args.json:
            # Standard JSON has no Infinity: an infinite epsilon is null, with
            # "epsilon_infinite": true beside it (json_safe); allow_nan=False checks that.
            print(json.dumps(json_safe({"state_dir": str(args.state_dir),
                                        "policy": None if policy is None else vars(policy),
                                        "datasets": report}), indent=2,
                             default=lambda v: None, allow_nan=False))
        else:
            print(render_ledger(report, policy))
        return 0
    return 2
