"""The privacy ledger on real SQLite files: durability, budgets, crashes, concurrency,
integrity."""

import itertools
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from federation.ledger import (
    LEDGER_FILE,
    BudgetExceeded,
    Ledger,
    LedgerError,
    Policy,
    Release,
    calibrate_to_budget,
    load_policy,
    write_policy,
)
from federation.privacy import epsilon_spent, plan_noise

REL = Release(dataset="es-police/abc", fingerprint="ab" * 32, run_id="1", round=1,
              task="advert-risk", model="advert-risk:AdvertRiskModel", noise_multiplier=1.0,
              sample_rate=0.05, steps=40, max_grad_norm=0.5, delta=1e-5, accountant="rdp")
POLICY = Policy(max_epsilon=50.0, delta=1e-5)


def test_records_compose_across_runs_and_survive_a_restart(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        eps = []
        for run in ("1", "2"):
            for rnd in (1, 2, 3):
                seq, after = ledger.reserve(replace(REL, run_id=run, round=rnd), POLICY)
                ledger.complete(seq)
                eps.append(after)
    assert all(a < b for a, b in itertools.pairwise(eps))  # monotone
    with Ledger.open(tmp_path, create=False) as again:  # a restarted node
        rows = again.rows("es-police/abc")
        assert [(r.release.run_id, r.release.round) for r in rows] == [
            ("1", 1), ("1", 2), ("1", 3), ("2", 1), ("2", 2), ("2", 3)]
        assert all(r.completed for r in rows)
        spent = again.spent("es-police/abc", delta=1e-5, accountant="rdp")
    # Six rounds of 40 steps compose like one mechanism of 240 steps, not like one round.
    assert spent == pytest.approx(epsilon_spent([(1.0, 0.05, 240)], delta=1e-5,
                                                accountant="rdp"), rel=1e-9)
    assert spent == pytest.approx(eps[-1], rel=1e-9)


def test_refusal_exactly_at_the_boundary(tmp_path: Path) -> None:
    budget = epsilon_spent([(1.0, 0.05, 120)], delta=1e-5, accountant="rdp")  # 3 rounds
    policy = Policy(max_epsilon=budget, delta=1e-5)
    with Ledger.open(tmp_path) as ledger:
        for rnd in (1, 2, 3):
            ledger.reserve(replace(REL, round=rnd), policy)
        with pytest.raises(BudgetExceeded) as err:
            ledger.reserve(replace(REL, round=4), policy)
        assert err.value.spent == pytest.approx(budget)
        assert err.value.after > budget
        assert f"past the agency's budget of {budget:g}" in str(err.value)
        assert len(ledger.rows()) == 3  # the refused round was not recorded


def test_datasets_have_separate_budgets(tmp_path: Path) -> None:
    policy = Policy(max_epsilon=epsilon_spent([(1.0, 0.05, 40)], delta=1e-5,
                                              accountant="rdp"), delta=1e-5)
    with Ledger.open(tmp_path) as ledger:
        ledger.reserve(REL, policy)
        ledger.reserve(replace(REL, dataset="es-police/other"), policy)
        with pytest.raises(BudgetExceeded):
            ledger.reserve(replace(REL, round=2), policy)
        assert ledger.datasets() == ["es-police/abc", "es-police/other"]


KILLED_AFTER_RECORD = """
import os, signal, sys
from dataclasses import replace
from pathlib import Path
from federation.ledger import Ledger, Policy
sys.path.insert(0, sys.argv[2])
from tests.test_ledger import REL
ledger = Ledger.open(Path(sys.argv[1]))
seq, _ = ledger.reserve(replace(REL, round=7), Policy(max_epsilon=50.0, delta=1e-5))
os.kill(os.getpid(), signal.SIGKILL)  # dies between recording the release and sending it
"""


def test_a_node_killed_between_record_and_send_never_under_counts(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_RECORD, str(tmp_path), str(root)],
                          cwd=root, check=False, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    with Ledger.open(tmp_path, create=False) as ledger:
        (row,) = ledger.rows()
        assert row.release.round == 7 and not row.completed
        assert ledger.spent(REL.dataset, delta=1e-5, accountant="rdp") > 0
        (item,) = ledger.report(POLICY)
    assert item["not_completed"] == 1
    assert item["releases"][0]["status"] == "reserved, not completed"


def _race(path: str, policy: Policy, barrier: "mp.synchronize.Barrier",
          results: "mp.Queue[str]") -> None:
    ledger = Ledger.open(Path(path), create=False)
    barrier.wait()
    try:
        ledger.reserve(replace(REL, run_id=str(os.getpid())), policy)
        results.put("ok")
    except BudgetExceeded:
        results.put("refused")


def test_two_concurrent_runs_cannot_both_spend_the_remainder(tmp_path: Path) -> None:
    budget = epsilon_spent([(1.0, 0.05, 80)], delta=1e-5, accountant="rdp")
    policy = Policy(max_epsilon=budget, delta=1e-5)
    with Ledger.open(tmp_path) as ledger:
        ledger.reserve(REL, policy)  # one of two rounds' worth left
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    results: mp.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), policy, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted([results.get(timeout=5), results.get(timeout=5)]) == ["ok", "refused"]
    with Ledger.open(tmp_path, create=False) as ledger:
        assert len(ledger.rows()) == 2


def test_append_only_and_tamper_evident(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        for rnd in (1, 2, 3):
            ledger.reserve(replace(REL, round=rnd), POLICY)
    conn = sqlite3.connect(tmp_path / LEDGER_FILE)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE entries SET body = '{}' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM entries WHERE seq = 3")
    # Someone determined drops the trigger and lowers a noise multiplier... it shows.
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET body = replace(body, '\"steps\": 40', '\"steps\": 4') "
                 "WHERE seq = 2")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="checksum chain broken at entry 2"):
        Ledger.open(tmp_path, create=False)


@pytest.mark.parametrize("content", [b"", b"not a database at all\n" * 10,
                                     b"SQLite format 3\x00" + b"\x00" * 200])
def test_corrupt_or_foreign_file_is_refused_and_left_alone(tmp_path: Path,
                                                           content: bytes) -> None:
    path = tmp_path / LEDGER_FILE
    path.write_bytes(content)
    with pytest.raises(LedgerError) as err:
        Ledger.open(tmp_path)
    assert "left as it is" in str(err.value) or "not a heroes privacy ledger" in str(err.value)
    assert path.read_bytes() == content


def test_a_foreign_sqlite_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('format', 'something-else/9')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="not a heroes privacy ledger"):
        Ledger.open(tmp_path)
    assert path.read_bytes() == before


def test_calibration_stretches_noise_to_the_remaining_budget(tmp_path: Path) -> None:
    plan = plan_noise(num_records=3000, batch_size=128, local_epochs=1, planned_rounds=5,
                      target_epsilon=3.0, target_delta=1e-5, accountant="rdp", where="t")
    prior = [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round * 5)]  # a run
    policy = Policy(max_epsilon=4.0, delta=1e-5)
    fitted = calibrate_to_budget(plan, prior, policy)
    assert fitted.budget_limited and fitted.noise_multiplier > plan.noise_multiplier
    total = epsilon_spent([*prior, (fitted.noise_multiplier, fitted.sample_rate,
                                    fitted.steps_per_round * 5)], delta=1e-5, accountant="rdp")
    assert 0.99 * 4.0 <= total <= 4.0
    # "stop" keeps the run's noise; the ledger then refuses rounds at the limit.
    kept = calibrate_to_budget(plan, prior, replace(policy, on_budget="stop"))
    assert kept == plan


def test_a_run_that_cannot_fit_is_refused_up_front_with_numbers() -> None:
    plan = plan_noise(num_records=3000, batch_size=128, local_epochs=1, planned_rounds=5,
                      target_epsilon=3.0, target_delta=1e-5, accountant="rdp", where="t")
    prior = [(0.8, 0.05, 2000)]
    spent = epsilon_spent(prior, delta=1e-5, accountant="rdp")
    with pytest.raises(BudgetExceeded) as err:
        calibrate_to_budget(plan, prior, Policy(max_epsilon=spent * 0.99, delta=1e-5))
    assert f"already spent epsilon {spent:.3f}" in str(err.value)


def test_policy_file_round_trip_and_errors(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no privacy policy"):
        load_policy(tmp_path)
    write_policy(tmp_path, Policy(max_epsilon=8.0, delta=1e-6, on_budget="stop"))
    assert load_policy(tmp_path) == Policy(max_epsilon=8.0, delta=1e-6, on_budget="stop")
    (tmp_path / "policy.toml").write_text("[privacy_budget]\nmax_epsilon = -1\ndelta = 2\n")
    with pytest.raises(LedgerError) as err:
        load_policy(tmp_path)
    assert "max_epsilon=-1.0 must be > 0" in str(err.value)
    assert "delta=2.0 must be in (0, 1)" in str(err.value)


def test_agency_ledger_command(tmp_path: Path) -> None:
    import json

    write_policy(tmp_path, Policy(max_epsilon=6.0, delta=1e-5))
    with Ledger.open(tmp_path) as ledger:
        seq, _ = ledger.reserve(REL, Policy(max_epsilon=6.0, delta=1e-5))
        ledger.complete(seq)
        ledger.reserve(replace(REL, round=2), Policy(max_epsilon=6.0, delta=1e-5))
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "simulation.cli", "agency", "ledger", "--state-dir",
           str(tmp_path)]
    text = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True).stdout
    spent = epsilon_spent([(1.0, 0.05, 80)], delta=1e-5, accountant="rdp")
    assert f"total: epsilon {spent:.3f} (RDP)" in text
    assert "at delta=1e-05" in text and "one advert record" in text
    assert f"remaining {6.0 - spent:.3f}" in text
    assert "1 release(s) reserved but not completed" in text
    data = json.loads(subprocess.run([*cmd, "--json"], cwd=root, capture_output=True,
                                     text=True, check=True).stdout)
    (item,) = data["datasets"]
    assert item["epsilon"]["rdp"] == pytest.approx(spent)
    assert item["remaining"] == pytest.approx(6.0 - spent)
    bad = subprocess.run([*cmd[:-1], str(tmp_path / "nowhere")], cwd=root,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "no privacy ledger here" in bad.stdout


def test_ledger_epsilon_matches_dp_accounting_over_runs(tmp_path: Path) -> None:
    """The ledger's totals, composed over two runs with different mechanisms, against
    Google's dp-accounting (RDP, and PLD for the PRV path), within 1%."""
    from tests.test_accounting_reference import reference_pld, reference_rdp

    runs = {"run-a": [(1.1, 0.05, 100)] * 3, "run-b": [(0.9, 0.0625, 64), (0.9, 0.0625, 64)]}
    with Ledger.open(tmp_path) as ledger:
        for run, mechs in runs.items():
            for rnd, (sigma, q, steps) in enumerate(mechs, start=1):
                seq, _ = ledger.reserve(replace(REL, run_id=run, round=rnd,
                                                noise_multiplier=sigma, sample_rate=q,
                                                steps=steps), POLICY)
                ledger.complete(seq)
        (item,) = ledger.report(POLICY)
    history = [m for mechs in runs.values() for m in mechs]
    assert item["epsilon"]["rdp"] == pytest.approx(reference_rdp(history, 1e-5), rel=0.01)
    assert item["epsilon"]["prv"] == pytest.approx(reference_pld(history, 1e-5), rel=0.01)
    assert item["remaining"] == pytest.approx(POLICY.max_epsilon - item["epsilon"]["rdp"])
