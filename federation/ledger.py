"""The agency's durable privacy ledger: every DP release, before it leaves, for ever.

One SQLite file per node (``<state_dir>/privacy-ledger.sqlite``). Each row is one release
(one round's model update) of one dataset with its mechanism parameters. The cumulative
epsilon of a dataset is computed by composing its WHOLE history, across rounds and runs.

Guarantees:
- Write-ahead: ``reserve`` commits the release (synchronous=FULL) before training starts,
  so a node that dies afterwards has over-counted, never under-counted. ``complete``
  appends a second row saying the update was produced and handed to Flower for sending; a
  reservation without one is shown as such ("reserved, not completed").
- Budget: ``reserve`` checks the agency's budget inside an IMMEDIATE transaction (SQLite's
  write lock), so two runs on the same dataset cannot both spend the same remainder.
- Append-only with a checksum: rows are only ever inserted; triggers refuse UPDATE and
  DELETE; each row carries the SHA-256 of its content chained to the previous row's hash,
  and the chain is verified whenever the ledger is opened. A corrupt or foreign file is
  refused and left exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from federation.errors import HeroesError
from federation.privacy import (
    ACCOUNTANTS,
    PRV_MAX_GRID_POINTS,
    HistoryEntry,
    NoisePlan,
    epsilon_spent,
    prv_grid_points,
)

LEDGER_FILE = "privacy-ledger.sqlite"
FORMAT = "heroes-privacy-ledger/1"
GENESIS = "0" * 64


class LedgerError(HeroesError):
    """The ledger file is unusable (corrupt, foreign, or tampered with)."""


class BudgetExceeded(HeroesError):
    """A release would take a dataset past the agency's budget."""

    def __init__(self, message: str, *, spent: float, after: float, budget: float) -> None:
        super().__init__(message)
        self.spent, self.after, self.budget = spent, after, budget


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('release', 'completed')),
    dataset TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER meta_no_update BEFORE UPDATE ON meta
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER meta_no_delete BEFORE DELETE ON meta
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
"""


@dataclass(frozen=True)
class Release:
    """One DP release: the mechanism that produced one round's update of one dataset."""

    dataset: str
    fingerprint: str
    run_id: str
    round: int
    task: str
    model: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    accountant: str
    recorded_at: str = ""

    def mechanism(self) -> HistoryEntry:
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class LedgerRow:
    seq: int
    release: Release
    completed: bool


@dataclass(frozen=True)
class Policy:
    """The agency's own limit for each dataset: epsilon at most ``max_epsilon`` at
    ``delta``, computed with ``accountant`` (the reported guarantee)."""

    max_epsilon: float
    delta: float
    accountant: str = "rdp"
    allow_non_private: bool = False
    #: "stretch": raise the noise so every planned round fits the remaining budget;
    #: "stop": keep the run's noise and refuse rounds once the budget would be passed.
    on_budget: str = "stretch"

    def __post_init__(self) -> None:
        problems = []
        if self.on_budget not in ("stretch", "stop"):
            problems.append(f"on_budget={self.on_budget!r} must be 'stretch' or 'stop'")
        if not (math.isfinite(self.max_epsilon) and self.max_epsilon > 0):
            problems.append(f"max_epsilon={self.max_epsilon} must be > 0")
        if not 0 < self.delta < 1:
            problems.append(f"delta={self.delta} must be in (0, 1)")
        if self.accountant not in ACCOUNTANTS:
            problems.append(f"accountant={self.accountant!r} must be one of {list(ACCOUNTANTS)}")
        if problems:
            raise LedgerError("agency privacy policy: " + "; ".join(problems))


def _hash(prev: str, kind: str, dataset: str, body: str) -> str:
    return hashlib.sha256("\x1f".join((prev, kind, dataset, body)).encode()).hexdigest()


def both_epsilons(history: Sequence[HistoryEntry], delta: float) -> dict[str, float]:
    """Epsilon of a history under every accountant; NaN where one cannot compute it."""
    out: dict[str, float] = {}
    for name in ACCOUNTANTS:
        if name == "prv" and prv_grid_points(history, delta=delta) > PRV_MAX_GRID_POINTS:
            out[name] = math.nan  # epsilon far past any budget; PRV would take minutes
            continue
        try:
            out[name] = epsilon_spent(history, delta=delta, accountant=name)
        except (MemoryError, RuntimeError, ValueError, ArithmeticError):
            out[name] = math.nan  # PRV refuses some regimes; shown as n/a, not a crash
    return out


class Ledger:
    """A node's privacy ledger. Open with ``Ledger.open(state_dir)``."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: Path, *, create: bool = True) -> Ledger:
        state_dir = Path(state_dir)
        path = state_dir / LEDGER_FILE
        if not path.exists():
            if not create:
                raise LedgerError(f"{path}: no privacy ledger here. Fix: check --state-dir")
            state_dir.mkdir(parents=True, exist_ok=True)
            conn = cls._connect(path, mode="rwc")
            try:
                with conn:
                    conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
                    conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
                    conn.execute("INSERT INTO meta VALUES ('created_at', ?)", (_now(),))
            except sqlite3.OperationalError:
                conn.close()
                # Another process created it first: open theirs.
                return cls.open(state_dir, create=False)
            return cls(path, conn)
        ledger = cls(path, cls._connect(path, mode="rw"))
        ledger.verify()
        return ledger

    @staticmethod
    def _connect(path: Path, *, mode: str) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=60.0,
                                   isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=60000")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"{path}: not a readable privacy ledger ({exc}). The file was left as it "
                "is. Fix: restore it from backup, or point the node at its own state "
                "directory; never delete a ledger to reset a budget"
            ) from None
        return conn

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- integrity --------------------------------------------------------------------
    def verify(self) -> int:
        """Check format and hash chain; return the number of entries."""
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            rows = self._conn.execute(
                "SELECT seq, kind, dataset, body, prev_hash, entry_hash FROM entries "
                "ORDER BY seq").fetchall()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"{self.path}: not a heroes privacy ledger ({exc}). The file was left as it "
                "is. Fix: point the node at its own state directory or restore the ledger "
                "from backup"
            ) from None
        if meta.get("format") != FORMAT:
            raise LedgerError(
                f"{self.path}: format {meta.get('format')!r}, expected {FORMAT!r}; this is "
                "not a heroes privacy ledger (or a newer one). The file was left as it is"
            )
        prev = GENESIS
        for seq, kind, dataset, body, prev_hash, entry_hash in rows:
            if prev_hash != prev or entry_hash != _hash(prev, kind, dataset, body):
                raise LedgerError(
                    f"{self.path}: checksum chain broken at entry {seq}; the ledger was "
                    "altered outside heroes-fl. The file was left as it is. Fix: restore "
                    "the ledger from backup and tell your data-protection officer"
                )
            prev = entry_hash
        return len(rows)

    # -- reading ----------------------------------------------------------------------
    def rows(self, dataset: str | None = None) -> list[LedgerRow]:
        q = "SELECT seq, kind, dataset, body FROM entries ORDER BY seq"
        releases: dict[int, Release] = {}
        completed: set[int] = set()
        for seq, kind, ds, body in self._conn.execute(q).fetchall():
            if dataset is not None and ds != dataset:
                continue
            data = json.loads(body)
            if kind == "release":
                releases[seq] = Release(**data)
            else:
                completed.add(int(data["release_seq"]))
        return [LedgerRow(s, r, s in completed) for s, r in releases.items()]

    def history(self, dataset: str) -> list[HistoryEntry]:
        return [r.release.mechanism() for r in self.rows(dataset)]

    def datasets(self) -> list[str]:
        return [d for (d,) in self._conn.execute(
            "SELECT DISTINCT dataset FROM entries ORDER BY dataset").fetchall()]

    def spent(self, dataset: str, *, delta: float, accountant: str) -> float:
        return epsilon_spent(self.history(dataset), delta=delta, accountant=accountant)

    # -- writing ----------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _append(self, conn: sqlite3.Connection, kind: str, dataset: str,
                body: dict[str, Any]) -> int:
        row = conn.execute(
            "SELECT entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        prev = row[0] if row else GENESIS
        text = json.dumps(body, sort_keys=True)
        cur = conn.execute(
            "INSERT INTO entries (kind, dataset, body, prev_hash, entry_hash) "
            "VALUES (?, ?, ?, ?, ?)", (kind, dataset, text, prev, _hash(prev, kind, dataset, text)))
        return int(cur.lastrowid or 0)

    def reserve(self, release: Release, policy: Policy) -> tuple[int, float]:
        """Record a release before it is made, if the budget allows; return its sequence
        number and the dataset's cumulative epsilon (policy accountant and delta) after it.

        Raises BudgetExceeded (and records nothing) when the release would pass the budget.
        """
        with self._write() as conn:
            self.verify()
            history = self.history(release.dataset)
            before = epsilon_spent(history, delta=policy.delta, accountant=policy.accountant)
            after = epsilon_spent([*history, release.mechanism()], delta=policy.delta,
                                  accountant=policy.accountant)
            if after > policy.max_epsilon * (1 + 1e-9):
                raise BudgetExceeded(
                    f"dataset {release.dataset}: this round would raise epsilon from "
                    f"{before:.3f} to {after:.3f} (delta={policy.delta:g}, "
                    f"{policy.accountant}), past the agency's budget of "
                    f"{policy.max_epsilon:g}; the node refuses it",
                    spent=before, after=after, budget=policy.max_epsilon,
                )
            body = asdict(release)
            body["recorded_at"] = _now()
            seq = self._append(conn, "release", release.dataset, body)
        return seq, after

    def complete(self, seq: int) -> None:
        """Note that the release ``seq`` was produced and handed over for sending."""
        with self._write() as conn:
            row = conn.execute("SELECT dataset FROM entries WHERE seq=? AND kind='release'",
                               (seq,)).fetchone()
            if row is None:
                raise LedgerError(f"{self.path}: no release {seq} to complete")
            self._append(conn, "completed", row[0], {"release_seq": seq, "at": _now()})

    # -- reporting --------------------------------------------------------------------
    def report(self, policy: Policy | None) -> list[dict[str, Any]]:
        """Per dataset: every release, the cumulative epsilon under both accountants, and
        the remaining budget under the policy."""
        out = []
        delta = policy.delta if policy else None
        for ds in self.datasets():
            rows = self.rows(ds)
            entries = []
            history: list[HistoryEntry] = []
            for r in rows:
                history.append(r.release.mechanism())
                d = delta if delta is not None else r.release.delta
                entries.append({
                    "seq": r.seq, **asdict(r.release),
                    "status": "completed" if r.completed else "reserved, not completed",
                    "cumulative_epsilon": both_epsilons(history, d),
                })
            d = delta if delta is not None else (rows[-1].release.delta if rows else 1e-5)
            total = both_epsilons(history, d)
            item: dict[str, Any] = {
                "dataset": ds, "releases": entries, "delta": d,
                "epsilon": total,
                "unit": "one advert record",
                "not_completed": sum(not r.completed for r in rows),
            }
            if policy:
                item["budget"] = policy.max_epsilon
                item["accountant"] = policy.accountant
                item["remaining"] = max(0.0, policy.max_epsilon - total[policy.accountant])
            out.append(item)
        return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def fingerprint_file(path: Path) -> str:
    """SHA-256 of a training export's bytes: the dataset's identity in the ledger."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


POLICY_FILE = "policy.toml"


def load_policy(state_dir: Path) -> Policy:
    """The agency's policy from ``<state_dir>/policy.toml`` (section ``[privacy_budget]``).

    There is no default: a node without a policy does not train with privacy it was not
    told to accept.
    """
    import tomllib

    path = Path(state_dir) / POLICY_FILE
    if not path.is_file():
        raise LedgerError(
            f"{path}: no privacy policy. Fix: the agency writes it, e.g.\n"
            "  [privacy_budget]\n  max_epsilon = 10.0   # lifetime budget per dataset\n"
            "  delta = 1e-5\n  accountant = \"rdp\"\n  allow_non_private = false\n"
            "  on_budget = \"stretch\"   # or \"stop\""
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))["privacy_budget"]
        known = {"max_epsilon", "delta", "accountant", "allow_non_private", "on_budget"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LedgerError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return Policy(max_epsilon=float(data["max_epsilon"]), delta=float(data["delta"]),
                      accountant=str(data.get("accountant", "rdp")),
                      allow_non_private=bool(data.get("allow_non_private", False)),
                      on_budget=str(data.get("on_budget", "stretch")))
    except (KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise LedgerError(
            f"{path}: unreadable privacy policy ({exc!r}). Fix: section [privacy_budget] "
            "with max_epsilon and delta"
        ) from None


def write_policy(state_dir: Path, policy: Policy) -> Path:
    """Write (or replace, atomically) the agency's policy file."""
    import tomli_w

    path = Path(state_dir) / POLICY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(POLICY_FILE + ".tmp")
    tmp.write_text(tomli_w.dumps({"privacy_budget": asdict(policy)}), encoding="utf-8")
    tmp.replace(path)
    return path


def calibrate_to_budget(plan: NoisePlan, prior: Sequence[HistoryEntry], policy: Policy
                        ) -> NoisePlan:
    """Raise the noise of ``plan`` until the dataset's whole history plus all planned
    rounds fits the agency's budget; refuse up front, with the numbers, if nothing can."""

    def total(sigma: float) -> float:
        steps = plan.steps_per_round * plan.planned_rounds
        return epsilon_spent([*prior, (sigma, plan.sample_rate, steps)], delta=policy.delta,
                             accountant=policy.accountant)

    spent = epsilon_spent(prior, delta=policy.delta, accountant=policy.accountant)
    if spent >= policy.max_epsilon:
        raise BudgetExceeded(
            f"this dataset has already spent epsilon {spent:.3f} of the agency's budget "
            f"{policy.max_epsilon:g} (delta={policy.delta:g}, {policy.accountant}); no DP "
            "training can run on it", spent=spent, after=spent, budget=policy.max_epsilon)
    if policy.on_budget == "stop" or total(plan.noise_multiplier) <= policy.max_epsilon:
        return plan
    hi = plan.noise_multiplier
    while total(hi) > policy.max_epsilon:
        hi *= 2
        if hi > MAX_NOISE_MULTIPLIER:
            raise BudgetExceeded(
                f"the remaining budget {policy.max_epsilon - spent:.3f} (spent {spent:.3f} of "
                f"{policy.max_epsilon:g}) cannot fit {plan.planned_rounds} rounds of "
                f"{plan.steps_per_round} steps even at noise multiplier "
                f"{MAX_NOISE_MULTIPLIER:g}; plan fewer rounds or ask for more budget",
                spent=spent, after=total(MAX_NOISE_MULTIPLIER), budget=policy.max_epsilon)
    lo = plan.noise_multiplier
    for _ in range(40):
        mid = (lo + hi) / 2
        if total(mid) > policy.max_epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-3 * hi:
            break
    return replace(plan, noise_multiplier=hi, budget_limited=True)


#: Beyond this the update is noise; a plan needing more is refused rather than run.
MAX_NOISE_MULTIPLIER = 64.0
