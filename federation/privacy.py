"""Differential-privacy planning and accounting for one agency's run.

The unit of privacy is one advert record in one agency's training export. The guarantee
is (epsilon, delta)-DP for the whole sequence of model updates that agency sends over the
run: noise is calibrated up front for every planned round, and epsilon is always computed
from the complete accountant history, never from one round.

The history is a list of (noise_multiplier, sample_rate, steps) triples, exactly Opacus'
accountant history, so it can be stored between rounds (Flower's ``context.state``) and
re-composed by any accountant.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from federation.errors import PrivacyConfigError

#: Accountants by the name used in configuration.
ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}

HistoryEntry = tuple[float, float, int]


def make_accountant(name: str, history: Sequence[HistoryEntry] = ()) -> IAccountant:
    """An Opacus accountant of the named kind, primed with an existing history."""
    try:
        accountant = ACCOUNTANTS[name]()
    except KeyError:
        raise PrivacyConfigError(
            [f"accountant={name!r} is unknown; use one of {sorted(ACCOUNTANTS)}"]
        ) from None
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return accountant


def compress(history: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """Merge releases with the same mechanism: composition is commutative, so k steps of
    (sigma, q) here and m there are exactly k + m steps of it. Keeps a long ledger fast."""
    steps: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        key = (float(s), float(q))
        steps[key] = steps.get(key, 0) + int(n)
    return [(s, q, n) for (s, q), n in steps.items()]


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(sigma: float, q: float) -> np.ndarray:
    """RDP of one step of the subsampled Gaussian at Opacus' default orders (cached: a node
    asks for the same mechanism every round, and each evaluation costs ~0.1 s)."""
    return np.asarray(rdp_analysis.compute_rdp(
        q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS))


def trained_without_dp(history: Sequence[HistoryEntry]) -> bool:
    """Whether any release in the history had no noise (noise multiplier 0, or not a
    positive number at all): such a release is not differentially private."""
    return any(not float(s) > 0 for s, _, _ in history)


def epsilon_spent(history: Sequence[HistoryEntry], *, delta: float, accountant: str) -> float:
    """Cumulative epsilon at ``delta`` for the whole history (0.0 for no releases).

    RDP is computed exactly as Opacus' RDPAccountant does (same orders, same conversion),
    with the per-step RDP of each mechanism cached; PRV goes through Opacus' accountant.

    A history with any release without noise (noise multiplier <= 0) gives ``math.inf``
    under every accountant: one non-private release already bounds nothing, and no later
    noise can take that back. (Opacus itself would divide by zero or return nonsense.)
    """
    if not history:
        return 0.0
    if trained_without_dp(history):
        return math.inf
    merged = compress(history)
    if accountant == "rdp":
        rdp = sum(n * _rdp_per_step(s, q) for s, q, n in merged)
        eps, _ = rdp_analysis.get_privacy_spent(
            orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)
    return float(make_accountant(accountant, merged).get_epsilon(delta=delta))


def steps_per_epoch(num_records: int, batch_size: int) -> int:
    """Number of Poisson-sampled steps Opacus takes per epoch for this data size."""
    return math.ceil(num_records / effective_batch_size(num_records, batch_size))


def effective_batch_size(num_records: int, batch_size: int) -> int:
    """Expected batch size actually used: at most a quarter of the records.

    A small agency with the consortium's batch size would sample every record in every
    step (sample rate 1) and lose privacy amplification; a quarter keeps it meaningful.
    """
    return max(1, min(batch_size, math.ceil(num_records / 4)))


def validate_targets(
    *, target_epsilon: float, target_delta: float, num_records: int, where: str
) -> None:
    """Raise one PrivacyConfigError listing every problem with the targets."""
    problems = []
    if not (isinstance(target_epsilon, int | float) and math.isfinite(target_epsilon)):
        problems.append(f"target_epsilon={target_epsilon!r} must be a finite number")
    elif target_epsilon <= 0:
        problems.append(
            f"target_epsilon={target_epsilon} must be > 0; "
            "choose the budget your data-protection officer approved, e.g. 3.0"
        )
    if not (isinstance(target_delta, int | float) and math.isfinite(target_delta)):
        problems.append(f"target_delta={target_delta!r} must be a finite number")
    elif target_delta <= 0:
        problems.append(f"target_delta={target_delta} must be > 0, e.g. 1e-5")
    elif num_records > 0 and target_delta >= 1.0 / num_records:
        problems.append(
            f"target_delta={target_delta:g} must be < 1/records = 1/{num_records} "
            f"= {1.0 / num_records:.3g} for {where}; a delta that large allows "
            f"publishing a record outright. Use at most {0.1 / num_records:.1g}"
        )
    if problems:
        raise PrivacyConfigError(problems, source=f"privacy settings for {where}")


@dataclass(frozen=True)
class NoisePlan:
    """Noise calibrated so that every planned step together meets the target."""

    noise_multiplier: float
    sample_rate: float
    batch_size: int
    steps_per_round: int
    planned_rounds: int
    target_epsilon: float
    target_delta: float
    accountant: str
    budget_limited: bool = False  # noise raised to fit the agency's remaining budget

    @property
    def planned_epsilon(self) -> float:
        """Epsilon after all planned rounds (at most the target, by construction)."""
        steps = self.steps_per_round * self.planned_rounds
        return epsilon_spent(
            [(self.noise_multiplier, self.sample_rate, steps)],
            delta=self.target_delta,
            accountant=self.accountant,
        )


def plan_noise(
    *,
    num_records: int,
    batch_size: int,
    local_epochs: int,
    planned_rounds: int,
    target_epsilon: float,
    target_delta: float,
    accountant: str,
    where: str,
) -> NoisePlan:
    """Noise multiplier for a whole run of ``planned_rounds`` rounds at this agency."""
    validate_targets(
        target_epsilon=target_epsilon,
        target_delta=target_delta,
        num_records=num_records,
        where=where,
    )
    batch = effective_batch_size(num_records, batch_size)
    per_epoch = steps_per_epoch(num_records, batch_size)
    sample_rate = 1.0 / per_epoch
    steps = per_epoch * local_epochs * planned_rounds
    sigma = get_noise_multiplier(
        target_epsilon=target_epsilon,
        target_delta=target_delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
        epsilon_tolerance=0.005,
    )
    return NoisePlan(
        noise_multiplier=float(sigma),
        sample_rate=sample_rate,
        batch_size=batch,
        steps_per_round=per_epoch * local_epochs,
        planned_rounds=planned_rounds,
        target_epsilon=target_epsilon,
        target_delta=target_delta,
        accountant=accountant,
    )


#: Largest grid (points) on which the PRV accountant is asked to discretise a history.
#: Time and memory grow with it (several float64 arrays of this length plus FFTs): about
#: 2 s at 3.4e6 points, 15 s at 1.7e7, 110 s and 2.7 GB at 3.7e7 (then epsilon = inf), and
#: a MemoryError at 2.7e8. Beyond this limit epsilon is far past any usable budget anyway.
PRV_MAX_GRID_POINTS = 8_000_000


def prv_grid_points(history: Sequence[HistoryEntry], *, delta: float) -> int:
    """Points on the grid Opacus' PRV accountant would use for ``epsilon_spent`` here.

    Costs a few RDP evaluations, so callers can refuse an extreme regime (huge epsilon,
    very many steps) before the PRV accountant exhausts memory or runs for minutes.
    Mirrors PRVAccountant.get_epsilon's defaults (eps_error 0.01, delta_error delta/1000)
    through its domain helper, which is private in Opacus 1.6: re-check on upgrade.
    """
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

    if not history:
        return 0
    entries = [(float(s), float(q), int(n)) for s, q, n in history]
    domain = PRVAccountant()._get_domain(
        prvs=[PoissonSubsampledGaussianPRV(q, s) for s, q, _ in entries],
        num_self_compositions=[n for _, _, n in entries],
        eps_error=0.01,
        delta_error=delta / 1000,
    )
    return int(domain.size)
