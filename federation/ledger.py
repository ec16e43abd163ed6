"""The agency's durable privacy ledger: every release, before it leaves, for ever.

One SQLite file per node (``<state_dir>/privacy-ledger.sqlite``). Each release row is one
round's model update of one dataset with its mechanism parameters. The cumulative epsilon
of a dataset is computed by composing its WHOLE history, across rounds and runs.

Threat model: besides accidents, an insider at the agency who would like the recorded
spend to be lower, and an aggregator that would like an agency to train more than its
budget allows. Guarantees:

- Write-ahead: ``reserve`` commits the release (synchronous=FULL) before training starts,
  so a node that dies afterwards has over-counted, never under-counted. ``complete``
  appends an entry saying the update was produced and handed to Flower for sending; a
  reservation without one is shown as such ("reserved, not completed").
- Budget: ``reserve`` checks the agency's budget inside an IMMEDIATE transaction (SQLite's
  write lock), so two runs on the same dataset cannot both spend the same remainder.
- Non-private training is recorded too (``reserve_non_private``): a dataset that was ever
  trained without DP has epsilon infinity, and every later DP round on it is refused.
- Append-only, chained and signed: rows are only ever inserted; triggers refuse UPDATE and
  DELETE; each row carries the SHA-256 of its content chained to the previous row's hash
  and an ECDSA signature of that hash by the node key (``STATE_DIR/node.key``). The first
  entry ("genesis") names the key's fingerprint, so another agency's ledger copied here is
  refused by name. Everything is verified whenever the ledger is opened.
- A signed head outside the file (``STATE_DIR/ledger.head``: the last entry's sequence
  number and hash) is rewritten after every append, under a lock file so that concurrent
  writers never leave it stale. Entries cut off the end, an emptied ledger, a ledger
  rolled back and written on again, and a deleted head are refused at open.
- Each training reply carries ``attest()``: the signed head and the heads this node
  reported before, so the consortium (server/ledger_heads.py) can tell a ledger that only
  grew from one that was restored from an older copy together with its head, the one
  rollback a node cannot see by itself.

Whatever is refused is left exactly as it was (the ledger and its head), and the message
names the file, what was found, and what to do.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.config import PrivacySettings
from federation.errors import DeploymentError, HeroesError, LedgerError, SignatureError
from federation.files import open_private, private_dir
from federation.policy import POLICY_FILE, Policy, load_policy, write_policy
from federation.signing import (
    PrivateKey,
    PublicKey,
    key_fingerprint,
    load_private_key,
    load_public_key,
    sign,
    verify,
)

if TYPE_CHECKING:
    from federation.epsilon import HistoryEntry
    from federation.privacy import NoisePlan

# The accountants (federation/epsilon.py: Opacus' accountant code, without torch) still load
# numpy and scipy, which a node's light stages and the ledger's own integrity checks never
# need. They are imported on first use.
ACCOUNTANTS = PrivacySettings.ACCOUNTANTS


def epsilon_spent(history: Sequence[HistoryEntry], *, delta: float, accountant: str) -> float:
    """federation.epsilon.epsilon_spent, imported when first needed."""
    from federation.epsilon import epsilon_spent as spent

    return spent(history, delta=delta, accountant=accountant)


def trained_without_dp(history: Sequence[HistoryEntry]) -> bool:
    from federation.epsilon import trained_without_dp as without

    return without(history)


LEDGER_FILE = "privacy-ledger.sqlite"
HEAD_FILE = "ledger.head"
REPORTED_FILE = "ledger-reported.jsonl"
LOCK_FILE = "ledger.lock"
NODE_KEY = "node.key"
NODE_PUB = "node.key.pub"
FORMAT = "heroes-privacy-ledger/2"
GENESIS = "0" * 64  # the prev_hash of the first entry
#: How many earlier reported heads an attestation carries: enough for the consortium to
#: find the one it saw last although some replies never reached it.
PREVIOUS_HEADS = 8

__all__ = [
    "FORMAT",
    "HEAD_FILE",
    "LEDGER_FILE",
    "LEGACY_UNITS",
    "POLICY_FILE",
    "REPORTED_FILE",
    "BudgetExceeded",
    "Ledger",
    "LedgerError",
    "LedgerRow",
    "Policy",
    "Release",
    "both_epsilons",
    "calibrate_to_budget",
    "fingerprint_file",
    "head_message",
    "json_safe",
    "load_policy",
    "unit_of",
    "write_policy",
]


class BudgetExceeded(HeroesError):
    """A release would take a dataset past the agency's budget."""

    def __init__(self, message: str, *, spent: float, after: float, budget: float) -> None:
        super().__init__(message)
        self.spent, self.after, self.budget = spent, after, budget


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('genesis', 'dataset', 'release', 'completed')),
    dataset TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL,
    signature TEXT NOT NULL
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

_LEFT = "The file was left as it is."
_RESTORE = ("Fix: restore this agency's ledger and its ledger.head from backup and tell your "
            "data-protection officer; never delete or replace a ledger to reset a budget")


@dataclass(frozen=True)
class Release:
    """One release: the mechanism that produced one round's update of one dataset
    (noise_multiplier 0 for a round trained without DP)."""

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
    #: The unit of privacy of the release's task (``Task.privacy_unit``), recorded with it
    #: so that the ledger states every epsilon's unit without loading the task registry
    #: (and its torch). Entries from before it was recorded have "" (see ``unit_of``).
    unit: str = ""

    def mechanism(self) -> HistoryEntry:
        return (self.noise_multiplier, self.sample_rate, self.steps)


#: Releases recorded before the ledger kept each release's unit were all of the one task
#: there was; its unit then, word for word.
LEGACY_UNITS = {"advert-risk": "one advert record in one agency's training export"}


def unit_of(release: Release) -> str:
    """The unit of privacy a release's epsilon is stated in."""
    if release.unit:
        return release.unit
    return LEGACY_UNITS.get(release.task, f"not recorded (task {release.task})")


@dataclass(frozen=True)
class LedgerRow:
    seq: int
    release: Release
    completed: bool


@dataclass(frozen=True)
class _Entry:
    seq: int
    kind: str
    dataset: str
    body: str
    prev_hash: str
    entry_hash: str
    signature: str


@dataclass(frozen=True)
class _Keys:
    public: PublicKey
    private: PrivateKey | None
    fingerprint: str


def _hash(prev: str, kind: str, dataset: str, body: str) -> str:
    return hashlib.sha256("\x1f".join((prev, kind, dataset, body)).encode()).hexdigest()


def head_message(seq: int, entry_hash: str) -> bytes:
    """The bytes a ledger head's signature covers: canonical JSON of seq and hash."""
    return json.dumps({"seq": seq, "hash": entry_hash}, sort_keys=True,
                      separators=(",", ":")).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _signature_ok(public: PublicKey, signature: object, message: bytes) -> bool:
    if not isinstance(signature, str):
        return False
    try:
        verify(public, base64.b64decode(signature, validate=True), message, what="ledger")
    except (SignatureError, binascii.Error, ValueError):
        return False
    return True


def both_epsilons(history: Sequence[HistoryEntry], delta: float) -> dict[str, float]:
    """Epsilon of a history under every accountant; NaN where one cannot compute it, and
    infinity under both once the history holds a release without DP."""
    if trained_without_dp(history):
        return {name: math.inf for name in ACCOUNTANTS}
    out: dict[str, float] = {}
    for name in ACCOUNTANTS:
        from federation.epsilon import PRV_MAX_GRID_POINTS, prv_grid_points

        if name == "prv" and prv_grid_points(history, delta=delta) > PRV_MAX_GRID_POINTS:
            out[name] = math.nan  # epsilon far past any budget; PRV would take minutes
            continue
        try:
            out[name] = epsilon_spent(history, delta=delta, accountant=name)
        except (MemoryError, RuntimeError, ValueError, ArithmeticError):
            out[name] = math.nan  # PRV refuses some regimes; shown as n/a, not a crash
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every infinite or NaN float replaced by None, so that it can be
    written as standard JSON (which has no Infinity); reports say "epsilon_infinite"
    beside such an epsilon."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# --- files beside the ledger --------------------------------------------------------------

def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    """Write a small file so that a reader (or a crash) sees the old one or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a crash's leftover keeps its own mode; start afresh
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)  # 0600 from birth
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise, between processes, everything that moves the ledger and its head
    together (commit + head write, creation, head repair, reporting a head): with the
    commit and the head write under one lock, no writer can leave a head behind another's
    newer entry."""
    fd = open_private(state_dir / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor is closed
        yield
    finally:
        os.close(fd)


def _load_keys(state_dir: Path, *, need_private: bool, ledger: Path) -> _Keys:
    """The node key: the private half signs (required to create or write), the public half
    (node.key.pub if present, else node.key's) verifies."""
    key_path, pub_path = state_dir / NODE_KEY, state_dir / NODE_PUB
    private: PrivateKey | None = None
    try:
        if key_path.is_file():
            private = load_private_key(key_path)
        elif need_private:
            raise LedgerError(
                f"{ledger}: no node key at {key_path}. The privacy ledger is signed by this "
                "node's key and is not created or written without it. Fix: run `heroes "
                "agency init` for a deployed node (a simulation makes one per agency); if "
                "the key was lost, restore it from backup: a new key cannot continue this "
                "agency's ledger")
        if pub_path.is_file():
            public = load_public_key(pub_path)
        elif private is not None:
            public = private.public_key()
        else:
            raise LedgerError(
                f"{ledger}: neither {pub_path} nor {key_path} exists, so the ledger's "
                "signatures cannot be checked. Fix: point --dir at the node's own "
                "state folder (`heroes agency init` makes node.key and node.key.pub; a "
                "simulation makes one per agency), or copy the agency's node.key.pub there")
    except DeploymentError as exc:
        raise LedgerError(f"{ledger}: the node key cannot be used: {exc}") from None
    fingerprint = key_fingerprint(public)
    if private is not None and key_fingerprint(private.public_key()) != fingerprint:
        raise LedgerError(
            f"{ledger}: {key_path} and {pub_path} are not one key pair "
            f"({key_fingerprint(private.public_key())} and {fingerprint}), so what this node "
            "signs could not be checked. Fix: restore the node.key.pub that `heroes agency "
            "init` wrote beside node.key, or remove node.key.pub to use node.key's own half")
    return _Keys(public=public, private=private, fingerprint=fingerprint)


def _head_document(keys: _Keys, seq: int, entry_hash: str) -> dict[str, Any]:
    assert keys.private is not None
    return {"seq": seq, "hash": entry_hash, "key_fingerprint": keys.fingerprint,
            "signature": _b64(sign(keys.private, head_message(seq, entry_hash)))}


def _write_head(state_dir: Path, keys: _Keys, seq: int, entry_hash: str) -> None:
    _atomic_write(state_dir / HEAD_FILE,
                  json.dumps(_head_document(keys, seq, entry_hash), sort_keys=True) + "\n")


def _head_seq_hint(head_path: Path) -> str:
    """For a message only: how many entries a head file records, if it says."""
    try:
        seq = json.loads(head_path.read_text(encoding="utf-8")).get("seq")
    except (OSError, ValueError, AttributeError):
        return "a ledger"
    return f"a ledger of {seq} entries" if isinstance(seq, int) else "a ledger"


class Ledger:
    """A node's privacy ledger. Open with ``Ledger.open(state_dir)``."""

    def __init__(self, path: Path, conn: sqlite3.Connection, keys: _Keys) -> None:
        self.path = path
        self.state_dir = path.parent
        self._conn = conn
        self._keys = keys
        self._verified: dict[int, tuple[str, str]] = {}  # seq -> (hash, signature) checked

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: Path, *, create: bool = True) -> Ledger:
        """Open (with ``create``: create if missing) and verify the node's ledger.

        ``create=True`` is the node's writing open and needs ``node.key``; ``create=False``
        (reports, status) needs only the public key, and may still write when node.key is
        there. Raises LedgerError, leaving every file as it was, when the ledger, its
        head or its key is not right.
        """
        state_dir = Path(state_dir)
        path = state_dir / LEDGER_FILE
        if not path.exists() and (state_dir / HEAD_FILE).exists():
            cls._refuse_missing(state_dir)  # returns only once the ledger is back in place
        if not path.exists():
            if not create:
                raise LedgerError(f"{path}: no privacy ledger here. Fix: check --dir")
            keys = _load_keys(state_dir, need_private=True, ledger=path)
            private_dir(state_dir)
            with _locked(state_dir):
                if not path.exists():
                    cls._create(state_dir, keys)
        conn = cls._connect(path, mode="rw")
        try:
            cls._check_format(path, conn)
            ledger = cls(path, conn, _load_keys(state_dir, need_private=create, ledger=path))
            ledger.verify(repair=True)
        except BaseException:
            conn.close()
            raise
        return ledger

    @classmethod
    def _refuse_missing(cls, state_dir: Path) -> None:
        """Only a head, no ledger: finish an interrupted creation, or refuse."""
        path, head_path = state_dir / LEDGER_FILE, state_dir / HEAD_FILE
        new = state_dir / (LEDGER_FILE + ".new")
        if new.is_file() and os.access(state_dir, os.W_OK):
            with _locked(state_dir):
                if not path.exists() and cls._new_matches_head(new, head_path):
                    os.replace(new, path)  # creation was cut between head and rename
                    _fsync_dir(state_dir)
                    return
        if path.exists():
            return
        raise LedgerError(
            f"{path} is missing, but {head_path} records {_head_seq_hint(head_path)}: the "
            "ledger was deleted or moved. Nothing was created. " + _RESTORE)

    @staticmethod
    def _new_matches_head(new: Path, head_path: Path) -> bool:
        try:
            head = json.loads(head_path.read_text(encoding="utf-8"))
            conn = sqlite3.connect(f"file:{new}?mode=ro", uri=True)
            try:
                row = conn.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC "
                                   "LIMIT 1").fetchone()
            finally:
                conn.close()
        except (OSError, ValueError, sqlite3.DatabaseError):
            return False
        return (isinstance(head, dict) and row is not None
                and [head.get("seq"), head.get("hash")] == [row[0], row[1]])

    @classmethod
    def _create(cls, state_dir: Path, keys: _Keys) -> None:
        """A new ledger holding its genesis entry, built beside the final name and moved
        into place only after its head is written: a ledger without a head is never
        visible, so "head missing" can always be refused."""
        path = state_dir / LEDGER_FILE
        new = state_dir / (LEDGER_FILE + ".new")
        for stale in (new, new.with_name(new.name + "-journal")):
            stale.unlink(missing_ok=True)  # a creation that died before its head
        # SQLite would create the file 0644 (less the umask); an empty file is a valid empty
        # database, and SQLite gives its journals the database file's own mode
        os.close(open_private(new, os.O_RDWR))
        conn = cls._connect(new, mode="rwc")
        try:
            conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            conn.execute("INSERT INTO meta VALUES ('created_at', ?)", (_now(),))
            body = {"format": FORMAT, "node_key_fingerprint": keys.fingerprint,
                    "created_at": _now()}
            seq, entry_hash = _insert(conn, keys, 1, GENESIS, "genesis", "", body)
            conn.execute("COMMIT")
        finally:
            conn.close()
        fd = os.open(new, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _write_head(state_dir, keys, seq, entry_hash)
        os.replace(new, path)
        _fsync_dir(state_dir)

    @staticmethod
    def _connect(path: Path, *, mode: str) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=60.0,
                                   isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=60000")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"{path}: not a readable privacy ledger ({exc}). {_LEFT} Fix: restore it "
                "from backup, or point the node at its own state directory; never delete a "
                "ledger to reset a budget"
            ) from None
        return conn

    @staticmethod
    def _check_format(path: Path, conn: sqlite3.Connection) -> None:
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"{path}: not a heroes privacy ledger ({exc}). {_LEFT} Fix: point the node "
                "at its own state directory or restore the ledger from backup"
            ) from None
        found = meta.get("format")
        if found == "heroes-privacy-ledger/1":
            raise LedgerError(
                f"{path}: format {found!r}, written by an earlier heroes-fl (unsigned, no "
                f"head); this version reads {FORMAT!r} only. {_LEFT} Fix: keep the file (its "
                "releases still count against the budget) and ask your data-protection "
                "officer; do not start a new ledger beside it, that would reset the budget")
        if found != FORMAT:
            shown = repr(found) if found is None or str(found).startswith("heroes-") else \
                "an unknown one"
            raise LedgerError(
                f"{path}: format {shown}, expected {FORMAT!r}; this is not a heroes privacy "
                f"ledger (or a newer one). {_LEFT}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- integrity --------------------------------------------------------------------
    def _entries(self) -> list[_Entry]:
        try:
            return [_Entry(*row) for row in self._conn.execute(
                "SELECT seq, kind, dataset, body, prev_hash, entry_hash, signature "
                "FROM entries ORDER BY seq").fetchall()]
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"{self.path}: not a heroes privacy ledger ({exc}). {_LEFT} Fix: point the "
                "node at its own state directory or restore the ledger from backup"
            ) from None

    def _head_text(self) -> str | None:
        path = self.state_dir / HEAD_FILE
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"{path}: the ledger's head cannot be read "
                              f"({type(exc).__name__}). {_LEFT} {_RESTORE}") from None

    def _parse_head(self, text: str | None) -> dict[str, Any] | None:
        """ledger.head, checked for form, key and signature; None if there is none."""
        if text is None:
            return None
        path = self.state_dir / HEAD_FILE
        try:
            head = json.loads(text)
        except ValueError:
            head = None
        ok = (isinstance(head, dict) and type(head.get("seq")) is int and head["seq"] >= 1
              and isinstance(head.get("hash"), str) and len(head["hash"]) == 64
              and isinstance(head.get("key_fingerprint"), str))
        if not ok:
            raise LedgerError(
                f"{path}: the ledger's head is malformed (expected JSON with seq, hash, "
                f"key_fingerprint and signature). {_LEFT} {_RESTORE}")
        assert isinstance(head, dict)
        if head["key_fingerprint"] != self._keys.fingerprint:
            raise LedgerError(
                f"{path}: the ledger's head was signed by node key {head['key_fingerprint']}, "
                f"but this node's key is {self._keys.fingerprint}: it was copied from "
                f"another agency, or this node's key was replaced. {_LEFT} {_RESTORE}")
        if not _signature_ok(self._keys.public, head.get("signature"),
                             head_message(head["seq"], head["hash"])):
            raise LedgerError(
                f"{path}: the ledger head's signature does not verify with this node's key "
                f"{self._keys.fingerprint}: the head was edited. {_LEFT} {_RESTORE}")
        return head

    def verify(self, *, repair: bool = False) -> int:
        """Check format, genesis, hash chain, every signature and the head; return the
        number of entries. With ``repair``, a head left behind by a crash between a commit
        and its head write (the chain extends it) is rewritten, when the node key is here.
        """
        # The head is read before the entries: a writer only ever adds entries and then
        # moves the head, so a head read first is never ahead of the entries read after.
        head_text = self._head_text()
        rows = self._entries()
        path, fp = self.path, self._keys.fingerprint
        if not rows:
            raise LedgerError(
                f"{path}: the ledger holds no entries, not even the genesis entry every "
                f"ledger starts with: it was emptied outside heroes-fl. {_LEFT} " + _RESTORE)
        first = rows[0]
        if first.seq != 1 or first.kind != "genesis":
            raise LedgerError(
                f"{path}: the first entry (the genesis, which names the node key) is missing "
                f"or was replaced: entries were deleted or rewritten outside heroes-fl. "
                f"{_LEFT} {_RESTORE}")
        try:
            genesis = json.loads(first.body)
        except ValueError:
            genesis = None
        owner = genesis.get("node_key_fingerprint") if isinstance(genesis, dict) else None
        if not isinstance(genesis, dict) or genesis.get("format") != FORMAT:
            raise LedgerError(f"{path}: the genesis entry is malformed. {_LEFT} {_RESTORE}")
        if owner != fp:
            raise LedgerError(
                f"{path}: this privacy ledger belongs to node key {owner}, but this node's "
                f"key is {fp}: it was copied from another agency, or this node's key was "
                f"replaced. {_LEFT} Fix: restore this agency's own ledger (with its "
                f"{HEAD_FILE}) from backup, or its own node key; tell your data-protection "
                "officer")
        prev = GENESIS
        for expected, row in enumerate(rows, start=1):
            if row.seq != expected:
                raise LedgerError(
                    f"{path}: entry {expected} is missing (the next is {row.seq}): entries "
                    f"were deleted outside heroes-fl. {_LEFT} {_RESTORE}")
            if row.prev_hash != prev or row.entry_hash != _hash(prev, row.kind, row.dataset,
                                                                row.body):
                raise LedgerError(
                    f"{path}: checksum chain broken at entry {row.seq}; the ledger was "
                    f"altered outside heroes-fl. {_LEFT} Fix: restore the ledger from backup "
                    "and tell your data-protection officer"
                )
            if row.kind == "genesis" and row.seq != 1:
                raise LedgerError(f"{path}: entry {row.seq} is a second genesis entry: "
                                  f"ledgers were spliced together. {_LEFT} {_RESTORE}")
            checked = (row.entry_hash, row.signature)
            if self._verified.get(row.seq) != checked:
                if not _signature_ok(self._keys.public, row.signature,
                                     row.entry_hash.encode("ascii")):
                    raise LedgerError(
                        f"{path}: the signature of entry {row.seq} does not verify with this "
                        f"node's key {fp}: the entry was rewritten outside heroes-fl. "
                        f"{_LEFT} {_RESTORE}")
                self._verified[row.seq] = checked
            prev = row.entry_hash
        last = rows[-1]
        head_path = self.state_dir / HEAD_FILE
        head = self._parse_head(head_text)
        if head is None:
            raise LedgerError(
                f"{path}: its signed head {head_path} is missing while the ledger holds "
                f"{last.seq} entries: the head was deleted, or the ledger was copied here "
                f"without it. {_LEFT} {_RESTORE}")
        if head["seq"] > last.seq:
            raise LedgerError(
                f"{path}: {head_path} records {head['seq']} entries but the ledger holds "
                f"{last.seq}: entries {last.seq + 1}..{head['seq']} were cut off the end. "
                f"{_LEFT} {_RESTORE}")
        if rows[head["seq"] - 1].entry_hash != head["hash"]:
            raise LedgerError(
                f"{path}: entry {head['seq']} is not the one {head_path} records: the "
                f"ledger was rolled back and written again, or replaced. {_LEFT} {_RESTORE}")
        if head["seq"] < last.seq and repair and self._keys.private is not None:
            # A crash between a commit and its head write: the chain extends the head.
            with _locked(self.state_dir):
                now = self._parse_head(self._head_text())
                top = self.head()
                if now is not None and now["seq"] < top[0] and \
                        self.hash_at(now["seq"]) == now["hash"]:
                    _write_head(self.state_dir, self._keys, *top)
        return len(rows)

    # -- reading ----------------------------------------------------------------------
    def head(self) -> tuple[int, str]:
        """(seq, entry_hash) of the ledger's last entry."""
        row = self._conn.execute(
            "SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            raise LedgerError(f"{self.path}: the ledger holds no entries. {_RESTORE}")
        return int(row[0]), str(row[1])

    def hash_at(self, seq: int) -> str | None:
        """The entry_hash of entry ``seq``, or None if the ledger has no such entry."""
        row = self._conn.execute("SELECT entry_hash FROM entries WHERE seq=?",
                                 (seq,)).fetchone()
        return None if row is None else str(row[0])

    def rows(self, dataset: str | None = None) -> list[LedgerRow]:
        q = ("SELECT seq, kind, dataset, body FROM entries WHERE kind IN "
             "('release', 'completed') ORDER BY seq")
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
            "SELECT DISTINCT dataset FROM entries WHERE kind = 'release' "
            "ORDER BY dataset").fetchall()]

    def spent(self, dataset: str, *, delta: float, accountant: str) -> float:
        return epsilon_spent(self.history(dataset), delta=delta, accountant=accountant)

    # -- writing ----------------------------------------------------------------------
    def _signing_keys(self) -> _Keys:
        if self._keys.private is None:
            raise LedgerError(
                f"{self.path}: opened without the node key ({self.state_dir / NODE_KEY}), so "
                "it can be read but not written: every entry is signed by that key. Fix: "
                "write from the node itself, whose state folder holds node.key")
        return self._keys

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; after its commit, the head moves to the new last entry,
        both under the lock file."""
        keys = self._signing_keys()
        with _locked(self.state_dir):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            _write_head(self.state_dir, keys, *self.head())

    def _append(self, conn: sqlite3.Connection, kind: str, dataset: str,
                body: dict[str, Any]) -> int:
        seq, prev = self.head()
        new_seq, _ = _insert(conn, self._signing_keys(), seq + 1, prev, kind, dataset, body)
        return new_seq

    def _bind_dataset(self, conn: sqlite3.Connection, release: Release) -> None:
        """The first release of a dataset is preceded by an entry that binds its id to the
        export it first named (its SHA-256)."""
        known = conn.execute("SELECT 1 FROM entries WHERE kind = 'dataset' AND dataset = ?",
                             (release.dataset,)).fetchone()
        if known is None:
            self._append(conn, "dataset", release.dataset,
                         {"dataset": release.dataset, "fingerprint": release.fingerprint,
                          "recorded_at": _now()})

    def reserve(self, release: Release, policy: Policy) -> tuple[int, float]:
        """Record a DP release before it is made, if the budget allows; return its sequence
        number and the dataset's cumulative epsilon (policy accountant and delta) after it.

        The budget is the dataset's (``Policy.budget_for``), and the history it is checked
        against is the dataset's whole history, every task's releases on it together.

        Raises BudgetExceeded (and records nothing) when the release would pass the budget
        or the dataset was ever trained without DP.
        """
        if not release.noise_multiplier > 0:
            raise LedgerError(
                f"dataset {release.dataset}: a release with noise multiplier "
                f"{release.noise_multiplier} is not differentially private and cannot be "
                "reserved against a DP budget. Fix: the node records non-private training "
                "with reserve_non_private, after checking the policy's allow_non_private")
        policy = policy.for_dataset(release.dataset)  # the dataset's own budget, if it has one
        with self._write() as conn:
            self.verify()
            history = self.history(release.dataset)
            if trained_without_dp(history):
                raise BudgetExceeded(
                    f"dataset {release.dataset}: it was trained without DP at least once "
                    "(epsilon infinite), so no later DP training can give it a finite "
                    f"guarantee (delta={policy.delta:g}, {policy.accountant}); the node "
                    "refuses every DP round on it", spent=math.inf, after=math.inf,
                    budget=policy.max_epsilon)
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
            self._bind_dataset(conn, release)
            body = asdict(release)
            body["recorded_at"] = _now()
            seq = self._append(conn, "release", release.dataset, body)
        return seq, after

    def reserve_non_private(self, release: Release) -> int:
        """Record a round trained without DP before its update leaves (noise multiplier
        recorded as 0.0 whatever the release says); return its sequence number.

        No budget check: the caller has checked the policy's allow_non_private. From now
        on the dataset's epsilon is infinite and every DP round on it is refused.
        """
        with self._write() as conn:
            self.verify()
            self._bind_dataset(conn, release)
            body = asdict(replace(release, noise_multiplier=0.0))
            body["recorded_at"] = _now()
            return self._append(conn, "release", release.dataset, body)

    def complete(self, seq: int) -> None:
        """Note that the release ``seq`` was produced and handed over for sending."""
        with self._write() as conn:
            self.verify()
            row = conn.execute("SELECT dataset FROM entries WHERE seq=? AND kind='release'",
                               (seq,)).fetchone()
            if row is None:
                raise LedgerError(f"{self.path}: no release {seq} to complete")
            self._append(conn, "completed", row[0], {"release_seq": seq, "at": _now()})

    # -- attesting to the consortium ----------------------------------------------------
    def attest(self) -> dict[str, Any]:
        """The signed head for a training reply, with the heads this node reported before.

        Flat values a Flower ConfigRecord takes: seq, hash, key_fingerprint, signature
        (over ``head_message(seq, hash)``), previous_seqs and previous_hashes (the last
        PREVIOUS_HEADS heads from ledger-reported.jsonl, oldest first). Every head ever
        reported must still be in the ledger (else LedgerError: it was rolled back); the
        current head is then appended to ledger-reported.jsonl (fsynced) before it leaves.
        """
        keys = self._signing_keys()
        assert keys.private is not None
        reported_path = self.state_dir / REPORTED_FILE
        with _locked(self.state_dir):
            self.verify()
            seq, entry_hash = self.head()
            reported = self._reported(reported_path)
            ours = dict(self._conn.execute("SELECT seq, entry_hash FROM entries").fetchall())
            for line, (s, h) in enumerate(reported, start=1):
                if ours.get(s) != h:
                    raise LedgerError(
                        f"{self.path}: the ledger no longer contains a head this node already "
                        f"reported to the consortium (entry {s}, {reported_path} line {line}): "
                        f"it was rolled back or replaced. {_LEFT} {_RESTORE}")
            previous = reported[-PREVIOUS_HEADS:]
            if not reported or reported[-1] != (seq, entry_hash):
                line_text = json.dumps({"seq": seq, "hash": entry_hash,
                                        "reported_at": _now()}, sort_keys=True) + "\n"
                fd = open_private(reported_path, os.O_WRONLY | os.O_APPEND)
                with os.fdopen(fd, "a", encoding="utf-8") as handle:
                    handle.write(line_text)
                    handle.flush()
                    os.fsync(handle.fileno())
        return {"seq": seq, "hash": entry_hash, "key_fingerprint": keys.fingerprint,
                "signature": _b64(sign(keys.private, head_message(seq, entry_hash))),
                "previous_seqs": [s for s, _ in previous],
                "previous_hashes": [h for _, h in previous]}

    def _reported(self, path: Path) -> list[tuple[int, str]]:
        if not path.is_file():
            return []
        out: list[tuple[int, str]] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                seq, entry_hash = item["seq"], item["hash"]
            except (ValueError, KeyError, TypeError):
                seq, entry_hash = None, None
            if type(seq) is not int or not isinstance(entry_hash, str):
                raise LedgerError(
                    f"{path}: line {number} is not a reported head (JSON with seq and hash). "
                    f"{_LEFT} Fix: restore the file from backup together with the ledger")
            out.append((seq, entry_hash))
        return out

    # -- reporting --------------------------------------------------------------------
    def streams(self) -> list[tuple[str, str]]:
        """Every (task, dataset) pair with a release, ordered by dataset then task."""
        pairs = {(r.release.task, r.release.dataset) for r in self.rows()}
        return sorted(pairs, key=lambda p: (p[1], p[0]))

    def report(self, policy: Policy | None, *, cached: bool = True) -> list[dict[str, Any]]:
        """One item per stream (task, dataset): its releases, each with the dataset's
        cumulative epsilon after it under both accountants; the dataset's epsilon, over
        every release of every task on it (the guarantee: the data is what is protected,
        so the tasks trained on one dataset compose); this task's releases alone
        (``stream_epsilon``); the unit of privacy of the task; and the remaining budget
        of the dataset under the policy. A dataset trained without DP shows epsilon inf,
        ``epsilon_infinite`` true and remaining 0.0.

        ``cached``: epsilons already computed for the same histories come from the state
        folder's epsilon cache (federation/epsilon_cache.py; a display aid the budget check
        never reads); False computes every one afresh."""
        from federation.epsilon_cache import EpsilonCache

        cache = EpsilonCache(self.state_dir, both_epsilons) if cached else None
        epsilons = cache.both if cache is not None else both_epsilons
        try:
            return self._report(policy, epsilons)
        finally:
            if cache is not None:
                cache.save()

    def _report(self, policy: Policy | None,
                both_epsilons: Callable[[Sequence[HistoryEntry], float], dict[str, float]]
                ) -> list[dict[str, Any]]:
        out = []
        delta = policy.delta if policy else None
        by_dataset: dict[str, list[LedgerRow]] = {}
        for r in self.rows():
            by_dataset.setdefault(r.release.dataset, []).append(r)
        for ds in sorted(by_dataset):
            rows = by_dataset[ds]
            d = delta if delta is not None else rows[-1].release.delta
            cumulative: dict[int, dict[str, float]] = {}
            history: list[HistoryEntry] = []
            for r in rows:
                history.append(r.release.mechanism())
                cumulative[r.seq] = both_epsilons(history, delta if delta is not None
                                                  else r.release.delta)
            total = both_epsilons(history, d)
            infinite = trained_without_dp(history)
            tasks = sorted({r.release.task for r in rows})
            for task in tasks:
                own = [r for r in rows if r.release.task == task]
                own_history = [r.release.mechanism() for r in own]
                item: dict[str, Any] = {
                    "task": task, "dataset": ds, "unit": unit_of(own[-1].release),
                    "releases": [{"seq": r.seq, **asdict(r.release), "unit": unit_of(r.release),
                                  "private": r.release.noise_multiplier > 0,
                                  "status": "completed" if r.completed
                                  else "reserved, not completed",
                                  "cumulative_epsilon": cumulative[r.seq]} for r in own],
                    "delta": d,
                    "epsilon": total,
                    "epsilon_infinite": infinite,
                    "stream_epsilon": total if len(tasks) == 1
                    else both_epsilons(own_history, d),
                    "tasks_on_dataset": tasks,
                    "not_completed": sum(not r.completed for r in own),
                    "non_private_releases": sum(not r.release.noise_multiplier > 0
                                                for r in own),
                }
                if policy:
                    budget = policy.budget_for(ds)
                    spent = total[policy.accountant]
                    item["budget"] = budget
                    item["own_budget"] = ds in policy.dataset_budgets
                    item["accountant"] = policy.accountant
                    item["remaining"] = (max(0.0, budget - spent)
                                         if math.isfinite(spent) else 0.0)
                out.append(item)
        return out


def _insert(conn: sqlite3.Connection, keys: _Keys, seq: int, prev: str, kind: str,
            dataset: str, body: dict[str, Any]) -> tuple[int, str]:
    """Insert one signed, chained entry at ``seq``; return (seq, entry_hash)."""
    assert keys.private is not None
    text = json.dumps(body, sort_keys=True)
    entry_hash = _hash(prev, kind, dataset, text)
    signature = _b64(sign(keys.private, entry_hash.encode("ascii")))
    conn.execute(
        "INSERT INTO entries (seq, kind, dataset, body, prev_hash, entry_hash, signature) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", (seq, kind, dataset, text, prev, entry_hash, signature))
    return seq, entry_hash


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def fingerprint_file(path: Path) -> str:
    """SHA-256 of a training export's bytes: the dataset's identity in the ledger."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def calibrate_to_budget(plan: NoisePlan, prior: Sequence[HistoryEntry], policy: Policy
                        ) -> NoisePlan:
    """Raise the noise of ``plan`` until the dataset's whole history plus all planned
    rounds fits the agency's budget; refuse up front, with the numbers, if nothing can."""

    def total(sigma: float) -> float:
        steps = plan.steps_per_round * plan.planned_rounds
        return epsilon_spent([*prior, (sigma, plan.sample_rate, steps)], delta=policy.delta,
                             accountant=policy.accountant)

    if trained_without_dp(prior):
        raise BudgetExceeded(
            "this dataset was trained without DP at least once (epsilon infinite), so no "
            "later DP training can give it a finite guarantee; the node refuses the run "
            f"(budget {policy.max_epsilon:g}, delta={policy.delta:g}, {policy.accountant})",
            spent=math.inf, after=math.inf, budget=policy.max_epsilon)
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
