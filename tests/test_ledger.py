"""The privacy ledger on real SQLite files with a real node key: durability, budgets,
crashes, concurrency, integrity; and the agency's policy file, parsed strictly."""

import hashlib
import itertools
import json
import math
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
    HEAD_FILE,
    LEDGER_FILE,
    BudgetExceeded,
    Ledger,
    LedgerError,
    Release,
    calibrate_to_budget,
)
from federation.pki import make_node_key
from federation.policy import POLICY_FILE, Policy, PolicyError, load_policy, write_policy
from federation.privacy import epsilon_spent, plan_noise
from tests._heroes import HEROES
from tests._wait import DEADLINE_S

REL = Release(dataset="es-police/abc", fingerprint="ab" * 32, run_id="1", round=1,
              task="advert-risk", model="advert-risk:AdvertRiskModel", noise_multiplier=1.0,
              sample_rate=0.05, steps=40, max_grad_norm=0.5, delta=1e-5, accountant="rdp")
POLICY = Policy(max_epsilon=50.0, delta=1e-5)


def node(state: Path, name: str = "es-police") -> Path:
    """A node's state folder with its own EC P-256 key, as `heroes agency init` makes it."""
    state.mkdir(parents=True, exist_ok=True)
    make_node_key(state / "node.key", state / "node.key.pub", comment=f"node {name}")
    return state


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return node(tmp_path)


def test_records_compose_across_runs_and_survive_a_restart(state: Path) -> None:
    with Ledger.open(state) as ledger:
        eps = []
        for run in ("1", "2"):
            for rnd in (1, 2, 3):
                seq, after = ledger.reserve(replace(REL, run_id=run, round=rnd), POLICY)
                ledger.complete(seq)
                eps.append(after)
    assert all(a < b for a, b in itertools.pairwise(eps))  # monotone
    with Ledger.open(state, create=False) as again:  # a restarted node
        rows = again.rows("es-police/abc")
        assert [(r.release.run_id, r.release.round) for r in rows] == [
            ("1", 1), ("1", 2), ("1", 3), ("2", 1), ("2", 2), ("2", 3)]
        assert all(r.completed for r in rows)
        spent = again.spent("es-police/abc", delta=1e-5, accountant="rdp")
    # Six rounds of 40 steps compose like one mechanism of 240 steps, not like one round.
    assert spent == pytest.approx(epsilon_spent([(1.0, 0.05, 240)], delta=1e-5,
                                                accountant="rdp"), rel=1e-9)
    assert spent == pytest.approx(eps[-1], rel=1e-9)


def test_refusal_exactly_at_the_boundary(state: Path) -> None:
    budget = epsilon_spent([(1.0, 0.05, 120)], delta=1e-5, accountant="rdp")  # 3 rounds
    policy = Policy(max_epsilon=budget, delta=1e-5)
    with Ledger.open(state) as ledger:
        for rnd in (1, 2, 3):
            ledger.reserve(replace(REL, round=rnd), policy)
        with pytest.raises(BudgetExceeded) as err:
            ledger.reserve(replace(REL, round=4), policy)
        assert err.value.spent == pytest.approx(budget)
        assert err.value.after > budget
        assert f"past the agency's budget of {budget:g}" in str(err.value)
        assert len(ledger.rows()) == 3  # the refused round was not recorded


def test_datasets_have_separate_budgets(state: Path) -> None:
    policy = Policy(max_epsilon=epsilon_spent([(1.0, 0.05, 40)], delta=1e-5,
                                              accountant="rdp"), delta=1e-5)
    with Ledger.open(state) as ledger:
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


def test_a_node_killed_between_record_and_send_never_under_counts(state: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_RECORD, str(state), str(root)],
                          cwd=root, check=False, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    with Ledger.open(state, create=False) as ledger:
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


def test_two_concurrent_runs_cannot_both_spend_the_remainder(state: Path) -> None:
    budget = epsilon_spent([(1.0, 0.05, 80)], delta=1e-5, accountant="rdp")
    policy = Policy(max_epsilon=budget, delta=1e-5)
    with Ledger.open(state) as ledger:
        ledger.reserve(REL, policy)  # one of two rounds' worth left
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    results: mp.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(state), policy, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    try:
        for p in procs:  # a spawned interpreter imports torch: slow on a loaded machine
            p.join(DEADLINE_S)
            assert p.exitcode == 0, f"racer {p.pid}: exit code {p.exitcode} (None: still running)"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert sorted([results.get(timeout=DEADLINE_S),
                   results.get(timeout=DEADLINE_S)]) == ["ok", "refused"]
    with Ledger.open(state, create=False) as ledger:
        assert len(ledger.rows()) == 2
        # the lock kept commit and head write together: the head is the last entry
        head = json.loads((state / HEAD_FILE).read_text())
        assert (head["seq"], head["hash"]) == ledger.head()


def test_append_only_and_tamper_evident(state: Path) -> None:
    with Ledger.open(state) as ledger:
        for rnd in (1, 2, 3):
            ledger.reserve(replace(REL, round=rnd), POLICY)
    conn = sqlite3.connect(state / LEDGER_FILE)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE entries SET body = '{}' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM entries WHERE seq = 3")
    # Someone determined drops the trigger and lowers a noise multiplier of the second
    # release (entries: 1 genesis, 2 dataset, 3-5 the releases)... it shows.
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET body = replace(body, '\"steps\": 40', '\"steps\": 4') "
                 "WHERE seq = 4")
    conn.commit()
    conn.close()
    before = hashlib.sha256((state / LEDGER_FILE).read_bytes()).hexdigest()
    with pytest.raises(LedgerError, match="checksum chain broken at entry 4"):
        Ledger.open(state, create=False)
    assert hashlib.sha256((state / LEDGER_FILE).read_bytes()).hexdigest() == before


def test_a_rechained_edit_is_caught_by_its_signature(state: Path) -> None:
    """Recomputing the hash chain after an edit is easy; signing it needs the node key."""
    from federation.ledger import _hash

    with Ledger.open(state) as ledger:
        for rnd in (1, 2, 3):
            ledger.reserve(replace(REL, round=rnd), POLICY)
    conn = sqlite3.connect(state / LEDGER_FILE)
    conn.execute("DROP TRIGGER entries_no_update")
    rows = conn.execute("SELECT seq, kind, dataset, body FROM entries ORDER BY seq").fetchall()
    prev = "0" * 64
    for seq, kind, dataset, body in rows:
        if seq == 4:
            body = body.replace('"steps": 40', '"steps": 4')
        entry_hash = _hash(prev, kind, dataset, body)
        conn.execute("UPDATE entries SET body=?, prev_hash=?, entry_hash=? WHERE seq=?",
                     (body, prev, entry_hash, seq))
        prev = entry_hash
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="signature of entry 4 does not verify"):
        Ledger.open(state, create=False)


@pytest.mark.parametrize("content", [b"", b"not a database at all\n" * 10,
                                     b"SQLite format 3\x00" + b"\x00" * 200])
def test_corrupt_or_foreign_file_is_refused_and_left_alone(state: Path,
                                                           content: bytes) -> None:
    path = state / LEDGER_FILE
    path.write_bytes(content)
    with pytest.raises(LedgerError) as err:
        Ledger.open(state)
    assert "left as it is" in str(err.value) or "not a heroes privacy ledger" in str(err.value)
    assert path.read_bytes() == content


def test_a_foreign_sqlite_database_is_refused_and_left_alone(state: Path) -> None:
    path = state / LEDGER_FILE
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('format', 'something-else/9')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="not a heroes privacy ledger"):
        Ledger.open(state)
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


def test_agency_ledger_command(state: Path) -> None:
    write_policy(state, Policy(max_epsilon=6.0, delta=1e-5))
    with Ledger.open(state) as ledger:
        seq, _ = ledger.reserve(REL, Policy(max_epsilon=6.0, delta=1e-5))
        ledger.complete(seq)
        ledger.reserve(replace(REL, round=2), Policy(max_epsilon=6.0, delta=1e-5))
    root = Path(__file__).resolve().parents[1]
    cmd = [*HEROES, "agency", "ledger", "--dir",
           str(state)]
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
    bad = subprocess.run([*cmd[:-1], str(state / "nowhere")], cwd=root,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "no privacy ledger here" in bad.stdout


def test_ledger_epsilon_matches_dp_accounting_over_runs(state: Path) -> None:
    """The ledger's totals, composed over two runs with different mechanisms, against
    Google's dp-accounting (RDP, and PLD for the PRV path), within 1%."""
    from tests.test_accounting_reference import reference_pld, reference_rdp

    runs = {"run-a": [(1.1, 0.05, 100)] * 3, "run-b": [(0.9, 0.0625, 64), (0.9, 0.0625, 64)]}
    with Ledger.open(state) as ledger:
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


# --- training without DP ----------------------------------------------------------------------

def test_a_non_private_release_makes_epsilon_infinite_for_good(state: Path) -> None:
    with Ledger.open(state) as ledger:
        seq, _ = ledger.reserve(REL, POLICY)
        ledger.complete(seq)
        seq = ledger.reserve_non_private(replace(REL, round=2, noise_multiplier=1.3))
        ledger.complete(seq)  # complete works for it, like for a DP release
        assert ledger.rows()[-1].release.noise_multiplier == 0.0 and ledger.rows()[-1].completed
        assert ledger.spent(REL.dataset, delta=1e-5, accountant="rdp") == math.inf
        assert ledger.spent(REL.dataset, delta=1e-5, accountant="prv") == math.inf
        entries = len(ledger.rows())
        with pytest.raises(BudgetExceeded) as err:
            ledger.reserve(replace(REL, round=3), POLICY)
        assert "trained without DP at least once (epsilon infinite)" in str(err.value)
        assert "no later DP training can give it a finite guarantee" in str(err.value)
        assert err.value.spent == math.inf and len(ledger.rows()) == entries
        with pytest.raises(LedgerError, match="reserve_non_private"):
            ledger.reserve(replace(REL, round=3, noise_multiplier=0.0), POLICY)
        (item,) = ledger.report(POLICY)
        # another dataset is unaffected
        ledger.reserve(replace(REL, dataset="es-police/other"), POLICY)
    assert item["epsilon"] == {"rdp": math.inf, "prv": math.inf}
    assert item["epsilon_infinite"] and item["non_private_releases"] == 1
    assert item["remaining"] == 0.0 and item["unit"].startswith("one advert record")
    assert item["delta"] == 1e-5
    assert item["releases"][0]["cumulative_epsilon"]["rdp"] < math.inf
    assert item["releases"][1]["cumulative_epsilon"]["rdp"] == math.inf
    plan = plan_noise(num_records=3000, batch_size=128, local_epochs=1, planned_rounds=5,
                      target_epsilon=3.0, target_delta=1e-5, accountant="rdp", where="t")
    with Ledger.open(state, create=False) as ledger:
        prior = ledger.history(REL.dataset)
    with pytest.raises(BudgetExceeded) as up_front:
        calibrate_to_budget(plan, prior, POLICY)
    assert "trained without DP at least once (epsilon infinite)" in str(up_front.value)
    assert "no later DP training can give it a finite guarantee" in str(up_front.value)


def test_the_ledger_command_shows_infinity_and_writes_valid_json(state: Path) -> None:
    write_policy(state, Policy(max_epsilon=6.0, delta=1e-5))
    with Ledger.open(state) as ledger:
        ledger.complete(ledger.reserve(REL, Policy(max_epsilon=6.0, delta=1e-5))[0])
        ledger.complete(ledger.reserve_non_private(replace(REL, round=2)))
    root = Path(__file__).resolve().parents[1]
    cmd = [*HEROES, "agency", "ledger", "--dir",
           str(state)]
    text = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True).stdout
    assert "total: epsilon inf (trained without DP) at delta=1e-05" in text
    assert "remaining 0.000" in text and "one advert record" in text
    out = subprocess.run([*cmd, "--json"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    assert "Infinity" not in out and "NaN" not in out
    (item,) = json.loads(out)["datasets"]  # standard JSON: no bare Infinity
    assert item["epsilon"] == {"rdp": None, "prv": None} and item["epsilon_infinite"] is True
    assert item["non_private_releases"] == 1 and item["remaining"] == 0.0
    assert item["releases"][0]["cumulative_epsilon"]["rdp"] > 0


# --- the node key -----------------------------------------------------------------------------

def test_no_node_key_no_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerError) as err:
        Ledger.open(tmp_path)
    assert f"no node key at {tmp_path / 'node.key'}" in str(err.value)
    assert "heroes agency init" in str(err.value) and "simulation makes one" in str(err.value)
    assert not (tmp_path / LEDGER_FILE).exists()


def test_reading_needs_only_the_public_key_and_writing_the_private(state: Path) -> None:
    with Ledger.open(state) as ledger:
        ledger.reserve(REL, POLICY)
    auditor = state.parent / "auditor"
    auditor.mkdir()
    for name in (LEDGER_FILE, HEAD_FILE, "node.key.pub"):
        (auditor / name).write_bytes((state / name).read_bytes())
    with Ledger.open(auditor, create=False) as ledger:
        assert len(ledger.rows()) == 1
        with pytest.raises(LedgerError, match="opened without the node key"):
            ledger.reserve(replace(REL, round=2), POLICY)
    with pytest.raises(LedgerError, match="no node key at"):
        Ledger.open(auditor)  # the writing open
    (auditor / "node.key.pub").unlink()
    with pytest.raises(LedgerError, match="signatures cannot be checked"):
        Ledger.open(auditor, create=False)


def test_a_key_pair_that_does_not_match_is_refused(state: Path) -> None:
    with Ledger.open(state) as ledger:
        ledger.reserve(REL, POLICY)
    other = node(state.parent / "other", "other")
    (state / "node.key.pub").write_bytes((other / "node.key.pub").read_bytes())
    with pytest.raises(LedgerError, match="are not one key pair"):
        Ledger.open(state)


# --- the policy file --------------------------------------------------------------------------

def _policy_error(state: Path, text: str) -> str:
    (state / POLICY_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        load_policy(state)
    message = str(err.value)
    assert str(state / POLICY_FILE) in message
    return message


def test_policy_booleans_numbers_and_strings_are_what_they_say(tmp_path: Path) -> None:
    base = "[privacy_budget]\nmax_epsilon = 5.0\ndelta = 1e-5\n"
    msg = _policy_error(tmp_path, base + 'allow_non_private = "false"\n')
    assert "[privacy_budget] allow_non_private must be a boolean" in msg
    assert "not a string" in msg and "allow_non_private = false" in msg  # the fix
    assert '"false"' not in msg  # the value read is not quoted back
    msg = _policy_error(tmp_path, "[privacy_budget]\nmax_epsilon = true\ndelta = 1e-5\n")
    assert "[privacy_budget] max_epsilon must be a number, not a boolean" in msg
    msg = _policy_error(tmp_path, base + 'on_budget = "never"\n')
    assert "on_budget must be 'stretch' or 'stop'" in msg and "never" not in msg
    msg = _policy_error(tmp_path, base + "accountant = 3\n")
    assert "accountant must be a string" in msg and "not an integer" in msg


def test_policy_unknown_keys_and_every_problem_at_once(tmp_path: Path) -> None:
    msg = _policy_error(tmp_path, "[privacy_budget]\nmax_epsilon = 5.0\ndelta = 1e-5\n"
                        "max_epsilom = 3\n[sharing]\nshare_everything = true\n"
                        "[secure_aggregation]\nmin_threshold = 0.4\nmin_agencies = 1\n"
                        "required = 1\n")
    assert "[privacy_budget] 'max_epsilom' is not a known key; allowed: " in msg
    assert "'max_epsilon'" in msg and "'allow_non_private'" in msg
    assert "[sharing] 'share_everything' is not a known key; allowed: " \
           "['share_local_metrics']" in msg
    assert "[secure_aggregation] min_threshold=0.4 must be at least 0.5 and below 1" in msg
    assert "0.5 is a hard floor" in msg
    assert "[secure_aggregation] min_agencies=1 must be at least 2" in msg
    assert "[secure_aggregation] required must be a boolean" in msg
    assert "has 5 problems" in msg
    msg = _policy_error(tmp_path, "[privacy_budget]\ndelta = 1e-5\n")
    assert "[privacy_budget] max_epsilon is missing" in msg
    msg = _policy_error(tmp_path, "max_epsilon = 5.0\n[node]\nname = 'x'\n")
    assert "'max_epsilon' is outside any section" in msg
    assert "has no [privacy_budget] section" in msg
    msg = _policy_error(tmp_path, "[privacy_budget\nmax_epsilon = 5.0\n")
    assert "is not valid TOML" in msg


def test_policy_sections_are_parsed_and_written_back(tmp_path: Path) -> None:
    (tmp_path / POLICY_FILE).write_text(
        "[privacy_budget]\nmax_epsilon = 4\ndelta = 1e-6\nallow_non_private = true\n"
        "[secure_aggregation]\nmin_threshold = 0.75\nmin_agencies = 5\nrequired = true\n"
        "[sharing]\nshare_local_metrics = true\n"
        "[node]\nname = \"es-police\"\nwhatever = 1\n", encoding="utf-8")  # [node]: not ours
    policy = load_policy(tmp_path)
    assert policy == Policy(max_epsilon=4.0, delta=1e-6, allow_non_private=True,
                            secure_min_threshold=0.75, secure_min_agencies=5,
                            require_secure_aggregation=True, share_local_metrics=True)
    assert isinstance(policy.max_epsilon, float)
    defaults = Policy(max_epsilon=1.0, delta=1e-5)
    assert (defaults.secure_min_threshold, defaults.secure_min_agencies,
            defaults.require_secure_aggregation, defaults.share_local_metrics) == (
        0.5, 3, False, False)
    write_policy(tmp_path, policy)
    text = (tmp_path / POLICY_FILE).read_text(encoding="utf-8")
    assert "[privacy_budget]" in text and "[secure_aggregation]" in text and "[sharing]" in text
    assert "#" not in text
    assert load_policy(tmp_path) == policy
    # t >= floor(f * g) + 1, computed exactly
    assert Policy(max_epsilon=1.0, delta=1e-5).min_share_threshold(6) == 4
    assert Policy(max_epsilon=1.0, delta=1e-5, secure_min_threshold=0.57
                  ).min_share_threshold(100) == 58
    assert policy.accepts_secure_round(threshold=7, neighbourhood=9, agencies=9) is None
    assert "at least 7" in str(policy.accepts_secure_round(threshold=6, neighbourhood=9,
                                                           agencies=9))
    assert "at least 5" in str(policy.accepts_secure_round(threshold=4, neighbourhood=4,
                                                           agencies=4))


def test_policy_objects_are_checked_as_strictly(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="allow_non_private must be a boolean"):
        Policy(max_epsilon=1.0, delta=1e-5, allow_non_private="false")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match=r"secure_min_threshold=0\.4 must be at least 0\.5"):
        Policy(max_epsilon=1.0, delta=1e-5, secure_min_threshold=0.4)
    with pytest.raises(PolicyError, match="max_epsilon must be a number, not a boolean"):
        Policy(max_epsilon=True, delta=1e-5)
    with pytest.raises(LedgerError):  # PolicyError is a LedgerError, as callers expect
        Policy(max_epsilon=1.0, delta=1e-5, secure_min_agencies=1)
    message = str(_policy_missing(tmp_path))
    assert "[secure_aggregation]" in message and "[sharing]" in message


def _policy_missing(tmp_path: Path) -> LedgerError:
    with pytest.raises(LedgerError, match="no privacy policy") as err:
        load_policy(tmp_path / "nowhere")
    return err.value
