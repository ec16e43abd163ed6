"""Epsilons already computed for a node's privacy ledger, kept beside it for the reports.

Why: ``heroes agency status`` and ``heroes agency ledger`` show each dataset's epsilon after
every release under both accountants (RDP and PRV). Opacus' accountant files import scipy
(``scipy.signal`` alone about 0.7 s, ``scipy.special`` about 0.2 s on a quiet 2-core
machine), which made every call of these two read-only commands take 2 s or more. The
epsilon of a history at a delta is a pure function of that history, that delta and the
accountants' code, so each one is computed once and kept in ``STATE_DIR/epsilon-cache.json``,
keyed by the SHA-256 of the exact history (every release's noise multiplier, sample rate
and steps), the delta and ``ACCOUNTING`` (this code's and Opacus' version). A later report
over the same releases imports no accountant at all.

What it is not: the budget check (``Ledger.reserve``) never reads it; it computes the
policy's accountant afresh every time, so a cache entry cannot let a release past a budget.
The file is derived data: written 0600 from birth in the node's 0700 state folder, like the
ledger; deleting it is always safe; a file that cannot be read is ignored and one that
cannot be written is not an error (``status`` may run as a user who cannot write there).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from federation.files import open_private

CACHE_FILE = "epsilon-cache.json"

#: Part of every key: bump when what an epsilon means changes (the accountants' code, their
#: defaults, how a history is built from releases). The Opacus release is the pinned one.
ACCOUNTING = "heroes-accounting-1/opacus-1.6.0"

#: Most entries kept (about 200 bytes each): a report needs one per release per dataset.
MAX_ENTRIES = 50_000

Epsilons = dict[str, float]


def _key(history: Sequence[tuple[float, float, int]], delta: float) -> str:
    text = json.dumps([ACCOUNTING, repr(float(delta)),
                       [[repr(float(s)), repr(float(q)), int(n)] for s, q, n in history]],
                      separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _encode(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)  # 'inf', 'nan': not JSON numbers


def _decode(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


class EpsilonCache:
    """``both(history, delta)``: the cached epsilons, or ``compute``'s, then kept."""

    def __init__(self, state_dir: Path, compute: Callable[..., Epsilons]) -> None:
        self.path = Path(state_dir) / CACHE_FILE
        self.compute = compute
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, dict[str, float | str]] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("format") == 1 and isinstance(
                    data.get("entries"), dict):
                self._entries = {k: v for k, v in data["entries"].items()
                                 if isinstance(k, str) and isinstance(v, dict)}
        except (OSError, ValueError):
            pass  # no cache yet, or an unreadable one: computed afresh

    def both(self, history: Sequence[tuple[float, float, int]], delta: float) -> Epsilons:
        key = _key(history, delta)
        hit = self._entries.get(key)
        if hit is not None:
            values = {name: _decode(v) for name, v in hit.items()}
            if values and all(v is not None for v in values.values()):
                self.hits += 1
                return {name: float(v) for name, v in values.items() if v is not None}
        self.misses += 1
        result = self.compute(history, delta)
        self._entries[key] = {name: _encode(v) for name, v in result.items()}
        return result

    def save(self) -> None:
        """Write the entries (at most MAX_ENTRIES, newest kept) when any were computed."""
        if not self.misses:
            return
        keep = dict(list(self._entries.items())[-MAX_ENTRIES:])
        tmp = self.path.with_name(f".{CACHE_FILE}.{os.getpid()}.tmp")
        try:
            tmp.unlink(missing_ok=True)
            with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w",
                           encoding="utf-8") as handle:
                json.dump({"format": 1, "accounting": ACCOUNTING, "entries": keep}, handle,
                          separators=(",", ":"))
            tmp.replace(self.path)
        except OSError:  # a read-only state folder: the report stands without it
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
