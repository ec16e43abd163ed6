"""DP planning and accounting: reference values from an independent RDP computation."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.errors import PrivacyConfigError
from federation.privacy import epsilon_spent, plan_noise, steps_per_epoch


def independent_rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Sampled-Gaussian RDP at integer orders (Mironov, Talwar, Zhang 2019, eq. for integer
    alpha), composed over steps, converted with Balle et al. 2020 (as Opacus does)."""
    best = math.inf
    for alpha in range(2, 257):
        terms = [
            math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
            + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2)
            for k in range(alpha + 1)
        ]
        m = max(terms)
        log_a = m + math.log(sum(math.exp(t - m) for t in terms))
        rdp = steps * log_a / (alpha - 1)
        eps = rdp + math.log1p(-1 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
        best = min(best, eps)
    return best


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "delta"),
    [(1.0, 0.01, 1000, 1e-5), (1.1, 0.05, 300, 1e-5), (2.0, 0.25, 40, 1e-6)],
)
def test_rdp_epsilon_matches_independent_computation(
    sigma: float, q: float, steps: int, delta: float
) -> None:
    ours = epsilon_spent([(sigma, q, steps)], delta=delta, accountant="rdp")
    ref = independent_rdp_epsilon(sigma, q, steps, delta)
    # Opacus also searches fractional orders, so it may only be tighter, and only slightly.
    assert ours <= ref * (1 + 1e-6)
    assert ours >= ref * 0.97


def test_history_composes_like_one_long_run() -> None:
    split = epsilon_spent([(1.0, 0.02, 100), (1.0, 0.02, 100)], delta=1e-5, accountant="rdp")
    whole = epsilon_spent([(1.0, 0.02, 200)], delta=1e-5, accountant="rdp")
    assert split == pytest.approx(whole, rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400))
def test_epsilon_is_monotone_in_steps(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    e_lo = epsilon_spent([(1.0, 0.05, lo)], delta=1e-5, accountant="rdp")
    e_hi = epsilon_spent([(1.0, 0.05, hi)], delta=1e-5, accountant="rdp")
    assert e_lo <= e_hi + 1e-12


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_plan_meets_target_over_all_rounds(accountant: str) -> None:
    plan = plan_noise(num_records=3000, batch_size=128, local_epochs=1, planned_rounds=5,
                      target_epsilon=3.0, target_delta=1e-5, accountant=accountant,
                      where="test")
    assert plan.steps_per_round == steps_per_epoch(3000, 128) == 24
    eps = plan.planned_epsilon
    assert eps <= 3.0
    assert eps >= 0.97 * 3.0  # calibrated, not wastefully noisy
    # One round alone spends much less: reporting it as the run's epsilon would be a lie.
    one = epsilon_spent([(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)],
                        delta=1e-5, accountant=accountant)
    assert one < 0.65 * eps


def test_small_agency_keeps_subsampling() -> None:
    plan = plan_noise(num_records=40, batch_size=128, local_epochs=1, planned_rounds=2,
                      target_epsilon=3.0, target_delta=1e-3, accountant="rdp", where="t")
    assert plan.batch_size == 10
    assert plan.sample_rate == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("eps", "delta", "records", "needle"),
    [(0.0, 1e-5, 1000, "target_epsilon=0.0 must be > 0"),
     (-1.0, 1e-5, 1000, "target_epsilon=-1.0 must be > 0"),
     (3.0, 0.0, 1000, "target_delta=0.0 must be > 0"),
     (3.0, 1e-3, 1000, "must be < 1/records = 1/1000"),
     (3.0, 0.5, 10, "must be < 1/records = 1/10")],
)
def test_bad_targets_are_refused_with_the_rule(eps: float, delta: float, records: int,
                                                needle: str) -> None:
    with pytest.raises(PrivacyConfigError) as err:
        plan_noise(num_records=records, batch_size=64, local_epochs=1, planned_rounds=3,
                   target_epsilon=eps, target_delta=delta, accountant="rdp",
                   where="agency es-police")
    assert needle in str(err.value)
    assert "agency es-police" in str(err.value)


def test_both_problems_reported_at_once() -> None:
    with pytest.raises(PrivacyConfigError) as err:
        plan_noise(num_records=100, batch_size=64, local_epochs=1, planned_rounds=3,
                   target_epsilon=-2.0, target_delta=0.5, accountant="rdp", where="a")
    assert len(err.value.problems) == 2


def test_cached_rdp_path_equals_opacus_accountant_exactly() -> None:
    from opacus.accountants import RDPAccountant

    history = [(1.1, 0.05, 100), (0.9, 0.25, 8), (1.1, 0.05, 50)]
    acc = RDPAccountant()
    acc.history = [(1.1, 0.05, 150), (0.9, 0.25, 8)]
    for _ in range(2):  # the second call is served from the cache
        assert epsilon_spent(history, delta=1e-5, accountant="rdp") == pytest.approx(
            acc.get_epsilon(delta=1e-5), rel=1e-12)


@pytest.mark.parametrize(("records", "epsilon", "rounds"), [
    (190, 3.0, 5), (1222, 8.0, 5), (8960, 3.0, 50), (40000, 0.5, 1), (60, 1.0, 5)])
def test_the_noise_search_on_fewer_orders_finds_opacus_own_sigma(
        records: int, epsilon: float, rounds: int) -> None:
    """plan_noise searches on the integer RDP orders, then on a window around the best one
    (issue 16: 2-5x faster); the sigma is Opacus' own full-order answer, and its epsilon on
    all of Opacus' orders stays within the target."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    from federation.privacy import SIGMA_EPSILON_TOLERANCE, noise_multiplier_for

    q = 1.0 / steps_per_epoch(records, 128)
    steps = 2 * rounds * steps_per_epoch(records, 128)
    ours = noise_multiplier_for(target_epsilon=epsilon, target_delta=1e-5, sample_rate=q,
                                steps=steps, accountant="rdp")
    opacus = get_noise_multiplier(target_epsilon=epsilon, target_delta=1e-5, sample_rate=q,
                                  steps=steps, accountant="rdp",
                                  epsilon_tolerance=SIGMA_EPSILON_TOLERANCE)
    assert ours == pytest.approx(opacus, rel=1e-12)
    acc = RDPAccountant()
    acc.history = [(ours, q, steps)]
    assert epsilon - SIGMA_EPSILON_TOLERANCE <= acc.get_epsilon(delta=1e-5) <= epsilon
