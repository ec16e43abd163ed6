"""Epsilon spent by a history: Opacus' accountants, without importing torch.

The unit of privacy is one advert record in one agency's training export. Epsilon is always
computed from the complete history, never from one round. The history is a list of
(noise_multiplier, sample_rate, steps) triples, exactly Opacus' accountant history.

Why a module of its own: ``heroes agency status`` and ``heroes agency ledger`` report the
ledger's epsilon, and importing Opacus' package costs seconds of torch before any of it
(issue 14: commands that only read state start well under a second). The figures here come
from Opacus' own accountant code, loaded torch-free by federation/opacus_analysis.py, with
the same defaults Opacus uses (RDP orders ``RDPAccountant.DEFAULT_ALPHAS``; PRV ``eps_error``
0.01 and ``delta_error`` delta/1000). federation.privacy re-exports these names for the
training path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from federation import opacus_analysis
from federation.errors import PrivacyConfigError

#: The accountants, by the name used in configuration (federation.config lists the same).
ACCOUNTANTS = ("rdp", "prv")

HistoryEntry = tuple[float, float, int]

#: Largest grid (points) on which the PRV accountant is asked to discretise a history.
#: Time and memory grow with it (several float64 arrays of this length plus FFTs): about
#: 2 s at 3.4e6 points, 15 s at 1.7e7, 110 s and 2.7 GB at 3.7e7 (then epsilon = inf), and
#: a MemoryError at 2.7e8. Beyond this limit epsilon is far past any usable budget anyway.
PRV_MAX_GRID_POINTS = 8_000_000


def compress(history: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """Merge releases with the same mechanism: composition is commutative, so k steps of
    (sigma, q) here and m there are exactly k + m steps of it. Keeps a long ledger fast.
    Mechanisms keep the order of their first release."""
    steps: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        key = (float(s), float(q))
        steps[key] = steps.get(key, 0) + int(n)
    return [(s, q, n) for (s, q), n in steps.items()]


def trained_without_dp(history: Sequence[HistoryEntry]) -> bool:
    """Whether any release in the history had no noise (noise multiplier 0, or not a
    positive number at all): such a release is not differentially private."""
    return any(not float(s) > 0 for s, _, _ in history)


def _rdp_alphas() -> list[float]:
    return list(opacus_analysis.accountants().rdp.RDPAccountant.DEFAULT_ALPHAS)


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(sigma: float, q: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    """RDP of one step of the subsampled Gaussian at Opacus' default orders (cached: a node
    asks for the same mechanism every round, and each evaluation costs ~0.1 s)."""
    analysis = opacus_analysis.accountants().analysis.rdp
    return np.asarray(analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1,
                                           orders=_rdp_alphas()))


def epsilon_spent(history: Sequence[HistoryEntry], *, delta: float, accountant: str) -> float:
    """Cumulative epsilon at ``delta`` for the whole history (0.0 for no releases).

    RDP composes as Opacus' ``RDPAccountant.get_privacy_spent`` (opacus/accountants/rdp.py,
    1.6.0 lines 52-67): the sum over the history of ``compute_rdp(q, sigma, steps, alphas)``
    at the default alphas, converted by ``analysis.rdp.get_privacy_spent``. ``compute_rdp``
    returns one step's RDP times ``steps``, so the per-step RDP is cached and multiplied here.
    PRV is Opacus' ``PRVAccountant.get_epsilon`` itself (with its defaults), on the
    compressed history.

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
        analysis = opacus_analysis.accountants().analysis.rdp
        eps, _ = analysis.get_privacy_spent(orders=_rdp_alphas(), rdp=rdp, delta=delta)
        return float(eps)
    if accountant == "prv":
        return float(opacus_analysis.prv_accountant(merged).get_epsilon(delta=delta))
    raise PrivacyConfigError(
        [f"accountant={accountant!r} is unknown; use one of {sorted(ACCOUNTANTS)}"])


def prv_grid_points(history: Sequence[HistoryEntry], *, delta: float) -> int:
    """Points on the grid Opacus' PRV accountant would use for ``epsilon_spent`` here.

    Costs a few RDP evaluations, so callers can refuse an extreme regime (huge epsilon,
    very many steps) before the PRV accountant exhausts memory or runs for minutes.
    Mirrors PRVAccountant.get_epsilon's defaults (eps_error 0.01, delta_error delta/1000)
    through its domain helper, which is private in Opacus 1.6: re-check on upgrade.
    """
    if not history:
        return 0
    entries = [(float(s), float(q), int(n)) for s, q, n in history]
    prv = opacus_analysis.accountants().analysis.prv
    domain = opacus_analysis.prv_accountant()._get_domain(
        prvs=[prv.PoissonSubsampledGaussianPRV(q, s) for s, q, _ in entries],
        num_self_compositions=[n for _, _, n in entries],
        eps_error=0.01,
        delta_error=delta / 1000,
    )
    return int(domain.size)
