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
import secrets
import shutil
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
from federation.errors import DataError, DeploymentError, HeroesError
from federation.ledger import Ledger, LedgerError, Policy, load_policy, write_policy
from federation.pki import check_certificate, make_node_key, parse_address
from federation.signing import key_fingerprint, load_public_key

BIN = Path(sys.executable).parent
DEFAULT_TASKS = ("advert-risk",)


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
        if not self.policy_path.is_file():
            raise DeploymentError(
                f"{self.root} is not an agency node folder (no policy.toml). Fix: run "
                f"`heroes agency init --dir {self.root} ...` first, or pass the right --dir")
        data = tomllib.loads(self.policy_path.read_text(encoding="utf-8"))
        if "node" not in data:
            raise DeploymentError(f"{self.policy_path} has no [node] section; it was not made "
                                  "by `heroes agency init`")
        n = data["node"]
        return NodeSettings(name=str(n["name"]), data_dir=Path(n["data_dir"]),
                            consortium=str(n["consortium"]),
                            allowed_tasks=tuple(n.get("allowed_tasks", DEFAULT_TASKS)),
                            runtime_port=int(n.get("runtime_port", 9094)),
                            health_port=int(n.get("health_port", 9098)),
                            dataset_id=str(n.get("dataset_id", "")))


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
    check_certificate(ca_cert, what="consortium CA certificate")
    load_public_key(consortium_key)  # refuse a missing or malformed key before writing
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_cert, home.ca_cert)
    shutil.copyfile(consortium_key, home.consortium_key)
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
    fd = os.open(home.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    home.logs.mkdir(exist_ok=True)
    return home


def validate_data(home: AgencyHome, node: NodeSettings) -> str:
    """Read and validate the whole export before anything connects; write the quarantine
    report. Returns a one-line summary; raises DataError when the export is unusable."""
    from federation.data import load_agency
    from federation.quarantine import write_quarantine_report

    if not node.data_dir.is_dir():
        raise DataError("the data folder does not exist", path=node.data_dir,
                        fix=f"put the export there, or correct data_dir in {home.policy_path}")
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
        self.home.logs.mkdir(exist_ok=True)
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
            with (self.home.logs / f"{name}.log").open("ab") as out:
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
        tmp = self.home.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=2), encoding="utf-8")
        tmp.replace(self.home.status_path)

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
    return state


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
