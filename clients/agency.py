"""An agency's node in a real deployment: its folder, its key, its processes.

    STATE_DIR/                 (the node's state folder; back it up, keep it private)
      policy.toml              [privacy_budget] (the ledger's budget, per dataset) and [node]
                               (consortium address, allowed tasks, local ports, and the
                               export of each task: data_dir for advert-risk, or one
                               [node.datasets."<task>"] table per task)
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients import approvals
from clients import node_config as nc
from federation.errors import ConfigError, DataError, DeploymentError, HeroesError, Rule
from federation.files import loose_mode, open_private, private_dir, write_atomic
from federation.ledger import HEAD_FILE as LEDGER_HEAD_FILE
from federation.ledger import (
    LEDGER_FILE,
    Ledger,
    LedgerError,
    Policy,
    load_policy,
    write_policy,
)
from federation.monitoring import CRITICAL, OK, WARNING, Finding, grpc_health
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
_EXPORTS = "a table of one table per task"
_DATASETS_EXAMPLE = ('[node.datasets."conversation-risk"] with data_dir = "/srv/heroes/chats" '
                     '(and optionally dataset_id = "eu-police-north/chats-2026")')
#: [node] key -> (kind, required, example for the fix). A node needs a data folder: the
#: advert-risk export's ``data_dir``, or a [node.datasets."<task>"] table, or both.
NODE_KEYS: dict[str, tuple[str, bool, str]] = {
    "name": (_STRING, True, 'name = "eu-police-north"'),
    "data_dir": (_STRING, False, 'data_dir = "/srv/heroes/export"'),
    "consortium": (_STRING, True, 'consortium = "fl.consortium.example:9092"'),
    "allowed_tasks": (_TASKS, False, 'allowed_tasks = ["advert-risk"]'),
    "runtime_port": (_INTEGER, False, "runtime_port = 9094"),
    "health_port": (_INTEGER, False, "health_port = 9098"),
    "dataset_id": (_STRING, False, 'dataset_id = "eu-police-north/adverts-2026"'),
    "datasets": (_EXPORTS, False, _DATASETS_EXAMPLE),
}
#: [node.datasets."<task>"] key -> required
EXPORT_KEYS = {"data_dir": True, "dataset_id": False}


@dataclass(frozen=True)
class TaskExport:
    """One task's export at this node: its folder and its ledger key ("" for the default,
    agency/fingerprint of the training file)."""

    data_dir: Path
    dataset_id: str = ""


@dataclass(frozen=True)
class NodeSettings:
    name: str
    #: The advert-risk export of a node configured before several tasks (``data_dir``);
    #: None when every export is in [node.datasets].
    data_dir: Path | None
    consortium: str
    allowed_tasks: tuple[str, ...]
    runtime_port: int
    health_port: int
    dataset_id: str
    #: [node.datasets."<task>"]: the exports of the tasks named there.
    datasets: Mapping[str, TaskExport] = field(default_factory=dict)

    def exports(self) -> dict[str, TaskExport]:
        """Every task's export, ``data_dir`` included as advert-risk's."""
        out = dict(self.datasets)
        if self.data_dir is not None:
            out[nc.LEGACY_TASK] = TaskExport(self.data_dir, self.dataset_id)
        return dict(sorted(out.items()))


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
    exports = _parse_exports(n, problems)
    ports = [n.get(k) for k in ("runtime_port", "health_port")]
    if ports[0] is not None and ports[0] == ports[1] and isinstance(ports[0], int):
        problems.append(f"[{NODE_SECTION}] runtime_port and health_port are both {ports[0]}; "
                        "two services cannot share a port. Fix: give them different ports")
    if problems:
        raise ConfigError(problems, source=source)
    return NodeSettings(name=n["name"],
                        data_dir=Path(n["data_dir"]) if "data_dir" in n else None,
                        consortium=n["consortium"],
                        allowed_tasks=tuple(n.get("allowed_tasks", DEFAULT_TASKS)),
                        runtime_port=n.get("runtime_port", 9094),
                        health_port=n.get("health_port", 9098),
                        dataset_id=n.get("dataset_id", ""), datasets=exports)


def _parse_exports(n: dict[str, Any], problems: list[str]) -> dict[str, TaskExport]:
    """[node.datasets]: one table per task, each with data_dir (and dataset_id). A table
    is named by its place in the file, never by what the agency wrote (its task name may
    be mistyped with anything in it); the values' problems come from _node_value_problem.
    A task with a folder must be allowed, and advert-risk has one folder, not two."""
    where = f"[{NODE_SECTION}.datasets]"
    tables = n.get("datasets", {})
    allowed = n.get("allowed_tasks", list(DEFAULT_TASKS))
    out: dict[str, TaskExport] = {}
    if isinstance(tables, dict):
        for number, (task, table) in enumerate(tables.items(), start=1):
            place = f"{where}: table {number} (counting from 1, in file order)"
            if not _TASK_NAME.match(task):
                problems.append(f"{place} is not named after a task (lower-case letters, "
                                "digits, '-', '_' or '.', at most 64). Fix: e.g. "
                                + _DATASETS_EXAMPLE)
                continue
            if not isinstance(table, dict):
                problems.append(f"{place} must be a table, not {toml_type(table)}. Fix: e.g. "
                                + _DATASETS_EXAMPLE)
                continue
            bad = False
            unknown = set(table) - set(EXPORT_KEYS)
            if unknown:  # counted, not shown: whatever a mistyped key holds stays here
                problems.append(f"{place} has {len(unknown)} key(s) that are not known; "
                                f"allowed: {sorted(EXPORT_KEYS)}. Fix: correct their spelling "
                                "or remove them")
                bad = True
            for key, required in EXPORT_KEYS.items():
                if key not in table:
                    if required:
                        problems.append(f"{place} has no {key}. Fix: e.g. {_DATASETS_EXAMPLE}")
                        bad = True
                    continue
                problem = _node_value_problem(key, _STRING, table[key])
                if problem:
                    problems.append(f"{place}: {key} {problem}. Fix: e.g. {_DATASETS_EXAMPLE}")
                    bad = True
            if isinstance(allowed, list) and task not in allowed:
                problems.append(f"{place} names an export for a task that is not in "
                                f"allowed_tasks. Fix: add the task to [{NODE_SECTION}] "
                                "allowed_tasks if the agency agrees to train it, or remove "
                                "the table")
                bad = True
            if task == nc.LEGACY_TASK and "data_dir" in n:
                problems.append(f"{place} gives advert-risk a data folder and so does "
                                f"[{NODE_SECTION}] data_dir; a task reads one export. Fix: "
                                "keep one of the two")
                bad = True
            if not bad:
                out[task] = TaskExport(Path(table["data_dir"]), table.get("dataset_id", ""))
    if "dataset_id" in n and "data_dir" not in n:
        problems.append(f"[{NODE_SECTION}] dataset_id names the dataset of data_dir, which is "
                        "missing. Fix: add data_dir, or move dataset_id into the task's "
                        f"table, e.g. {_DATASETS_EXAMPLE}")
    if "data_dir" not in n and not tables:
        problems.append(f"[{NODE_SECTION}] has no data folder. Fix: add `data_dir = "
                        f'"/srv/heroes/export"` (the advert-risk export) or, per task, '
                        + _DATASETS_EXAMPLE)
    return out


def _node_value_problem(key: str, kind: str, value: object) -> str | None:
    """What is wrong with one [node] value, without showing it."""
    if kind == _INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number (without quotes), not {toml_type(value)}"
        if not 1 <= value <= 65535:
            return f"={value} is not a port; it must be in 1-65535"
        return None
    if kind == _EXPORTS:
        if not isinstance(value, dict):
            return f"must be {_EXPORTS}, not {toml_type(value)}"
        return None  # each table is checked by _parse_exports
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


def init(root: Path, *, name: str, data_dir: Path | None, consortium: str, ca_cert: Path,
         consortium_key: Path, policy: Policy, allowed_tasks: list[str], runtime_port: int,
         health_port: int, dataset_id: str = "",
         datasets: Mapping[str, TaskExport] | None = None) -> AgencyHome:
    """Make the node key, install the consortium's CA and key, write the policy.

    ``data_dir`` (and ``dataset_id``) is the advert-risk export, as nodes had before several
    tasks; ``datasets`` gives any task its own export and dataset id."""
    home = AgencyHome(root)
    if home.policy_path.exists() or home.node_key.exists():
        raise DeploymentError(
            f"{root} already holds a node (policy.toml or node.key exists); refusing to "
            "overwrite its key and ledger. Use another --dir")
    parse_address(consortium, what="consortium address")
    exports = {task: TaskExport(e.data_dir.resolve(), e.dataset_id)
               for task, e in sorted((datasets or {}).items())}
    node: dict[str, Any] = {"name": name, "consortium": consortium,
                            "allowed_tasks": list(allowed_tasks),
                            "runtime_port": runtime_port, "health_port": health_port}
    if data_dir is not None:
        node["data_dir"] = str(data_dir.resolve())
    if dataset_id:
        node["dataset_id"] = dataset_id
    if exports:
        node["datasets"] = {task: {"data_dir": str(e.data_dir),
                                   **({"dataset_id": e.dataset_id} if e.dataset_id else {})}
                            for task, e in exports.items()}
    parse_node({NODE_SECTION: node}, source="the node settings given")  # before writing
    check_certificate(ca_cert, what="consortium CA certificate")
    load_public_key(consortium_key)  # refuse a missing or malformed key before writing
    private_dir(root)  # 0700 when this makes it; an existing folder keeps its mode
    # copies 0600 like everything the node keeps: nobody else may swap the CA or the key
    write_atomic(home.ca_cert, ca_cert.read_bytes())
    write_atomic(home.consortium_key, consortium_key.read_bytes())
    write_policy(root, policy)
    with home.policy_path.open("a", encoding="utf-8") as f:
        f.write(_node_toml(node))
    make_node_key(home.node_key, home.node_pub, comment=f"heroes-fl node {name}")
    fd = open_private(home.secret, os.O_WRONLY | os.O_EXCL)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    private_dir(home.logs)
    return home


def task_exports(data: list[str], dataset_ids: list[str]) -> dict[str, TaskExport]:
    """``--data TASK=DIR`` and ``--task-dataset-id TASK=ID`` (each repeatable) as one
    export per task. A task named twice, or an id for a task without a folder, is an
    error, since the node would not know which one was meant."""
    def pairs(values: list[str], flag: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for value in values:
            task, sep, rest = value.partition("=")
            if not sep or not task or not rest:
                raise ConfigError([f"{flag} takes TASK=VALUE, e.g. {flag} "
                                   "conversation-risk=..."], source="the command line")
            if task in out:
                raise ConfigError([f"{flag} names task {task!r} twice; a task has one"],
                                  source="the command line")
            out[task] = rest
        return out

    folders, ids = pairs(data, "--data"), pairs(dataset_ids, "--task-dataset-id")
    stray = sorted(set(ids) - set(folders))
    if stray:
        raise ConfigError([f"--task-dataset-id names {stray} without a --data folder. Fix: "
                           "add --data TASK=DIR for each"], source="the command line")
    return {task: TaskExport(Path(folder), ids.get(task, "")) for task, folder in
            folders.items()}


def _node_toml(node: dict[str, Any]) -> str:
    """The [node] section (and one [node.datasets."<task>"] table per task), appended to
    the policy file write_policy wrote."""
    lines = ["", f"[{NODE_SECTION}]"]
    for key in ("name", "data_dir", "consortium"):
        if key in node:
            lines.append(f"{key} = {_toml_str(node[key])}")
    lines.append(f"allowed_tasks = [{', '.join(_toml_str(t) for t in node['allowed_tasks'])}]")
    lines += [f"runtime_port = {node['runtime_port']}", f"health_port = {node['health_port']}"]
    if "dataset_id" in node:
        lines.append(f"dataset_id = {_toml_str(node['dataset_id'])}")
    for task, table in node.get("datasets", {}).items():
        lines += ["", f"[{NODE_SECTION}.datasets.{_toml_str(task)}]"]
        lines += [f"{key} = {_toml_str(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def validate_data(home: AgencyHome, node: NodeSettings) -> str:
    """Read and validate every task's whole export before anything connects, each through
    its task's own record schema; write the quarantine reports (advert-risk's in the state
    folder, as before; another task's in quarantine/<task>/). Returns a summary, a line per
    task; raises DataError when an export is unusable, TaskError for a task this version
    does not know."""
    lines = []
    for task, export in node.exports().items():
        lines.append(f"{task}: {_validate_export(home, task, export.data_dir)}")
    for task in node.allowed_tasks:
        if task not in node.exports():
            lines.append(f"{task}: allowed, but no data folder: its rounds are refused until "
                         f'[{NODE_SECTION}.datasets."{task}"] data_dir names its export')
    return "\n".join(lines)


def _validate_export(home: AgencyHome, task: str, data_dir: Path) -> str:
    from federation.quarantine import write_quarantine_report

    if not data_dir.is_dir():
        raise DataError(Rule("the data folder does not exist", "put the export there, or "
                             "correct data_dir in the node's policy.toml ([node], or the "
                             "task's [node.datasets] table)"), file=data_dir)
    if task == nc.LEGACY_TASK:
        from federation.data import load_agency

        data: Any = load_agency(data_dir)
        out = home.root
    else:
        from federation.tasks import get_task

        data = get_task(task, {}).load(data_dir)  # the task's own schema and limits
        out = home.root / "quarantine" / task
    summary = (f"export of {data.agency}: {len(data.train)} training and {len(data.test)} test "
               f"rows usable, {data.train.rejected_total + data.test.rejected_total} set aside")
    report = write_quarantine_report(data, out)
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
    """The SuperNode's --node-config: the keys of clients/node_config.py, which the
    ClientApp reads (clients/node.py)."""
    items = {nc.STATE_DIR: str(home.root.resolve()),
             nc.ALLOWED_TASKS: ",".join(node.allowed_tasks)}
    if node.data_dir is not None:
        items[nc.DATA_DIR] = str(node.data_dir)
        if node.dataset_id:
            items[nc.DATASET_ID] = node.dataset_id
    for task, export in node.datasets.items():
        items[nc.task_data_dir_key(task)] = str(export.data_dir)
        if export.dataset_id:
            items[nc.task_dataset_id_key(task)] = export.dataset_id
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
    # A revoked key: the gateway answers 401 and Flower's SuperNode signals itself to stop;
    # it exits 0 ("terminated gracefully"), or by that signal when its shutdown is cut short.
    if (code == 0 and "terminated gracefully" in log_text) or "401 Unauthorized" in log_text:
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
    return grpc_health(address)


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
    report = []
    if not (root / LEDGER_FILE).exists() and not (root / LEDGER_HEAD_FILE).exists():
        pass  # a node that never trained: nothing spent (a head without its ledger is not)
    else:
        try:
            with Ledger.open(root, create=False) as ledger:
                report = ledger.report(policy)
        except LedgerError as exc:  # refused: say so, never show "nothing spent" instead
            state["ledger"] = f"REFUSED: {exc}"
    for item in report:  # one per (task, dataset) stream; budgets are per dataset
        last = item["releases"][-1] if item["releases"] else None
        datasets.append({
            "task": item["task"], "dataset": item["dataset"], "unit": item["unit"],
            "delta": item["delta"], "epsilon": item["epsilon"],
            "stream_epsilon": item["stream_epsilon"],
            "tasks_on_dataset": item["tasks_on_dataset"],
            "budget": item.get("budget"), "remaining": item.get("remaining"),
            "last_round": None if last is None else {
                "run": last["run_id"], "round": last["round"], "at": last["recorded_at"],
                "status": last["status"]},
        })
    state["datasets"] = datasets
    state["budget"] = None if policy is None else {
        "max_epsilon": policy.max_epsilon, "delta": policy.delta,
        "accountant": policy.accountant, "datasets": dict(policy.dataset_budgets)}
    state["tasks"] = {task: {"data_dir": str(e.data_dir), "dataset_id": e.dataset_id or None}
                      for task, e in node.exports().items()}
    state["allowed_tasks"] = list(node.allowed_tasks)
    state["consortium_key"] = key_fingerprint(load_public_key(home.consortium_key))
    state["local"] = _last_local(root, policy)
    try:
        state["approvals"] = approvals.describe(root)
    except HeroesError as exc:  # a broken log: the node refuses everything until it is fixed
        state["approvals"] = f"BROKEN: {exc}"
    state["permissions"] = loose_permissions(root)
    return state


#: The share of a dataset's budget left below which status warns (it is critical at none).
BUDGET_WARNING_SHARE = 0.1


def assess(state: dict[str, Any], *, budget_warning: float = BUDGET_WARNING_SHARE
           ) -> list[Finding]:
    """What ``status`` found, as monitoring findings (federation/monitoring.py): CRITICAL
    where the node cannot take part (a process down, health not serving, refused by the
    consortium, its ledger or approvals refused, a budget spent), WARNING where it may
    soon not (not connected yet, a budget nearly spent, files others can read)."""
    out: list[Finding] = []
    procs = state["processes"]
    if not isinstance(procs, dict):
        out.append(Finding(CRITICAL, "processes", "the node was never started. Fix: "
                           "`heroes agency serve` (or its systemd unit)"))
    else:
        down = sorted(k for k, up in procs.items() if not up)
        out.append(Finding(CRITICAL, "processes", f"not running: {', '.join(down)}. Fix: "
                           "restart the node (`heroes agency serve`); its logs are in "
                           "logs/") if down else
                   Finding(OK, "processes", f"running: {', '.join(sorted(procs))}"))
    health = str(state["health"])
    out.append(Finding(OK if health == "SERVING" else CRITICAL, "health",
                       health if health == "SERVING" else f"{health}: the SuperNode's health "
                       "endpoint does not answer SERVING"))
    connection = str(state["connection"])
    if connection.startswith("connected"):
        out.append(Finding(OK, "connection", connection))
    elif connection.startswith(("refused by the consortium", "TLS failed")):
        out.append(Finding(CRITICAL, "connection", connection))
    else:
        out.append(Finding(WARNING, "connection", connection))
    ledger = str(state["ledger"])
    out.append(Finding(OK if ledger == "ok" else CRITICAL, "ledger", ledger))
    approvals_state = str(state["approvals"])
    out.append(Finding(CRITICAL if approvals_state.startswith("BROKEN") else OK, "approvals",
                       approvals_state))
    for d in state["datasets"]:
        budget, remaining = d.get("budget"), d.get("remaining")
        name = f"budget {d['task']}/{d['dataset']}"
        if not isinstance(budget, int | float) or not isinstance(remaining, int | float):
            continue
        if remaining <= 0:
            out.append(Finding(CRITICAL, name, f"spent ({remaining:.3g} of {budget:g} left): "
                               "the node refuses every further round on this dataset. Fix: "
                               "the agency's data-protection officer decides (a new budget "
                               "period in policy.toml, or no more training)"))
        elif remaining < budget_warning * budget:
            out.append(Finding(WARNING, name, f"{remaining:.3g} of {budget:g} left (under "
                               f"{budget_warning:.0%})"))
        else:
            out.append(Finding(OK, name, f"{remaining:.3g} of {budget:g} left"))
    for warning in state["permissions"]:
        out.append(Finding(WARNING, "permissions", warning))
    return out


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
