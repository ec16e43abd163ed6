"""The consortium's side of a real deployment: its folder, its keys, its processes.

    CONSORTIUM_DIR/
      consortium.toml      public (agency-facing) address, private port, health port
      tls/ca.crt           the consortium CA: sent to every agency
      tls/ca.key           keep offline if you can; only needed to (re-)issue the next cert
      tls/superlink.crt    the SuperLink's certificate (public host, localhost, 127.0.0.1)
      tls/superlink.key
      signing.key          Ed25519: signs app bundles and model releases
      signing.pub          sent to every agency, which runs only what this key signed
      registry.json        who is who: agency name, public key, fingerprint, node id, dates
      roster.json (.sig)   the signed list of members and node keys agencies approve
                           (`heroes consortium roster`, federation/roster.py)
      flwr-home/           Flower's own configuration for the private connection
      state.db             the SuperLink's database (runs, logs, node registrations)
      gateway/             nginx.conf (written at every `serve`) and nginx.pid
      logs/                superlink.log, gateway.log (requests), gateway-error.log
      runs/<time>/         what each `heroes consortium train` produced (app.fab: the
                           bundle it submitted)

Everything in it is its owner's alone: folders 0700 and files 0600 from birth (explicit
modes, and umask 077 for what the SuperLink, its ServerApp and nginx create: state.db,
ledger-heads.json, run outputs, logs). ``serve`` names anything looser it finds, with the
chmod that fixes it.

Processes (``heroes consortium serve``): the SuperLink listens on 127.0.0.1 only, with TLS,
node authentication and the database; the Fleet gateway (nginx, configured and supervised
by server/fleet_gateway.py) listens on the public address and passes SuperNode traffic
only. ``enroll``, ``revoke`` and ``train`` talk to the private address, so they run on the
aggregator's own machine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import ConfigError, DeploymentError
from federation.files import open_private, private_dir, write_atomic
from federation.pki import (
    check_certificate,
    load_node_public_key,
    make_ca,
    make_server_cert,
    parse_address,
)
from federation.protocol import SUMMARY_FILE, RunSummary
from federation.roster import (
    NAME_HINT,
    NAME_RULE,
    ROSTER_FILE,
    Member,
    Roster,
    RosterDiff,
    diff,
    parse_node_key,
    read_roster,
    write_roster,
)
from federation.signing import (
    PrivateKey,
    generate_signing_key,
    key_fingerprint,
    load_private_key,
    load_public_key,
    signature_path_for,
)
from server.fleet_gateway import GatewayLimits
from server.ledger_heads import HEADS_FILE

log = logging.getLogger("heroes.consortium")

CONNECTION = "consortium"
BIN = Path(sys.executable).parent
APP_ROOT = Path(__file__).resolve().parents[1]
#: What the consortium's processes may create: owner only (folders 0700, files 0600).
UMASK = 0o077


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """Files and folders made meanwhile, by us or a library, are their owner's alone; the
    previous umask comes back afterwards (the umask is per process)."""
    previous = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(previous)


# --- consortium.toml: every key known, every type checked ---------------------------------

#: key: (type, required); ports are checked for range too
CONSORTIUM_KEYS: dict[str, tuple[type, bool]] = {
    "public_address": (str, True), "private_port": (int, True), "health_port": (int, True),
    "bind_host": (str, False), "created": (str, False)}
#: key: (type, lowest, highest); `nginx` names another nginx binary
GATEWAY_KEYS: dict[str, tuple[type, int, int]] = {
    "max_body_mib": (int, 1, 4096), "max_connections": (int, 1, 16384),
    "max_connections_per_source": (int, 1, 16384), "nginx": (str, 0, 0)}
TABLES = ("consortium", "gateway")


@dataclass(frozen=True)
class ConsortiumSettings:
    public_host: str
    public_port: int
    private_port: int
    health_port: int
    bind_host: str
    limits: GatewayLimits
    nginx: str | None


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            dict: "a table", list: "an array"}.get(type(value), type(value).__name__)


def _typed(table: str, key: str, value: object, want: type, problems: list[str]) -> bool:
    # bool is an int in Python, not in TOML: `private_port = true` is refused
    if type(value) is not want:
        problems.append(f"[{table}] {key} is {_kind(value)}; it must be "
                        f"{_kind(want())}. Fix: write it as "
                        + ("a whole number without quotes, e.g. 9093" if want is int
                           else 'a quoted string, e.g. "fl.example:9092"'))
        return False
    return True


def parse_settings(data: dict[str, Any], *, source: str) -> ConsortiumSettings:
    """The settings in a parsed consortium.toml, or one ConfigError listing every problem."""
    problems: list[str] = []
    for table in data:
        if table not in TABLES:
            problems.append(f"unknown table [{table}]; allowed: "
                            f"{', '.join(f'[{t}]' for t in TABLES)}. Fix: remove it, or "
                            "correct its name")
    cons = data.get("consortium")
    gate = data.get("gateway", {})
    if not isinstance(cons, dict):
        raise ConfigError([*problems, "no [consortium] table. Fix: this file is written by "
                          "`heroes consortium init`; restore it from your backup"],
                          source=source)
    if not isinstance(gate, dict):
        problems.append("gateway must be a table ([gateway]). Fix: write it as a section")
        gate = {}
    for table, given, known in (("consortium", cons, CONSORTIUM_KEYS),
                                ("gateway", gate, GATEWAY_KEYS)):
        for key in given:
            if key not in known:
                problems.append(f"[{table}] unknown key {key!r}; allowed: "
                                f"{', '.join(sorted(known))}. Fix: remove it or correct "
                                "its spelling")
    for key, (want, required) in CONSORTIUM_KEYS.items():
        if key not in cons:
            if required:
                problems.append(f"[consortium] {key} is missing. Fix: add it (`heroes "
                                "consortium init` writes it)")
            continue
        _typed("consortium", key, cons[key], want, problems)
    ports: dict[str, int] = {}
    host, public_port = "", 0
    if isinstance(cons.get("public_address"), str):
        try:
            host, public_port = parse_address(cons["public_address"], what="public_address")
            ports["the public port"] = public_port
        except DeploymentError as exc:
            problems.append(f"[consortium] {exc}")
    for key in ("private_port", "health_port"):
        value = cons.get(key)
        if type(value) is int:
            if not 1 <= value <= 65535:
                problems.append(f"[consortium] {key} = {value} is not a port (1-65535). "
                                "Fix: pick a free port in that range")
            else:
                ports[key] = value
    if len(set(ports.values())) < len(ports):
        problems.append(f"[consortium] {', '.join(f'{k} {v}' for k, v in ports.items())}: "
                        "the public, private and health ports must all differ. Fix: give "
                        "each its own port")
    limits: dict[str, int] = {}
    for key, (want, low, high) in GATEWAY_KEYS.items():
        if key in gate and _typed("gateway", key, gate[key], want, problems) and want is int:
            if not low <= gate[key] <= high:
                problems.append(f"[gateway] {key} = {gate[key]} is outside {low}-{high}. "
                                "Fix: pick a value in that range")
            else:
                limits[key] = gate[key]
    lim = GatewayLimits(**limits)
    if lim.max_connections_per_source > lim.max_connections:
        problems.append(f"[gateway] max_connections_per_source "
                        f"({lim.max_connections_per_source}) is above max_connections "
                        f"({lim.max_connections}). Fix: lower it, or raise max_connections")
    if problems:
        raise ConfigError(problems, source=source)
    bind = cons.get("bind_host", host)
    nginx = gate.get("nginx")
    return ConsortiumSettings(public_host=host, public_port=public_port,
                              private_port=cons["private_port"],
                              health_port=cons["health_port"], bind_host=bind, limits=lim,
                              nginx=nginx)


@dataclass(frozen=True)
class ConsortiumHome:
    root: Path

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.tls / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.tls / "superlink.crt"

    @property
    def server_key(self) -> Path:
        return self.tls / "superlink.key"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing.key"

    @property
    def signing_pub(self) -> Path:
        return self.root / "signing.pub"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.json"

    @property
    def roster_path(self) -> Path:
        return self.root / ROSTER_FILE

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def config_path(self) -> Path:
        return self.root / "consortium.toml"

    def settings(self) -> ConsortiumSettings:
        """consortium.toml, checked: unknown keys, wrong types and bad ports are errors."""
        if not self.config_path.is_file():
            raise DeploymentError(
                f"{self.root} is not a consortium folder (no consortium.toml). Fix: run "
                f"`heroes consortium init --dir {self.root} --public-address HOST:PORT` first, "
                "or pass the right --dir")
        source = str(self.config_path)
        try:
            with self.config_path.open("rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"not valid TOML ({exc}). Fix: correct the file (it is "
                               "written by `heroes consortium init`)"], source=source) from None
        return parse_settings(data, source=source)

    def config(self) -> dict[str, Any]:
        """The [consortium] table, after checking the whole file."""
        self.settings()
        with self.config_path.open("rb") as f:
            section: dict[str, Any] = tomllib.load(f)["consortium"]
        return section

    @property
    def private_address(self) -> str:
        return f"127.0.0.1:{self.settings().private_port}"

    def registry(self) -> dict[str, Any]:
        if not self.registry_path.is_file():
            return {"agencies": {}}
        data: dict[str, Any] = json.loads(self.registry_path.read_text(encoding="utf-8"))
        return data

    def save_registry(self, data: dict[str, Any]) -> None:
        write_atomic(self.registry_path, json.dumps(data, indent=2).encode())

    def env(self) -> dict[str, str]:
        return {**os.environ, "FLWR_HOME": str(self.flwr_home),
                "FLWR_TELEMETRY_ENABLED": os.environ.get("FLWR_TELEMETRY_ENABLED", "0"),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _write_flwr_connection(home: ConsortiumHome, private_port: int) -> None:
    private_dir(home.flwr_home)
    write_atomic(home.flwr_home / "config.toml", (
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{private_port}"\n'
        f'root-certificates = "{home.ca_cert.resolve()}"\n').encode())


def init(root: Path, *, public_address: str, private_port: int, health_port: int,
         extra_hosts: list[str]) -> ConsortiumHome:
    """Make the consortium's CA, TLS certificate, signing key and configuration."""
    host, port = parse_address(public_address, what="--public-address")
    home = ConsortiumHome(root)
    if home.config_path.exists():
        raise DeploymentError(
            f"{root} already holds a consortium (consortium.toml exists); refusing to "
            "overwrite its keys. Use another --dir, or --renew-server-cert to re-issue the "
            "TLS certificate only")
    if private_port == port:
        raise DeploymentError(f"--private-port {private_port} equals the public port; the "
                              "SuperLink's own port must differ from the agency-facing one")
    text = ("[consortium]\n"
            f"public_address = {json.dumps(f'{host}:{port}')}\n"
            f"private_port = {private_port}\n"
            f"health_port = {health_port}\n"
            f'created = "{dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}"\n')
    parse_settings(tomllib.loads(text), source="--public-address, --private-port and "
                   "--health-port")
    with owner_only():
        private_dir(root)
        os.chmod(root, 0o700)  # a folder made for the consortium beforehand becomes its own
        for folder in (home.tls, root / "logs", root / "runs"):
            private_dir(folder)
        make_ca(home.ca_cert, home.ca_key)
        make_server_cert(home.server_cert, home.server_key, ca_cert=home.ca_cert,
                         ca_key=home.ca_key,
                         hosts=[host, *extra_hosts, "localhost", "127.0.0.1"])
        generate_signing_key(home.signing_key, home.signing_pub)
        write_atomic(home.config_path, text.encode())
        _write_flwr_connection(home, private_port)
        home.save_registry({"agencies": {}})
    return home


def renew_server_cert(root: Path, *, extra_hosts: list[str]) -> None:
    home = ConsortiumHome(root)
    host = home.settings().public_host
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (home.server_cert, home.server_key):
        if path.exists():
            path.replace(path.with_name(f"{path.name}.{stamp}.old"))
    with owner_only():
        make_server_cert(home.server_cert, home.server_key, ca_cert=home.ca_cert,
                         ca_key=home.ca_key, hosts=[host, *extra_hosts, "localhost",
                                                    "127.0.0.1"])


def _flwr(home: ConsortiumHome, *args: str, timeout: float = 60
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "flwr"), *args], env=home.env(), capture_output=True,
                          text=True, timeout=timeout, check=False, umask=UMASK)


def _require_link(home: ConsortiumHome) -> None:
    host, port = parse_address(home.private_address, what="private address")
    with socket.socket() as s:
        s.settimeout(2)
        if s.connect_ex((host, port)) != 0:
            raise DeploymentError(
                f"the aggregator is not running on its private address {home.private_address}."
                f" Fix: start it with `heroes consortium serve --dir {home.root}` (on this "
                "machine), then try again")


def _json_tail(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        return {}
    try:
        data: dict[str, Any] = json.loads(text[start:])
        return data
    except json.JSONDecodeError:
        return {}


def enroll(root: Path, name: str, public_key: Path) -> dict[str, Any]:
    """Register an agency's node key with the SuperLink and record who it is."""
    home = ConsortiumHome(root)
    home.config()
    if not NAME_RULE.match(name):
        raise DeploymentError(f"agency name {name!r} is not allowed: {NAME_HINT}")
    key = load_node_public_key(public_key)
    fingerprint = key_fingerprint(key)
    registry = home.registry()
    agencies: dict[str, Any] = registry["agencies"]
    current = agencies.get(name)
    if current and not current.get("revoked_at"):
        raise DeploymentError(f"agency {name!r} is already enrolled (node {current['node_id']}, "
                              f"key {current['fingerprint']}); revoke it first to change keys")
    for other, entry in agencies.items():
        if entry["fingerprint"] == fingerprint and not entry.get("revoked_at"):
            raise DeploymentError(f"this key is already enrolled for agency {other!r}; every "
                                  "agency needs its own node key (`heroes agency init`)")
    _require_link(home)
    proc = _flwr(home, "supernode", "register", str(public_key), CONNECTION, "--name", name,
                 "--format", "json")
    reply = _json_tail(proc.stdout)
    if proc.returncode != 0 or not reply.get("success"):
        detail = (reply.get("error-message") or proc.stdout + proc.stderr).strip()[-600:]
        raise DeploymentError(f"the SuperLink refused to register agency {name!r}: {detail}")
    entry = {"public_key": public_key.read_text(encoding="utf-8").strip(),
             "fingerprint": fingerprint, "node_id": int(reply["node-id"]),
             "enrolled_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
             "revoked_at": None}
    history: list[dict[str, Any]] = []
    if current:
        history = [*current.get("history", []), {
            k: current[k] for k in ("fingerprint", "node_id", "enrolled_at", "revoked_at")}]
    agencies[name] = {**entry, "history": history}
    home.save_registry(registry)
    return agencies[name]  # type: ignore[no-any-return]


def provision(root: Path, agency: str, out: Path | None = None) -> tuple[Path, dict[str, str]]:
    """Write AGENCY's startup kit (federation/kit.py): the CA certificate, the signing
    public key, the public address, the current signed roster if there is one, a node
    configuration template, checksums and fingerprints, signed with the signing key. No
    private key. Returns the kit's path and the fingerprints to read to the agency."""
    from federation.kit import KIT_SUFFIX, make_kit

    home = ConsortiumHome(root)
    settings = home.settings()
    if not NAME_RULE.match(agency):
        raise DeploymentError(f"agency name {agency!r} is not allowed: {NAME_HINT}")
    files = {"ca.crt": home.ca_cert.read_bytes(), "signing.pub": home.signing_pub.read_bytes()}
    roster_sig = signature_path_for(home.roster_path)
    if home.roster_path.is_file() and roster_sig.is_file():
        files["roster.json"] = home.roster_path.read_bytes()
        files["roster.json.sig"] = roster_sig.read_bytes()
    address = f"{settings.public_host}:{settings.public_port}"
    template = {"consortium": address, "allowed_tasks": ["advert-risk"],
                "runtime_port": 9094, "health_port": 9098, "secure_min_agencies": 3}
    key, _ = _signing_pair(home)
    kit = make_kit(agency=agency, public_address=address, files=files,
                   node_template=template, signing_key=key)
    target = out or home.root / "kits" / f"{agency}{KIT_SUFFIX}"
    private_dir(target.parent)
    write_atomic(target, kit)
    fingerprints = json.loads(kit)["fingerprints"]
    return target, {str(k): str(v) for k, v in fingerprints.items()}


def revoke(root: Path, name: str) -> dict[str, Any]:
    """Unregister an agency's node key: its node is refused from its next request on."""
    home = ConsortiumHome(root)
    registry = home.registry()
    entry = registry["agencies"].get(name)
    if entry is None:
        known = ", ".join(sorted(registry["agencies"])) or "none"
        raise DeploymentError(f"agency {name!r} is not in the registry (enrolled: {known})")
    if entry.get("revoked_at"):
        raise DeploymentError(f"agency {name!r} was already revoked at {entry['revoked_at']}")
    _require_link(home)
    proc = _flwr(home, "supernode", "unregister", str(entry["node_id"]), CONNECTION,
                 "--format", "json")
    reply = _json_tail(proc.stdout)
    if proc.returncode != 0 or not reply.get("success", True):
        detail = (reply.get("error-message") or proc.stdout + proc.stderr).strip()[-600:]
        raise DeploymentError(f"the SuperLink refused to unregister agency {name!r}: {detail}")
    entry["revoked_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    home.save_registry(registry)
    return entry  # type: ignore[no-any-return]


def _signing_pair(home: ConsortiumHome) -> tuple[PrivateKey, str]:
    """The consortium signing key and its fingerprint, after checking that signing.pub (the
    key agencies hold) is its public half: signing with a key agencies do not have would
    only produce refusals."""
    key = load_private_key(home.signing_key)
    fingerprint = key_fingerprint(key.public_key())
    published = key_fingerprint(load_public_key(home.signing_pub))
    if fingerprint != published:
        raise DeploymentError(
            f"{home.signing_key} ({fingerprint}) is not the private half of {home.signing_pub} "
            f"({published}), the key agencies check signatures with. Fix: restore the "
            "matching signing.key from your backup")
    return key, fingerprint


def build_roster(root: Path) -> tuple[Roster, RosterDiff]:
    """The next roster from registry.json: every enrolled, not revoked agency and its key.

    Its version is the previous roster's (``DIR/roster.json``) plus one, so an agency can
    refuse an older roster replayed to it. Returns it unsigned and unwritten, with what
    changed since the previous one.
    """
    home = ConsortiumHome(root)
    home.config()
    _, fingerprint = _signing_pair(home)
    previous = (read_roster(home.roster_path, consortium_key=load_public_key(home.signing_pub))
                if home.roster_path.is_file() else None)
    members = []
    for name, entry in sorted(home.registry()["agencies"].items()):
        if entry.get("revoked_at"):
            continue
        try:
            key = parse_node_key(str(entry["public_key"]))
        except (KeyError, ValueError) as exc:
            raise DeploymentError(
                f"{home.registry_path}: the key of agency {name!r} cannot be read ({exc}). "
                "Fix: revoke it and enroll the node.key.pub the agency sends again") from None
        member = Member.from_key(name, key)
        if member.fingerprint != entry.get("fingerprint"):
            raise DeploymentError(
                f"{home.registry_path}: agency {name!r} is recorded with fingerprint "
                f"{entry.get('fingerprint')} but its stored key has {member.fingerprint}; the "
                "registry was edited. Fix: restore registry.json from a backup, or revoke and "
                "re-enroll the agency")
        members.append(member)
    if not members:
        raise DeploymentError(
            f"no enrolled agencies in {home.registry_path}: a roster lists at least one. Fix: "
            f"enroll the agencies first (`heroes consortium enroll NAME node.key.pub --dir "
            f"{root}`)")
    roster = Roster(version=1 if previous is None else previous.version + 1,
                    issued_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    consortium=fingerprint, members=tuple(members))
    return roster, diff(previous, roster)


def make_roster(root: Path, out: Path | None = None) -> tuple[Roster, RosterDiff, list[Path]]:
    """Build, sign and write the next roster: ``DIR/roster.json`` and its ``.sig``, and the
    same two files at ``out`` when given. Returns the roster, its changes, the files."""
    home = ConsortiumHome(root)
    roster, changes = build_roster(root)
    key, _ = _signing_pair(home)
    with owner_only():  # roster.json.sig too
        write_roster(home.roster_path, roster, key)
    written = [home.roster_path, home.roster_path.with_name(ROSTER_FILE + ".sig")]
    if out is not None and out.resolve() != home.roster_path.resolve():
        for source, target in ((written[0], out), (written[1], out.with_name(out.name + ".sig"))):
            write_atomic(target, source.read_bytes())
            written.append(target)
    return roster, changes, written


def build_bundle(root: Path, app: Path) -> tuple[bytes, str, str]:
    """The app bundle exactly as `train` submits it, its signature and its manifest digest.

    One function for both, so that the bundle agencies review before a run (`heroes
    consortium bundle`) is byte for byte the manifest the run carries.
    """
    from flwr.cli.build import build_fab_from_disk

    from federation.appsign import manifest_digest, sign_bundle

    home = ConsortiumHome(root)
    home.config()
    key, _ = _signing_pair(home)
    fab = bytes(build_fab_from_disk(app))
    return fab, sign_bundle(key, fab), manifest_digest(fab)


def check_tls(home: ConsortiumHome) -> str:
    host = home.settings().public_host
    check_certificate(home.ca_cert, what="consortium CA certificate")
    status = check_certificate(home.server_cert, what="SuperLink certificate", host=host,
                               ca=home.ca_cert)
    return f"TLS certificate for {', '.join(status.hosts)}, {status.days_left:.0f} days left"


def loose_modes(home: ConsortiumHome) -> list[str]:
    """What in the consortium folder other users of this machine could read (a folder made
    before modes were set at birth), each with the chmod that fixes it."""
    found = []
    paths = [home.root, home.tls, home.ca_key, home.server_key, home.signing_key,
             home.root / "state.db", home.root / HEADS_FILE, home.registry_path,
             home.root / "logs", *sorted((home.root / "logs").glob("*")), home.root / "runs"]
    for path in paths:
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_IMODE(st.st_mode) & 0o077:
            want = "700" if stat.S_ISDIR(st.st_mode) else "600"
            found.append(f"{path} is mode {stat.S_IMODE(st.st_mode):04o}, open to other users "
                         f"of this machine. Fix: chmod {want} {path}")
    return found


class Aggregator:
    """The SuperLink (private) plus the Fleet gateway (public), started and stopped together."""

    def __init__(self, root: Path) -> None:
        from server.fleet_gateway import NGINX_CANDIDATES, FleetGateway, GatewayConfig, find_nginx

        self.home = ConsortiumHome(root)
        settings = self.home.settings()
        self.tls_note = check_tls(self.home)
        self.public = (settings.public_host, settings.public_port)
        self.private_port = settings.private_port
        self.health_port = settings.health_port
        self.bind_host = settings.bind_host
        # before anything starts: no nginx is exit 2 with the fix, not a half-up aggregator
        nginx = find_nginx((settings.nginx,) if settings.nginx else NGINX_CANDIDATES)
        self.gateway = FleetGateway(GatewayConfig(
            listen_host=self.bind_host, listen_port=self.public[1],
            upstream_port=self.private_port, certfile=self.home.server_cert.resolve(),
            keyfile=self.home.server_key.resolve(), ca_certfile=self.home.ca_cert.resolve(),
            state_dir=(self.home.root / "gateway").resolve(),
            log_dir=(self.home.root / "logs").resolve(), limits=settings.limits), nginx)
        self.link: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 90) -> None:
        logs = private_dir(self.home.root / "logs")
        cmd = [str(BIN / "flower-superlink"),
               "--ssl-ca-certfile", str(self.home.ca_cert),
               "--ssl-certfile", str(self.home.server_cert),
               "--ssl-keyfile", str(self.home.server_key),
               "--enable-supernode-auth",
               "--database", str(self.home.root / "state.db"),
               "--disable-runtime-dependency-installation",
               "--host", "127.0.0.1", "--port", str(self.private_port),
               "--health-server-address", f"127.0.0.1:{self.health_port}"]
        out = open_private(logs / "superlink.log", os.O_WRONLY | os.O_APPEND)
        try:  # the child keeps its own copy; umask 077: state.db and what its apps write
            self.link = subprocess.Popen(cmd, env=self.home.env(), stdout=out,
                                         stderr=subprocess.STDOUT, cwd=self.home.root,
                                         start_new_session=True, umask=UMASK)
        finally:
            os.close(out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.link.poll() is not None:
                raise DeploymentError(
                    f"the SuperLink exited with status {self.link.returncode} while starting; "
                    f"see {logs / 'superlink.log'} (a port in use is the usual cause: "
                    f"{self.private_port} or {self.health_port})")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.private_port)) == 0:
                    break
            time.sleep(0.3)
        else:
            self.stop()
            raise DeploymentError(f"the SuperLink did not listen on 127.0.0.1:"
                                  f"{self.private_port} within {timeout:.0f} s")
        try:
            self.gateway.start()
        except DeploymentError:
            self.stop()
            raise

    def stop(self) -> None:
        self.gateway.stop()
        if self.link is not None and self.link.poll() is None:
            os.killpg(self.link.pid, signal.SIGTERM)
            try:
                self.link.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.link.pid, signal.SIGKILL)
                self.link.wait()


def serve(root: Path) -> int:
    agg = Aggregator(root)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stderr)])
    stop = {"now": False}

    def _stop(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for line in loose_modes(agg.home):
        print(f"WARNING: {line}", file=sys.stderr, flush=True)
    logs = agg.home.root / "logs"
    with owner_only():
        agg.start()
        assert agg.link is not None and agg.gateway.proc is not None
        write_atomic(agg.home.root / "aggregator.json", json.dumps(
            {"pid": os.getpid(), "superlink_pid": agg.link.pid,
             "gateway_pid": agg.gateway.proc.pid,
             "public": f"{agg.public[0]}:{agg.public[1]}",
             "private": agg.home.private_address}, indent=2).encode())
    lim = agg.gateway.config.limits
    print(f"aggregator up: agencies connect to {agg.public[0]}:{agg.public[1]} (nginx: Fleet "
          f"API only, TLS; bodies up to {lim.max_body_mib} MiB, {lim.max_connections} "
          f"connections, {lim.max_connections_per_source} per source address); the SuperLink "
          f"itself listens on 127.0.0.1:{agg.private_port} (Control and Runtime APIs, "
          f"private); health: grpc 127.0.0.1:{agg.health_port}; {agg.tls_note}; logs in "
          f"{logs}", flush=True)
    try:
        while not stop["now"]:
            assert agg.link is not None
            if agg.link.poll() is not None:
                print(f"the SuperLink exited with status {agg.link.returncode}; see "
                      f"{logs / 'superlink.log'}", file=sys.stderr)
                return 1
            if agg.gateway.poll() is not None:
                print(f"the gateway (nginx) exited with status {agg.gateway.poll()}; see "
                      f"{agg.gateway.error_log}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        agg.stop()
        print(f"aggregator stopped; the gateway's requests are in {agg.gateway.access_log}",
              flush=True)
    return 0


DEFAULT_TASK = "advert-risk"


def task_overrides(task: str, overrides: list[str]) -> list[str]:
    """The run-config settings that name the run's task, checked against the registered
    tasks before anything is submitted. Every node reads the export of this task alone
    (clients/node.py), and the release card reads it from the run.

    Another task than advert-risk starts from its own default parameters
    (``task.params="{}"``), since pyproject.toml's are advert-risk's; a ``task.params``
    in ``overrides`` still wins. A ``task.name`` in ``overrides`` must agree with it."""
    from federation.tasks import task_names

    known = task_names()
    if task not in known:
        raise DeploymentError(f"--task {task!r} is not a registered task; registered: {known}")
    named = False
    for item in overrides:
        for match in re.finditer(r'(?:^|\s)task\.name=("?)([^"\s]*)\1', item):
            if match.group(2) != task:
                raise DeploymentError(
                    f"--run-config sets task.name={match.group(2)!r} but --task is {task!r}. "
                    "Fix: name the task with --task only")
            named = True
    ours = [] if named else [f'task.name="{task}"']  # one key once: Flower parses TOML
    if task != DEFAULT_TASK and not any(re.search(r"(?:^|\s)task\.params=", o)
                                        for o in overrides):
        ours.append('task.params="{}"')
    return ours


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: The ServerApp's own lines in the stream (server/server_app.py marks them so).
LINE_MARK = "heroes "


class ConsoleFilter:
    """What `train` shows by default: the run's start, heroes' own lines (one per round, the
    start and the end, warnings and refusals), and Flower's warnings and errors with
    whatever follows an error up to the next INFO line (a traceback's last line is the
    reason); Flower's own INFO lines (about 50 a round) go to run.log only."""

    def __init__(self) -> None:
        self.in_error = False

    def __call__(self, plain: str) -> bool:
        head = plain.lstrip()
        if head.startswith(("ERROR", "CRITICAL", "Traceback")):
            self.in_error = True
        elif plain.startswith(LINE_MARK) or head.startswith(("INFO", "DEBUG")):
            self.in_error = False
        return (self.in_error
                or plain.startswith((LINE_MARK, "Successfully started run", "Using SuperLink"))
                or head.startswith(("WARNING", "\u256d", "\u2502", "\u2570")))


def train(root: Path, *, app: Path, overrides: list[str], out: Path | None,
          timeout: float, resume: Path | None = None, task: str = DEFAULT_TASK,
          verbose: bool = False) -> Path:
    """Sign the app bundle, submit the run, follow it, and return its output folder.

    The bundle is kept as ``RUN_DIR/app.fab``: agencies refuse a bundle they have not
    approved (clients/verified_clientapp.py), and this is the file to review and approve.

    With ``resume`` (a previous run folder of this command), the same settings are submitted
    again with ``paths.resume_from`` at that run's checkpoints: the aggregator continues
    after the last completed round and ends with the planned number of rounds.

    ``task`` names the run's task (``task.name``; see ``task_overrides``)."""
    with owner_only():  # the run folder and everything in it: owner only
        return _train(root, app=app, overrides=overrides, out=out, timeout=timeout,
                      resume=resume, task=task, verbose=verbose)


def _train(root: Path, *, app: Path, overrides: list[str], out: Path | None,
           timeout: float, resume: Path | None, task: str, verbose: bool = False) -> Path:
    home = ConsortiumHome(root)
    home.config()
    # the task first: a run of an unknown task is refused before anything is contacted
    named_task = task_overrides(task, overrides) if resume is None else []
    _require_link(home)
    if resume is not None:
        saved = resume / "train.json"
        if not saved.is_file():
            raise DeploymentError(f"{resume} is not a run folder of `heroes consortium train` "
                                  "(no train.json); pass the folder the interrupted run wrote")
        if overrides:
            raise DeploymentError("--resume reuses the interrupted run's --run-config; drop "
                                  "--run-config (a resumed run must keep its settings)")
        saved_run = json.loads(saved.read_text(encoding="utf-8"))
        overrides = list(saved_run["overrides"])
        # a run saved before runs named their task was an advert-risk run
        saved_task = str(saved_run.get("task", DEFAULT_TASK))
        if task not in (DEFAULT_TASK, saved_task):
            raise DeploymentError(f"--resume continues a {saved_task} run; drop --task (a "
                                  "resumed run keeps its task)")
        task = saved_task
        out = resume
    overrides = [*overrides, *named_task]  # a resumed run's saved settings name its task
    fab, signature, digest = build_bundle(root, app)
    run_dir = out or home.root / "runs" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir = private_dir(run_dir.resolve())
    if resume is None:
        (run_dir / "train.json").write_text(json.dumps({"overrides": overrides,
                                                        "task": task}, indent=2),
                                            encoding="utf-8")
    # the bundle as submitted, so that anyone can review what the agencies were asked to run
    write_atomic(run_dir / "app.fab", fab)
    (run_dir / "app-bundle.json").write_text(json.dumps(
        {"manifest_sha256": digest, "signature": signature,
         "signing_key": key_fingerprint(load_private_key(home.signing_key).public_key())},
        indent=2), encoding="utf-8")
    # One --run-config string: Flower merges several of them table by table, so a second
    # "paths.x=..." would silently replace a first "paths.y=...".
    # One book of ledger heads per consortium, across runs: an agency whose ledger went back
    # behind what an earlier run saw is refused by name.
    ours = [f'paths.output_dir="{run_dir / "server"}"', f'app.signature="{signature}"',
            f'paths.ledger_heads="{(home.root / HEADS_FILE).resolve()}"',
            f'paths.registry="{home.registry_path.resolve()}"']
    if resume is not None:
        ours.append(f'paths.resume_from="{run_dir / "server"}"')
    cmd = [str(BIN / "flwr"), "run", str(app), CONNECTION, "--stream",
           "--run-config", " ".join([*overrides, *ours])]
    print(f"submitting the signed app bundle (manifest {digest[:16]}) to "
          f"{home.private_address}; outputs in {run_dir}. Agencies run it only once they "
          f"approved that manifest: send them {run_dir / 'app.fab'} (or one made with "
          "`heroes consortium bundle`) for `heroes agency approve`", flush=True)
    # While this command follows the run, its pid marks the run as running (the console's
    # run actions read it; server/run_actions.py); gone when it ends, however it ends.
    pid_file = run_dir / TRAIN_PID
    write_atomic(pid_file, str(os.getpid()).encode())
    try:
        return _follow(home, cmd, run_dir, resume=resume is not None, timeout=timeout,
                       verbose=verbose)
    finally:
        pid_file.unlink(missing_ok=True)


#: The file that holds the pid of the `train` command following a run (server/run_actions.py).
TRAIN_PID = "train.pid"


def _follow(home: ConsortiumHome, cmd: list[str], run_dir: Path, *, resume: bool,
            timeout: float, verbose: bool) -> Path:
    """Submit the run with ``cmd``, stream it to run.log and the console, fetch its outputs."""
    proc = subprocess.Popen(cmd, env=home.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    run_id = None
    started = time.monotonic()
    on_console = ConsoleFilter()
    with (run_dir / "run.log").open("a" if resume else "w", encoding="utf-8") as logf:
        for line in proc.stdout:
            m = re.search(r"Successfully started run (\d+)", line)
            if m and run_id is None:
                run_id = m.group(1)
                # at once: `flwr stop` and the console need it while the run goes on
                (run_dir / "run-id").write_text(run_id, encoding="utf-8")
            plain = _ANSI.sub("", line)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            # heroes' own lines carry their time and run id already
            logf.write(plain if plain.startswith(LINE_MARK) else
                       f"{stamp} run {run_id or '-'} {plain}")
            logf.flush()
            if verbose or on_console(plain):
                print(line, end="", flush=True)
            if time.monotonic() - started > timeout:
                proc.kill()
                raise DeploymentError(f"run {run_id} did not finish within {timeout:.0f} s; "
                                      f"stop it with `flwr stop {run_id}` (FLWR_HOME="
                                      f"{home.flwr_home})")
    proc.wait()
    if run_id is None:
        raise DeploymentError(f"the run was not accepted (flwr run exited {proc.returncode}); "
                              f"see {run_dir / 'run.log'}")
    metrics = run_dir / "server" / SUMMARY_FILE
    if not metrics.is_file():
        partial = run_dir / "server" / "partial" / SUMMARY_FILE
        hint = f"; rounds so far are in {partial}" if partial.is_file() else ""
        if any((run_dir / "server" / "checkpoints").glob("round-*.pt")):
            hint += (f". Its completed rounds are checkpointed: once the aggregator is up "
                     f"(`heroes consortium serve`), continue it with `heroes consortium train "
                     f"--dir {home.root} --resume {run_dir}`")
        raise DeploymentError(f"run {run_id} ended without a model (status in `flwr ls`){hint}; "
                              f"the aggregator's log: {run_dir / 'run.log'}")
    RunSummary.read(metrics)  # a summary this version cannot read is refused here, by name
    for name in ("model.pt", SUMMARY_FILE, "config.json"):
        shutil.copyfile(run_dir / "server" / name, run_dir / name)
    return run_dir
