"""`heroes simulate` end to end: real Hydra, real Flower simulation engine (Ray), real Opacus.

The slow test reads the session's shared run of three synthetic agencies for two rounds
(tests/conftest.py `quick_run_proc`). The bad-input tests run the
real command and check that it stops with a clear message before anything trains.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from tests._heroes import HEROES
from tests._wait import DEADLINE_S, RUN_DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]


def heroes(args: list[str], out: Path,
           timeout: float = RUN_DEADLINE_S) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [*HEROES, "simulate", *args,
         f"hydra.run.dir={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.mark.slow
def test_three_agencies_two_rounds(
        quick_run_proc: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    # the session's shared run (tests/conftest.py QUICK_RUN): experiment=quick with the
    # baseline, at epsilon 8: this test checks that the pipeline learns; at epsilon 3 two
    # rounds of these small agencies gave pooled ROC-AUC from 0.54 to 0.71 between runs (DP
    # noise is unseeded)
    out, proc = quick_run_proc
    summary = json.loads((out / "metrics.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    agencies = {a["agency"] for a in summary["agencies"]}
    assert len(agencies) == 3
    for r in rounds:  # every agency replied every round, in training and evaluation
        assert {o["agency"] for o in r["train"] if o["status"] == "ok"} == agencies
        assert {o["agency"] for o in r["evaluate"] if o["status"] == "ok"} == agencies
    # Loss falls from the all-zero initial model's ln 2 = 0.693, in training and in the
    # evaluation of every round's global model. (Round-to-round changes under DP noise at
    # eps=3 are within the noise, so they are not asserted.)
    losses = [r["train_aggregate"]["train_loss"] for r in rounds]
    eval_losses = [r["evaluate_aggregate"]["loss"] for r in rounds]
    assert all(loss < 0.9 * math.log(2) for loss in losses + eval_losses), (losses, eval_losses)
    # Epsilon is cumulative: it grows every round and ends at or below the target. It is
    # the agency's own figure (its local record): the consortium never received it.
    target = summary["privacy"]["target_epsilon"]
    for name in agencies:
        local = [e for e in summary["agency_rounds"][name] if e["kind"] == "train"]
        eps = [e["figures"]["epsilon"] for e in local]
        assert 0 < eps[0] < eps[1] <= target
        assert eps[1] > 0.95 * target  # the whole budget was planned for the run
        assert all(e["figures"]["secagg_clipped"] == 0 for e in local)
    for r in rounds:
        for o in r["train"] + r["evaluate"]:
            assert not {"epsilon", "train_loss", "roc_auc", "num-examples"} & set(o["metrics"])
    # Beats chance on the pooled test split: by three standard errors of the null AUC.
    n_pos = sum(c["test_positive"] for c in json.loads(
        (out / "data" / "federation.json").read_text())["counts"].values())
    n_neg = sum(a["test_examples"] for a in summary["agencies"]) - n_pos
    null_se = math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))
    assert summary["global"]["roc_auc"] > 0.5 + 3 * null_se
    assert 0.5 < summary["oracle_roc_auc"] <= 1.0
    # Three agencies: secure aggregation was on (secagg.mode=auto) in every round, for
    # training and evaluation, and the server saw masked, bit-packed uploads.
    for r in rounds:
        for o in r["train"] + r["evaluate"]:
            assert o["metrics"]["secure_sum"] == 1.0 and o["metrics"]["bytes_sent"] > 0
        assert r["train_aggregate"]["secure_sum"] == 1.0
        assert r["evaluate_aggregate"]["secure_sum"] == 1.0
        assert r["evaluate_aggregate"]["examples"] == sum(
            a["test_examples"] for a in summary["agencies"])
    assert "centralised_baseline" in summary
    # The outputs a researcher expects.
    for name in ("model.pt", "metrics.json", "config.yaml", "run_config.json",
                 "server/model.pt", "server/metrics.json", "data/federation.json"):
        assert (out / name).is_file(), name
    assert "worst agency" in proc.stdout
    assert "round 2/2" in proc.stdout + proc.stderr
    assert not any(math.isnan(v) for v in losses)


def _fails_before_training(proc: subprocess.CompletedProcess[str], out: Path) -> str:
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert not (out / "server").exists(), "training started despite bad input"
    return proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("privacy.target_epsilon=0", "privacy.target_epsilon=0.0 must be > 0"),
        ("privacy.target_epsilon=-2", "privacy.target_epsilon=-2.0 must be > 0"),
        ("~privacy.target_epsilon", "privacy.target_epsilon is required"),
        ("~privacy.target_delta", "privacy.target_delta is required"),
        ("+privacy.epsilon=3", "privacy.epsilon is not a known setting"),
        ("privacy.target_delta=0.5", "must be < 1/records"),
    ],
)
def test_bad_config_stops_before_training(tmp_path: Path, override: str, needle: str) -> None:
    out = tmp_path / "run"
    text = _fails_before_training(heroes(["experiment=quick", override], out, DEADLINE_S), out)
    assert needle in text


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    text = _fails_before_training(heroes(["experiment=quick", "bogus=1"], out, DEADLINE_S), out)
    assert "bogus" in text


@pytest.mark.slow
def test_default_run_reaches_the_utility_floor(tmp_path: Path) -> None:
    """The default `heroes simulate` (six agencies, eps=3, delta=1e-5 each): the global
    model reaches at least 0.90 x the oracle ROC-AUC on the pooled test split."""
    out = tmp_path / "run"
    proc = heroes(["baseline=false"], out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["privacy"]["target_epsilon"] == 3.0
    assert summary["privacy"]["target_delta"] == 1e-5
    assert len(summary["agencies"]) == 6
    ratio = summary["global"]["roc_auc"] / summary["oracle_roc_auc"]
    assert ratio >= 0.90, ratio
    assert all(a["epsilon"] <= 3.0 for a in summary["agencies"])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedprox", "fedadam"])
def test_other_strategies_run(tmp_path: Path, strategy: str) -> None:
    out = tmp_path / "run"
    proc = heroes(["experiment=quick", f"strategy={strategy}"], out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "run_config.json").read_text())["strategy.name"] == strategy
    assert all(o["status"] == "ok" for r in summary["rounds"] for o in r["train"])
    assert summary["global"]["roc_auc"] > 0.5


@pytest.mark.slow
def test_small_agency_exhausts_its_budget_mid_run(tmp_path: Path) -> None:
    """One agency's own policy allows less than the run needs, and says "stop": it trains
    round 1, refuses round 2 cleanly, the run completes without it and the summary and its
    ledger say so."""
    from omegaconf import OmegaConf

    from federation.data import load_agency
    from federation.ledger import Ledger
    from federation.privacy import epsilon_spent, plan_noise
    from simulation.generator import generate_federation, preset_from_mapping

    # Work out, for the data the run will generate, a budget between rounds 1 and 2.
    quick = OmegaConf.load(ROOT / "configs" / "experiment" / "quick.yaml")
    preset_cfg = OmegaConf.load(ROOT / "configs" / "federation" / "three_agency.yaml")
    preset_cfg.scale = quick.federation.scale
    preset = preset_from_mapping(OmegaConf.to_container(preset_cfg))  # type: ignore[arg-type]
    manifest = generate_federation(preset, tmp_path / "probe", seed=0)
    small = manifest.agencies[1]
    n = len(load_agency(tmp_path / "probe" / "agencies" / small).train)
    plan = plan_noise(num_records=n, batch_size=128, local_epochs=2, planned_rounds=3,
                      target_epsilon=3.0, target_delta=1e-5, accountant="rdp", where=small)
    mech = (plan.noise_multiplier, plan.sample_rate)
    after1 = epsilon_spent([(*mech, plan.steps_per_round)], delta=1e-5, accountant="rdp")
    after2 = epsilon_spent([(*mech, 2 * plan.steps_per_round)], delta=1e-5, accountant="rdp")
    budget = (after1 + after2) / 2

    out = tmp_path / "run"
    # Every agency accepts sums of two here (its policy's [secure_aggregation]
    # min_agencies), so the other two carry on securely once the third stops.
    proc = heroes(["experiment=quick", "strategy.num_rounds=3",
                   "agency_policy.secure_min_agencies=2",
                   f"+agency_policy.per_agency={{{small}: {{max_epsilon: {budget:.6f}, "
                   "on_budget: stop}}"], out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "metrics.json").read_text())
    row = next(a for a in summary["agencies"] if a["agency"] == small)
    assert row["rounds_trained"] == 1
    assert row["stopped"].startswith("refused from round 2")
    assert "past the agency's budget" in row["stopped"]
    others = [a for a in summary["agencies"] if a["agency"] != small]
    assert all(a["rounds_trained"] == 3 for a in others)
    assert f"STOPPED {small}" in proc.stdout
    with Ledger.open(out / "agency_state" / small, create=False) as ledger:
        (item,) = ledger.report(None)
    assert len(item["releases"]) == 1  # the refused rounds were never recorded
    # Secure aggregation was on, and the agency that dropped out after sharing its keys in
    # rounds 2 and 3 did not stop the others' rounds from being unmasked.
    for r in summary["rounds"][1:]:
        assert all(o["metrics"]["secure_sum"] for o in r["train"] if o["status"] == "ok")
        assert r["train_aggregate"]["agencies"] == 2
    assert item["epsilon"]["rdp"] == pytest.approx(after1, rel=1e-6)
    assert item["epsilon"]["rdp"] <= budget
