"""Epsilon of an agency's history with every accountant, for reports and the command line.

The unit of privacy is one advert record in one agency's training export. ``account`` never
raises for a numerical failure of an accountant: that case comes back as epsilon=None with the
reason, so a report can still show the other accountant's figure.

federation.epsilon (Opacus' accountant code, loaded without torch; numpy and scipy) is
imported when an epsilon is computed, not when this module is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from federation.config import PrivacySettings

if TYPE_CHECKING:
    from federation.epsilon import HistoryEntry

ACCOUNTANTS = PrivacySettings.ACCOUNTANTS

UNIT = "one advert record in one agency's training export"


@dataclass(frozen=True)
class AccountantResult:
    """Epsilon from one accountant, or why there is none; warnings it raised become notes."""

    accountant: str
    delta: float
    epsilon: float | None
    reason: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "unavailable_reason": self.reason,
            "notes": list(self.notes),
        }


def account(history: Sequence[HistoryEntry], *, delta: float, accountant: str) -> AccountantResult:
    """Epsilon for ``history`` with one accountant; never raises for a numerical failure.

    PRV discretises the privacy-loss distribution on a grid that grows with epsilon and
    the number of steps; in extreme regimes it exhausts memory, runs for minutes or
    returns infinity. Those cases come back as epsilon=None with the reason.
    """
    import numpy as np

    from federation.epsilon import PRV_MAX_GRID_POINTS, epsilon_spent, prv_grid_points

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if accountant == "prv":
            # PRV sizes its grid with RDP bounds at tiny deltas; their "optimal order is at
            # the edge of the alpha grid" warnings concern that sizing, not the PRV result.
            warnings.filterwarnings("ignore", message="Optimal order is the")
            points = prv_grid_points(history, delta=delta)
            if points > PRV_MAX_GRID_POINTS:
                return AccountantResult(
                    accountant,
                    delta,
                    None,
                    reason=(
                        f"PRV would need a {points:.2g}-point grid (limit "
                        f"{PRV_MAX_GRID_POINTS:.0e}); the regime is too extreme for it, "
                        "read the RDP bound"
                    ),
                )
        # A sample rate of exactly 1 makes Opacus' PRV evaluate log(1 - q) = log(0) = -inf on
        # purpose (no subsampling); numpy's divide warning there is not a problem to report.
        divide = "ignore" if any(q == 1.0 for _, q, _ in history) else "warn"
        try:
            with np.errstate(divide=divide):  # type: ignore[arg-type]  # numpy stubs want a Literal
                epsilon = epsilon_spent(history, delta=delta, accountant=accountant)
        except (ArithmeticError, MemoryError, RuntimeError, ValueError) as exc:
            return AccountantResult(
                accountant, delta, None, reason=f"{type(exc).__name__}: {exc}"
            )
    notes = tuple(dict.fromkeys(str(w.message) for w in caught))
    if not math.isfinite(epsilon):
        return AccountantResult(
            accountant, delta, None, reason=f"{accountant.upper()} returned {epsilon}", notes=notes
        )
    return AccountantResult(accountant, delta, epsilon, notes=notes)


def account_all(history: Sequence[HistoryEntry], *, delta: float) -> list[AccountantResult]:
    """Epsilon with every accountant, RDP first."""
    names = sorted(ACCOUNTANTS, key=lambda name: (name != "rdp", name))
    return [account(history, delta=delta, accountant=name) for name in names]
