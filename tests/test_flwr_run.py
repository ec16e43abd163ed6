"""The same app runs under Flower's own CLI: a real `flower-superlink --simulation` on
127.0.0.1 and `flwr run` submitting this project as a Flower App Bundle."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from federation.ledger import Ledger, Policy, write_policy
from federation.pki import make_node_key
from simulation.generator import generate_federation, load_preset
from simulation.run import approve_simulated_roster
from tests._wait import DEADLINE_S, RUN_DEADLINE_S, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_flwr_run_against_a_local_simulation_superlink(tmp_path: Path) -> None:
    preset = load_preset(ROOT / "configs" / "federation" / "three_agency.yaml")
    manifest = generate_federation(preset, tmp_path / "data", seed=5)
    for agency in manifest.agencies:
        write_policy(tmp_path / "state" / agency, Policy(max_epsilon=10.0, delta=1e-4))
        make_node_key(tmp_path / "state" / agency / "node.key",  # signs egress receipts
                      tmp_path / "state" / agency / "node.key.pub", comment=agency)
    # secure aggregation (three agencies): each node takes part only with the agencies on
    # a roster it approved; these nodes approve the roster of all three
    approve_simulated_roster(tmp_path / "state", [
        (a, tmp_path / "state" / a / "node.key.pub") for a in manifest.agencies])
    port = free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    link = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation",
         "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
         "--port", str(port), "--database", str(tmp_path / "state.db")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for(lambda: _listening(port), f"the SuperLink on port {port}")
        out = tmp_path / "server"
        overrides = (f'paths.data_root="{tmp_path / "data"}" paths.output_dir="{out}" '
                     f'paths.state_root="{tmp_path / "state"}" '
                     "strategy.num_rounds=2 privacy.target_delta=1e-4")
        proc = subprocess.run(
            [str(BIN / "flwr"), "run", str(ROOT), "test", "--run-config", overrides,
             "--federation-config", "num-supernodes=3", "--stream"],
            env=env, capture_output=True, text=True, timeout=RUN_DEADLINE_S, check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rounds = json.loads((out / "metrics.json").read_text())["rounds"]
        assert len(rounds) == 2
        assert all(o["status"] == "ok" for r in rounds for o in r["train"])
        assert len(rounds[-1]["train"]) == 3
        assert (out / "model.pt").is_file()
        for agency in manifest.agencies:  # every node recorded its releases
            with Ledger.open(tmp_path / "state" / agency, create=False) as ledger:
                assert len(ledger.rows()) == 2
    finally:
        os.killpg(link.pid, signal.SIGTERM)
        try:
            link.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(link.pid, signal.SIGKILL)
            link.wait()
