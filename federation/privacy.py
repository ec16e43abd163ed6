"""Differential-privacy planning and accounting for one agency's run.

The unit of privacy is one advert record in one agency's training export. The guarantee
is (epsilon, delta)-DP for the whole sequence of model updates that agency sends over the
run: noise is calibrated up front for every planned round, and epsilon is always computed
from the complete accountant history, never from one round.

The history is a list of (noise_multiplier, sample_rate, steps) triples, exactly Opacus'
accountant history, so it can be stored between rounds (Flower's ``context.state``) and
re-composed by any accountant.

Epsilon itself is computed in federation/epsilon.py, with Opacus' accountant code loaded
without torch, so that commands that only report a ledger start fast; its names are
re-exported here. This module imports Opacus' package (and torch): noise planning
(``get_noise_multiplier``) and the accountant objects training hands to ``make_private``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

from federation.epsilon import (
    PRV_MAX_GRID_POINTS,
    HistoryEntry,
    compress,
    epsilon_spent,
    prv_grid_points,
    trained_without_dp,
)
from federation.errors import PrivacyConfigError

__all__ = [  # epsilon's names stay importable from here, where the training path finds them
    "ACCOUNTANTS", "PRV_MAX_GRID_POINTS", "HistoryEntry", "NoisePlan", "compress",
    "effective_batch_size", "epsilon_spent", "make_accountant", "plan_noise",
    "prv_grid_points", "steps_per_epoch", "trained_without_dp", "validate_targets",
]

#: Accountants by the name used in configuration.
ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}


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


#: Epsilon tolerance of the noise search (Opacus' bisection stops within it below target).
SIGMA_EPSILON_TOLERANCE = 0.005
#: RDP orders either side of the best one that the noise search's second pass keeps.
_ORDER_WINDOW = 6


@functools.lru_cache(maxsize=4096)
def noise_multiplier_for(*, target_epsilon: float, target_delta: float, sample_rate: float,
                         steps: int, accountant: str) -> float:
    """The smallest noise multiplier (within Opacus' bisection tolerance) whose ``steps``
    steps at ``sample_rate`` spend at most ``target_epsilon`` at ``target_delta``.

    Opacus' ``get_noise_multiplier`` itself, run on fewer RDP orders (issue 16: a node's
    first round spent 0.15-1.7 s here, and a 100-agency simulation 20 s, most of it on the
    90 fractional orders, each about 15 times dearer than an integer one). Epsilon is the
    minimum over orders of each order's bound, so RDP at any subset of the orders bounds
    epsilon from above: a sigma that meets the target on a subset meets it on all of
    Opacus' default orders, the ones the ledger accounts with, by construction. First pass:
    the integer orders up to 12 and every fourth beyond (the largest too). Second pass: the
    orders around the best one at the first pass's sigma (found among every order within a
    factor 1.5 of the first pass's best), which recovers Opacus' full-order answer (equal on
    all 105 cases of size, epsilon and rounds tried, 7x faster; tests/test_privacy.py). The
    PRV accountant uses Opacus' search unchanged. A pure function of its arguments, so a
    process keeps its answers: simulated agencies of the same size ask the same question
    (most of the 1,000 agencies of thousand_agency hold 40 adverts)."""
    full = dict(target_epsilon=target_epsilon, target_delta=target_delta,
                sample_rate=sample_rate, steps=steps, accountant=accountant,
                epsilon_tolerance=SIGMA_EPSILON_TOLERANCE)
    if accountant != "rdp":
        return float(get_noise_multiplier(**full))
    from opacus.accountants.analysis import rdp as rdp_analysis

    def best_of(orders: list[float], sigma: float) -> float:
        rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps,
                                       orders=orders)
        return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp,
                                                    delta=target_delta)[1])

    orders = sorted(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)
    coarse = [a for a in orders if a.is_integer() and (a <= 12 or a % 4 == 0 or a == orders[-1])]
    rough = float(get_noise_multiplier(**full, alphas=coarse))
    near = best_of(coarse, rough)
    best = best_of([a for a in orders if near / 1.5 <= a <= near * 1.5], rough)
    at = orders.index(best)
    window = orders[max(0, at - _ORDER_WINDOW):at + _ORDER_WINDOW + 1]
    return float(get_noise_multiplier(**full, alphas=window))


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
    sigma = noise_multiplier_for(target_epsilon=target_epsilon, target_delta=target_delta,
                                 sample_rate=sample_rate, steps=steps, accountant=accountant)
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
