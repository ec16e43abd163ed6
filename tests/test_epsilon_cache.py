"""The epsilon cache of the ledger's reports: the same figures as computing afresh, none
computed twice, a damaged file ignored, and never read by the budget check."""

import json
import math
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from federation.epsilon_cache import CACHE_FILE, EpsilonCache
from federation.ledger import BudgetExceeded, Ledger, Release, both_epsilons
from federation.pki import make_node_key
from federation.policy import Policy

REL = Release(dataset="es-police/abc", fingerprint="ab" * 32, run_id="1", round=1,
              task="advert-risk", model="advert-risk:AdvertRiskModel", noise_multiplier=1.0,
              sample_rate=0.05, steps=40, max_grad_norm=0.5, delta=1e-5, accountant="rdp")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    make_node_key(tmp_path / "node.key", tmp_path / "node.key.pub", comment="node es-police")
    return tmp_path


def _record(state: Path, policy: Policy, rounds: range) -> None:
    with Ledger.open(state) as ledger:
        for rnd in rounds:
            seq, _ = ledger.reserve(replace(REL, round=rnd), policy)
            ledger.complete(seq)


def _report(state: Path, policy: Policy, cached: bool = True) -> list[dict[str, Any]]:
    with Ledger.open(state, create=False) as ledger:
        return ledger.report(policy, cached=cached)


def test_cached_report_equals_a_fresh_one_and_computes_only_what_is_new(state: Path) -> None:
    policy = Policy(max_epsilon=50.0, delta=1e-5)
    _record(state, policy, range(1, 4))
    first = _report(state, policy)
    assert first == _report(state, policy, cached=False)
    assert stat.S_IMODE((state / CACHE_FILE).stat().st_mode) == 0o600
    calls: list[int] = []

    def counted(history: list[tuple[float, float, int]], delta: float) -> dict[str, float]:
        calls.append(len(history))
        return both_epsilons(history, delta)

    again = EpsilonCache(state, counted)
    for n in range(1, 4):  # every prefix the report needed is there
        assert again.both([(1.0, 0.05, 40)] * n, 1e-5) == both_epsilons(
            [(1.0, 0.05, 40)] * n, 1e-5)
    assert calls == []
    _record(state, policy, range(4, 5))  # a new round: its prefix alone is new
    assert _report(state, policy) == _report(state, policy, cached=False)
    assert again.both([(1.0, 0.05, 40)] * 4, 2e-5) is not None and calls == [4]  # other delta


def test_a_damaged_cache_is_ignored_and_rewritten(state: Path) -> None:
    policy = Policy(max_epsilon=50.0, delta=1e-5)
    _record(state, policy, range(1, 3))
    fresh = _report(state, policy, cached=False)
    for damage in ("{not json", json.dumps({"format": 1, "entries": []}),
                   json.dumps({"format": 1, "entries": {"k": "v"}})):
        (state / CACHE_FILE).write_text(damage, encoding="utf-8")
        assert _report(state, policy) == fresh
    assert json.loads((state / CACHE_FILE).read_text())["format"] == 1


def test_the_budget_check_never_reads_the_cache(state: Path) -> None:
    """A cache rewritten to claim nothing was spent changes a report (it is a display aid
    in the node's own 0700 folder) but lets no release past the budget."""
    spent_after_3 = both_epsilons([(1.0, 0.05, 120)], 1e-5)["rdp"]
    policy = Policy(max_epsilon=spent_after_3, delta=1e-5)
    _record(state, policy, range(1, 4))
    _report(state, policy)
    data = json.loads((state / CACHE_FILE).read_text())
    data["entries"] = {k: {"rdp": 0.0, "prv": 0.0} for k in data["entries"]}
    (state / CACHE_FILE).write_text(json.dumps(data), encoding="utf-8")
    assert _report(state, policy)[0]["epsilon"] == {"rdp": 0.0, "prv": 0.0}  # shown
    assert _report(state, policy, cached=False)[0]["epsilon"]["rdp"] == pytest.approx(
        spent_after_3)
    with Ledger.open(state) as ledger, pytest.raises(BudgetExceeded):
        ledger.reserve(replace(REL, round=4), policy)


def test_infinity_survives_the_cache(state: Path) -> None:
    policy = Policy(max_epsilon=50.0, delta=1e-5, allow_non_private=True)
    with Ledger.open(state) as ledger:
        ledger.complete(ledger.reserve_non_private(REL))
    assert math.isinf(_report(state, policy)[0]["epsilon"]["rdp"])
    assert math.isinf(_report(state, policy)[0]["epsilon"]["prv"])  # read back from the file
