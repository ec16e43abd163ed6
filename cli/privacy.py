"""``heroes privacy ...``: what a history has spent, and what a run will spend.

    heroes privacy epsilon --noise-multiplier S --sample-rate Q --steps N --delta D [--json]
    heroes privacy epsilon --history S,Q,N [--history S,Q,N ...] --delta D [--json]
    heroes privacy plan --records N --batch-size B --rounds R --local-epochs E
                        --target-epsilon EPS --delta D [--accountant rdp|prv] [--json]

Both commands print epsilon from both accountants (RDP and PRV) with its delta and say
which one is the reported guarantee (federation/accounting.py computes them). The unit of
privacy is one advert record in one agency's training export. Bad input is reported all at
once, with exit status 2 (USAGE), before anything is computed; exit 1 (PROBLEM) when the
reported accountant gives no epsilon.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cli import exit
from cli._register import Subparsers, command, group
from federation.accounting import ACCOUNTANTS, UNIT, AccountantResult, account_all
from federation.errors import PrivacyConfigError

if TYPE_CHECKING:
    from federation.epsilon import HistoryEntry


# --- validating --------------------------------------------------------------------------


class _Checker:
    """Converts raw option strings, collecting every problem instead of stopping at one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def number(
        self, flag: str, raw: str | None, *, rule: Callable[[float], bool], rule_text: str,
        fix: str,
    ) -> float | None:
        if raw is None:
            self.problems.append(f"{flag} is missing; it is required ({rule_text}). {fix}")
            return None
        try:
            value = float(raw)
        except ValueError:
            self.problems.append(f"{flag}={raw!r} is not a number; it must be {rule_text}. {fix}")
            return None
        if not math.isfinite(value) or not rule(value):
            self.problems.append(f"{flag}={raw} is not allowed: it must be {rule_text}. {fix}")
            return None
        return value

    def count(self, flag: str, raw: str | None, *, fix: str) -> int | None:
        if raw is None:
            self.problems.append(f"{flag} is missing; it is required (an integer >= 1). {fix}")
            return None
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{flag}={raw!r} is not an integer; it must be >= 1. {fix}")
            return None
        if value < 1:
            self.problems.append(f"{flag}={raw} is not allowed: it must be >= 1. {fix}")
            return None
        return value

    def mechanism(
        self, flags: tuple[str, str, str], sigma: str | None, q: str | None, steps: str | None
    ) -> HistoryEntry | None:
        s = self.number(
            flags[0], sigma, rule=lambda v: v > 0, rule_text="> 0",
            fix="Use the sigma Opacus reported for that training, e.g. 1.1.",
        )
        r = self.number(
            flags[1], q, rule=lambda v: 0 < v <= 1, rule_text="in (0, 1]",
            fix="It is expected batch size / records, e.g. 128/10000 = 0.0128.",
        )
        n = self.count(
            flags[2], steps, fix="Count optimizer steps taken with that sigma and rate."
        )
        if s is None or r is None or n is None:
            return None
        return (s, r, n)

    def delta(self, raw: str | None) -> float | None:
        return self.number(
            "--delta", raw, rule=lambda v: 0 < v < 1, rule_text="in (0, 1)",
            fix="Use well below 1/records, e.g. 1e-5 for up to 10,000 records.",
        )

    def raise_if_any(self, source: str) -> None:
        if self.problems:
            raise PrivacyConfigError(self.problems, source=source)


def _epsilon_inputs(args: argparse.Namespace) -> tuple[list[HistoryEntry], float]:
    check = _Checker()
    singles = {
        "--noise-multiplier": args.noise_multiplier,
        "--sample-rate": args.sample_rate,
        "--steps": args.steps,
    }
    history: list[HistoryEntry] = []
    if args.history:
        given = ", ".join(k for k, v in singles.items() if v is not None)
        if given:
            check.problems.append(
                f"both --history and {given} were given; describe the mechanism either with "
                "--noise-multiplier/--sample-rate/--steps or with one --history S,Q,N each"
            )
        for i, raw in enumerate(args.history, start=1):
            parts = [p.strip() for p in raw.split(",")]
            if len(parts) != 3:
                check.problems.append(
                    f"--history #{i} {raw!r} has {len(parts)} field(s); it must be "
                    "NOISE_MULTIPLIER,SAMPLE_RATE,STEPS, e.g. 1.1,0.05,200"
                )
                continue
            where = f"--history #{i}"
            entry = check.mechanism(
                (f"{where} noise multiplier", f"{where} sample rate", f"{where} steps"), *parts
            )
            if entry is not None:
                history.append(entry)
    else:
        entry = check.mechanism(
            ("--noise-multiplier", "--sample-rate", "--steps"),
            args.noise_multiplier, args.sample_rate, args.steps,
        )
        if entry is not None:
            history.append(entry)
    delta = check.delta(args.delta)
    check.raise_if_any("arguments")
    assert delta is not None  # raise_if_any guarantees it
    return history, delta


@dataclass(frozen=True)
class _PlanInputs:
    records: int
    batch_size: int
    rounds: int
    local_epochs: int
    target_epsilon: float
    delta: float


def _plan_inputs(args: argparse.Namespace) -> _PlanInputs:
    from federation.privacy import validate_targets

    check = _Checker()
    records = check.count("--records", args.records, fix="Count the agency's training rows.")
    batch = check.count("--batch-size", args.batch_size, fix="The consortium uses 128.")
    rounds = check.count("--rounds", args.rounds, fix="Plan every round of the run, e.g. 5.")
    epochs = check.count("--local-epochs", args.local_epochs, fix="e.g. 2.")
    target = check.number(
        "--target-epsilon", args.target_epsilon, rule=lambda v: v > 0, rule_text="> 0",
        fix="Choose the budget your data-protection officer approved, e.g. 3.0.",
    )
    delta = check.delta(args.delta)
    if target is not None and delta is not None and records is not None:
        # The shared rule (delta < 1/records) lives in validate_targets; reuse its wording.
        try:
            validate_targets(
                target_epsilon=target, target_delta=delta, num_records=records,
                where="this agency",
            )
        except PrivacyConfigError as exc:
            check.problems.extend(exc.problems)
    check.raise_if_any("arguments")
    # raise_if_any guarantees every value converted; the asserts tell mypy so.
    assert records is not None and batch is not None and rounds is not None
    assert epochs is not None and target is not None and delta is not None
    return _PlanInputs(records, batch, rounds, epochs, target, delta)


# --- printing ----------------------------------------------------------------------------


def _table(results: Sequence[AccountantResult], reported: str, indent: str = "  ") -> list[str]:
    lines = [f"{indent}{'accountant':<11}{'epsilon':>12}  {'delta':<10}"]
    for r in results:
        eps = f"{r.epsilon:.4f}" if r.epsilon is not None else f"n/a ({r.reason})"
        mark = "  <- reported guarantee" if r.accountant == reported else ""
        if r.epsilon is None:
            lines.append(f"{indent}{r.accountant.upper():<11}{'':>12}  {r.delta:<10g}{mark}")
            lines.append(f"{indent}{'':<11}{eps}")
        else:
            lines.append(f"{indent}{r.accountant.upper():<11}{eps:>12}  {r.delta:<10g}{mark}")
        lines.extend(f"{indent}{'':<11}note: {n}" for n in r.notes)
    return lines


def _reported(results: Sequence[AccountantResult], name: str) -> AccountantResult:
    return next(r for r in results if r.accountant == name)


def _run_epsilon(args: argparse.Namespace) -> int:
    history, delta = _epsilon_inputs(args)
    results = account_all(history, delta=delta)
    chosen = _reported(results, args.accountant)
    if args.json:
        print(json.dumps({
            "unit_of_privacy": UNIT,
            "history": [list(h) for h in history],
            "delta": delta,
            "reported_accountant": args.accountant,
            "reported_epsilon": chosen.epsilon,
            "accountants": {r.accountant: r.as_dict() for r in results},
        }, indent=2))
    else:
        total = sum(n for _, _, n in history)
        print(f"Privacy spent; unit of privacy: {UNIT}")
        print(f"history: {len(history)} mechanism(s), {total} step(s) in total")
        for s, q, n in history:
            print(f"  noise multiplier {s:g}, sample rate {q:g}, steps {n}")
        print(f"epsilon at delta = {delta:g}, whole history composed:")
        print("\n".join(_table(results, args.accountant)))
        print(f"reported guarantee: {args.accountant.upper()} (choose with --accountant)")
    return exit.OK if chosen.epsilon is not None else exit.PROBLEM


def _run_plan(args: argparse.Namespace) -> int:
    import numpy as np

    from federation.privacy import effective_batch_size, plan_noise

    inputs = _plan_inputs(args)
    try:
        # The calibration probes sigmas far from the answer (20, 40, ...); edge-of-grid
        # warnings and PRV's log(1 - q) at q = 1 during those probes say nothing about the
        # plan, whose own epsilon is recomputed below with its warnings shown as notes.
        with warnings.catch_warnings(), np.errstate(divide="ignore"):
            warnings.filterwarnings("ignore", message="Optimal order is the")
            plan = plan_noise(
                num_records=inputs.records,
                batch_size=inputs.batch_size,
                local_epochs=inputs.local_epochs,
                planned_rounds=inputs.rounds,
                target_epsilon=inputs.target_epsilon,
                target_delta=inputs.delta,
                accountant=args.accountant,
                where="this agency",
            )
    except (ArithmeticError, MemoryError, RuntimeError, ValueError) as exc:
        print(
            f"heroes privacy plan: no noise multiplier found with {args.accountant.upper()} "
            f"({type(exc).__name__}: {exc}). Try --accountant rdp, a larger target epsilon or "
            "fewer rounds/epochs.",
            file=sys.stderr,
        )
        return exit.PROBLEM
    total_steps = plan.steps_per_round * plan.planned_rounds
    full = account_all(
        [(plan.noise_multiplier, plan.sample_rate, total_steps)], delta=plan.target_delta
    )
    first = account_all(
        [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)], delta=plan.target_delta
    )
    chosen = _reported(full, args.accountant)
    if args.json:
        print(json.dumps({
            "unit_of_privacy": UNIT,
            "records": inputs.records,
            "batch_size": inputs.batch_size,
            "effective_batch_size": effective_batch_size(inputs.records, inputs.batch_size),
            "rounds": plan.planned_rounds,
            "local_epochs": inputs.local_epochs,
            "target_epsilon": plan.target_epsilon,
            "delta": plan.target_delta,
            "accountant": plan.accountant,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "steps_per_round": plan.steps_per_round,
            "steps_total": total_steps,
            "reported_epsilon": chosen.epsilon,
            "epsilon_after_all_rounds": {r.accountant: r.as_dict() for r in full},
            "epsilon_after_round_1": {r.accountant: r.as_dict() for r in first},
        }, indent=2))
    else:
        print(f"Noise plan for one agency; unit of privacy: {UNIT}")
        print(
            f"  {inputs.records} records, batch size {inputs.batch_size}, "
            f"{inputs.local_epochs} local epoch(s) x {plan.planned_rounds} round(s), "
            f"target epsilon {plan.target_epsilon:g} at delta {plan.target_delta:g}"
        )
        print(f"  noise multiplier       {plan.noise_multiplier:.4f}"
              f"  (calibrated with {plan.accountant.upper()})")
        print(f"  effective batch size   {plan.batch_size}")
        print(f"  sample rate            {plan.sample_rate:.6g}")
        print(f"  steps per round        {plan.steps_per_round}")
        print(f"  steps in total         {total_steps}")
        print(f"epsilon after all {plan.planned_rounds} round(s) (the run's guarantee):")
        print("\n".join(_table(full, args.accountant)))
        print("epsilon after round 1 only (NOT the run's epsilon: every round adds to it):")
        print("\n".join(_table(first, "")))
        print(f"reported guarantee: {args.accountant.upper()} (choose with --accountant)")
    return exit.OK if chosen.epsilon is not None else exit.PROBLEM


# --- wiring ------------------------------------------------------------------------------


def register(subparsers: Subparsers) -> None:
    """Add ``privacy epsilon`` and ``privacy plan``."""
    commands = group(subparsers, "privacy",
                     help="epsilon spent by a history, and noise plans for a run",
                     description=__doc__.split("\n\n")[0], dest="privacy_command")
    names = sorted(ACCOUNTANTS)

    # Numbers are parsed as strings and checked together, so every problem is reported at
    # once (argparse's type= stops at the first one); the PrivacyConfigError listing them is
    # printed by cli/main.py with exit 2, like every HeroesError.
    eps = command(
        commands, "epsilon", _run_epsilon,
        help="epsilon of a (multi-mechanism) history with RDP and PRV",
        description="Epsilon for one agency's whole history, with both accountants.",
    )
    eps.add_argument("--noise-multiplier", metavar="S", help="noise multiplier (sigma), > 0")
    eps.add_argument("--sample-rate", metavar="Q", help="Poisson sample rate, in (0, 1]")
    eps.add_argument("--steps", metavar="N", help="optimizer steps, >= 1")
    eps.add_argument(
        "--history", metavar="S,Q,N", action="append",
        help="one mechanism of a history; repeat to compose (instead of the three flags)",
    )
    eps.add_argument("--delta", metavar="D", help="delta, in (0, 1); required")
    eps.add_argument("--accountant", choices=names, default="rdp",
                     help="accountant whose epsilon is the reported guarantee (default rdp)")
    eps.add_argument("--json", action="store_true", help="print JSON")

    plan = command(
        commands, "plan", _run_plan,
        help="noise multiplier for a whole run, and what it spends",
        description="Calibrate noise so all planned rounds together meet the target.",
    )
    plan.add_argument("--records", metavar="N", help="training records at the agency")
    plan.add_argument("--batch-size", metavar="B", help="configured batch size")
    plan.add_argument("--rounds", metavar="R", help="planned federated rounds")
    plan.add_argument("--local-epochs", metavar="E", help="local epochs per round")
    plan.add_argument("--target-epsilon", metavar="EPS", help="epsilon for the whole run")
    plan.add_argument("--delta", metavar="D", help="delta, < 1/records")
    plan.add_argument("--accountant", choices=names, default="rdp",
                      help="accountant used to calibrate and report (default rdp)")
    plan.add_argument("--json", action="store_true", help="print JSON")

