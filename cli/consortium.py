"""``heroes consortium ...``: the commands of the consortium operating the aggregator.

    heroes consortium init --dir DIR --public-address HOST:PORT   CA, TLS and signing keys
    heroes consortium enroll NAME PUBLIC_KEY --dir DIR            register an agency node key
    heroes consortium revoke NAME --dir DIR                       unregister it
    heroes consortium serve --dir DIR                             SuperLink + Fleet-only front
    heroes consortium roster --dir DIR [--out FILE] [--json]      sign the member roster
    heroes consortium bundle --dir DIR [--app DIR] --out FILE.fab the app bundle, for review
    heroes consortium train --dir DIR [--task NAME] [--run-config 'KEY=VALUE ...'] [--out DIR]
                            [--resume RUN]
    heroes consortium release RUN_DIR --signing-key DIR/signing.key
    heroes consortium ledger-heads --dir DIR [--json] [--forget NAME]  agencies' last heads

The work is done in server/deploy.py, server/release.py and server/ledger_heads.py; this
module parses and prints. Nothing here imports simulation/, Hydra or OmegaConf, and Flower
and torch are imported only by the commands that run or bundle the app.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli import exit
from cli._register import Subparsers, command, group


def register(subparsers: Subparsers) -> None:
    sub = group(subparsers, "consortium", help="commands for the consortium's aggregator",
                dest="consortium_command")
    _register_deployment(sub)
    _register_release(sub)
    _register_heads(sub)


def _dir(parser: argparse.ArgumentParser,
         what: str = "the consortium folder (keys, registry, database, runs)") -> None:
    parser.add_argument("--dir", type=Path, required=True, help=what)


def _register_deployment(sub: Subparsers) -> None:
    p = command(sub, "init", _init,
                help="make the consortium CA, TLS certificate and signing key")
    _dir(p)
    p.add_argument("--public-address", required=True,
                   help="HOST:PORT agencies connect to (the Fleet-only gateway); HOST goes "
                   "into the TLS certificate")
    p.add_argument("--private-port", type=int, default=9093,
                   help="the SuperLink's own port on 127.0.0.1 (Control, Runtime, Fleet)")
    p.add_argument("--health-port", type=int, default=9097,
                   help="gRPC health service on 127.0.0.1")
    p.add_argument("--extra-host", action="append", default=[],
                   help="another DNS name or IP the certificate must cover (repeatable)")
    p.add_argument("--renew-server-cert", action="store_true",
                   help="in an existing folder: re-issue the SuperLink certificate only")

    p = command(sub, "provision", _provision, help="write an agency's signed startup kit "
                "(CA certificate, signing key, address, roster, node template, checksums and "
                "fingerprints; no private key)")
    p.add_argument("agency", metavar="AGENCY", help="the agency's name, as it will enroll")
    _dir(p)
    p.add_argument("--out", type=Path, default=None,
                   help="the kit file (default: DIR/kits/AGENCY.heroes-kit)")

    p = command(sub, "enroll", _enroll, help="register an agency's node public key")
    p.add_argument("name", help="the agency's name, e.g. eu-police-north")
    p.add_argument("public_key", type=Path, help="the node.key.pub the agency sent")
    _dir(p)

    p = command(sub, "revoke", _revoke, help="unregister an agency's node key")
    p.add_argument("name")
    _dir(p)

    p = command(sub, "roster", _roster, help="sign the list of enrolled agencies and their "
                "node keys for the agencies to approve")
    _dir(p)
    p.add_argument("--out", type=Path, default=None,
                   help="also write the roster (and its .sig) here (default: DIR/roster.json "
                   "only)")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output: version, digest, members, changes, files")

    p = command(sub, "bundle", _bundle, help="build and sign the app bundle `train` would "
                "submit, for the agencies to review and approve before a run")
    _dir(p)
    p.add_argument("--app", type=Path, default=None,
                   help="the app to bundle (default: the installed heroes-fl source tree)")
    p.add_argument("--out", type=Path, required=True, help="the .fab file to write")

    p = command(sub, "serve", _serve,
                help="run the aggregator: SuperLink (private) + Fleet gateway")
    _dir(p)

    p = command(sub, "service", _service, help="write a hardened systemd unit and a "
                "logrotate rule for this aggregator "
                "(install them as root; README, 'Service files')")
    p.add_argument("--dir", type=Path, required=True, help="the consortium folder")
    p.add_argument("--user", default="heroes",
                   help="the dedicated user the service runs as (default heroes; it must own "
                   "--dir)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write heroes-consortium.service and heroes-consortium.logrotate "
                   "(default: DIR/service)")

    p = command(sub, "console", _console, help="the aggregator in a browser: agencies, runs "
                "(live progress), refusals, budgets as reported, releases; JSON API and a "
                "Prometheus /metrics endpoint (127.0.0.1 by default)")
    _dir(p)
    p.add_argument("--port", type=int, default=8766, help="port (default 8766; 0: any)")
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything else needs "
                   "--token-file, and belongs behind the operator's TLS reverse proxy)")
    p.add_argument("--public-host", action="append", default=[], metavar="HOST[:PORT]",
                   help="a Host header the reverse proxy sends (repeatable)")
    p.add_argument("--token-file", type=Path, default=None,
                   help="a file holding the login token (16+ characters): every page and "
                   "API call then needs it (login form or Authorization: Bearer)")

    p = command(sub, "status", _status,
                help="the aggregator's processes, health, certificate, agencies by name "
                "(enrolled, online, last seen, revoked), roster and last run; exits 0 OK, "
                "1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios)")
    _dir(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--cert-warning-days", type=int, default=30, metavar="DAYS",
                   help="warn when the TLS certificate has fewer days left (default 30)")

    p = command(sub, "train", _train,
                help="sign and submit a federated run, follow it, fetch it")
    _dir(p)
    p.add_argument("--run-config", action="append", default=[],
                   help="run settings, e.g. 'strategy.num_rounds=3 privacy.target_epsilon=3.0'")
    p.add_argument("--app", type=Path, default=None,
                   help="the app to bundle (default: the installed heroes-fl source tree)")
    p.add_argument("--out", type=Path, default=None, help="default: DIR/runs/<UTC time>")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN",
                   help="continue an interrupted run from its last checkpoint (its folder)")
    p.add_argument("--verbose", action="store_true",
                   help="show Flower's own log on the console too (about 50 lines a round); "
                   "by default it goes to RUN/run.log only, and the console shows one line "
                   "per round, the run's start and end, warnings and errors")
    p.add_argument("--task", default="advert-risk", metavar="NAME",
                   help="the shared classifier to train (a registered task, e.g. advert-risk "
                   "or conversation-risk; default advert-risk). Every agency trains it on "
                   "its own export of that task, if its policy allows the task")


def _service(args: argparse.Namespace) -> int:
    """``heroes consortium service``: federation/units.py's files for this folder."""
    from federation.units import write_service_files

    written = write_service_files("consortium", state_dir=args.dir, user=args.user,
                                  out=args.out or args.dir / "service")
    for path in written:
        print(f"wrote {path}")
    print(f"install as root: cp {written[0]} /etc/systemd/system/ && cp {written[1]} "
          f"/etc/logrotate.d/heroes-consortium && systemctl daemon-reload && systemctl enable "
          f"--now {written[0].name}")
    return exit.OK


def _console(args: argparse.Namespace) -> int:
    from server.console import serve

    return serve(args.dir, port=args.port, bind=args.bind,
                 public_hosts=tuple(args.public_host), token_file=args.token_file)


def _status(args: argparse.Namespace) -> int:
    """``heroes consortium status``: server/consortium_status.py's findings; the exit code
    is the worst of them (federation/monitoring.py)."""
    import sys

    from federation import monitoring
    from federation.errors import HeroesError
    from server.consortium_status import assess, status

    try:
        s = status(args.dir)
    except HeroesError as exc:  # not a consortium folder, an unreadable file
        print(f"HEROES-CONSORTIUM UNKNOWN - {exc}", file=sys.stderr)
        return monitoring.UNKNOWN
    findings = assess(s, cert_warning_days=args.cert_warning_days)
    level = monitoring.worst(findings)
    if args.json:
        print(json.dumps({**s, "monitoring": monitoring.report(findings)}, indent=2,
                         default=str))
        return level
    print(monitoring.summary("HEROES-CONSORTIUM", findings))
    print(f"consortium {s['consortium']}: agencies connect to {s['public_address']}")
    for f in findings:
        print(f"  {monitoring.LEVEL_NAMES[f.level]:8s} {f.check}: {f.text}")
    return level


def _init(args: argparse.Namespace) -> int:
    from server import deploy

    if args.renew_server_cert:
        deploy.renew_server_cert(args.dir, extra_hosts=args.extra_host)
        print(f"re-issued {deploy.ConsortiumHome(args.dir).server_cert}; restart "
              "`heroes consortium serve` to use it")
        return exit.OK
    home = deploy.init(args.dir, public_address=args.public_address,
                       private_port=args.private_port, health_port=args.health_port,
                       extra_hosts=args.extra_host)
    print(f"consortium initialised in {home.root}\n"
          f"  send to every agency: {home.ca_cert} and {home.signing_pub}, and the address "
          f"{args.public_address}\n"
          f"  keep private: {home.ca_key} (offline if you can), {home.signing_key}, "
          f"{home.server_key}\n"
          f"  next: `heroes consortium serve --dir {home.root}`, then enroll each agency's "
          "node.key.pub")
    return exit.OK


def _provision(args: argparse.Namespace) -> int:
    from server import deploy

    path, fingerprints = deploy.provision(args.dir, args.agency, args.out)
    print(f"wrote {path}: send it to {args.agency} by any channel; it holds no secret.\n"
          f"  Read these to the agency by ANOTHER channel (phone, letter): its node trusts the "
          f"kit only with the signing key's fingerprint\n"
          f"    signing key     {fingerprints['signing_key']}\n"
          f"    CA certificate  {fingerprints['ca_certificate']}\n"
          f"  the agency runs: heroes agency init --kit {path.name} --fingerprint "
          f"{fingerprints['signing_key']} --dir STATE --data-dir EXPORT --max-epsilon E "
          "--delta D")
    return exit.OK


def _enroll(args: argparse.Namespace) -> int:
    from server import deploy

    entry = deploy.enroll(args.dir, args.name, args.public_key)
    print(f"enrolled {args.name}: node {entry['node_id']}, key {entry['fingerprint']}\n"
          f"  next: `heroes consortium roster --dir {args.dir}` and send the new roster to "
          "every agency (their nodes aggregate only with agencies on a roster they approved)")
    return exit.OK


def _revoke(args: argparse.Namespace) -> int:
    from server import deploy

    entry = deploy.revoke(args.dir, args.name)
    print(f"revoked {args.name} (node {entry['node_id']}) at {entry['revoked_at']}; its node "
          "is refused from its next request on\n"
          f"  next: `heroes consortium roster --dir {args.dir}` and send the new roster to "
          "every agency, so that their nodes stop accepting its key as a peer")
    return exit.OK


def _roster(args: argparse.Namespace) -> int:
    from server import deploy

    roster, changes, written = deploy.make_roster(args.dir, args.out)
    changed = changes.lines()
    if args.json:
        print(json.dumps({"version": roster.version, "digest": roster.digest,
                          "consortium": roster.consortium,
                          "members": [{"agency": m.agency, "fingerprint": m.fingerprint}
                                      for m in roster.members],
                          "changes": changed, "written": [str(p) for p in written]},
                         indent=2))
        return exit.OK
    print(f"roster version {roster.version} (digest {roster.digest[:16]}), signed by "
          f"{roster.consortium}, {len(roster.members)} member(s):")
    width = max(len(m.agency) for m in roster.members)
    for m in roster.members:
        print(f"  {m.agency:<{width}}  {m.fingerprint}")
    print("changes since the previous roster:" if changed else
          "no change in members or keys since the previous roster")
    for line in changed:
        print(f"  {line}")
    print(f"written: {', '.join(str(p) for p in written)}\n"
          f"next: send {written[-2]} and {written[-1]} to every agency; each checks its own "
          "fingerprint (and the others', out of band) and approves it with "
          "`heroes agency approve roster.json --dir STATE_DIR`. Under secure aggregation a node "
          "works only with agencies on the roster it approved")
    return exit.OK


def _bundle(args: argparse.Namespace) -> int:
    from federation.files import write_atomic
    from server import deploy

    fab, signature, digest = deploy.build_bundle(args.dir, args.app or deploy.APP_ROOT)
    write_atomic(args.out, fab)
    print(f"app bundle {args.out}: manifest digest {digest}\n"
          f"  signature (app.signature): {signature}\n"
          f"next: send {args.out} to every agency, with the digest to check out of band; each "
          "reviews it and approves it with `heroes agency approve FILE.fab --dir STATE_DIR`. "
          "A node refuses a signed bundle its agency has not approved")
    return exit.OK


def _serve(args: argparse.Namespace) -> int:
    from server import deploy

    return deploy.serve(args.dir)


def _train(args: argparse.Namespace) -> int:
    from server import deploy

    run_dir = deploy.train(args.dir, app=args.app or deploy.APP_ROOT,
                           overrides=args.run_config, out=args.out, timeout=args.timeout,
                           resume=args.resume, task=args.task, verbose=args.verbose)
    print(f"run finished: model and metrics in {run_dir}")
    return exit.OK


def _register_release(sub: Subparsers) -> None:
    p = command(sub, "release", _release,
                help="turn a finished run into a signed model bundle with a model card")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="a finished run: a simulation outputs/<date>/<time> folder or the "
                   "aggregator's output folder (model.pt and metrics.json)")
    p.add_argument("--signing-key", type=Path, required=True,
                   help="the consortium's Ed25519 private key (PEM)")
    p.add_argument("--out", type=Path, default=None,
                   help="the bundle folder to create (default: RUN_DIR/release)")
    p.add_argument("--app-bundle", type=Path, default=None,
                   help="the signed Flower app bundle (.fab) the run used; its sha256 "
                   "goes on the card (default: the app.fab `consortium train` kept in "
                   "RUN_DIR, checked against the digest it recorded; unknown for a run "
                   "without one, such as a simulation)")


def _release(args: argparse.Namespace) -> int:
    from server.release import release_run

    bundle = release_run(args.run_dir, signing_key=args.signing_key, out=args.out,
                         app_bundle=args.app_bundle)
    print(f"released {bundle} (model card: {bundle / 'model_card.md'}; "
          f"signature: {bundle / 'model_card.json.sig'})")
    return exit.OK


# --- ledger-heads ------------------------------------------------------------------------
# An operator forgets an agency's head only after the agency's data-protection officer has
# explained why its ledger no longer extends the one the consortium saw (a restored backup,
# a new node): the next head that agency sends is then accepted as a first contact.


def _register_heads(sub: Subparsers) -> None:
    p = command(sub, "ledger-heads", ledger_heads, help="the last privacy-ledger head "
                "accepted from each agency; --forget accepts a new ledger for one")
    _dir(p, "the consortium folder (holds ledger-heads.json)")
    p.add_argument("--forget", metavar="NAME", default=None,
                   help="drop NAME's last head, so that its next one is accepted as a first "
                   "contact (after its data-protection officer explained the change)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def render_heads(entries: dict[str, dict[str, object]], path: Path) -> str:
    """One line per agency: seq, hash and key (shortened), the run and when."""
    if not entries:
        return f"no ledger heads recorded in {path} yet: every agency's next is a first contact"
    width = max(len(name) for name in entries)
    lines = [f"{'agency':<{width}}  {'seq':>6}  {'hash':<16}  {'node key':<23}  "
             f"{'run':<20}  accepted"]
    for name in sorted(entries):
        e = entries[name]
        lines.append(f"{name:<{width}}  {e['seq']!s:>6}  {str(e['hash'])[:16]:<16}  "
                     f"{str(e['key_fingerprint'])[:23]:<23}  {str(e['run'])[-20:]:<20}  "
                     f"{e['accepted_at']}")
    return "\n".join(lines)


def ledger_heads(args: argparse.Namespace) -> int:
    """``heroes consortium ledger-heads``: show DIR/ledger-heads.json, or forget one head."""
    from server.ledger_heads import HEADS_FILE, HeadBook

    path = args.dir / HEADS_FILE
    book = HeadBook(path)
    if args.forget is not None:
        if not book.forget(args.forget):
            print(f"heroes consortium ledger-heads: {path} holds no head for "
                  f"{args.forget!r}; nothing forgotten. Fix: check the name "
                  f"(known: {', '.join(sorted(book.entries())) or 'none'})")
            return exit.USAGE
        book.save()
        print(f"forgot the ledger head of {args.forget}: its next privacy-ledger head is "
              "accepted as a first contact")
        return exit.OK
    if args.json:
        print(json.dumps({"path": str(path), "agencies": book.entries()}, indent=2,
                         sort_keys=True))
    else:
        print(render_heads(book.entries(), path))
    return exit.OK
