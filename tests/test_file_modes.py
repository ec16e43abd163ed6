"""File modes at birth: every folder a node creates is 0700 and every file it writes 0600,
whatever the umask, and `heroes agency status` names anything looser with its fix.

The node's own code writes each file here (ledger and head, receipts, approvals, roster,
local figures, feature cache, consultations, results, calibration, quarantine report, node
key, the deployed node's secret, status file and logs), under the umask of a careless
service account (0o022) and under none at all (0o000).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from cli.agency import status as status_command
from clients import agency, approvals, local_metrics, receipts
from clients.node import CACHE_DIR, cached_features
from clients.score import score_file
from federation.config import RunSettings
from federation.data import load_agency
from federation.files import PRIVATE_DIR, PRIVATE_FILE, loose_mode, private_dir, write_atomic
from federation.ledger import Ledger, Release
from federation.pki import make_ca, make_node_key
from federation.policy import Policy, write_policy
from federation.quarantine import write_quarantine_report
from federation.signing import generate_signing_key
from federation.tasks import get_task
from server.release import release_run
from server.server_app import write_outputs
from server.strategy import RunLog
from simulation.generator import generate_federation, load_preset
from simulation.run import approve_simulated_roster

ROOT = Path(__file__).resolve().parents[1]
TASK = get_task("advert-risk", {"num_buckets": 256})
FLAT = {"task.name": "advert-risk", "task.num_buckets": 256, "privacy.target_epsilon": 3.0,
        "privacy.target_delta": 1e-5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (itself included), relative path -> mode."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def assert_private(root: Path) -> dict[str, int]:
    found = modes(root)
    wrong = {}
    for rel, mode in found.items():
        path = root / rel
        want = PRIVATE_DIR if path.is_dir() else PRIVATE_FILE
        if mode != want:
            wrong[rel] = oct(mode)
    assert not wrong, f"not {oct(PRIVATE_FILE)}/{oct(PRIVATE_DIR)} at birth: {wrong}"
    return found


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fed")
    preset = load_preset(ROOT / "configs" / "federation" / "three_agency.yaml")
    generate_federation(replace(preset, scale=0.05), out, seed=3)
    return out / "agencies" / "es-police"


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("rel")
    generate_signing_key(tmp / "c.key", tmp / "c.pub")
    model = TASK.build_model()
    weights = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 256)))
    with torch.no_grad():
        model.net.weight.copy_(weights)  # type: ignore[union-attr, operator]
    write_outputs(tmp / "run", RunSettings.from_flat(FLAT), model.state_dict(), RunLog(), 0.0)
    return release_run(tmp / "run", signing_key=tmp / "c.key", out=tmp / "bundle"), tmp / "c.pub"


def write_everything(state: Path, export: Path, released: tuple[Path, Path]) -> None:
    """What a node writes into its state folder over its life, by the node's own code."""
    write_policy(state, Policy(max_epsilon=10.0, delta=1e-5))
    make_node_key(state / "node.key", state / "node.key.pub", comment="test")
    approve_simulated_roster(state.parent, [(state.name, state / "node.key.pub")])
    with Ledger.open(state) as ledger:
        rel = Release(dataset="es-police/abc", fingerprint="ab" * 32, run_id="1", round=1,
                      task="advert-risk", model="m", noise_multiplier=1.0, sample_rate=0.05,
                      steps=40, max_grad_norm=0.5, delta=1e-5, accountant="rdp")
        seq, _ = ledger.reserve(rel, Policy(max_epsilon=10.0, delta=1e-5))
        ledger.complete(seq)
        ledger.attest()  # ledger-reported.jsonl
    receipts.record_reply(state, agency="es-police", run_id="1", server_round=1,
                          task="advert-risk", message="train",
                          content=RecordDict({"m": MetricRecord({"x": 1.0})}), status="ok",
                          metrics={}, max_grad_norm=0.5, accountant="rdp")
    local_metrics.record(state, run_id="1", server_round=1, kind="train", status="ok",
                         reason="", figures={"loss": 0.5})
    approvals.keep_manifest(state, b"manifest")
    approvals.keep_pending(state, "ab" * 32, b"fab")
    data = load_agency(export)
    cached_features(TASK, "cd" * 32, list(data.train.texts[:20]), state / CACHE_DIR)
    write_quarantine_report(data, state)
    score_file(model=released[0], input_path=data.test.path, consortium_key=released[1],
               purpose="test", state_dir=state, calibrate_with=export)  # scores/, calibration/


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_every_file_a_node_writes_is_private_from_birth(
        tmp_path: Path, mask: int, export: Path, released: tuple[Path, Path]) -> None:
    state = tmp_path / "agency_state" / "es-police"
    with umask(mask):
        write_everything(state, export, released)
    found = assert_private(tmp_path / "agency_state")
    for name in ("es-police/privacy-ledger.sqlite", "es-police/ledger.head",
                 "es-police/ledger-reported.jsonl", "es-police/receipts.jsonl",
                 "es-police/receipts.head", "es-police/approvals.jsonl",
                 "es-police/approvals.head", "es-police/roster.json",
                 "es-police/local-metrics.jsonl", "es-police/consultations.jsonl",
                 "es-police/node.key", "es-police/node.key.pub", "es-police/policy.toml",
                 "es-police/feature-cache", "es-police/scores", "es-police/calibration",
                 "es-police/approvals/pending", "es-police/quarantine-report.json"):
        assert name in found, f"{name} was not written: the test no longer covers it"
    assert any(n.endswith(".npz") for n in found)
    assert agency.loose_permissions(state) == []


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_a_deployed_node_is_private_from_birth_and_status_warns_when_loosened(
        tmp_path: Path, mask: int, capsys: pytest.CaptureFixture[str]) -> None:
    make_ca(tmp_path / "ca.crt", tmp_path / "ca.key")
    generate_signing_key(tmp_path / "cons.key", tmp_path / "cons.pub")
    root = tmp_path / "srv" / "node"
    with umask(mask):
        agency.init(root, name="test-agency", data_dir=tmp_path / "export",
                    consortium="127.0.0.1:9", ca_cert=tmp_path / "ca.crt",
                    consortium_key=tmp_path / "cons.pub",
                    policy=Policy(max_epsilon=5, delta=1e-5), allowed_tasks=["advert-risk"],
                    runtime_port=free_port(), health_port=free_port())
        node = agency.Node(root)
        node._write_status("stopped")  # node-status.json
        private_dir(root / "logs")
    found = assert_private(tmp_path / "srv")
    assert {"node/superexec.secret", "node/node-status.json", "node/logs",
            "node/consortium-ca.crt"} <= set(found)
    assert agency.loose_permissions(root) == []
    # someone loosens the folder and the key; a public file becomes writable by others
    os.chmod(root, 0o755)
    os.chmod(root / "node.key", 0o644)
    os.chmod(root / "consortium-signing.pub", 0o666)
    os.chmod(root / "node.key.pub", 0o644)  # public: readable by others is fine
    warnings = agency.loose_permissions(root)
    assert len(warnings) == 3, warnings
    assert f"{root} is mode 0755" in warnings[0] and f"chmod 700 {root}" in warnings[0]
    assert any(f"chmod 600 {root / 'node.key'}" in w and "0644" in w for w in warnings)
    assert any("others can change it" in w and "consortium-signing.pub" in w for w in warnings)
    # the real command prints them first, with the path, the mode and the fix
    # (exit 2, CRITICAL: the node is stopped; the warnings are findings all the same)
    assert status_command(argparse.Namespace(dir=root, json=False)) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("HEROES-AGENCY CRITICAL - "), out[:1]
    assert out[2].startswith(f"  WARNING: {root} is mode 0755"), out[:3]
    assert any(f"Fix: chmod 600 {root / 'node.key'}" in line for line in out)
    # the node never changed a mode it did not set at birth
    assert stat.S_IMODE(root.stat().st_mode) == 0o755


def test_existing_folders_and_files_keep_their_modes(tmp_path: Path) -> None:
    """Created 0700/0600 at birth, never chmod'ed later: the owner's own modes stay (and
    status warns about them) rather than being silently changed."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / "local-metrics.jsonl").write_text("")
    os.chmod(state / "local-metrics.jsonl", 0o640)
    local_metrics.record(state, run_id="1", server_round=1, kind="train", status="ok",
                         reason="", figures={})
    assert stat.S_IMODE(state.stat().st_mode) == 0o755
    assert stat.S_IMODE((state / "local-metrics.jsonl").stat().st_mode) == 0o640
    assert "chmod 600" in (loose_mode(state / "local-metrics.jsonl") or "")
    with umask(0o000):
        private_dir(state / "a" / "b")
    assert stat.S_IMODE((state / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "a" / "b").stat().st_mode) == 0o700
    with pytest.raises(NotADirectoryError):
        private_dir(state / "local-metrics.jsonl")


def test_write_atomic_never_replaces_when_told_not_to(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("earlier results")
    with pytest.raises(FileExistsError):
        write_atomic(target, b"new", overwrite=False)
    assert target.read_text() == "earlier results"
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        write_atomic(dangling, b"new", overwrite=False)
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "out.jsonl"]  # no temp left
    write_atomic(tmp_path / "fresh", b"x", overwrite=False)
    assert (tmp_path / "fresh").read_bytes() == b"x"
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == PRIVATE_FILE
