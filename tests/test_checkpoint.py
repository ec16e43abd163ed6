"""Per-round checkpoints and resume: the files, the refusals, and (slow) a real SIGKILL of
`heroes simulate` after round 2's checkpoint, then a resume that finishes the run."""

import json
import math
import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from federation.config import RunSettings
from federation.errors import ConfigError
from federation.protocol import Status
from server.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    restore,
    write_checkpoint,
)
from server.strategy import NodeOutcome, RunLog, build_strategy
from tests._heroes import HEROES
from tests._wait import DEADLINE_S, RUN_DEADLINE_S, wait_for

ROOT = Path(__file__).resolve().parents[1]
FLAT = {"task.name": "advert-risk", "task.num_buckets": 64, "privacy.target_epsilon": 3.0,
        "privacy.target_delta": 1e-5, "strategy.name": "fedadam", "strategy.num_rounds": 4}


def _log(rounds: int) -> RunLog:
    run_log = RunLog()
    for n in range(1, rounds + 1):
        rec = run_log.round(n)
        rec.train.append(NodeOutcome(7, "uk-ngo", Status.OK, metrics={"epsilon": 0.5 * n,
                                                                "train_loss": math.nan}))
        rec.train_aggregate = {"max_epsilon": 0.5 * n}
        rec.wall_seconds = 1.0
    return run_log


def test_checkpoint_roundtrip_keeps_weights_optimiser_and_history(tmp_path: Path) -> None:
    settings = RunSettings.from_flat(FLAT)
    run_log = _log(2)
    strategy = build_strategy(settings, run_log)
    rng = np.random.default_rng(0)
    moments = {"net.weight": rng.normal(size=(1, 64)), "net.bias": rng.normal(size=(1,))}
    strategy.base.m_t = moments  # type: ignore[attr-defined]  # FedAdam's own attributes
    strategy.base.v_t = {k: v ** 2 for k, v in moments.items()}  # type: ignore[attr-defined]
    weights = {"net.weight": torch.randn(1, 64), "net.bias": torch.randn(1)}
    for n in (1, 2):
        write_checkpoint(tmp_path, server_round=n, arrays=ArrayRecord(weights),
                         strategy=strategy, run_log=run_log, settings=settings)
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 2)
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    resume = load_checkpoint(tmp_path, settings)
    assert resume.round == 2
    for k, v in resume.arrays.to_torch_state_dict().items():
        assert torch.equal(v, weights[k])
    fresh_log = RunLog()
    fresh = build_strategy(settings, fresh_log)
    restore(fresh, fresh_log, resume)
    for k, moment in moments.items():
        np.testing.assert_array_equal(fresh.base.m_t[k], moment)  # type: ignore[attr-defined]
        np.testing.assert_array_equal(fresh.base.v_t[k], moment ** 2)  # type: ignore[attr-defined]
    assert fresh_log.to_json() == run_log.to_json()  # NaN stays NaN (null in JSON)


def test_checkpoint_keeps_fedavgm_momentum(tmp_path: Path) -> None:
    """FedAvgM (server momentum) keeps its momentum as a list of arrays; a resumed run
    continues with the same momentum, in the model's order."""
    settings = RunSettings.from_flat({**FLAT, "strategy.name": "fedavgm",
                                      "strategy.server_learning_rate": 1.0,
                                      "strategy.server_momentum": 0.9})
    run_log = _log(1)
    strategy = build_strategy(settings, run_log)
    rng = np.random.default_rng(1)
    momentum = [rng.normal(size=(1, 64)), rng.normal(size=(1,))] * 6  # 12: index order
    strategy.base.momentum_vector = momentum  # type: ignore[attr-defined]  # FedAvgM's own
    weights = {"net.weight": torch.randn(1, 64), "net.bias": torch.randn(1)}
    write_checkpoint(tmp_path, server_round=1, arrays=ArrayRecord(weights), strategy=strategy,
                     run_log=run_log, settings=settings)
    fresh_log = RunLog()
    fresh = build_strategy(settings, fresh_log)
    restore(fresh, fresh_log, load_checkpoint(tmp_path, settings))
    got = fresh.base.momentum_vector  # type: ignore[attr-defined]
    assert len(got) == len(momentum)
    for a, b in zip(got, momentum, strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_changed_settings_a_finished_run_and_an_empty_folder(
        tmp_path: Path) -> None:
    settings = RunSettings.from_flat(FLAT)
    run_log = _log(4)
    strategy = build_strategy(settings, run_log)
    arrays = ArrayRecord({"net.weight": torch.zeros(1, 64), "net.bias": torch.zeros(1)})
    write_checkpoint(tmp_path, server_round=2, arrays=arrays, strategy=strategy,
                     run_log=run_log, settings=settings)
    changed = RunSettings.from_flat({**FLAT, "privacy.target_epsilon": 8.0})
    with pytest.raises(ConfigError, match=r"privacy\.target_epsilon was 3\.0"):
        load_checkpoint(tmp_path, changed)
    write_checkpoint(tmp_path, server_round=4, arrays=arrays, strategy=strategy,
                     run_log=run_log, settings=settings)
    with pytest.raises(ConfigError, match="already finished"):
        load_checkpoint(tmp_path, settings)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        load_checkpoint(tmp_path / "nothing", replace(settings))


def test_a_checkpoint_with_one_key_per_task_parameter_still_resumes(tmp_path: Path) -> None:
    """Before issue 14 the saved settings spelled every task parameter as its own key
    (``task.num_buckets``, ...); now they travel as one ``task.params``. The old spelling of
    the same settings resumes; a real change is still refused, in today's spelling."""
    settings = RunSettings.from_flat(FLAT)
    run_log = _log(4)
    strategy = build_strategy(settings, run_log)
    arrays = ArrayRecord({"net.weight": torch.zeros(1, 64), "net.bias": torch.zeros(1)})
    path = write_checkpoint(tmp_path, server_round=2, arrays=arrays, strategy=strategy,
                            run_log=run_log, settings=settings)
    saved = torch.load(path, weights_only=True)
    flat = dict(saved["settings"])
    params = json.loads(str(flat.pop("task.params")))
    flat.update({f"task.{k}": v for k, v in params.items()})
    saved["settings"] = flat
    torch.save(saved, path)
    assert load_checkpoint(tmp_path, settings).round == 2
    wider = RunSettings.from_flat({**FLAT, "task.num_buckets": 128})
    with pytest.raises(ConfigError, match=r"task\.params was"):
        load_checkpoint(tmp_path, wider)


def _simulate(run: Path, log: Path, *extra: str, **kwargs: object) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            [*HEROES, "simulate", "experiment=quick",
             "strategy.num_rounds=4", f"hydra.run.dir={run}", *extra],
            cwd=ROOT, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0",
                           "PYTHONWARNINGS": "ignore"},
            stdout=out, stderr=subprocess.STDOUT, **kwargs)


@pytest.mark.slow
def test_kill_the_aggregator_after_round_two_then_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    second = run / "server" / "checkpoints" / "round-0002.pt"
    # Its own session, so that the kill reaches Ray's workers too; only this group is killed.
    proc = _simulate(run, tmp_path / "killed.log", start_new_session=True)
    try:
        wait_for(lambda: second.exists() or proc.poll() is not None, "round 2's checkpoint",
                 deadline_s=RUN_DEADLINE_S, interval_s=0.05,
                 seen=lambda: (tmp_path / "killed.log").read_text(errors="replace")[-3000:])
        assert second.exists(), (tmp_path / "killed.log").read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE_S)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    assert not (run / "metrics.json").exists()
    at_kill = torch.load(second, weights_only=True)["rounds"]
    assert [r["round"] for r in at_kill] == [1, 2]

    resumed = _simulate(run, tmp_path / "resumed.log", f"paths.resume_from={run / 'server'}")
    resumed.wait(timeout=RUN_DEADLINE_S)
    out = (tmp_path / "resumed.log").read_text()
    assert resumed.returncode == 0, out[-3000:]
    assert "resuming from" in out and "round 3/4" in out
    summary = json.loads((run / "metrics.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert rounds[:2] == at_kill  # the history before the kill, unchanged
    assert sorted(p.name for p in (run / "server" / "checkpoints").glob("round-*.pt")) == [
        f"round-{n:04d}.pt" for n in (1, 2, 3, 4)]
    for agency in summary["agencies"]:
        assert agency["rounds_trained"] == 4
        # the agency's own record (the consortium never saw its epsilon), both runs: one
        # entry per round it trained, a round 3 cut by the kill possibly twice
        eps = [e["figures"]["epsilon"] for e in summary["agency_rounds"][agency["agency"]]
               if e["kind"] == "train" and e["status"] == "ok"]
        assert eps == sorted(eps) and 4 <= len(eps) <= 5  # cumulative: never falls
        # The agencies' ledgers count every round of both runs; a round 3 cut by the kill
        # may be counted too (conservatively), so the ledger is at least the reported value.
        assert agency["ledger_epsilon"] >= eps[-1] - 1e-9
