"""The real deployment on loopback: `heroes consortium serve` (a TLS SuperLink on a private
port behind the Fleet-only nginx gateway), three `heroes agency serve` nodes with enrolled keys,
signed app bundles, and everything that must be refused. Real processes, real certificates,
127.0.0.1 only; every process is stopped by its PID at the end."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from federation.appsign import sign_bundle
from federation.ledger import Ledger
from federation.signing import generate_signing_key, load_private_key
from simulation.generator import generate_federation, load_preset
from tests._heroes import HEROES
from tests._wait import DEADLINE_S, RUN_DEADLINE_S, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CANARY = "ZQXCANARY7731"
# round_timeout: generous, for a loaded 2-core CI machine (a round takes about 30 s here)
RUN_CONFIG = ("strategy.num_rounds=2 privacy.target_delta=1e-4 strategy.min_nodes=3 "
              "strategy.quorum=3 strategy.round_timeout=300")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def heroes(*args: str, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEROES, *args], env=env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def nodes_logs(deployment: Deployment, chars: int = 2500) -> str:
    """The end of every node's own logs, for a failure message: what a node that did not
    answer was doing."""
    parts = []
    for agency in deployment.agencies:
        for name in ("supernode", "superexec"):
            path = deployment.state(agency) / "logs" / f"{name}.log"
            if path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")
                parts.append(f"\n--- {agency} {name}.log (end) ---\n{text[-chars:]}")
    return "".join(parts)


def plant_canaries(agency_dir: Path) -> None:
    """Put the marker into the text and id of a few training adverts."""
    manifest = json.loads((agency_dir / "manifest.json").read_text())
    path = agency_dir / manifest["train"]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        for i, row in enumerate(rows[:5]):
            row["text"] = f"{row['text']} {CANARY}"
            row["advert_id"] = f"{CANARY}-{i}"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        out = []
        for i, line in enumerate(lines):
            rec = json.loads(line)
            if i < 5:
                rec["text"] = f"{rec['text']} {CANARY}"
                rec["advert_id"] = f"{CANARY}-{i}"
            out.append(json.dumps(rec))
        path.write_text("\n".join(out) + "\n", encoding="utf-8")


@dataclass
class Deployment:
    tmp: Path
    cons: Path
    public: str
    agencies: list[str]
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def state(self, agency: str) -> Path:
        return self.tmp / "state" / agency

    def start(self, name: str, args: list[str]) -> subprocess.Popen[str]:
        with (self.tmp / f"{name}.out").open("w") as log:  # the child keeps its own copy
            proc = subprocess.Popen([*HEROES, *args], env=env(), stdout=log,
                                    stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.out").read_text()

    def init_agency(self, agency: str, data: Path) -> None:
        """The first agency is set up from a startup kit (`consortium provision`, then
        `agency init --kit` with the fingerprint), the others from the separate files."""
        common = ["--dir", str(self.state(agency)), "--data-dir", str(data),
                  "--max-epsilon", "10", "--delta", "1e-4",
                  "--runtime-port", str(free_port()), "--health-port", str(free_port())]
        if agency == self.agencies[0]:
            kit = self.tmp / f"{agency}.heroes-kit"
            r = heroes("consortium", "provision", agency, "--dir", str(self.cons),
                       "--out", str(kit))
            assert r.returncode == 0, r.stderr
            fingerprint = json.loads(kit.read_text())["fingerprints"]["signing_key"]
            r = heroes("agency", "init", "--kit", str(kit), "--fingerprint", fingerprint,
                       *common)
        else:
            r = heroes("agency", "init", "--name", agency, "--consortium", self.public,
                       "--ca-cert", str(self.cons / "tls" / "ca.crt"),
                       "--consortium-key", str(self.cons / "signing.pub"), *common)
        assert r.returncode == 0, r.stderr

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def child_pids(self) -> list[int]:
        pids = []
        for status in (self.tmp / "state").glob("*/node-status.json"):
            pids += [int(p) for p in json.loads(status.read_text())["pids"].values()]
        agg = self.cons / "aggregator.json"
        if agg.is_file():
            pids.append(int(json.loads(agg.read_text())["superlink_pid"]))
        return pids

    def gateway_pid(self) -> int:
        """nginx's master; it leads its own process group (its workers)."""
        return int(json.loads((self.cons / "aggregator.json").read_text())["gateway_pid"])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("deploy")
    manifest = generate_federation(load_preset(ROOT / "configs/federation/three_agency.yaml"),
                                   tmp / "data", seed=5)
    for agency in manifest.agencies:
        plant_canaries(tmp / "data" / "agencies" / agency)
    public = f"127.0.0.1:{free_port()}"
    cons = tmp / "consortium"
    r = heroes("consortium", "init", "--dir", str(cons), "--public-address", public,
               "--private-port", str(free_port()), "--health-port", str(free_port()))
    assert r.returncode == 0, r.stderr
    dep = Deployment(tmp, cons, public, list(manifest.agencies))
    try:
        dep.start("consortium", ["consortium", "serve", "--dir", str(cons)])
        wait_for(lambda: "aggregator up" in dep.output("consortium"), "the aggregator",
                 seen=lambda: dep.output("consortium")[-3000:])
        for agency in dep.agencies:
            dep.init_agency(agency, tmp / "data" / "agencies" / agency)
            r = heroes("consortium", "enroll", agency,
                       str(dep.state(agency) / "node.key.pub"), "--dir", str(cons))
            assert r.returncode == 0, r.stdout + r.stderr
            dep.start(agency, ["agency", "serve", "--dir", str(dep.state(agency))])
        for agency in dep.agencies:
            wait_for(lambda a=agency: "running" in dep.output(a), f"node {agency}",
                     seen=lambda a=agency: dep.output(a)[-3000:])
        # every agency approves the consortium's signed roster (its peers under secure
        # aggregation); bundles are approved in the tests, after one is refused unapproved
        r = heroes("consortium", "roster", "--dir", str(cons))
        assert r.returncode == 0, r.stdout + r.stderr
        for agency in dep.agencies:
            r = heroes("agency", "approve", str(cons / "roster.json"), "--dir",
                       str(dep.state(agency)), "--yes")
            assert r.returncode == 0, r.stdout + r.stderr
        yield dep
    finally:
        for name in list(dep.procs):
            dep.stop(name)
        for pid in dep.child_pids():  # belt and braces: nothing may outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if (cons / "aggregator.json").is_file():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(dep.gateway_pid(), signal.SIGKILL)


def ledger_rows(state: Path) -> int:
    if not (state / "privacy-ledger.sqlite").exists():
        return 0
    with Ledger.open(state, create=False) as ledger:
        return len(ledger.rows())


def _http(address: str, path: str, ca: Path) -> bytes:
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, int(port)), timeout=DEADLINE_S) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: "
                    "application/protobuf\r\ncontent-length: 0\r\n\r\n".encode())
        return tls.recv(4096)


def _consortium_status(deployment: Deployment) -> tuple[int, dict[str, Any]]:
    r = heroes("consortium", "status", "--dir", str(deployment.cons), "--json")
    return r.returncode, json.loads(r.stdout)


def test_status_names_every_agency_online_and_nothing_is_critical(deployment: Deployment
                                                                   ) -> None:
    """Issue 17 item 6 on a real aggregator: agencies by name (the registry's node ids
    matched to the SuperLink's own node list), no node the registry does not name, and
    Nagios exit codes below CRITICAL on both sides while everything runs."""
    def online() -> bool:
        return all(a["state"] == "online" for a in _consortium_status(deployment)[1]["agencies"])

    wait_for(online, "every agency online in `consortium status`",
             seen=lambda: _consortium_status(deployment)[1]["agencies"])
    code, s = _consortium_status(deployment)
    assert code in (0, 1), s["monitoring"]
    assert sorted(a["agency"] for a in s["agencies"]) == sorted(deployment.agencies)
    assert s["health"] == "SERVING" and all(s["processes"].values())
    assert s["unknown_nodes"] == [] and s["roster"]["current"]
    for agency in deployment.agencies:
        r = heroes("agency", "status", "--dir", str(deployment.state(agency)), "--json")
        assert r.returncode in (0, 1), json.loads(r.stdout)["monitoring"]


def test_agency_facing_address_refuses_runs_and_key_registration(deployment: Deployment
                                                                  ) -> None:
    ca = deployment.cons / "tls" / "ca.crt"
    for path in ("/v1/control/start-run", "/v1/control/register-node",
                 "/v1/fleet/register-node", "/v1/runtime/pull-messages"):
        assert _http(deployment.public, path, ca).startswith(b"HTTP/1.1 403"), path
    # and through Flower's own CLI, pointed at the public address
    home = deployment.tmp / "attacker-flwr-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "public"\n\n[superlink.public]\naddress = '
        f'"{deployment.public}"\nroot-certificates = "{ca}"\n')
    e = {**env(), "FLWR_HOME": str(home)}
    run = subprocess.run([str(BIN / "flwr"), "run", str(ROOT), "public"], env=e,
                         capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    assert run.returncode != 0
    assert "Successfully started run" not in run.stdout
    key = deployment.tmp / "intruder"
    key.mkdir(exist_ok=True)
    from federation.pki import make_node_key
    make_node_key(key / "k", key / "k.pub", comment="intruder")
    reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(key / "k.pub"),
                          "public"], env=e, capture_output=True, text=True, timeout=DEADLINE_S,
                         check=False)
    assert reg.returncode != 0
    assert "registered successfully" not in reg.stdout
    # the private address does serve the Control API (the gateway is not blocking everything)
    private = json.loads((deployment.cons / "aggregator.json").read_text())["private"]
    assert not _http(private, "/v1/control/list-runs", ca).startswith(b"HTTP/1.1 403")


def test_bundle_signed_by_another_key_is_refused_by_every_node(deployment: Deployment) -> None:
    from flwr.cli.build import build_fab_from_disk

    other = deployment.tmp / "other-key"
    generate_signing_key(other / "signing.key", other / "signing.pub")
    signature = sign_bundle(load_private_key(other / "signing.key"), build_fab_from_disk(ROOT))
    assert base64.b64decode(signature)
    e = {**env(), "FLWR_HOME": str(deployment.cons / "flwr-home")}
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "consortium", "--stream", "--run-config",
         f'{RUN_CONFIG} paths.output_dir="{deployment.tmp / "forged"}" '
         f'app.signature="{signature}"'],
        env=e, capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    text = proc.stdout + proc.stderr
    assert "node refused the app bundle" in text
    assert text.count("failed in training") == 3
    for agency in deployment.agencies:  # nothing ran: no privacy spent anywhere
        assert ledger_rows(deployment.state(agency)) == 0
        log = (deployment.state(agency) / "logs" / "superexec.log").read_text()
        assert "REFUSED app bundle" in log


def approve_bundle(deployment: Deployment) -> None:
    """Every agency approves the bundle `heroes consortium train` will submit, as a person
    would: from the .fab that `heroes consortium bundle` writes."""
    from clients.approvals import is_bundle_approved
    from federation.appsign import manifest_digest

    fab = deployment.tmp / "review" / "app.fab"
    r = heroes("consortium", "bundle", "--dir", str(deployment.cons), "--out", str(fab))
    assert r.returncode == 0, r.stdout + r.stderr
    digest = manifest_digest(fab.read_bytes())
    for agency in deployment.agencies:
        if not is_bundle_approved(deployment.state(agency), digest):
            r = heroes("agency", "approve", str(fab), "--dir", str(deployment.state(agency)),
                       "--yes")
            assert r.returncode == 0, r.stdout + r.stderr


def test_signed_bundle_runs_only_once_every_agency_approved_it(deployment: Deployment) -> None:
    """Signed by the consortium but not approved: every node refuses it, keeps it for review
    and spends nothing; each agency then approves it by the digest the refusal names."""
    from flwr.cli.build import build_fab_from_disk

    from federation.appsign import manifest_digest

    fab = build_fab_from_disk(ROOT)
    digest = manifest_digest(fab)
    signature = sign_bundle(load_private_key(deployment.cons / "signing.key"), fab)
    e = {**env(), "FLWR_HOME": str(deployment.cons / "flwr-home")}
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "consortium", "--stream", "--run-config",
         f'{RUN_CONFIG} paths.output_dir="{deployment.tmp / "unapproved"}" '
         f'app.signature="{signature}"'],
        env=e, capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    text = proc.stdout + proc.stderr
    assert "node refused the app bundle" in text and "has not approved it" in text
    assert f"heroes agency approve {digest[:16]}" in text
    assert text.count("failed in training") == 3
    for agency in deployment.agencies:
        state = deployment.state(agency)
        assert ledger_rows(state) == 0
        assert (state / "approvals" / "pending" / f"{digest}.fab").is_file()
        assert "REFUSED bundle kept for review" in (state / "logs" / "superexec.log").read_text()
        r = heroes("agency", "approve", digest[:16], "--dir", str(state), "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
        assert not (state / "approvals" / "pending" / f"{digest}.fab").exists()


def test_signed_dp_run_survives_an_aggregator_kill_and_every_ledger_shows_the_spend(
        deployment: Deployment) -> None:
    """A signed 2-round DP run; the aggregator (SuperLink and `serve`) is SIGKILLed after
    round 1's checkpoint, restarted, and `train --resume` finishes the run: two rounds,
    a continuous history, every agency's ledger shows the spend. The resumed run completes
    while the public address is under attack (tests/test_gateway.py): 200 slow clients,
    20 bodies of 100 MiB and garbage, from other loopback source addresses than the nodes'."""
    from server.fleet_gateway import DEFAULT_MAX_CONNECTIONS_PER_SOURCE, process_tree
    from tests.test_gateway import (
        GARBAGE_ANSWERS,
        GARBAGE_LOGGED,
        GARBAGE_SOURCE,
        MIB,
        SLOW_SOURCES,
        attack,
        refusals,
        statuses_from,
    )

    approve_bundle(deployment)  # done by the test before, unless this one runs alone
    out = deployment.tmp / "run1"
    train = deployment.start("train", ["consortium", "train", "--dir", str(deployment.cons),
                                       "--run-config", RUN_CONFIG, "--out", str(out)])
    wait_for(lambda: (out / "server" / "checkpoints" / "round-0001.pt").exists(),
             "round 1's checkpoint", seen=lambda: deployment.output("train")[-3000:])
    link = json.loads((deployment.cons / "aggregator.json").read_text())["superlink_pid"]
    os.kill(link, signal.SIGKILL)  # the aggregator machine "crashes"
    os.killpg(deployment.procs["consortium"].pid, signal.SIGKILL)
    deployment.procs.pop("consortium").wait()
    assert train.wait(timeout=DEADLINE_S) != 0  # the interrupted train says so
    assert f"--resume {out}" in deployment.output("train"), deployment.output("train")[-3000:]
    deployment.procs.pop("train")
    deployment.start("consortium", ["consortium", "serve", "--dir", str(deployment.cons)])
    wait_for(lambda: deployment.output("consortium").count("aggregator up") >= 1,
             "the restarted aggregator", seen=lambda: deployment.output("consortium")[-3000:])
    resumed = deployment.start("resume", ["consortium", "train", "--dir",
                                          str(deployment.cons), "--resume", str(out)])
    host, port = deployment.public.rsplit(":", 1)
    gateway = deployment.gateway_pid()
    report = attack(host, int(port), deployment.cons / "tls" / "ca.crt",
                    gateway_pids=lambda: process_tree(gateway))
    assert resumed.wait(timeout=RUN_DEADLINE_S) == 0, (
        deployment.output("resume")[-3000:] + nodes_logs(deployment))
    deployment.procs.pop("resume")
    # the console: one line per round, numbered as the run (round 2 of 2 after the resume),
    # none of Flower's own INFO lines; run.log: all of them, each with its time and run id
    console = deployment.output("resume")
    assert re.search(r"(?m)^heroes \S+ run \d+ INFO heroes\.server: round 2/2: ", console), \
        console[-3000:]
    assert "[ROUND" not in console and "configure_train" not in console
    logged = (out / "run.log").read_text(encoding="utf-8").splitlines()
    assert any("[ROUND 1/1]" in line for line in logged)  # Flower's count, in the log only
    stamped = re.compile(r"^(heroes )?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ run (\d+|-) ")
    assert all(stamped.match(line) for line in logged if line.strip()), logged[:5]
    # the gateway held: memory, idle connections, bodies, garbage, per-source caps
    print(report.summary())
    assert report.rss_peak - report.rss_before <= 64 * MIB, report.summary()
    assert report.slow_left_open == 0, report.summary()  # the timeouts closed every one
    assert {b.status for b in report.bodies} == {413}, report.summary()
    assert report.garbage == GARBAGE_ANSWERS, report.summary()
    logs = deployment.cons / "logs"
    wait_for(lambda: sorted(statuses_from(logs / "gateway.log", GARBAGE_SOURCE))
             == GARBAGE_LOGGED, "the malformed requests in the gateway's log",
             seen=lambda: statuses_from(logs / "gateway.log", GARBAGE_SOURCE))
    refused = refusals(logs / "gateway-error.log", "fleet_per_source")
    each = report.slow_opened // len(SLOW_SOURCES)
    for source in SLOW_SOURCES:  # 50 each against a cap of 32: only the excess is refused
        assert 1 <= refused.get(source, 0) <= each - DEFAULT_MAX_CONNECTIONS_PER_SOURCE, refused
    assert "127.0.0.1" not in refused  # the nodes were never throttled
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [rd["round"] for rd in rounds] == [1, 2]
    assert all(o["status"] == "ok" for rd in rounds for o in rd["train"])
    assert len(rounds[-1]["train"]) == 3
    # three agencies: every round was securely aggregated across real SuperNodes, training
    # and evaluation, and the consortium's record holds no agency's own figure
    for rd in rounds:
        for o in rd["train"] + rd["evaluate"]:
            assert o["status"] == "ok" and o["metrics"]["secure_sum"] == 1.0
            assert not {"epsilon", "train_loss", "roc_auc", "num-examples"} & set(o["metrics"])
        assert rd["train_aggregate"]["secure_sum"] == 1.0
        assert rd["evaluate_aggregate"]["secure_sum"] == 1.0
        assert 0.0 <= rd["evaluate_aggregate"]["roc_auc"] <= 1.0
        assert rd["evaluate_aggregate"]["agencies_in_sum"] == 3
    assert (out / "model.pt").is_file()
    from federation.appsign import manifest_digest
    assert manifest_digest((out / "app.fab").read_bytes()) == json.loads(
        (out / "app-bundle.json").read_text())["manifest_sha256"]
    eps = {}
    for agency in deployment.agencies:
        # 2 rounds, plus round 2 again if the agency had trained it before the kill
        assert 2 <= ledger_rows(deployment.state(agency)) <= 3
        status = heroes("agency", "status", "--dir", str(deployment.state(agency)), "--json")
        s = json.loads(status.stdout)
        assert s["health"] == "SERVING"
        assert s["datasets"][0]["last_round"]["round"] == 2
        eps[agency] = s["datasets"][0]["epsilon"]["rdp"]
        assert 0 < eps[agency] < 10
        assert s["datasets"][0]["remaining"] == pytest.approx(10 - eps[agency])
    # the agencies keep their own figures: each one's last local record is its ledger total
    from clients import local_metrics
    for agency in deployment.agencies:
        local = [e for e in local_metrics.read(deployment.state(agency))
                 if e["kind"] == "train" and e["status"] == "ok"]
        assert local[-1]["figures"]["epsilon"] == pytest.approx(eps[agency])
    # the consortium kept every agency's last attested ledger head (the last round's set-up):
    # an entry of that very ledger, which the agency's later entries extend
    heads = json.loads((deployment.cons / "ledger-heads.json").read_text())["agencies"]
    for agency in deployment.agencies:
        with Ledger.open(deployment.state(agency), create=False) as ledger:
            seq, _ = ledger.head()
            assert heads[agency]["seq"] < seq
            assert ledger.hash_at(heads[agency]["seq"]) == heads[agency]["hash"]


def test_console_starts_stops_and_resumes_a_real_run(deployment: Deployment) -> None:
    """The consortium console's run actions against the real deployment (issue 17 item 3):
    start a 2-round run from a saved configuration, see its round line live, stop it after
    round 1, resume it, and it ends with both rounds; every action is logged."""
    from tests.test_consortium_console import _get, _post

    cons = deployment.cons
    configs = cons / "run-configs"
    configs.mkdir(mode=0o700, exist_ok=True)
    saved = configs / "two-rounds.toml"
    saved.write_text(f'run_config = "{RUN_CONFIG}"\ndescription = "the deployment test"\n')
    saved.chmod(0o600)
    token = deployment.tmp / "console.token"
    token.write_text("console-" + "z" * 30)
    token.chmod(0o600)
    port = free_port()
    deployment.start("console", ["consortium", "console", "--dir", str(cons), "--port",
                                 str(port), "--token-file", str(token)])
    bearer = {"Authorization": f"Bearer {token.read_text()}"}

    def up() -> bool:
        try:
            return _get(port, "/api/runs", bearer)[0] == 200
        except OSError:
            return False

    wait_for(up, "the console", seen=lambda: deployment.output("console"))

    def run_info(folder: str) -> dict[str, Any]:
        runs = json.loads(_get(port, "/api/runs", bearer)[1])["runs"]
        found: dict[str, Any] = next(r for r in runs if r["folder"] == folder)
        return found

    code, text, _ = _post(port, "/actions/start", json.dumps({"config": "two-rounds"}), bearer)
    assert code == 200, text
    folder = json.loads(text)["folder"]
    run = cons / "runs" / folder
    wait_for(lambda: (run / "server" / "checkpoints" / "round-0001.pt").exists(),
             "round 1 of the run the console started",
             seen=lambda: (run / "train.out").read_text()[-3000:])
    info = run_info(folder)
    assert info["state"] == "running" and info["run_id"], info
    code, text, _ = _post(port, "/actions/stop", json.dumps({"folder": folder}), bearer)
    assert code == 200, text
    wait_for(lambda: run_info(folder)["state"] == "stopped", "the stopped run",
             seen=lambda: (run / "train.out").read_text()[-3000:])
    assert any(p["text"].startswith("round 1/2: 3/3 agencies trained")
               for p in run_info(folder)["progress"]), run_info(folder)["progress"]
    assert run_info(folder)["resumable"]
    code, text, _ = _post(port, "/actions/resume", json.dumps({"folder": folder}), bearer)
    assert code == 200, text
    wait_for(lambda: run_info(folder)["state"] == "finished", "the resumed run to finish",
             deadline_s=RUN_DEADLINE_S,
             seen=lambda: (run / "train.out").read_text()[-3000:] + nodes_logs(deployment))
    rounds = json.loads((run / "metrics.json").read_text())["rounds"]
    assert [rd["round"] for rd in rounds] == [1, 2]
    assert all(o["status"] == "ok" for rd in rounds for o in rd["train"])
    actions = (cons / "logs" / "console-actions.log").read_text()
    for action in ("start", "stop", "resume"):
        assert f"token from 127.0.0.1 {action} {folder}" in actions, actions
    deployment.stop("console")


def test_consortium_files_are_owner_only(deployment: Deployment) -> None:
    """After serve, enrolments, rosters and runs: nothing in the consortium folder is open
    to other users, including what the SuperLink, its ServerApp and nginx created."""
    cons = deployment.cons
    for name in ("state.db", "ledger-heads.json", "logs/superlink.log", "logs/gateway.log",
                 "logs/gateway-error.log", "gateway/nginx.conf", "registry.json",
                 "tls/superlink.key", "signing.key", "aggregator.json"):
        assert stat.S_IMODE((cons / name).stat().st_mode) == 0o600, name
    for name in (".", "tls", "logs", "runs", "flwr-home", "gateway"):
        assert stat.S_IMODE((cons / name).stat().st_mode) == 0o700, name
    opened = [f"{p} {stat.S_IMODE(p.stat().st_mode):04o}" for p in [cons, *cons.rglob("*")]
              if not p.is_symlink() and p.stat().st_mode & 0o077]
    assert not opened, opened
    out = deployment.tmp / "run1"  # a run folder outside the consortium folder too
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "server" / "metrics.json").stat().st_mode) == 0o600


def test_canaries_never_reach_the_consortium(deployment: Deployment) -> None:
    seen = []
    for path in [*deployment.cons.rglob("*"), *(deployment.tmp / "run1").rglob("*")]:
        if path.is_file() and CANARY.encode() in path.read_bytes():
            seen.append(path)
    assert not seen, seen
    db = sqlite3.connect(deployment.cons / "state.db")
    try:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            for row in db.execute(f'SELECT * FROM "{table}"'):
                assert CANARY not in repr(row), table
    finally:
        db.close()
    # and the canaries were really in the agencies' data, read by their nodes
    assert any(CANARY in p.read_text(errors="ignore")
               for p in (deployment.tmp / "data").rglob("adverts_train.*"))


def test_unregistered_and_plaintext_nodes_are_refused(deployment: Deployment) -> None:
    data = deployment.tmp / "data" / "agencies" / deployment.agencies[0]
    deployment.init_agency("stranger", data)
    r = heroes("agency", "serve", "--dir", str(deployment.state("stranger")))
    assert r.returncode == 1
    assert "does not accept this node's key" in r.stderr
    r = heroes("agency", "serve", "--dir", str(deployment.state("stranger")), "--insecure")
    assert r.returncode == 2
    assert "WARNING: --insecure" in r.stderr
    assert "requires TLS" in r.stderr and "drop --insecure" in r.stderr


def test_revoked_node_is_refused_at_its_next_connection(deployment: Deployment) -> None:
    victim = deployment.agencies[1]
    r = heroes("consortium", "revoke", victim, "--dir", str(deployment.cons))
    assert r.returncode == 0, r.stderr
    proc = deployment.procs[victim]
    proc.wait(timeout=DEADLINE_S)  # the running node is turned away at its next request
    assert proc.returncode == 1
    assert "key was revoked" in deployment.output(victim)
    deployment.procs.pop(victim)
    r = heroes("agency", "serve", "--dir", str(deployment.state(victim)))
    assert r.returncode == 1  # and cannot come back
    assert "does not accept this node's key" in r.stderr
    registry = json.loads((deployment.cons / "registry.json").read_text())
    assert registry["agencies"][victim]["revoked_at"]
    # status names it revoked, and the signed roster as behind the registry
    _, status = _consortium_status(deployment)
    assert {a["agency"]: a["state"] for a in status["agencies"]}[victim] == "revoked"
    assert not status["roster"]["current"] and victim in status["roster"]["problem"]
