"""The consortium's book of the last privacy-ledger head it accepted from each agency.

Every training reply carries the agency's ledger attestation (federation/ledger.py,
``Ledger.attest``): the signed (seq, hash) of its ledger's last entry and the heads it
reported before. An agency's node can see most tampering with its ledger by itself, but
not an older copy of the ledger restored together with its signed head: both are
genuine, only old. The consortium can: it remembers the head it last accepted, and a
later head must be that one or extend it (the node lists the heads it reported before,
each checked against its own ledger, so the consortium does not have to ask).

One JSON file, written atomically (its path is the caller's choice; the consortium's is
``DIR/ledger-heads.json``):

    {"format": "heroes-ledger-heads/1",
     "agencies": {"<agency>": {"seq": 12, "hash": "<64 hex>", "key_fingerprint": "sha256:...",
                               "signature": "<base64>", "run": "<run id>",
                               "accepted_at": "2025-01-01T00:00:00Z"}}}

A malformed book is refused and never overwritten: starting an empty book would accept
any ledger as first contact. Reasons name the agency and say what it means and what to do,
never any value beyond sequence numbers, runs and fingerprints.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

from federation.errors import DeploymentError, SignatureError
from federation.ledger import head_message
from federation.signing import PublicKey, key_fingerprint, verify

HEADS_FILE = "ledger-heads.json"
BOOK_FORMAT = "heroes-ledger-heads/1"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = ("seq", "hash", "key_fingerprint", "signature", "run", "accepted_at")


def advice(agency: str) -> str:
    """What a refused head means and what the operator does about it."""
    return (f"its privacy ledger was rolled back or replaced; ask the agency's "
            f"data-protection officer; `heroes consortium ledger-heads --forget {agency}` "
            "accepts a new ledger")


class HeadBookError(DeploymentError):
    """The book of ledger heads cannot be read or written, or an attestation recorded."""


@dataclass(frozen=True)
class Attestation:
    """A ledger attestation as it arrived, checked for form."""

    seq: int
    hash: str
    key_fingerprint: str
    signature: str
    previous: tuple[tuple[int, str], ...]


def _type(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _as_int(value: object) -> int | None:
    """An integer as Flower or JSON delivers it (int, numpy integer), never a bool."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        return None
    return int(value)


def _as_list(value: object) -> list[object] | None:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return None
    return list(value)


def parse_attestation(attestation: Mapping[str, object]) -> Attestation | str:
    """The attestation, or a reason saying what is missing or of the wrong kind (types
    only, never values)."""
    problems: list[str] = []
    seq = _as_int(attestation.get("seq"))
    if seq is None or seq < 1:
        problems.append(f"seq must be a whole number >= 1 (got {_type(attestation.get('seq'))}"
                        f"{', below 1' if seq is not None else ''})")
    entry_hash = attestation.get("hash")
    if not (isinstance(entry_hash, str) and _HEX64.fullmatch(entry_hash)):
        problems.append(f"hash must be 64 lower-case hex digits (got {_type(entry_hash)})")
    fingerprint = attestation.get("key_fingerprint")
    if not (isinstance(fingerprint, str) and fingerprint.startswith("sha256:")):
        problems.append(f"key_fingerprint must be 'sha256:...' (got {_type(fingerprint)})")
    signature = attestation.get("signature")
    try:
        ok = isinstance(signature, str) and bool(base64.b64decode(signature, validate=True))
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        problems.append(f"signature must be base64 (got {_type(signature)})")
    seqs = _as_list(attestation.get("previous_seqs"))
    hashes = _as_list(attestation.get("previous_hashes"))
    previous: list[tuple[int, str]] = []
    if seqs is None or hashes is None:
        for name, got in (("previous_seqs", seqs), ("previous_hashes", hashes)):
            if got is None:
                problems.append(f"{name} must be a list (got "
                                f"{_type(attestation.get(name))})")
    elif len(seqs) != len(hashes):
        problems.append(f"previous_seqs has {len(seqs)} items, previous_hashes {len(hashes)}")
    else:
        for s, h in zip(seqs, hashes, strict=True):
            si = _as_int(s)
            if si is None or not (isinstance(h, str) and _HEX64.fullmatch(h)):
                problems.append("previous_seqs/previous_hashes must hold whole numbers and "
                                "64-digit hex hashes")
                break
            previous.append((si, h))
    if problems:
        return "; ".join(problems)
    assert seq is not None and isinstance(entry_hash, str) and isinstance(fingerprint, str)
    assert isinstance(signature, str)
    return Attestation(seq, entry_hash, fingerprint, signature, tuple(previous))


class HeadBook:
    """The last ledger head accepted per agency, kept in one JSON file.

    ``check`` says whether a new attestation is acceptable, ``accept`` records it in
    memory, ``save`` writes the file (atomically, merged under a lock with what other runs
    saved meanwhile), ``forget`` lets an operator accept a new ledger for an agency.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._entries = self._load()
        self._changed: dict[str, dict[str, Any] | None] = {}  # None: forgotten

    # -- the file ---------------------------------------------------------------------
    def _refuse(self, what: str) -> HeadBookError:
        return HeadBookError(
            f"{self.path}: {what}; this is not a book of ledger heads as heroes-fl writes it. "
            "It was left as it is. Fix: restore it from backup; only if it is lost, move it "
            "away (every agency's next ledger head is then accepted as a first contact)")

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise self._refuse(f"cannot be read ({type(exc).__name__})") from None
        try:
            data = json.loads(text)
        except ValueError:
            raise self._refuse("not JSON") from None
        if not isinstance(data, dict) or data.get("format") != BOOK_FORMAT:
            raise self._refuse(f"no 'format': {BOOK_FORMAT!r}")
        agencies = data.get("agencies")
        if not isinstance(agencies, dict):
            raise self._refuse("'agencies' is not an object")
        out: dict[str, dict[str, Any]] = {}
        for name, entry in agencies.items():
            if not isinstance(entry, dict) or _as_int(entry.get("seq")) is None or not all(
                    isinstance(entry.get(k), str) for k in _ENTRY_FIELDS if k != "seq"):
                raise self._refuse(f"the entry of agency {name!r} is malformed (it needs "
                                   f"{', '.join(_ENTRY_FIELDS)})")
            out[str(name)] = {k: entry[k] for k in _ENTRY_FIELDS}
        return out

    def save(self) -> None:
        """Write the book atomically. Runs may save concurrently: under a lock, the file
        is read again and this book's own changes (accepts, forgets) applied on top."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            merged = self._load()
            for agency, entry in self._changed.items():
                if entry is None:
                    merged.pop(agency, None)
                else:
                    merged[agency] = entry
            text = json.dumps({"format": BOOK_FORMAT, "agencies": merged}, indent=2,
                              sort_keys=True) + "\n"
            tmp = self.path.with_name(self.path.name + ".tmp")
            tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(tfd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            self._entries, self._changed = merged, {}
        finally:
            os.close(fd)

    # -- the rules --------------------------------------------------------------------
    def check(self, agency: str, attestation: Mapping[str, object], *,
              public_key: PublicKey | None = None) -> str | None:
        """None when the attestation is acceptable, else the reason, naming the agency.

        First contact is acceptable; after that the head must be the one last accepted or
        extend it (that head among the attestation's previous heads, and a seq not lower).
        With ``public_key`` (the agency's enrolled node key) the signature is checked too.
        """
        parsed = parse_attestation(attestation)
        if isinstance(parsed, str):
            return (f"agency {agency}: its privacy-ledger attestation is malformed: {parsed}; "
                    "the node runs another heroes-fl version, or the reply was altered")
        if public_key is not None:
            enrolled = key_fingerprint(public_key)
            if parsed.key_fingerprint != enrolled:
                return (f"agency {agency}: its privacy ledger is signed by node key "
                        f"{parsed.key_fingerprint}, not by its enrolled key {enrolled}")
            try:
                verify(public_key, base64.b64decode(parsed.signature),
                       head_message(parsed.seq, parsed.hash), what="ledger head")
            except SignatureError:
                return (f"agency {agency}: its privacy-ledger head signature does not verify "
                        f"with its enrolled key {enrolled}: the head was altered")
        last = self._entries.get(agency)
        if last is None:
            return None
        where = f"seq {last['seq']}, run {last['run']}"
        if parsed.key_fingerprint != last["key_fingerprint"]:
            return (f"agency {agency}: its privacy ledger is now signed by node key "
                    f"{parsed.key_fingerprint}, the head this consortium last saw ({where}) by "
                    f"{last['key_fingerprint']}: " + advice(agency))
        if parsed.seq < last["seq"]:
            return (f"agency {agency}: its privacy-ledger head went backwards, to seq "
                    f"{parsed.seq} from the head this consortium last saw ({where}): "
                    + advice(agency))
        if (parsed.seq, parsed.hash) == (last["seq"], last["hash"]):
            return None
        if (last["seq"], last["hash"]) in parsed.previous:
            return None
        return (f"agency {agency}: its privacy-ledger head (seq {parsed.seq}) does not extend "
                f"the head this consortium last saw ({where}): " + advice(agency))

    def accept(self, agency: str, attestation: Mapping[str, object], *, run: str) -> None:
        """Record the attestation as the agency's last accepted head (in memory; ``save``
        writes it). Refuses a malformed one; whether it extends is ``check``'s question."""
        parsed = parse_attestation(attestation)
        if isinstance(parsed, str):
            raise HeadBookError(f"agency {agency}: cannot record a malformed privacy-ledger "
                                f"attestation: {parsed}")
        entry = {"seq": parsed.seq, "hash": parsed.hash,
                 "key_fingerprint": parsed.key_fingerprint, "signature": parsed.signature,
                 "run": str(run),
                 "accepted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._entries[agency] = entry
        self._changed[agency] = entry

    def forget(self, agency: str) -> bool:
        """Drop the agency's last head, so that its next attestation is a first contact
        (for an operator who accepts a new ledger); True if there was one."""
        if agency not in self._entries:
            return False
        del self._entries[agency]
        self._changed[agency] = None
        return True

    def entries(self) -> dict[str, dict[str, object]]:
        """A copy of the book: agency -> seq, hash, key_fingerprint, signature, run,
        accepted_at."""
        return {name: dict(entry) for name, entry in self._entries.items()}
