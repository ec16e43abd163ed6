"""White-box privacy audit of one agency's DP-SGD: Dirac gradient canaries, one-run bound.

What is computed. ``m`` canaries, each a *gradient* canary in the sense of Nasr et al.,
"Tight Auditing of Differentially Private Machine Learning" (USENIX Security 2023): a
record whose gradient is the Dirac vector ``C * e_j``, norm exactly the clipping norm
``C``, on its own coordinate ``j`` of the side copy's parameter vector. Each canary is
independently a member with probability 1/2 (seeded, ``Design``). At every DP-SGD step
each member enters the sum of clipped gradients with the step's Poisson sampling rate
``q``, exactly as a real record does, as Opacus' clipping leaves a gradient of norm ``C``
(``DiracCanaries.clipped_value``), before Opacus adds the noise; non-members never do. So
a canary is a worst-case record under the accountant's own assumptions (add/remove one
record, sensitivity ``C``, Poisson rate ``q``), and the run's claimed (epsilon, delta)
covers it.

Where the canaries sit. One run certifies the most with tens of thousands of canaries
(``optimal_canaries``: 58,300 at delta 1e-5), fourteen times the default model's 4,097
coordinates. So by default (``audit.gradient_canaries=auto``) the side copy carries, beside
every model coordinate, audit-only coordinates: one extra parameter tensor that no record's
loss touches (every record's gradient there is exactly 0, so no record's norm or clipping
changes) and that the DP optimiser holds as a parameter of its own
(federation.training.observe_steps): Opacus' ``add_noise`` gives it the noise it gives
every model coordinate, in the same step, from the same generator, with the same noise
multiplier (none when the test-only switch removes the noise). One canary per audit-only
coordinate.

The auditor is the agency itself, white-box: it sees every step's noisy sum before the
optimiser step (federation.training's ``observer`` hook) and the clipped sum of its own
records, which it subtracts (0 on the audit-only coordinates), so canary ``i`` observes
``x_t = (noisy_t[j] - clean_t[j]) / C`` = ``Bernoulli(q)`` (member) or ``0`` (non-member),
plus ``N(0, sigma^2)`` noise. Its score is the log-likelihood ratio of "member" summed over
steps, ``sum_t log(1 - q + q * exp((x_t - 1/2) / sigma^2))`` with the claimed ``sigma``
and ``q``: the most powerful test of one canary under the claimed mechanism
(Neyman-Pearson), and a function of what the agency sees only. The guesses: "member" for
the ``k`` highest scores, "non-member" for the ``k`` lowest (none when the plan leaves
members that are never sampled), abstain on the rest, with ``k`` fixed before the run from
public quantities (``guess_counts``: ``m``, the sampling rate, the planned steps), so no
choice made after seeing the scores inflates the bound.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023),
bound the number of correct guesses in one run of any (epsilon, delta)-DP algorithm: at
most ``Binomial(r, e^eps / (1 + e^eps))`` plus a term in ``2 m delta``; ``one_run_p_value``
and ``one_run_epsilon_lower_bound`` compute it exactly as their published reference code
(``p_value_DP_audit``, ``get_eps_audit``). The empirical lower bound is the largest epsilon
that this test rejects at the stated confidence: with probability at least the confidence,
an honest (epsilon, delta)-DP run gives a bound at or below its epsilon.

Honest limits. It is a lower bound, never an estimate: an honest run's bound is far below
its claim (one run, thresholded guesses; about 0.2, 0.5 and 1.0 for claims of 1, 3 and 8).
The ``2 m delta`` term caps what one run can certify, whatever it leaks: at delta 1e-5 and
95%, 8.22 at best (28,700 canaries, every guess right); the default 58,300 certify 8.17
with every guess right, 8.02 with three wrong (7.97 with four), and 7.48 when the plan's
few steps leave tens of members never sampled and only "member" guesses are made. So a
run without noise claiming 8 is caught unless it loses four guesses or more to members
that Poisson sampling never picked (``m/2 (1 - q)^T`` expected: 1.2 with the default
plan's 710 steps at rate 1/71, so about 4% of such runs are missed; 0.1 in the tests'
plan); a claim above about 8.2 cannot be tested by one run at delta 1e-5 (the report says
INCONCLUSIVE when every guess was right). The audit
tests the mechanism the agency's code runs (clipping, sampling rate, noise, accounting),
on a side copy of its training: it cannot see a fault that only the real copy had, nor
anything outside the agency (aggregation, secure sums).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from federation.files import write_atomic

#: File names in an agency's own state folder (``<state_dir>/audit/``).
DESIGN_FILE = "whitebox-canaries.npz"
SCORES_FILE = "whitebox-scores.npz"


# --------------------------------------------------------------------------- the bound

def one_run_p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of ``v`` or more correct guesses out of ``r`` (``m`` canaries) if the
    algorithm is (epsilon, delta)-DP: Steinke, Nasr and Jagielski's reference computation
    (their ``p_value_DP_audit``), its loop over ``i`` written as one cumulative sum.

    ``alpha``, the largest mean of the binomial's ``i`` probabilities just below ``v``,
    needs only part of them: none but the first when ``v - 1`` is at or below the mode
    (the terms then only shrink, and so does their mean), and none more than 60 standard
    deviations (plus 60) below the mode otherwise (they add less than 1e-80 to sums of at
    least a third, which no mean past them can turn into a larger one). The same value as
    the reference in double precision, at a fraction of the cost with tens of thousands of
    canaries."""
    from scipy import stats

    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    mode = math.floor((r + 1) * q)
    if 0 < v <= mode + 1:
        alpha = float(stats.binom.pmf(v - 1, r, q))
    elif v > 0:
        # alpha = max over i in 1..v of P[v > Binomial(r, q) >= v - i] / i
        low = max(0, int(mode - 60 * math.sqrt(r * q * (1 - q)) - 60))
        tail = np.cumsum(stats.binom.pmf(np.arange(v - 1, low - 1, -1), r, q))
        alpha = float(np.max(tail / np.arange(1, v - low + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def one_run_epsilon_lower_bound(*, m: int, r: int, v: int, delta: float,
                                confidence: float) -> float:
    """The largest epsilon whose (epsilon, delta)-DP hypothesis ``v`` correct guesses of
    ``r`` reject at ``confidence`` (their ``get_eps_audit``: bisection, 30 halvings)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    p = 1.0 - confidence
    low, high = 0.0, 1.0
    while one_run_p_value(m=m, r=r, v=v, epsilon=high, delta=delta) < p:
        high += 1.0
    for _ in range(30):
        mid = (low + high) / 2
        if one_run_p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) < p:
            low = mid
        else:
            high = mid
    return low


def guess_counts(m: int, *, sample_rate: float, steps: int, delta: float,
                 confidence: float) -> tuple[int, int]:
    """How many "member" and "non-member" guesses, fixed before the run from public
    quantities only (``m``, the plan's sampling rate and planned steps, the claimed delta,
    the confidence), never from scores.

    ``k = m/2 - 2 sqrt(m)``: four standard deviations below the expected number of members
    (and of non-members), so that a run that leaks everything can have every guess right.
    A member that Poisson sampling never picks scores like a non-member, so a run that
    leaks everything still loses about ``u = m/2 (1 - q)^T`` non-member guesses. Both kinds
    of guesses are made (``k`` each) unless "member" guesses alone would certify more for
    such a run (with a plan of few steps, when ``u`` runs into the tens): the bound at
    ``2k - ceil(u)`` right of ``2k`` against ``k'`` of ``k'``, where ``k' = m/2 - u -
    2 sqrt(m)`` is as far below the expected number of members ever sampled."""
    k = max(1, int(m / 2 - 2 * math.sqrt(m)))
    never_sampled = m / 2 * (1.0 - sample_rate) ** steps
    if never_sampled < 1:
        return k, k
    k_members = max(1, int(m / 2 - never_sampled - 2 * math.sqrt(m)))
    lost = math.ceil(never_sampled)
    if lost >= k:
        return k_members, 0
    both = one_run_epsilon_lower_bound(m=m, r=2 * k, v=2 * k - lost, delta=delta,
                                       confidence=confidence)
    members_only = one_run_epsilon_lower_bound(m=m, r=k_members, v=k_members, delta=delta,
                                               confidence=confidence)
    return (k, k) if both >= members_only else (k_members, 0)


#: The most Dirac canaries one design holds (an audit-only tensor of ~1M floats at most).
MAX_GRADIENT_CANARIES = 1_000_000


def _all_but_spare_bound(m: int, *, delta: float, confidence: float, spare: int) -> float:
    """The bound ``m`` canaries certify with both kinds of guesses (``guess_counts``) and
    all but ``spare`` of them right."""
    k = max(1, int(m / 2 - 2 * math.sqrt(m)))
    return one_run_epsilon_lower_bound(m=m, r=2 * k, v=max(0, 2 * k - spare), delta=delta,
                                       confidence=confidence)


@functools.lru_cache(maxsize=32)
def optimal_canaries(*, delta: float, confidence: float, spare: int = 2) -> int:
    """How many Dirac canaries let one run certify the most at (``delta``, ``confidence``)
    when all but ``spare`` guesses are right (``audit.gradient_canaries=auto``).

    More canaries mean more guesses but a larger ``2 m delta`` term in the theorem, so the
    bound of a run that leaks everything peaks at some ``m``. With every guess right the
    peak is flat (at delta 1e-5 and 95%: 8.22 at 28,700 canaries, 8.17 at 58,300), but each
    wrong guess costs more with fewer canaries (three cost 0.37 at 28,700, 0.15 at 58,300),
    and a run that leaks everything still loses a guess to each member that Poisson
    sampling never picks (about ``m/2 (1 - q)^T``: 1.2 with the default plan at 58,300). So
    the default spares two guesses: 58,300 at delta 1e-5 and 95% (about ``0.58 / delta``),
    which certify 8.17, 8.12, 8.07, 8.02 and 7.97 with 0 to 4 guesses wrong. A function of
    public quantities only, fixed before the run. Found by a bounded scalar search over
    ``log m`` (scipy), at most ``MAX_GRADIENT_CANARIES`` (the peak moves past it only below
    delta 6e-7)."""
    from scipy.optimize import minimize_scalar

    if not 0 < delta < 1:
        raise ValueError(f"delta={delta}: the optimum number of canaries needs 0 < delta < 1")
    low = math.log(max(64.0, 0.004 / delta))
    high = math.log(min(float(MAX_GRADIENT_CANARIES), 40.0 / delta))
    if low >= high:
        return MAX_GRADIENT_CANARIES

    def loss(log_m: float) -> float:
        return -_all_but_spare_bound(round(math.exp(log_m)), delta=delta,
                                     confidence=confidence, spare=spare)

    best = minimize_scalar(loss, bounds=(low, high), method="bounded",
                           options={"xatol": 0.02})
    return round(math.exp(float(best.x)))


def canary_count(setting: int | str | None, *, num_params: int, delta: float,
                 confidence: float) -> int:
    """The number of Dirac canaries for ``audit.gradient_canaries``: ``auto`` (the default:
    ``optimal_canaries``, on every model coordinate plus audit-only ones, or on a random
    subset of a model that has more coordinates), ``None`` (one per model coordinate, no
    audit-only ones) or a whole number."""
    if setting is None:
        return num_params
    if setting == "auto":
        return optimal_canaries(delta=delta, confidence=confidence)
    if isinstance(setting, bool) or not isinstance(setting, int):
        raise ValueError(f"gradient canaries {setting!r}: use auto, null or a whole number")
    return setting


def one_run_audit(scores: np.ndarray, members: np.ndarray, *, delta: float,
                  confidence: float, sample_rate: float, steps: int,
                  tiebreak_seed: int) -> dict[str, Any]:
    """Guess, count, bound: the ``k_member`` highest scores "member", the ``k_non_member``
    lowest "non-member" (``guess_counts``). Ties are broken by a fixed permutation of the
    canaries drawn from ``tiebreak_seed`` (independent of membership)."""
    m = int(scores.size)
    if members.shape != scores.shape:
        raise ValueError(f"{members.size} membership bits for {m} scores")
    k_in, k_out = guess_counts(m, sample_rate=sample_rate, steps=steps, delta=delta,
                               confidence=confidence)
    tiebreak = np.random.default_rng([tiebreak_seed, 11]).permutation(m)
    order = np.lexsort((tiebreak, scores))  # ascending score; ties in a fixed random order
    right_members = int(members[order[m - k_in:]].sum())
    right_non_members = int((~members[order[:k_out]]).sum())
    r, v = k_in + k_out, right_members + right_non_members
    return {
        "epsilon_lower_bound": one_run_epsilon_lower_bound(
            m=m, r=r, v=v, delta=delta, confidence=confidence),
        "confidence": confidence, "canaries": m, "members": int(members.sum()),
        "guesses": r, "correct": v, "member_guesses": k_in, "non_member_guesses": k_out,
        "correct_members": right_members, "correct_non_members": right_non_members,
        "best_possible_bound": one_run_epsilon_lower_bound(
            m=m, r=r, v=r, delta=delta, confidence=confidence),
    }


# --------------------------------------------------------------------------- the canaries

@dataclass(frozen=True)
class Design:
    """Which coordinates carry a canary and which canaries are members (seeded).

    Coordinates index the side copy's parameter vector: the model's ``num_params``
    coordinates (in ``model.parameters()`` order), then ``audit_coordinates`` audit-only
    coordinates that exist only in the side copy (``DiracCanaries.audit_parameters``)."""

    coordinates: np.ndarray  # int64, distinct, sorted indices into that vector
    members: np.ndarray  # bool, one per canary
    seed: int
    num_params: int  # the model's coordinates the design was drawn for
    audit_coordinates: int = 0  # audit-only coordinates after them (one canary each)

    @classmethod
    def draw(cls, *, num_params: int, canaries: int | None, seed: int) -> Design:
        """``canaries`` Dirac canaries, each a member with probability 1/2: on distinct
        model coordinates drawn at random when ``canaries <= num_params`` (``None``: all
        of them); beyond that, on every model coordinate and on ``canaries - num_params``
        audit-only coordinates."""
        m = num_params if canaries is None else canaries
        if not 1 <= m <= MAX_GRADIENT_CANARIES:
            raise ValueError(f"{m} Dirac canaries: use between 1 and "
                             f"{MAX_GRADIENT_CANARIES}")
        rng = np.random.default_rng([seed, 10])
        extra = max(0, m - num_params)
        if extra:
            coords = np.arange(m, dtype=np.int64)
        else:
            coords = np.sort(rng.permutation(num_params)[:m]).astype(np.int64)
        return cls(coordinates=coords, members=rng.random(m) < 0.5, seed=seed,
                   num_params=num_params, audit_coordinates=extra)

    def save(self, path: Path) -> None:
        write_atomic(path, _npz(coordinates=self.coordinates, members=self.members,
                                seed=np.array(self.seed), num_params=np.array(self.num_params),
                                audit_coordinates=np.array(self.audit_coordinates)))

    @classmethod
    def load(cls, path: Path) -> Design:
        with np.load(path) as f:
            return cls(coordinates=f["coordinates"], members=f["members"].astype(bool),
                       seed=int(f["seed"]), num_params=int(f["num_params"]),
                       audit_coordinates=int(f["audit_coordinates"]))


def _npz(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # the stub types allow_pickle as a kwarg
    return buf.getvalue()


@dataclass
class DiracCanaries:
    """A ``federation.training.StepObserver``: inserts the member canaries into each step's
    clipped sum with Poisson rate ``sample_rate``, then scores every canary on the noisy sum.

    ``noise_multiplier`` and ``sample_rate`` are the *claimed* mechanism (the agency's
    plan), used only for the score; the sampling of canaries draws fresh OS randomness,
    like the DP noise, so nobody can replay which step carried which canary.

    A member canary adds ``clipped_value`` to its coordinate: what Opacus' clipping
    (``min(1, C / (norm + 1e-6))``) leaves of a record gradient of norm exactly ``C``, so
    it is a record the mechanism could have seen, at full sensitivity. The design's
    audit-only coordinates are one extra parameter tensor (``audit_parameters``), made
    fresh for each side copy and thrown away with it; the DP optimiser adds its own noise
    to it (federation.training.observe_steps)."""

    design: Design
    max_grad_norm: float
    sample_rate: float
    noise_multiplier: float
    planned_steps: int  # over the whole run (the plan's), for the guesses (guess_counts)
    score: np.ndarray = field(init=False)  # log-likelihood ratio "member", summed over steps
    total: np.ndarray = field(init=False)  # plain sum of x_t (for the record)
    steps: int = field(init=False, default=0)
    _rng: np.random.Generator = field(init=False, repr=False)
    _split: list[tuple[torch.Tensor, np.ndarray]] | None = field(init=False, default=None)
    _clean: list[torch.Tensor] = field(init=False, default_factory=list)
    _sampled: np.ndarray | None = field(init=False, default=None)
    _audit: torch.nn.Parameter | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError("the white-box audit scores against the claimed noise "
                             f"multiplier, which must be > 0 (got {self.noise_multiplier})")
        if not 0 < self.sample_rate <= 1 or not self.max_grad_norm > 0:
            raise ValueError(f"sample rate {self.sample_rate} must be in (0, 1] and the "
                             f"clipping norm {self.max_grad_norm} > 0")
        m = self.design.coordinates.size
        self.score = np.zeros(m)
        self.total = np.zeros(m)
        self._rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        if self.design.audit_coordinates:
            self._audit = torch.nn.Parameter(torch.zeros(self.design.audit_coordinates))

    @property
    def clipped_value(self) -> float:
        """Opacus' clipping of a gradient of norm exactly ``C`` (its 1e-6 guard included)."""
        c = self.max_grad_norm
        return c * min(1.0, c / (c + 1e-6))

    def audit_parameters(self) -> Sequence[torch.nn.Parameter]:
        """The side copy's audit-only coordinates, for the DP optimiser (StepObserver)."""
        return [] if self._audit is None else [self._audit]

    def _layout(self, params: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, np.ndarray]]:
        """Per parameter tensor: its local indices of canary coordinates and the canaries'
        positions, once (the parameter order is fixed for a run)."""
        if self._split is None:
            sizes = np.array([p.numel() for p in params])
            model = int(sizes.sum()) - self.design.audit_coordinates
            if self._audit is not None and params[-1] is not self._audit:
                raise ValueError("the DP optimiser does not hold the audit-only coordinates: "
                                 "train with federation.training's observer hook")
            if model != self.design.num_params:
                raise ValueError(f"the canary design was drawn for a model of "
                                 f"{self.design.num_params} coordinates, this one has {model}")
            ends = np.cumsum(sizes)
            owner = np.searchsorted(ends, self.design.coordinates, side="right")
            split = []
            for k, start in enumerate(ends - sizes):
                pos = np.flatnonzero(owner == k)
                split.append((torch.from_numpy(self.design.coordinates[pos] - start), pos))
            self._split = split
        return self._split

    def before_noise(self, params: Sequence[torch.Tensor]) -> None:
        split = self._layout(params)
        m = self.design.coordinates.size
        sampled = self.design.members & (self._rng.random(m) < self.sample_rate)
        self._sampled = sampled
        self._clean = []
        for p, (local, pos) in zip(params, split, strict=True):
            flat = p.summed_grad.view(-1)  # type: ignore[attr-defined]  # Opacus' attribute
            self._clean.append(flat[local].detach().double())
            add = torch.from_numpy(sampled[pos] * self.clipped_value).to(flat.dtype)
            flat.index_add_(0, local, add)

    def after_noise(self, params: Sequence[torch.Tensor]) -> None:
        split = self._layout(params)
        x = np.zeros(self.design.coordinates.size)
        for p, (local, pos), clean in zip(params, split, self._clean, strict=True):
            assert p.grad is not None
            noisy = p.grad.detach().reshape(-1)[local].double()
            x[pos] = ((noisy - clean) / self.max_grad_norm).numpy()
        q, s2 = self.sample_rate, self.noise_multiplier ** 2
        if q < 1:
            self.score += np.logaddexp(math.log1p(-q), math.log(q) + (x - 0.5) / s2)
        else:
            self.score += (x - 0.5) / s2
        self.total += x
        self.steps += 1

    # state kept between the rounds of a run, in the agency's own state folder
    def save(self, path: Path, *, rounds: int) -> None:
        write_atomic(path, _npz(score=self.score, total=self.total,
                                steps=np.array(self.steps), rounds=np.array(rounds),
                                sample_rate=np.array(self.sample_rate),
                                noise_multiplier=np.array(self.noise_multiplier),
                                planned_steps=np.array(self.planned_steps)))

    def resume(self, path: Path) -> int:
        """Continue from an earlier round's saved scores; returns the rounds so far."""
        if not path.exists():
            return 0
        with np.load(path) as f:
            if f["score"].shape != self.score.shape:
                raise ValueError(f"{path.name} holds {f['score'].size} scores for "
                                 f"{self.score.size} canaries")
            self.score = f["score"].copy()
            self.total = f["total"].copy()
            self.steps = int(f["steps"])
            return int(f["rounds"])


def load_scores(path: Path) -> dict[str, Any]:
    with np.load(path) as f:
        return {"score": f["score"].copy(), "total": f["total"].copy(),
                "steps": int(f["steps"]), "rounds": int(f["rounds"]),
                "sample_rate": float(f["sample_rate"]),
                "noise_multiplier": float(f["noise_multiplier"]),
                "planned_steps": int(f["planned_steps"])}
