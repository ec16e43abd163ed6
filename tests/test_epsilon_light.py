"""The torch-free epsilon (federation/epsilon.py) is Opacus' epsilon, to the last bit.

federation/opacus_analysis.py loads Opacus' accountant files without the opacus package, so
that commands reading the ledger start without torch. These tests run the real Opacus
accountants (``opacus.accountants``, torch and all) beside it on many histories.

RDP: equal to Opacus' RDPAccountant on the raw history within 1e-12 relative (the ledger's
compression reorders a float sum; measured: identical). PRV: identical to Opacus'
PRVAccountant on the compressed history (the history epsilon_spent hands it). On the raw,
uncompressed history PRV differs in the last digits, from the compression and not the code
(self-composing k + m steps at once instead of k then m moves the FFT's rounding): within
1e-8 relative on the run histories below (measured up to 5e-10), more on some random ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants import rdp as opacus_rdp

from federation import opacus_analysis
from federation.epsilon import compress, epsilon_spent, prv_grid_points
from federation.privacy import HistoryEntry

Mechanism = tuple[float, float]


def _histories(max_steps: int, max_q: float = 0.5) -> st.SearchStrategy[list[HistoryEntry]]:
    """1-5 releases over at most 3 mechanisms, so some repeat (as a ledger's rounds do)."""
    mechanisms = st.lists(
        st.tuples(st.floats(0.5, 4.0), st.floats(1e-3, max_q)), min_size=1, max_size=3)

    def releases(pool: list[Mechanism]) -> st.SearchStrategy[list[HistoryEntry]]:
        return st.lists(st.tuples(st.sampled_from(pool), st.integers(1, max_steps)).map(
            lambda r: (r[0][0], r[0][1], r[1])), min_size=1, max_size=5)

    return mechanisms.flatmap(releases)


DELTAS = st.sampled_from([1e-3, 1e-5, 1e-7, 1e-9])


def _with_warnings(compute: Callable[[], float]) -> tuple[float, list[str]]:
    """The value and the warnings raised computing it (Opacus warns, e.g., when the best
    RDP order is at the edge of its grid; both paths must warn alike)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = compute()
    return value, sorted({str(w.message) for w in caught})


def _opacus(cls: type[RDPAccountant] | type[PRVAccountant], history: list[HistoryEntry],
            delta: float) -> tuple[float, list[str]]:
    accountant = cls()
    accountant.history = list(history)
    return _with_warnings(lambda: float(accountant.get_epsilon(delta=delta)))


@settings(max_examples=50, deadline=None)
@given(history=_histories(max_steps=100_000), delta=DELTAS)
def test_rdp_equals_opacus_rdp_accountant(history: list[HistoryEntry], delta: float) -> None:
    ours, our_warnings = _with_warnings(
        lambda: epsilon_spent(history, delta=delta, accountant="rdp"))
    theirs, their_warnings = _opacus(RDPAccountant, history, delta)
    assert math.isclose(ours, theirs, rel_tol=1e-12, abs_tol=0.0), (ours, theirs)
    assert our_warnings == their_warnings
    # Opacus' RDPAccountant class itself, loaded torch-free: the identical float.
    loaded = opacus_analysis.rdp_accountant(history)
    assert _with_warnings(lambda: float(loaded.get_epsilon(delta=delta))) == (
        theirs, their_warnings)


# PRV's grid grows with epsilon and steps (seconds per history at epsilon ~20): a regime
# kept to usable budgets, and few examples; the run histories below add long ones.
@settings(max_examples=30, deadline=None)
@given(history=_histories(max_steps=300, max_q=0.05), delta=st.sampled_from([1e-3, 1e-5]))
def test_prv_equals_opacus_prv_accountant(history: list[HistoryEntry], delta: float) -> None:
    ours, our_warnings = _with_warnings(
        lambda: epsilon_spent(history, delta=delta, accountant="prv"))
    theirs, their_warnings = _opacus(PRVAccountant, compress(history), delta)
    assert ours == theirs
    assert our_warnings == their_warnings


#: The regime runs use (tests/test_accounting_reference.py's histories), long ones included.
RUN_HISTORIES: list[list[HistoryEntry]] = [
    [(1.0, 0.01, 1000)],
    [(1.1, 0.05, 200), (0.9, 0.05, 100), (1.1, 0.05, 300)],
    [(0.8, 0.004, 20_000)],
    [(1.5, 0.02, 5000), (1.2, 0.02, 5000), (1.5, 0.02, 50)],
    [(1.0, 0.05, 40), (1.0, 0.05, 40)],
    [(2.0, 1.0, 30)],  # sample rate 1: no subsampling
]


@pytest.mark.parametrize("history", RUN_HISTORIES, ids=str)
def test_both_accountants_equal_opacus_on_run_histories(history: list[HistoryEntry]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # log(1 - q) = log(0) at q = 1, on purpose in Opacus
        prv = epsilon_spent(history, delta=1e-5, accountant="prv")
        assert prv == _opacus(PRVAccountant, compress(history), 1e-5)[0]
        raw = _opacus(PRVAccountant, history, 1e-5)[0]
        assert math.isclose(prv, raw, rel_tol=1e-8, abs_tol=0.0), (prv, raw)
        assert math.isclose(epsilon_spent(history, delta=1e-5, accountant="rdp"),
                            _opacus(RDPAccountant, history, 1e-5)[0], rel_tol=1e-12)


@pytest.mark.parametrize("history", RUN_HISTORIES, ids=str)
def test_prv_grid_points_equal_opacus_domain(history: list[HistoryEntry]) -> None:
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

    domain = PRVAccountant()._get_domain(
        prvs=[PoissonSubsampledGaussianPRV(q, s) for s, q, _ in history],
        num_self_compositions=[n for _, _, n in history], eps_error=0.01,
        delta_error=1e-5 / 1000)
    assert prv_grid_points(history, delta=1e-5) == domain.size


def test_the_private_copy_leaves_the_real_opacus_alone() -> None:
    """Code that imports opacus after the light path gets the real package and classes."""
    loaded = opacus_analysis.accountants()
    assert opacus_analysis.PACKAGE != "opacus" and loaded.__name__ == opacus_analysis.PACKAGE
    assert loaded.rdp.RDPAccountant is not RDPAccountant
    assert RDPAccountant.__module__ == "opacus.accountants.rdp"
    assert loaded.rdp.RDPAccountant.DEFAULT_ALPHAS == RDPAccountant.DEFAULT_ALPHAS
    assert loaded.rdp.__file__ == opacus_rdp.__file__  # the same file, run twice
