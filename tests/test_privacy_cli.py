"""``heroes privacy epsilon|plan``: real subprocess runs of the command."""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from federation.privacy import epsilon_spent
from tests._heroes import HEROES
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]


def run_privacy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HEROES, "privacy", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )


def run_json(*args: str) -> dict[str, Any]:
    result = run_privacy(*args, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_epsilon_table_names_both_accountants_the_delta_and_the_unit() -> None:
    result = run_privacy(
        "epsilon", "--noise-multiplier", "1.1", "--sample-rate", "0.05", "--steps", "300",
        "--delta", "1e-5",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "one advert record" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (
        ["RDP"], ["PRV"])}
    assert set(rows) == {"RDP", "PRV"}
    assert all("1e-05" in row for row in rows.values())  # delta beside every epsilon
    assert "reported guarantee" in rows["RDP"]
    assert "reported guarantee" not in rows["PRV"]
    assert f"{epsilon_spent([(1.1, 0.05, 300)], delta=1e-5, accountant='rdp'):.4f}" in rows["RDP"]
    assert result.stderr == ""


def test_epsilon_json_composes_a_multi_mechanism_history() -> None:
    history = [(1.1, 0.05, 200), (0.9, 0.05, 100), (2.0, 0.2, 30)]
    data = run_json(
        "epsilon", *[a for s, q, n in history for a in ("--history", f"{s},{q},{n}")],
        "--delta", "1e-5", "--accountant", "prv",
    )
    assert data["history"] == [list(h) for h in history]
    assert data["delta"] == 1e-5
    assert "one advert record" in data["unit_of_privacy"]
    rdp, prv = data["accountants"]["rdp"], data["accountants"]["prv"]
    assert rdp["epsilon"] == epsilon_spent(history, delta=1e-5, accountant="rdp")
    assert prv["epsilon"] == pytest.approx(
        epsilon_spent(history, delta=1e-5, accountant="prv"), rel=1e-9
    )
    assert rdp["delta"] == prv["delta"] == 1e-5
    assert data["reported_accountant"] == "prv"
    assert data["reported_epsilon"] == prv["epsilon"]
    # The history composes: more than its longest part alone.
    assert rdp["epsilon"] > epsilon_spent([history[0]], delta=1e-5, accountant="rdp")


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_plan_reaches_but_does_not_exceed_the_target_after_all_rounds(accountant: str) -> None:
    data = run_json(
        "plan", "--records", "10000", "--batch-size", "128", "--rounds", "5",
        "--local-epochs", "2", "--target-epsilon", "3.0", "--delta", "1e-5",
        "--accountant", accountant,
    )
    reported = data["epsilon_after_all_rounds"][accountant]["epsilon"]
    assert data["reported_epsilon"] == reported
    assert 0.97 * 3.0 <= reported <= 3.0
    assert data["steps_total"] == data["steps_per_round"] * 5
    assert data["effective_batch_size"] == 128
    assert data["sample_rate"] == pytest.approx(1 / data["steps_per_round"] * 2)
    assert data["noise_multiplier"] > 0
    for name in ("rdp", "prv"):
        after_one = data["epsilon_after_round_1"][name]["epsilon"]
        after_all = data["epsilon_after_all_rounds"][name]["epsilon"]
        assert 0 < after_one < after_all
        assert data["epsilon_after_all_rounds"][name]["delta"] == 1e-5


def test_plan_table_shows_round_one_is_not_the_runs_epsilon() -> None:
    result = run_privacy(
        "plan", "--records", "2000", "--batch-size", "128", "--rounds", "3",
        "--local-epochs", "1", "--target-epsilon", "2", "--delta", "1e-5",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for needed in ("noise multiplier", "effective batch size", "sample rate",
                   "steps per round", "steps in total", "one advert record",
                   "after all 3 round(s)", "round 1 only (NOT the run's epsilon"):
        assert needed in out
    assert out.count("RDP ") >= 2 and out.count("PRV ") >= 2
    assert result.stderr == ""


def test_bad_epsilon_input_lists_every_problem_and_exits_2() -> None:
    result = run_privacy(
        "epsilon", "--noise-multiplier", "0", "--sample-rate", "1.5", "--steps", "0",
        "--delta=-1e-5",  # argparse reads a bare "-1e-5" as an option, not a value
    )
    assert result.returncode == 2
    assert result.stdout == ""
    err = result.stderr
    assert "4 problem(s)" in err
    for flag in ("--noise-multiplier=0", "--sample-rate=1.5", "--steps=0", "--delta=-1e-5"):
        assert flag in err
    assert "> 0" in err and "(0, 1]" in err and ">= 1" in err


def test_bad_history_entries_and_missing_delta_are_reported_together() -> None:
    result = run_privacy("epsilon", "--history", "1.1,0.05", "--history", "1,0,abc")
    assert result.returncode == 2
    err = result.stderr
    assert "4 problem(s)" in err
    assert "--history #1 '1.1,0.05' has 2 field(s)" in err
    assert "--history #2 sample rate=0" in err
    assert "--history #2 steps='abc'" in err
    assert "--delta is missing" in err


def test_bad_plan_input_lists_every_problem_and_exits_2() -> None:
    result = run_privacy(
        "plan", "--records", "0", "--batch-size", "128", "--rounds", "0",
        "--local-epochs", "2", "--target-epsilon", "-1", "--delta", "0",
    )
    assert result.returncode == 2
    assert result.stdout == ""
    err = result.stderr
    assert "4 problem(s)" in err
    for flag in ("--records=0", "--rounds=0", "--target-epsilon=-1", "--delta=0"):
        assert flag in err


def test_plan_rejects_delta_not_below_one_over_records() -> None:
    result = run_privacy(
        "plan", "--records", "1000", "--batch-size", "128", "--rounds", "5",
        "--local-epochs", "2", "--target-epsilon", "3", "--delta", "1e-3",
    )
    assert result.returncode == 2
    assert "1/records = 1/1000" in result.stderr
    assert "Use at most 0.0001" in result.stderr


def test_prv_out_of_its_regime_is_na_not_a_crash() -> None:
    args = ("epsilon", "--noise-multiplier", "0.3", "--sample-rate", "0.5",
            "--steps", "10000", "--delta", "1e-5")
    data = run_json(*args)
    assert data["accountants"]["prv"]["epsilon"] is None
    assert "grid" in data["accountants"]["prv"]["unavailable_reason"]
    assert data["reported_epsilon"] == data["accountants"]["rdp"]["epsilon"] > 1000
    text = run_privacy(*args)
    assert text.returncode == 0
    assert "n/a (PRV would need" in text.stdout
    # Asking for PRV as the guarantee where it has none is an error (status 1), not a 0.
    assert run_privacy(*args, "--accountant", "prv").returncode == 1
