"""epsilon_spent against Google's dp-accounting, an independent implementation.

RDP: dp_accounting.rdp.RdpAccountant on Opacus' own order grid. PRV: Opacus' PRV accountant
against dp_accounting.pld.PLDAccountant (privacy-loss distributions, a different numerical
method for the same tight quantity). Same events for both: one Poisson-subsampled Gaussian
per step, self-composed, mechanisms of a history composed in turn.
"""

import math
from collections.abc import Sequence

import dp_accounting
import mpmath
import pytest
from dp_accounting import pld, rdp
from opacus.accountants import RDPAccountant

from federation.privacy import HistoryEntry, epsilon_spent

DELTA = 1e-5
ORDERS = list(RDPAccountant.DEFAULT_ALPHAS)  # 1.1 .. 10.9 step 0.1, then 12 .. 63

# Histories in the regime runs actually use (epsilon about 1.5 to 15), single and
# multi-mechanism, short and long (up to 20,000 steps).
HISTORIES: list[list[HistoryEntry]] = [
    [(1.0, 0.01, 1000)],
    [(1.1, 0.05, 300)],
    [(2.0, 0.25, 40)],
    [(1.1, 0.05, 200), (0.9, 0.05, 100), (2.0, 0.2, 30)],
    [(0.8, 0.004, 20_000)],
    [(1.5, 0.02, 5000), (1.2, 0.02, 5000)],
    [(1.0, 0.0126582, 790), (0.9, 0.0126582, 158), (1.3, 0.05, 400)],
]


def _event(history: Sequence[HistoryEntry]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        for sigma, q, steps in history
    ])


def reference_rdp(history: Sequence[HistoryEntry], delta: float) -> float:
    accountant = rdp.RdpAccountant(orders=ORDERS)
    accountant.compose(_event(history))
    return float(accountant.get_epsilon(delta))


def reference_pld(history: Sequence[HistoryEntry], delta: float) -> float:
    # 1e-4 discretisation: pessimistic (an upper bound, like Opacus' PRV value) and well
    # below the 1% being checked; 1e-3 would cost ~0.1% more slack and save ~0.5 s.
    accountant = pld.PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(_event(history))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("history", HISTORIES, ids=str)
def test_rdp_matches_dp_accounting(history: list[HistoryEntry]) -> None:
    ours = epsilon_spent(history, delta=DELTA, accountant="rdp")
    ref = reference_rdp(history, DELTA)
    # Measured: at most 0.1% apart (multi-mechanism history: 7.1575 vs 7.1643).
    assert ours == pytest.approx(ref, rel=0.01)


@pytest.mark.parametrize("history", HISTORIES, ids=str)
def test_prv_matches_pld(history: list[HistoryEntry]) -> None:
    ours = epsilon_spent(history, delta=DELTA, accountant="prv")
    ref = reference_pld(history, DELTA)
    # Measured: 0.1% to 0.3% apart, PRV above PLD. Both report an upper bound.
    assert ours == pytest.approx(ref, rel=0.01)


def test_prv_is_within_its_absolute_error_where_epsilon_is_small() -> None:
    # NOT within 1% here, by design: Opacus' PRV returns estimate + eps_error with an
    # ABSOLUTE eps_error of 0.01, so below epsilon ~1.5 that margin alone exceeds 1%.
    # Measured: (3.0, 0.01, 100) PRV 0.1224 vs PLD 0.1124 (+9%); (2.0, 0.01, 1000)
    # 0.6321 vs 0.6220 (+1.6%). Check the documented absolute bound instead.
    for history in ([(3.0, 0.01, 100)], [(2.0, 0.01, 1000)]):
        ours = epsilon_spent(history, delta=DELTA, accountant="prv")
        ref = reference_pld(history, DELTA)
        assert ref <= ours <= ref + 0.01 + 0.005 * ref


def _numeric_rdp(q: float, sigma: float, alpha: float) -> float:
    """Sampled-Gaussian RDP at any order by quadrature of its definition (Mironov 2019)."""
    mpmath.mp.dps = 30

    def integrand(z: mpmath.mpf) -> mpmath.mpf:
        ratio = (1 - q) + q * mpmath.exp((2 * z - 1) / (2 * sigma**2))
        return mpmath.npdf(z, 0, sigma) * ratio**alpha

    cuts = [-mpmath.inf, -10 * sigma, 0, 0.5, 10 * sigma, 40 * sigma, mpmath.inf]
    return float(mpmath.log(mpmath.quad(integrand, cuts)) / (alpha - 1))


def test_rdp_at_large_epsilon_matches_quadrature_where_dp_accounting_drops_orders() -> None:
    # For (sigma 0.5, q 0.1, 1000 steps) epsilon is ~136 and the best order is near 1.
    # dp-accounting 0.6's fractional-order series stops after 1000 terms and returns inf
    # for orders 1.1-1.6 here (it logs "failed to converge ... Excluding this order"), so
    # its epsilon is 236.45, 74% above ours: the 1% comparison is meaningless there.
    # Opacus' values at those orders agree with quadrature of the definition, so check
    # epsilon against quadrature on the low orders instead (same conversion as Opacus:
    # Balle et al. 2020).
    sigma, q, steps = 0.5, 0.1, 1000
    ours = epsilon_spent([(sigma, q, steps)], delta=DELTA, accountant="rdp")
    ref = min(
        steps * _numeric_rdp(q, sigma, a)
        + math.log1p(-1 / a)
        - (math.log(DELTA) + math.log(a)) / (a - 1)
        for a in [1 + x / 10 for x in range(1, 20)]
    )
    assert ours == pytest.approx(ref, rel=1e-6)
