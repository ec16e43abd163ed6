"""An agency's node in a real deployment: its folder, its key, its processes.

    STATE_DIR/                 (the node's state folder; back it up, keep it private)
      policy.toml              [privacy_budget] (the ledger's budget) and [node] (data folder,
                               consortium address, allowed tasks, local ports)
      node.key                 EC P-256 private key (OpenSSH): proves the node to the consortium
      node.key.pub             send this to the consortium to be enrolled
      consortium-ca.crt        the consortium CA: the node talks only to a SuperLink it issued
      consortium-signing.pub   the consortium's key: the node runs only bundles it signed
      superexec.secret         shared by the SuperNode and the local SuperExec (loopback only)
      privacy-ledger.sqlite    every release of privacy, over all runs (federation/ledger.py)
      quarantine-report.*      rows of the export that cannot be used, and why
      logs/                    supernode.log, superexec.log (ClientApp output included)
      node-status.json         written by `heroes agency serve`, read by `heroes agency status`
      approvals.jsonl, .head   what this agency approved, signed by node.key (clients/approvals.py)
      roster.json (.sig)       the roster of peers it approved last (secure aggregation)
      approvals/               manifests of approved bundles; refused bundles kept for review

``serve`` validates the export before anything else, checks the certificate and that the
consortium is reachable with it, then runs ``flower-supernode`` (TLS, node key,
``--isolation process``) and the agency's own SuperExec (clients/superexec.py), which starts
the signature-checking ClientApp for every message, which also runs only bundles this agency
approved (`heroes agency approve`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients import approvals
from federation.errors import ConfigError, DataError, DeploymentError, HeroesError, Rule
from federation.files import loose_mode, open_private, private_dir, write_atomic
from federation.ledger import Ledger, LedgerError, Policy, load_policy, write_policy
from federation.pki import check_certificate, make_node_key, parse_address
from federation.policy import SECTIONS as POLICY_SECTIONS
from federation.policy import toml_type
from federation.roster import NAME_RULE
from federation.signing import key_fingerprint, load_public_key

BIN = Path(sys.executable).parent
DEFAULT_TASKS = ("advert-risk",)
NODE_SECTION = "node"
_TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_STRING, _INTEGER, _TASKS = "a string", "a whole number", "an array of task names"
#: [node] key -> (kind, required, example for the fix)
NODE_KEYS: dict[str, tuple[str, bool, str]] = {
    "name": (_STRING, True, 'name = "eu-police-north"'),
    "data_dir": (_STRING, True, 'data_dir = "/srv/heroes/export"'),
    "consortium": (_STRING, True, 'consortium = "fl.consortium.example:9092"'),
    "allowed_tasks": (_TASKS, False, 'allowed_tasks = ["advert-risk"]'),
    "runtime_port": (_INTEGER, False, "runtime_port = 9094"),
    "health_port": (_INTEGER, False, "health_port = 9098"),
    "dataset_id": (_STRING, False, 'dataset_id = "eu-police-north/adverts-2026"'),
}


@dataclass(frozen=True)
class NodeSettings:
    name: str
    data_dir: Path
    consortium: str
    allowed_tasks: tuple[str, ...]
    runtime_port: int
    health_port: int
    dataset_id: str


@dataclass(frozen=True)
class AgencyHome:
    root: Path

    @property
    def policy_path(self) -> Path:
        return self.root / "policy.toml"

    @property
    def node_key(self) -> Path:
        return self.root / "node.key"

    @property
    def node_pub(self) -> Path:
        return self.root / "node.key.pub"

    @property
    def ca_cert(self) -> Path:
        return self.root / "consortium-ca.crt"

    @property
    def consortium_key(self) -> Path:
        return self.root / "consortium-signing.pub"

    @property
    def secret(self) -> Path:
        return self.root / "superexec.secret"

    @property
    def status_path(self) -> Path:
        return self.root / "node-status.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def node(self) -> NodeSettings:
        """The [node] section of policy.toml, read strictly (see ``parse_node``)."""
        if not self.policy_path.is_file():
            raise DeploymentError(
                f"{self.root} is not an agency node folder (no policy.toml). Fix: run "
                f"`heroes agency init --dir {self.root} ...` first, or pass the right --dir")
        source = f"{self.policy_path} (the node's settings)"
        try:
            data = tomllib.loads(self.policy_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"cannot be read ({type(exc).__name__}). Fix: the node's user "
                               "must be able to read it, and it must be UTF-8 text"],
                              source=source) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"is not valid TOML ({exc}). Fix: correct the syntax there"],
                              source=source) from None
        except RecursionError:
            raise ConfigError(["is not usable TOML (values nested too deeply). Fix: write "
                               "[node] as `heroes agency init` does"], source=source) from None
        return parse_node(data, source=source)


def parse_node(data: dict[str, Any], *, source: str) -> NodeSettings:
    """The node's own settings from the parsed policy.toml, strictly: strings are strings,
    ports are whole numbers (a boolean is not a number), unknown keys and sections are
    errors naming them and the allowed ones, and every problem is listed at once. Messages
    name keys and types, never a value read from the file."""
    problems: list[str] = []
    known = (*POLICY_SECTIONS, NODE_SECTION)
    for key in sorted(k for k in data if k not in known):
        kind = "section" if isinstance(data[key], dict) else "key outside any section"
        problems.append(f"{kind} {key!r} is not known; sections allowed: "
                        f"{[f'[{k}]' for k in known]}. Fix: correct its spelling or remove it")
    n = data.get(NODE_SECTION)
    if not isinstance(n, dict):
        problems.append(
            (f"[{NODE_SECTION}] must be a section, not {toml_type(n)}" if n is not None else
             f"has no [{NODE_SECTION}] section; it was not made by `heroes agency init`")
            + f". Fix: add [{NODE_SECTION}] with " + ", ".join(
                f"`{ex}`" for k, (_, req, ex) in NODE_KEYS.items() if req))
        raise ConfigError(problems, source=source)
    for key in sorted(set(n) - set(NODE_KEYS)):
        problems.append(f"[{NODE_SECTION}] {key!r} is not a known key; allowed: "
                        f"{sorted(NODE_KEYS)}. Fix: correct its spelling or remove it")
    for key, (kind, required, example) in NODE_KEYS.items():
        if key not in n:
            if required:
                problems.append(f"[{NODE_SECTION}] {key} is missing. Fix: add e.g. `{example}`")
            continue
        problem = _node_value_problem(key, kind, n[key])
        if problem:
            problems.append(f"[{NODE_SECTION}] {key} {problem}. Fix: e.g. `{example}`")
    ports = [n.get(k) for k in ("runtime_port", "health_port")]
    if ports[0] is not None and ports[0] == ports[1] and isinstance(ports[0], int):
        problems.append(f"[{NODE_SECTION}] runtime_port and health_port are both {ports[0]}; "
                        "two services cannot share a port. Fix: give them different ports")
    if problems:
        raise ConfigError(problems, source=source)
    return NodeSettings(name=n["name"], data_dir=Path(n["data_dir"]),
                        consortium=n["consortium"],
                        allowed_tasks=tuple(n.get("allowed_tasks", DEFAULT_TASKS)),
                        runtime_port=n.get("runtime_port", 9094),
                        health_port=n.get("health_port", 9098),
                        dataset_id=n.get("dataset_id", ""))


def _node_value_problem(key: str, kind: str, value: object) -> str | None:
    """What is wrong with one [node] value, without showing it."""
    if kind == _INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number (without quotes), not {toml_type(value)}"
        if not 1 <= value <= 65535:
            return f"={value} is not a port; it must be in 1-65535"
        return None
    if kind == _TASKS:
        if not isinstance(value, list) or not value:
            return f"must be a non-empty array of task names, not {toml_type(value)}"
        bad = [i for i, t in enumerate(value) if not isinstance(t, str)
               or not _TASK_NAME.match(t)]
        if bad:
            return (f"entries {bad} (counting from 0) are not task names (lower-case letters, "
                    "digits, '-', '_' or '.', at most 64)")
        return None
    if not isinstance(value, str):
        return f"must be a string (in quotes), not {toml_type(value)}"
    if key == "name" and not NAME_RULE.match(value):
        return ("is not an agency name: 2-63 lower-case letters, digits and '-', starting "
                "with a letter or digit (the name the consortium enrolled)")
    if key in ("data_dir", "consortium") and not value.strip():
        return "is empty"
    if key == "consortium":
        try:
            parse_address(value, what="consortium address")
        except (DeploymentError, ValueError):  # ValueError: digits int() refuses, e.g. "²"
            return "is not an address of the form HOST:PORT"
    if any(ord(c) < 32 for c in value):
        return "holds a control character"
    return None


def _toml_str(v: object) -> str:
    return json.dumps(str(v))


def init(root: Path, *, name: str, data_dir: Path, consortium: str, ca_cert: Path,
         consortium_key: Path, policy: Policy, allowed_tasks: list[str], runtime_port: int,
         health_port: int, dataset_id: str = "") -> AgencyHome:
    """Make the node key, install the consortium's CA and key, write the policy."""
    home = AgencyHome(root)
    if home.policy_path.exists() or home.node_key.exists():
        raise DeploymentError(
            f"{root} already holds a node (policy.toml or node.key exists); refusing to "
            "overwrite its key and ledger. Use another --dir")
    parse_address(consortium, what="consortium address")
    node: dict[str, Any] = {"name": name, "data_dir": str(data_dir.resolve()),
                            "consortium": consortium, "allowed_tasks": list(allowed_tasks),
                            "runtime_port": runtime_port, "health_port": health_port}
    if dataset_id:
        node["dataset_id"] = dataset_id
    parse_node({NODE_SECTION: node}, source="the node settings given")  # before writing
    check_certificate(ca_cert, what="consortium CA certificate")
    load_public_key(consortium_key)  # refuse a missing or malformed key before writing
    private_dir(root)  # 0700 when this makes it; an existing folder keeps its mode
    # copies 0600 like everything the node keeps: nobody else may swap the CA or the key
    write_atomic(home.ca_cert, ca_cert.read_bytes())
    write_atomic(home.consortium_key, consortium_key.read_bytes())
    write_policy(root, policy)
    with home.policy_path.open("a", encoding="utf-8") as f:
        f.write("\n[node]\n"
                f"name = {_toml_str(name)}\n"
                f"data_dir = {_toml_str(data_dir.resolve())}\n"
                f"consortium = {_toml_str(consortium)}\n"
                f"allowed_tasks = [{', '.join(_toml_str(t) for t in allowed_tasks)}]\n"
                f"runtime_port = {runtime_port}\n"
                f"health_port = {health_port}\n"
                + (f"dataset_id = {_toml_str(dataset_id)}\n" if dataset_id else ""))
    make_node_key(home.node_key, home.node_pub, comment=f"heroes-fl node {name}")
    fd = open_private(home.secret, os.O_WRONLY | os.O_EXCL)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    private_dir(home.logs)
    return home


def validate_data(home: AgencyHome, node: NodeSettings) -> str:
    """Read and validate the whole export before anything connects; write the quarantine
    report. Returns a one-line summary; raises DataError when the export is unusable."""
    from federation.data import load_agency
    from federation.quarantine import write_quarantine_report

    if not node.data_dir.is_dir():
        raise DataError(Rule("the data folder does not exist", "put the export there, or "
                             "correct data_dir in the node's policy.toml ([node])"),
                        file=node.data_dir)
    data = load_agency(node.data_dir)
    summary = (f"export of {data.agency}: {len(data.train)} training and {len(data.test)} test "
               f"rows usable, {data.train.rejected_total + data.test.rejected_total} set aside")
    report = write_quarantine_report(data, home.root)
    return f"{summary} (quarantine report: {report})"


def preflight(home: AgencyHome, node: NodeSettings, *, insecure: bool) -> str:
    """Check that the consortium answers at its address with a certificate from its CA."""
    host, port = parse_address(node.consortium, what="consortium address")
    if not insecure:
        check_certificate(home.ca_cert, what="consortium CA certificate")
    try:
        with socket.create_connection((host, port), timeout=10) as raw:
            if insecure:
                raw.settimeout(10)
                raw.sendall(b"POST /v1/fleet/get-run HTTP/1.1\r\nhost: heroes\r\n"
                            b"content-length: 0\r\nconnection: close\r\n\r\n")
                try:
                    first = raw.recv(5)
                except OSError:
                    first = b""
                if first != b"HTTP/":
                    raise DeploymentError(
                        f"the consortium at {node.consortium} does not speak plaintext HTTP "
                        "(it requires TLS, as it should). Fix: drop --insecure")
                return f"{node.consortium} reachable (plaintext: --insecure)"
            ctx = ssl.create_default_context(cafile=str(home.ca_cert))
            try:
                with ctx.wrap_socket(raw, server_hostname=host) as tls:
                    return f"{node.consortium} reachable over {tls.version()}"
            except ssl.SSLCertVerificationError as exc:
                raise DeploymentError(
                    f"the server at {node.consortium} did not present a valid certificate "
                    f"from the consortium CA ({exc.verify_message}). Fix: check the address "
                    f"and that {home.ca_cert} is the consortium's current ca.crt; an expired "
                    "server certificate must be renewed by the consortium") from None
            except ssl.SSLError as exc:
                raise DeploymentError(
                    f"TLS with {node.consortium} failed ({exc.reason}); is that the "
                    "consortium's agency-facing address (not a plaintext service)?") from None
    except OSError as exc:
        if isinstance(exc, DeploymentError):
            raise
        raise DeploymentError(
            f"cannot reach the consortium at {node.consortium} ({exc.strerror or exc}). Fix: "
            f"check the address in {home.policy_path}, this machine's network and firewall, "
            "and that the consortium's aggregator is running") from None


def node_config(home: AgencyHome, node: NodeSettings) -> str:
    items = {"data_dir": str(node.data_dir), "state_dir": str(home.root.resolve()),
             "allowed_tasks": ",".join(node.allowed_tasks)}
    if node.dataset_id:
        items["dataset_id"] = node.dataset_id
    return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


class Node:
    """The SuperNode and the agency's SuperExec, started and stopped together."""

    def __init__(self, root: Path, *, insecure: bool = False) -> None:
        self.home = AgencyHome(root)
        self.settings = self.home.node()
        self.insecure = insecure
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self) -> dict[str, str]:
        return {**os.environ,
                "FLWR_HOME": str(self.home.root / "flwr-home"),
                "FLWR_TELEMETRY_ENABLED": os.environ.get("FLWR_TELEMETRY_ENABLED", "0"),
                "HEROES_CONSORTIUM_KEY": str(self.home.consortium_key.resolve()),
                # the verifying ClientApp finds the agency's approvals here
                "HEROES_STATE_DIR": str(self.home.root.resolve()),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def start(self) -> None:
        s = self.settings
        private_dir(self.home.logs)  # ClientApp output: the agency's alone
        link = [str(BIN / "flower-supernode"), "--superlink", s.consortium,
                "--node-config", node_config(self.home, s),
                "--isolation", "process", "--host", "127.0.0.1", "--port", str(s.runtime_port),
                "--superexec-auth-secret-file", str(self.home.secret),
                "--health-server-address", f"127.0.0.1:{s.health_port}"]
        if self.insecure:
            link += ["--insecure"]
        else:
            link += ["--root-certificates", str(self.home.ca_cert),
                     "--auth-supernode-private-key", str(self.home.node_key)]
        execu = [sys.executable, "-m", "clients.superexec",
                 "--runtime-api-address", f"127.0.0.1:{s.runtime_port}", "--insecure",
                 "--superexec-auth-secret-file", str(self.home.secret)]
        for name, cmd in (("supernode", link), ("superexec", execu)):
            log_fd = open_private(self.home.logs / f"{name}.log", os.O_WRONLY | os.O_APPEND)
            with os.fdopen(log_fd, "ab") as out:
                self.procs[name] = subprocess.Popen(
                    cmd, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                    cwd=self.home.root, start_new_session=True)
        self._write_status("running")

    def _write_status(self, state: str) -> None:
        s = self.settings
        status = {"state": state, "agency": s.name, "consortium": s.consortium,
                  "insecure": self.insecure,
                  "pids": {k: p.pid for k, p in self.procs.items()},
                  "health": f"127.0.0.1:{s.health_port}",
                  "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        write_atomic(self.home.status_path, json.dumps(status, indent=2).encode("utf-8"))

    def exited(self) -> tuple[str, int] | None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                return name, int(p.returncode)
        return None

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if self.procs:
            self._write_status("stopped")


def exit_hint(name: str, code: int, log_text: str) -> str:
    """What a SuperNode's or SuperExec's unexpected exit means, and what to do."""
    if name != "supernode":
        return "the agency's SuperExec stopped; see its log"
    if "Failed to activate" in log_text:
        return ("the consortium does not accept this node's key: it was never enrolled, or "
                "it was revoked. Fix: send node.key.pub to the consortium and ask it to run "
                "`heroes consortium enroll NAME node.key.pub`")
    if code == 0 and "terminated gracefully" in log_text:
        return ("the SuperNode stopped itself after the consortium answered a request with "
                "'unauthorised': this node's key was revoked. Ask the consortium to enroll it "
                "again if that was a mistake")
    if "CERTIFICATE_VERIFY_FAILED" in log_text:
        return ("the consortium's certificate does not verify against consortium-ca.crt: "
                "check the address and that the CA file is current")
    return "see the log below"


def serve(root: Path, *, insecure: bool) -> int:
    node = Node(root, insecure=insecure)
    if insecure:
        print("WARNING: --insecure: model updates travel UNENCRYPTED and the node does not "
              "authenticate; for a lab on one machine only", file=sys.stderr, flush=True)
    print(validate_data(node.home, node.settings), flush=True)
    print(preflight(node.home, node.settings, insecure=insecure), flush=True)
    print(approvals.describe(node.home.root), flush=True)
    stop = {"now": False}

    def _stop(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.start()
    print(f"node {node.settings.name} running: SuperNode pid {node.procs['supernode'].pid}, "
          f"SuperExec pid {node.procs['superexec'].pid}; logs in {node.home.logs}; "
          f"`heroes agency status --dir {root}`", flush=True)
    try:
        while not stop["now"]:
            gone = node.exited()
            if gone:
                name, code = gone
                log_path = node.home.logs / f"{name}.log"
                text = log_path.read_text(encoding="utf-8", errors="replace")[-20000:]
                print(f"the {name} exited with status {code}: "
                      f"{exit_hint(name, code, text)}\n{_tail(log_path)}",
                      file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
    finally:
        node.stop()
    return 0


def _tail(path: Path, lines: int = 8) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(f"  | {line}" for line in text[-lines:])


CONNECTION_MARKS = (
    ("Failed to activate", "refused by the consortium: the node key is not enrolled or was "
                           "revoked"),
    ("CERTIFICATE_VERIFY_FAILED", "TLS failed: the server certificate is not from the "
                                  "consortium CA"),
    ("Server disconnected", "disconnected"),
    ("Connection refused", "cannot reach the consortium"),
    ("Sent successfully", "connected (last reply sent)"),
    ("Received successfully", "connected, working on a message"),
    ("SuperNode ID:", "connected and activated, waiting for work"),
    ("Starting Flower SuperNode", "starting"),
)


def connection_state(log_path: Path) -> str:
    if not log_path.is_file():
        return "unknown (no log yet)"
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-400:]
    for line in reversed(lines):
        for mark, meaning in CONNECTION_MARKS:
            if mark in line:
                return meaning
    return "unknown"


def health(address: str) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as exc:
            return f"unreachable ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def status(root: Path) -> dict[str, Any]:
    home = AgencyHome(root)
    node = home.node()
    state: dict[str, Any] = {"agency": node.name, "consortium": node.consortium}
    saved = (json.loads(home.status_path.read_text(encoding="utf-8"))
             if home.status_path.is_file() else {})
    pids = saved.get("pids", {})
    alive = {k: _alive(int(v)) for k, v in pids.items()}
    state["processes"] = alive or "never started"
    state["health"] = health(f"127.0.0.1:{node.health_port}")
    state["connection"] = (connection_state(home.logs / "supernode.log")
                           if any(alive.values()) else "not running")
    try:
        policy: Policy | None = load_policy(root)
    except LedgerError:
        policy = None
    datasets = []
    state["ledger"] = "ok"
    try:
        with Ledger.open(root, create=False) as ledger:
            report = ledger.report(policy)
    except LedgerError as exc:  # refused: say so, never show "nothing spent" instead
        state["ledger"] = f"REFUSED: {exc}"
        report = []
    for item in report:
        last = item["releases"][-1] if item["releases"] else None
        datasets.append({
            "dataset": item["dataset"], "unit": item["unit"], "delta": item["delta"],
            "epsilon": item["epsilon"], "remaining": item["remaining"],
            "last_round": None if last is None else {
                "run": last["run_id"], "round": last["round"], "at": last["recorded_at"],
                "status": last["status"]},
        })
    state["datasets"] = datasets
    state["budget"] = None if policy is None else {
        "max_epsilon": policy.max_epsilon, "delta": policy.delta,
        "accountant": policy.accountant}
    state["consortium_key"] = key_fingerprint(load_public_key(home.consortium_key))
    state["local"] = _last_local(root, policy)
    try:
        state["approvals"] = approvals.describe(root)
    except HeroesError as exc:  # a broken log: the node refuses everything until it is fixed
        state["approvals"] = f"BROKEN: {exc}"
    state["permissions"] = loose_permissions(root)
    return state


#: Files in the state folder that are public by nature (what the node sends, what it was
#: sent): others may read them, never change them. Flower's own folder of installed
#: bundles is Flower's, with the modes Flower sets.
PUBLIC_FILES = frozenset({"node.key.pub", "consortium-ca.crt", "consortium-signing.pub",
                          "roster.json", "roster.json.sig"})
NOT_OURS = frozenset({"flwr-home"})
MAX_PERMISSION_WARNINGS = 20


def loose_permissions(root: Path) -> list[str]:
    """A warning, with its fix, for the state folder and every file and folder in it that
    others than the node's user can read (key, ledger and head, receipts, approvals,
    consultations, local figures, feature caches, logs, ...): a node makes them 0600 and
    0700 at birth (federation/files.py), so a looser mode was set by someone later, or
    the file was copied in. Never changes a mode itself."""
    out: list[str] = []
    found = loose_mode(root)
    if found:
        out.append(found)
    count = 0
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if here == root:
            dirs[:] = sorted(d for d in dirs if d not in NOT_OURS)
        else:
            dirs.sort()
        for name in [*dirs, *sorted(files)]:
            found = loose_mode(here / name, public=here == root and name in PUBLIC_FILES)
            if found:
                count += 1
                if count <= MAX_PERMISSION_WARNINGS:
                    out.append(found)
    if count > MAX_PERMISSION_WARNINGS:
        out.append(f"... and {count - MAX_PERMISSION_WARNINGS} more under {root}. Fix: "
                   f"chmod -R go-rwx {root}")
    return out


def _last_local(root: Path, policy: Policy | None) -> dict[str, Any]:
    """The last training and evaluation figures this node kept (clients/local_metrics.py):
    they stay here unless the policy shares them."""
    from clients import local_metrics

    out: dict[str, Any] = {"shared_with_consortium": bool(policy and policy.share_local_metrics)}
    for entry in local_metrics.read(root):
        out[entry["kind"]] = {k: entry[k] for k in ("run_id", "round", "status", "figures", "at")}
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
