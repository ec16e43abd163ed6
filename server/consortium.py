"""The consortium's commands: parsers here, the work in server/deploy.py and server/release.py.

    heroes consortium init --dir DIR --public-address HOST:PORT
    heroes consortium enroll NAME PUBLIC_KEY --dir DIR
    heroes consortium revoke NAME --dir DIR
    heroes consortium serve --dir DIR
    heroes consortium roster --dir DIR [--out FILE]
    heroes consortium bundle --dir DIR [--app DIR] --out FILE.fab
    heroes consortium train --dir DIR [--run-config 'KEY=VALUE ...'] [--out DIR] [--resume RUN]
    heroes consortium release RUN_DIR --signing-key DIR/signing.key
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, MutableMapping
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 handlers: MutableMapping[str, Handler]) -> None:
    """Register ``heroes consortium`` subcommands and their handlers."""
    from server import heads_cli

    _add_deployment(sub, handlers)
    _add_release(sub, handlers)
    heads_cli.add_commands(sub, handlers)


def _dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True,
                        help="the consortium folder (keys, registry, database, runs)")


def _add_deployment(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                    handlers: MutableMapping[str, Handler]) -> None:
    p = sub.add_parser("init", help="make the consortium CA, TLS certificate and signing key")
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
    handlers["init"] = _init

    p = sub.add_parser("enroll", help="register an agency's node public key")
    p.add_argument("name", help="the agency's name, e.g. eu-police-north")
    p.add_argument("public_key", type=Path, help="the node.key.pub the agency sent")
    _dir(p)
    handlers["enroll"] = _enroll

    p = sub.add_parser("revoke", help="unregister an agency's node key")
    p.add_argument("name")
    _dir(p)
    handlers["revoke"] = _revoke

    p = sub.add_parser("roster", help="sign the list of enrolled agencies and their node keys "
                       "for the agencies to approve")
    _dir(p)
    p.add_argument("--out", type=Path, default=None,
                   help="also write the roster (and its .sig) here (default: DIR/roster.json "
                   "only)")
    handlers["roster"] = _roster

    p = sub.add_parser("bundle", help="build and sign the app bundle `train` would submit, for "
                       "the agencies to review and approve before a run")
    _dir(p)
    p.add_argument("--app", type=Path, default=None,
                   help="the app to bundle (default: the installed heroes-fl source tree)")
    p.add_argument("--out", type=Path, required=True, help="the .fab file to write")
    handlers["bundle"] = _bundle

    p = sub.add_parser("serve", help="run the aggregator: SuperLink (private) + Fleet gateway")
    _dir(p)
    handlers["serve"] = _serve

    p = sub.add_parser("train", help="sign and submit a federated run, follow it, fetch it")
    _dir(p)
    p.add_argument("--run-config", action="append", default=[],
                   help="run settings, e.g. 'strategy.num_rounds=3 privacy.target_epsilon=3.0'")
    p.add_argument("--app", type=Path, default=None,
                   help="the app to bundle (default: the installed heroes-fl source tree)")
    p.add_argument("--out", type=Path, default=None, help="default: DIR/runs/<UTC time>")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN",
                   help="continue an interrupted run from its last checkpoint (its folder)")
    handlers["train"] = _train


def _init(args: argparse.Namespace) -> int:
    from server import deploy

    if args.renew_server_cert:
        deploy.renew_server_cert(args.dir, extra_hosts=args.extra_host)
        print(f"re-issued {deploy.ConsortiumHome(args.dir).server_cert}; restart "
              "`heroes consortium serve` to use it")
        return 0
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
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from server import deploy

    entry = deploy.enroll(args.dir, args.name, args.public_key)
    print(f"enrolled {args.name}: node {entry['node_id']}, key {entry['fingerprint']}\n"
          f"  next: `heroes consortium roster --dir {args.dir}` and send the new roster to "
          "every agency (their nodes aggregate only with agencies on a roster they approved)")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from server import deploy

    entry = deploy.revoke(args.dir, args.name)
    print(f"revoked {args.name} (node {entry['node_id']}) at {entry['revoked_at']}; its node "
          "is refused from its next request on\n"
          f"  next: `heroes consortium roster --dir {args.dir}` and send the new roster to "
          "every agency, so that their nodes stop accepting its key as a peer")
    return 0


def _roster(args: argparse.Namespace) -> int:
    from server import deploy

    roster, changes, written = deploy.make_roster(args.dir, args.out)
    print(f"roster version {roster.version} (digest {roster.digest[:16]}), signed by "
          f"{roster.consortium}, {len(roster.members)} member(s):")
    width = max(len(m.agency) for m in roster.members)
    for m in roster.members:
        print(f"  {m.agency:<{width}}  {m.fingerprint}")
    changed = changes.lines()
    print("changes since the previous roster:" if changed else
          "no change in members or keys since the previous roster")
    for line in changed:
        print(f"  {line}")
    print(f"written: {', '.join(str(p) for p in written)}\n"
          f"next: send {written[-2]} and {written[-1]} to every agency; each checks its own "
          "fingerprint (and the others', out of band) and approves it with "
          "`heroes agency approve roster.json --dir STATE_DIR`. Under secure aggregation a node "
          "works only with agencies on the roster it approved")
    return 0


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
    return 0


def _serve(args: argparse.Namespace) -> int:
    from server import deploy

    return deploy.serve(args.dir)


def _train(args: argparse.Namespace) -> int:
    from server import deploy

    run_dir = deploy.train(args.dir, app=args.app or deploy.APP_ROOT,
                           overrides=args.run_config, out=args.out, timeout=args.timeout,
                           resume=args.resume)
    print(f"run finished: model and metrics in {run_dir}")
    return 0


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
