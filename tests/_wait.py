"""How long a test waits, in one place, and one way to wait for a condition.

At load average 30 on two cores, a join of 60 s on a spawned process and a 120 s limit on
`heroes agency status` were too short, and those two tests failed though nothing was wrong.
Every wait on real work is therefore generous: long enough for a badly loaded machine, and
still bounded, so that a test that really hangs fails (with what it saw) instead of hanging
the suite. A wait never decides what a test checks: a test that passes in two seconds on an
idle machine passes in two seconds still, because every wait returns as soon as its
condition holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# A process or command that does real work (starts Flower, trains, signs, reads a ledger),
# a process asked to stop, or a condition one of them brings about.
DEADLINE_S = 600.0
# A whole simulated federation run (several rounds, secure aggregation, evaluation).
RUN_DEADLINE_S = 1200.0


# Callable[..., object]: both are called with no argument, but a lambda in a loop binds its
# loop variable as a default argument (lambda a=agency: ...), which Callable[[], ...] refuses.
def wait_for(predicate: Callable[..., object], what: str, *, deadline_s: float = DEADLINE_S,
             seen: Callable[..., object] | None = None, interval_s: float = 0.2) -> None:
    """Poll ``predicate`` until it is true; past ``deadline_s``, fail saying what was awaited
    and, when ``seen`` is given, what was there instead (a process's output, a log)."""
    deadline = time.monotonic() + deadline_s
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    detail = "" if seen is None else f"; seen:\n{seen()}"
    raise AssertionError(f"waited {deadline_s:.0f} s for {what}{detail}")
