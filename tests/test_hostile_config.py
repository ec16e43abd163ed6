"""Configurations that cannot run are refused before any data is generated, with exit 2 and
a message naming the key, the rule and the fix; and a run whose agencies stop answering
ends with the quorum error instead of hanging.

The bad configurations go through the real command: a few through `heroes simulate` in a
subprocess, the rest through the same entry point in-process (cli/main.py main),
which is what the console script calls, each in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests._heroes import HEROES
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
QUICK = "experiment=quick"  # three agencies; every case below is bad in one way


_WORKER = """
import contextlib, io, json, sys
from cli.main import main
for line in sys.stdin:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(json.loads(line))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    sys.__stdout__.write(json.dumps([code, out.getvalue(), err.getvalue()]) + "\\n")
    sys.__stdout__.flush()
"""
_worker: list[subprocess.Popen[str]] = []


@pytest.fixture(scope="module", autouse=True)
def _cli_worker() -> Iterator[None]:
    """One interpreter that runs every in-process `heroes` call of this module.

    In the test process itself, Hydra's @hydra.main reconfigures logging and streams; after
    the suite's earlier in-process Flower simulations that ended the whole pytest run ("lost
    sys.stderr"). A fresh interpreter per call costs about 8 s of imports, so the calls share
    one worker, which runs the real entry point (cli/main.py main) in-process."""
    proc = subprocess.Popen([sys.executable, "-c", _WORKER], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    _worker.append(proc)
    try:
        yield
    finally:
        _worker.clear()
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def main(argv: list[str]) -> int:
    """`heroes ARGV` through the module's worker; its output goes to this test's capture."""
    proc = _worker[0]
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(argv) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line, "the CLI worker died"
    code, out, err = json.loads(line)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return int(code)

#: (overrides, what the message must say). Each cannot run as configured.
BAD: list[tuple[list[str], list[str]]] = [
    # the federation cannot take part as asked: Flower would wait, or no round could pass
    (["strategy.quorum=4", "strategy.min_nodes=4"], ["strategy.quorum=4 is above the "
                                                     "federation's 3 agencies", "Fix"]),
    (["strategy.min_nodes=5"], ["strategy.min_nodes=5 is above", "never connect"]),
    (["strategy.min_available=9"], ["strategy.min_available=9 is above", "Fix"]),
    (["strategy.aggregation=krum", "secagg.mode=off"],
     ["strategy.krum_byzantine=1 is too large for 3 agencies", "2f + 3", "Fix"]),
    (["strategy.aggregation=krum", "secagg.mode=off", "federation=five_agency",
      "strategy.krum_byzantine=2"], ["strategy.krum_byzantine=2 is too large for 5"]),
    # the simulated agencies' own policies refuse the run
    (["privacy=off", "agency_policy.allow_non_private=false"],
     ["only 0 of 3 agencies would train", "allow_non_private is false", "Fix"]),
    (["agency_policy.require_secure_aggregation=true", "secagg.mode=off"],
     ["only 0 of 3", "[secure_aggregation] required is true"]),
    (["agency_policy.secure_min_agencies=4"], ["min_agencies is 4", "at most 3 agencies"]),
    (["mode=baselines", "agency_policy.allow_non_private=false"],
     ["would train (non-private arm)", "allow_non_private"]),
    # policy values read as strictly as a node reads its policy.toml
    (["agency_policy.max_epsilon=true"], ["agency_policy: max_epsilon must be a number, not "
                                          "a boolean", "Fix: e.g. agency_policy.max_epsilon="]),
    (["agency_policy.allow_non_private='false'"],
     ["allow_non_private must be a boolean (true or false, without quotes), not a string"]),
    (["+agency_policy.per_agency={es-police: true}"],
     ["agency_policy.per_agency.es-police must be a budget (a number)"]),
    (["+agency_policy.per_agency={nobody: 2.0}"], ["per_agency names unknown agencies"]),
    (["+agency_policy.colour=blue"], ["['colour'] are not policy fields"]),
    # resources and switches that are not what they claim
    (["simulation.client_cpus=abc"], ["simulation.client_cpus='abc' must be a number > 0"]),
    (["simulation.client_cpus=0"], ["simulation.client_cpus=0 must be a number > 0"]),
    (["simulation.backend=ray", "simulation.client_cpus=100000"],
     ["more than this machine's", "wait forever"]),
    (["simulation.backend=dask"], ["simulation.backend='dask' must be one of inprocess, ray"]),
    (["baseline=maybe"], ["baseline='maybe' must be true or false"]),
    (["tracking.tensorboard=1"], ["tracking.tensorboard=1 must be true or false"]),
    (["mode=distributed"], ["mode='distributed' is unknown"]),
    (["seed=-1"], ["seed=-1 must be a whole number in [0, 2**32)"]),
    (["test_fraction=0"], ["test_fraction=0 must be a number in [0.05, 0.9]"]),
    # sizes beyond the documented limits
    (["strategy.num_rounds=100000"], ["strategy.num_rounds=100000 is above the limit of 1000"]),
    (["train.local_epochs=101"], ["train.local_epochs=101 is above the limit of 100"]),
    (["task.num_buckets=1048576"], ["task.num_buckets=1048576 is above the limit of 262144"]),
    (["federation=hundred_agency", "federation.scale=5"],
     ["gives 1,283,500 adverts in all, more than the 1,000,000"]),
    (["strategy.round_timeout=0"], ["strategy.round_timeout=0.0 must be > 0"]),
    # a run to resume that is not there
    (["paths.resume_from=/nonexistent/run/server"], ["paths.resume_from='/nonexistent/run/"
                                                     "server' does not exist", "Fix"]),
    # the audit's own rules, before the canaries' agency is generated
    (["audit.break_noise_for_testing=true"], ["needs audit.enabled=true"]),
    (["audit.enabled=true", "mode=baselines"], ["audit.enabled=true needs mode=federated"]),
    (["audit.enabled=true", "audit.canaries=3"], ["audit.canaries=3 must be an even"]),
    (["audit.enabled=true", "audit.agency=nobody"], ["audit.agency='nobody' is not in"]),
    # Hydra's and OmegaConf's own errors: exit 2 with their message, not 1 with a traceback
    (["simulation.client_cpuss=1"], ["Could not override 'simulation.client_cpuss'"]),
    (["strategy=fedsgd"], ["Could not find 'strategy/fedsgd'"]),
    (["privacy.target_epsilon=[1"], ["no viable alternative at input"]),
    (["seed=${nowhere}"], ["Interpolation key 'nowhere' not found"]),
]


def test_a_ray_cluster_named_with_an_in_process_backend_is_refused(tmp_path: Path) -> None:
    """RAY_ADDRESS says "run on this cluster"; the in-process backend would silently not."""
    out = tmp_path / "run"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_ADDRESS": "127.0.0.1:6379"}
    proc = subprocess.run([*HEROES, "simulate", QUICK, f"hydra.run.dir={out}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=DEADLINE_S,
                          check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "RAY_ADDRESS is set, but simulation.backend=inprocess" in text
    assert "Fix: simulation.backend=ray" in text
    _nothing_generated(out)


def _nothing_generated(out: Path) -> None:
    assert not (out / "data").exists(), "data were generated despite a bad configuration"
    for name in ("agency_state", "server", "run_config.json", "metrics.json"):
        assert not (out / name).exists(), f"{name} written despite a bad configuration"


@pytest.mark.parametrize(("overrides", "needles"), BAD,
                         ids=[" ".join(o) for o, _ in BAD])
def test_a_configuration_that_cannot_run_exits_2_before_any_data(
        tmp_path: Path, overrides: list[str], needles: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["simulate", QUICK, *overrides, f"hydra.run.dir={out}"])
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert code == 2, text[-3000:]
    for needle in needles:
        assert needle in text, (needle, text[-3000:])
    assert "Traceback" not in text
    _nothing_generated(out)


def test_every_problem_is_listed_at_once(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["simulate", QUICK, "strategy.min_nodes=5", "simulation.client_cpus=abc",
                 "agency_policy.max_epsilon=true", "mode=bogus", f"hydra.run.dir={out}"])
    text = capsys.readouterr().err
    assert code == 2
    assert "has 4 problem(s)" in text, text
    for key in ("strategy.min_nodes", "simulation.client_cpus", "max_epsilon", "mode="):
        assert key in text
    _nothing_generated(out)


def test_a_resume_folder_without_a_checkpoint_is_refused_before_any_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "killed" / "server"
    empty.mkdir(parents=True)
    out = tmp_path / "run"
    code = main(["simulate", QUICK, f"paths.resume_from={empty}", f"hydra.run.dir={out}"])
    assert code == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    _nothing_generated(out)


def _heroes(args: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*HEROES, "simulate", *args, f"hydra.run.dir={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.parametrize(("overrides", "needle"), [
    (["simulation.client_cpus=abc"], "simulation.client_cpus='abc' must be a number > 0"),
    (["simulation.client_cpuss=1"], "Could not override 'simulation.client_cpuss'"),
])
def test_the_installed_command_exits_2_with_the_message(
        tmp_path: Path, overrides: list[str], needle: str) -> None:
    out = tmp_path / "run"
    proc = _heroes([QUICK, *overrides], out)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    _nothing_generated(out)


# --- a run whose agencies stop answering ends; it never hangs --------------------------------

STUCK_RUNNER = """
import json, sys, time
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
import clients.client_app as node_app
from clients.mods import with_node_mods
from simulation.run import run_flower_simulation

app = ClientApp()  # the node's real ClientApp, except that agencies 1 and 2 never answer

@app.train()
def train(msg: Message, context: Context) -> Message:
    if int(str(context.node_config["partition-id"])) != 0:
        time.sleep(3600)
    return with_node_mods(node_app.train)(msg, context)  # contained and receipted

@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return with_node_mods(node_app.evaluate)(msg, context)

run_flower_simulation(json.loads(sys.argv[1]), num_nodes=3, client_cpus=1, verbose=False,
                      client_app=app)
"""


@pytest.mark.slow
def test_below_the_quorum_a_run_with_silent_agencies_ends_with_the_quorum_error(
        tmp_path: Path) -> None:
    from federation.ledger import Policy, write_policy
    from federation.pki import make_node_key
    from simulation.generator import generate_federation, load_preset
    from simulation.run import approve_simulated_roster

    preset = load_preset(ROOT / "configs" / "federation" / "three_agency.yaml")
    manifest = generate_federation(replace(preset, scale=0.05), tmp_path / "data", seed=3)
    for agency in manifest.agencies:
        write_policy(tmp_path / "state" / agency, Policy(max_epsilon=10.0, delta=1e-3))
        make_node_key(tmp_path / "state" / agency / "node.key",
                      tmp_path / "state" / agency / "node.key.pub", comment=agency)
    approve_simulated_roster(tmp_path / "state", [
        (a, tmp_path / "state" / a / "node.key.pub") for a in manifest.agencies])
    with (ROOT / "pyproject.toml").open("rb") as fh:
        flat = dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    flat.update({"paths.data_root": str(tmp_path / "data"),
                 "paths.state_root": str(tmp_path / "state"),
                 "paths.output_dir": str(tmp_path / "server"), "strategy.num_rounds": 2,
                 "strategy.min_nodes": 3, "strategy.quorum": 2, "privacy.target_delta": 1e-3,
                 "secagg.mode": "off", "strategy.round_timeout": 10.0})
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_RUNNER, json.dumps(flat)], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONWARNINGS": "ignore"})
    try:  # the stuck agencies sleep for an hour: without the straggler watch this hangs
        output, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and the Ray processes it started
        proc.communicate()
        pytest.fail("the run hung on agencies that never answer")
    assert proc.returncode != 0
    assert "QuorumError" in output and "below the quorum of 2" in output, output[-4000:]
    assert "no reply before timeout" in output
    partial = json.loads((tmp_path / "server" / "partial" / "metrics.json").read_text())
    statuses = [o["status"] for o in partial["rounds"][0]["train"]]  # what it saw is kept
    assert statuses.count("missing") >= 2 and statuses.count("ok") < 2, statuses
