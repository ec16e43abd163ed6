"""``heroes agency ...``: the commands an agency's IT team runs on its node.

    heroes agency init --dir DIR --name NAME --data-dir DATA --consortium HOST:PORT \\
        --ca-cert ca.crt --consortium-key signing.pub --max-epsilon 10 --delta 1e-5
        [--data TASK=DIR ...] [--task-dataset-id TASK=ID ...] [--allowed-task TASK ...]
    heroes agency serve --dir DIR [--insecure]
    heroes agency status --dir DIR [--json]          health, connection, budget left
    heroes agency ledger --dir DIR [--json]          privacy spent and left, per (task, dataset)
    heroes agency check --data-dir DATA [--report-dir DIR] [--json]
                                                     validate the export; quarantine report
    heroes agency approve TARGET --dir DIR [--yes]   a roster, a .fab, or a refused bundle's digest
    heroes agency approvals --dir DIR [--json]       what this agency approved; checks the log
    heroes agency score --model BUNDLE --input FILE --consortium-key PUB --purpose TEXT
                        [--threshold T] [--analyst NAME] [--out FILE] [--dir DIR]
                        [--calibrate-with DATA_DIR]
    heroes agency audit verify --dir DIR [--public-key PUB]   check the egress receipts
    heroes agency audit show --dir DIR [--json]                list them

The work is done in clients/ and federation/; this module parses and prints. A deployed node
runs these commands, so nothing here imports simulation/, Hydra or OmegaConf, and the
imports that take seconds (torch, Flower, numpy) happen inside the command that needs them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import exit
from cli._register import Subparsers, command, group

if TYPE_CHECKING:
    from federation.policy import Policy

STATE = "the node's state folder"


def register(subparsers: Subparsers) -> None:
    sub = group(subparsers, "agency", help="commands for an agency's node",
                dest="agency_command")
    _register_node(sub)
    _register_privacy(sub)
    _register_lifecycle(sub)


def _dir(parser: argparse.ArgumentParser, what: str = STATE) -> None:
    parser.add_argument("--dir", type=Path, required=True, help=what)


def _json(parser: argparse.ArgumentParser, what: str = "machine-readable output") -> None:
    parser.add_argument("--json", action="store_true", help=what)


# --- the node: init, serve, status, approve, approvals -----------------------------------


def _register_node(sub: Subparsers) -> None:
    p = command(sub, "init", _init, help="make this node's key and policy; install the "
                "consortium's CA certificate and signing key")
    _dir(p)
    p.add_argument("--kit", type=Path, default=None,
                   help="the startup kit from `heroes consortium provision` (its name, "
                   "address, CA certificate, signing key and roster; needs --fingerprint)")
    p.add_argument("--fingerprint", default=None,
                   help="the consortium signing key's fingerprint (sha256:...), as received "
                   "by another channel than the kit; the kit is refused without it")
    p.add_argument("--name", default=None, help="the agency's name as the consortium knows it "
                   "(from the kit when --kit)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the advert-risk export folder (manifest.json and the files it "
                   "names); or name each task's export with --data")
    p.add_argument("--data", action="append", default=[], metavar="TASK=DIR",
                   help="the export folder of one task, e.g. conversation-risk=/srv/chats "
                   "(repeatable: one per task; a round of a task reads only its own)")
    p.add_argument("--task-dataset-id", action="append", default=[], metavar="TASK=ID",
                   help="a stable ledger name for the dataset of a task named by --data")
    p.add_argument("--consortium", default=None,
                   help="the consortium's address, HOST:PORT (from the kit when --kit)")
    p.add_argument("--ca-cert", type=Path, default=None,
                   help="the consortium's ca.crt (received out of band; from the kit when --kit)")
    p.add_argument("--consortium-key", type=Path, default=None,
                   help="the consortium's signing.pub (received out of band; from the kit "
                   "when --kit)")
    p.add_argument("--max-epsilon", type=float, required=True,
                   help="lifetime privacy budget per dataset (unit: one record of the "
                   "task that trains it, e.g. one advert, one conversation; the tasks "
                   "trained on one dataset share its budget)")
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
                   help="task this node agrees to train (repeatable; default: the tasks "
                   "given a data folder, advert-risk for --data-dir)")
    p.add_argument("--dataset-id", default="",
                   help="a stable ledger name for the --data-dir (advert-risk) dataset")
    p.add_argument("--runtime-port", type=int, default=9094,
                   help="local Runtime API port (loopback; differs per node on one host)")
    p.add_argument("--health-port", type=int, default=9098, help="local gRPC health port")

    p = command(sub, "serve", _serve, help="validate the export, then run the node (SuperNode "
                "and the signature-checking SuperExec)")
    _dir(p)
    p.add_argument("--insecure", action="store_true",
                   help="plaintext, no node key: only for a lab on one machine (warns)")

    p = command(sub, "console", _console, help="the node's own web page on this machine "
                "(127.0.0.1 only): health, the ledger with its epsilon plot, receipts, "
                "approvals, consultations, and their JSON API")
    p.add_argument("--dir", type=Path, required=True, help=STATE)
    p.add_argument("--port", type=int, default=8765, help="local port (default 8765; 0: any)")

    p = command(sub, "service", _service, help="write a hardened systemd unit and a "
                "logrotate rule for this node "
                "(install them as root; README, 'Service files')")
    p.add_argument("--dir", type=Path, required=True, help="the node's state folder")
    p.add_argument("--user", default="heroes",
                   help="the dedicated user the service runs as (default heroes; it must own "
                   "--dir)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write heroes-agency.service and heroes-agency.logrotate "
                   "(default: DIR/service)")

    p = command(sub, "status", status, help="health, connection, last round and budget "
                "left; exits 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios)")
    _dir(p)
    _json(p)
    p.add_argument("--budget-warning", type=float, default=0.1, metavar="SHARE",
                   help="warn when a dataset has less than this share of its privacy budget "
                   "left (default 0.1; critical when none is left)")

    p = command(sub, "approve", _approve, help="approve a roster (the peers of secure "
                "aggregation) or an app bundle (the code the node runs), after showing what "
                "changed")
    p.add_argument("target", metavar="TARGET",
                   help="roster.json, an app bundle .fab, or the manifest digest of a bundle "
                   "the node refused (kept in DIR/approvals/pending)")
    _dir(p)
    p.add_argument("--yes", action="store_true",
                   help="approve without asking (after showing everything); for scripts")

    p = command(sub, "approvals", _approvals, help="list what this agency approved and check "
                "the signed log (exit 1 when it is broken)")
    _dir(p)
    _json(p)


def _init(args: argparse.Namespace) -> int:
    from clients import agency
    from federation.policy import Policy

    policy = Policy(max_epsilon=args.max_epsilon, delta=args.delta, accountant=args.accountant,
                    allow_non_private=args.allow_non_private, on_budget=args.on_budget,
                    secure_min_threshold=args.secure_min_threshold,
                    secure_min_agencies=args.secure_min_agencies,
                    require_secure_aggregation=args.require_secure_aggregation,
                    share_local_metrics=args.share_local_metrics)
    kit = None
    if args.kit is not None:
        from federation.kit import read_kit

        kit = read_kit(args.kit, signing_key_fingerprint=args.fingerprint)
        if args.name is not None and args.name != kit.agency:
            print(f"heroes agency init: the kit is for agency {kit.agency!r}, not "
                  f"{args.name!r}. Fix: drop --name, or ask the consortium for your own kit",
                  file=sys.stderr)
            return exit.USAGE
        args.name = kit.agency
        args.consortium = args.consortium or kit.consortium
    else:
        missing = [flag for flag, value in (("--name", args.name),
                                            ("--consortium", args.consortium),
                                            ("--ca-cert", args.ca_cert),
                                            ("--consortium-key", args.consortium_key))
                   if value is None]
        if missing:
            print(f"heroes agency init: {', '.join(missing)} needed. Fix: pass them (the "
                  "files received from the consortium), or --kit FILE --fingerprint FP",
                  file=sys.stderr)
            return exit.USAGE
    datasets = agency.task_exports(args.data, args.task_dataset_id)
    if args.data_dir is None and not datasets:
        print("heroes agency init: no data folder. Fix: --data-dir DIR (the advert-risk "
              "export) or --data TASK=DIR for each task", file=sys.stderr)
        return exit.USAGE
    named = (["advert-risk"] if args.data_dir is not None else []) + sorted(datasets)
    with tempfile.TemporaryDirectory(prefix="heroes-kit-") as tmp:
        if kit is not None:  # the kit's two files, for init to install as it would the others
            args.ca_cert, args.consortium_key = Path(tmp) / "ca.crt", Path(tmp) / "signing.pub"
            args.ca_cert.write_bytes(kit.files["ca.crt"])
            args.consortium_key.write_bytes(kit.files["signing.pub"])
        home = agency.init(args.dir, name=args.name, data_dir=args.data_dir,
                           consortium=args.consortium, ca_cert=args.ca_cert,
                           consortium_key=args.consortium_key, policy=policy,
                           allowed_tasks=args.allowed_task or named,
                           runtime_port=args.runtime_port, health_port=args.health_port,
                           dataset_id=args.dataset_id, datasets=datasets)
    if kit is not None:
        print(f"startup kit verified: issued {kit.issued_at} for {kit.agency}, signed by "
              f"{kit.fingerprints['signing_key']}; CA certificate "
              f"{kit.fingerprints['ca_certificate']}")
        if "roster.json" in kit.files:
            from federation.files import private_dir, write_atomic

            folder = private_dir(home.root / "kit")
            for name in ("roster.json", "roster.json.sig"):
                write_atomic(folder / name, kit.files[name])
            print(f"  the kit's roster is in {folder / 'roster.json'}: review and approve it "
                  f"with `heroes agency approve {folder / 'roster.json'} --dir {home.root}`")
    print(f"node {args.name} initialised in {home.root}\n"
          f"  send to the consortium: {home.node_pub} (public; the private node.key stays "
          "here)\n"
          f"  policy and budget: {home.policy_path}\n"
          f"  next: `heroes agency serve --dir {home.root}` once the consortium enrolled you")
    return exit.OK


def _serve(args: argparse.Namespace) -> int:
    from clients import agency

    return agency.serve(args.dir, insecure=args.insecure)


def _approve(args: argparse.Namespace) -> int:
    from clients.approve import approve_target

    return approve_target(args.dir, args.target, yes=args.yes, stdin=sys.stdin, out=sys.stdout)


def _approvals(args: argparse.Namespace) -> int:
    from clients.approve import list_approvals

    return list_approvals(args.dir, as_json=args.json, out=sys.stdout)


def _print_json(value: Any) -> None:
    """Strict JSON: an infinite epsilon (trained without DP) is null, with
    "epsilon_infinite": true beside it (json_safe); allow_nan=False checks that."""
    from federation.ledger import json_safe

    print(json.dumps(json_safe(value), indent=2, default=lambda v: None, allow_nan=False))


def _fmt(v: object) -> str:
    if not isinstance(v, float) or math.isnan(v):
        return "n/a"
    return "inf" if math.isinf(v) else f"{v:.3f}"


def _console(args: argparse.Namespace) -> int:
    from clients.console import serve

    return serve(args.dir, args.port)


def _service(args: argparse.Namespace) -> int:
    """``heroes agency service``: federation/units.py's files for this folder."""
    from federation.units import write_service_files

    written = write_service_files("agency", state_dir=args.dir, user=args.user,
                                  out=args.out or args.dir / "service")
    for path in written:
        print(f"wrote {path}")
    print(f"install as root: cp {written[0]} /etc/systemd/system/ && cp {written[1]} "
          f"/etc/logrotate.d/heroes-agency && systemctl daemon-reload && systemctl enable "
          f"--now {written[0].name}")
    return exit.OK


def status(args: argparse.Namespace) -> int:
    """``heroes agency status``: what clients.agency.status found, as text or JSON, and
    the monitoring verdict as the exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the
    Nagios plugin convention, federation/monitoring.py)."""
    from clients import agency
    from federation import monitoring
    from federation.errors import HeroesError

    share = getattr(args, "budget_warning", agency.BUDGET_WARNING_SHARE)
    if not 0 <= share < 1:
        print("HEROES-AGENCY UNKNOWN - --budget-warning must be a share in [0, 1), e.g. 0.1",
              file=sys.stderr)
        return monitoring.UNKNOWN
    try:
        s: dict[str, Any] = agency.status(args.dir)
    except HeroesError as exc:  # not a node folder, an unreadable policy: status unknown
        print(f"HEROES-AGENCY UNKNOWN - {exc}", file=sys.stderr)
        return monitoring.UNKNOWN
    findings = agency.assess(s, budget_warning=share)
    level = monitoring.worst(findings)
    if args.json:
        _print_json({**s, "monitoring": monitoring.report(findings)})
        return level
    print(monitoring.summary("HEROES-AGENCY", findings))
    print(f"agency {s['agency']} -> consortium {s['consortium']}")
    for warning in s["permissions"]:  # first: a key or ledger others can read matters most
        print(f"  WARNING: {warning}")
    print(f"  processes: {s['processes']}")
    print(f"  health: {s['health']}; connection: {s['connection']}")
    print(f"  runs only bundles signed by {s['consortium_key']} and approved here")
    print(f"  {s['approvals']}")
    budget = s["budget"]
    for task, export in s["tasks"].items():
        print(f"  task {task}: export {export['data_dir']}"
              + (f" (dataset {export['dataset_id']})" if export["dataset_id"] else ""))
    for task in s["allowed_tasks"]:
        if task not in s["tasks"]:
            print(f"  task {task}: allowed, but no data folder: its rounds are refused")
    for d in s["datasets"]:
        eps = d["epsilon"]
        last = d["last_round"]
        print(f"  task {d['task']}, dataset {d['dataset']}: epsilon {_fmt(eps.get('rdp'))} "
              f"(RDP) / {_fmt(eps.get('prv'))} (PRV) at delta={d['delta']:g} per "
              f"{d['unit']}, over every round of every run")
        if len(d["tasks_on_dataset"]) > 1:
            print(f"    the dataset is trained by {', '.join(d['tasks_on_dataset'])}: its "
                  "epsilon composes all of them (this task's rounds alone: "
                  f"{_fmt(d['stream_epsilon'].get('rdp'))} RDP)")
        if budget:
            print(f"    budget {d['budget']:g} ({budget['accountant']}) for this dataset, "
                  f"remaining {_fmt(d['remaining'])}")
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
    return level


# --- privacy spent, and the export: ledger, check ----------------------------------------


def _register_privacy(sub: Subparsers) -> None:
    p = command(sub, "ledger", _ledger,
                help="privacy spent and remaining per (task, dataset) stream, from the "
                "node's ledger (budgets are per dataset)")
    _dir(p, "the node's state folder (holds privacy-ledger.sqlite)")
    _json(p)
    p.add_argument("--recompute", action="store_true",
                   help="compute every epsilon afresh instead of reading those already "
                   "computed for the same releases (epsilon-cache.json in the state folder)")
    p = command(sub, "check", _check, help="validate the data directory; report rows set "
                "aside (never their content)")
    p.add_argument("--data-dir", type=Path, required=True,
                   help="the export folder (manifest.json and the files it names)")
    p.add_argument("--report-dir", type=Path,
                   help="also write quarantine-report.json and .txt here")
    _json(p, "the quarantine report as JSON (as in quarantine-report.json)")


def render_ledger(report: list[dict[str, Any]], policy: Policy | None) -> str:
    if not report:
        return "no releases recorded: no privacy spent yet"
    lines = []
    for item in report:
        d = item["delta"]
        lines.append(f"task {item['task']}, dataset {item['dataset']} (unit of privacy: "
                     f"{item['unit']})")
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
        if len(item["tasks_on_dataset"]) > 1:
            lines.append(f"  the dataset is trained by {', '.join(item['tasks_on_dataset'])}: "
                         "the total composes every task's releases on it (this task's "
                         f"alone: {_fmt(item['stream_epsilon']['rdp'])} RDP)")
        if policy is not None:
            own = " (this dataset's own)" if item["own_budget"] else ""
            lines.append(f"  budget {item['budget']:g}{own} ({policy.accountant}): "
                         f"remaining {_fmt(item['remaining'])}")
        if item["not_completed"]:
            lines.append(f"  {item['not_completed']} release(s) reserved but not completed "
                         "(the node stopped between recording and sending): counted anyway, "
                         "since the update may have left")
    return "\n".join(lines)


def _ledger(args: argparse.Namespace) -> int:
    from federation.ledger import Ledger, LedgerError
    from federation.policy import load_policy

    try:
        policy: Policy | None = load_policy(args.dir)
    except LedgerError:
        policy = None
    try:
        with Ledger.open(args.dir, create=False) as ledger:
            report = ledger.report(policy, cached=not args.recompute)
    except LedgerError as exc:
        print(f"heroes agency ledger: {exc}")
        return exit.USAGE
    if args.json:
        _print_json({"state_dir": str(args.dir),
                     "policy": None if policy is None else vars(policy), "datasets": report})
    else:
        print(render_ledger(report, policy))
    return exit.OK


def _check(args: argparse.Namespace) -> int:
    """``heroes agency check``: 0 when the export is usable, 2 (with the rule broken and its
    fix, never a value from the files) when it is not.

    The export is read exactly as the node reads it before every round (federation/data.py,
    within the limits of federation/limits.py), so an export that passes here trains. The
    manifest's ``schema_version`` says which schema it is (adverts, or conversations for
    "conversation-export/1").
    """
    from federation.data import load_export
    from federation.errors import HeroesError
    from federation.quarantine import quarantine_report, render_summary, write_quarantine_report

    try:
        data = load_export(args.data_dir)
        report = None
        if args.report_dir is not None:
            report = write_quarantine_report(data, args.report_dir)
    except HeroesError as exc:
        print(f"heroes agency check: {exc}", file=sys.stderr)
        return exit.USAGE
    if args.json:
        print(json.dumps({**quarantine_report(data), "report": None if report is None
                          else str(report)}, indent=2))
        return exit.OK
    print(render_summary(data))
    if report is not None:
        print(f"quarantine report: {report} (and {report.with_suffix('.txt').name})")
    return exit.OK


# --- a released model, and what left the node: score, audit ------------------------------


def _register_lifecycle(sub: Subparsers) -> None:
    p = command(sub, "score", _score,
                help="score adverts or conversations with a signed model release; every use "
                     "is logged")
    p.add_argument("--model", type=Path, required=True,
                   help="the released bundle folder (heroes consortium release)")
    p.add_argument("--input", type=Path, required=True,
                   help="records to score (.csv, .jsonl or .parquet, in the release's task "
                        "schema): adverts with advert_id and text, or conversations")
    p.add_argument("--consortium-key", type=Path, required=True,
                   help="the consortium's public signing key (PEM or OpenSSH)")
    p.add_argument("--purpose", required=True,
                   help="why these records are being scored (recorded in the log)")
    p.add_argument("--threshold", type=float, default=None,
                   help="flag records whose probability is at or above this (default: the "
                        "operating point the release card records, chosen by the consortium "
                        "from secure sums of the pooled evaluation; for a card without one, "
                        "the task's default, with a notice)")
    p.add_argument("--analyst", default=None,
                   help="who is consulting the model (default: the OS user)")
    p.add_argument("--out", type=Path, default=None,
                   help="results file, .jsonl or .csv (default: DIR/scores/...)")
    p.add_argument("--calibrate-with", type=Path, default=None, metavar="DATA_DIR",
                   help="fit this agency's calibration (Platt scaling) for this model on "
                   "the labelled training export in DATA_DIR (manifest.json); kept in the "
                   "state folder and used by later runs with the same model")
    _dir(p, "the node's state folder, which holds the consultation log (as for every "
         "other agency command: no default, so no log lands in the working folder)")
    audit = group(sub, "audit", help="the node's signed, hash-chained egress receipts",
                  dest="audit_command")
    verify = command(audit, "verify", _audit_verify, help="check every receipt's signature "
                     "and the chain; name where it breaks (exit 1 when it is broken)")
    show = command(audit, "show", _audit_show, help="list every message this node sent")
    for p in (verify, show):
        _dir(p, "the node's state folder (holds receipts.jsonl)")
    verify.add_argument("--public-key", type=Path, default=None,
                        help="the node's public key to check against (default: the state "
                        "folder's node.key.pub); an auditor should pass their own copy")
    _json(show, "the raw entries, one JSON object per line")


def _score(args: argparse.Namespace) -> int:
    from clients.score import render_report, score_file

    report = score_file(model=args.model, input_path=args.input,
                        consortium_key=args.consortium_key, purpose=args.purpose,
                        state_dir=args.dir, analyst=args.analyst, threshold=args.threshold,
                        out=args.out, calibrate_with=args.calibrate_with)
    print(render_report(report))
    return exit.OK


def _audit_show(args: argparse.Namespace) -> int:
    from clients import receipts

    if args.json:
        for _, _, line in receipts.entries(args.dir):
            print(line)
    else:
        print(receipts.render_entries(args.dir))
    return exit.OK


def _audit_verify(args: argparse.Namespace) -> int:
    from clients import receipts

    key = receipts.trusted_public_key(args.dir, args.public_key)
    count, problems = receipts.verify_log(args.dir, key)
    if not problems:
        print(f"receipts OK: {count} entries in {args.dir / receipts.RECEIPTS}, every "
              "signature valid, chain and signed head intact")
        return exit.OK
    print(f"receipts BROKEN: {len(problems)} problem(s) in {count} entries of "
          f"{args.dir / receipts.RECEIPTS}")
    for problem in problems:
        print(f"  {problem}")
    first = problems[0]
    print(f"the chain first breaks at {'entry ' + str(first.entry) if first.entry else 'the log'}"
          f" ({first.check} check)")
    return exit.PROBLEM
