"""A hash-chained, signed JSONL log with a signed head: the mechanics the node's records share.

The egress receipts (clients/receipts.py) and the agency's approvals (clients/approvals.py)
are both evidence the agency may have to show someone who does not trust the node's
operator: each entry names the previous entry's hash (``prev``) and carries an ECDSA
signature by the node key over the entry without its signature, and a separate head file
signs the sequence number and hash of the last entry, so an edited, deleted, reordered,
inserted or cut-off entry is found. Keeping one implementation means a fix to the checks
reaches both logs.

Writers hold an exclusive ``flock`` on the log while they read the last entry and append, so
two processes of one node (one ClientApp process per message) never fork the chain; the entry
is fsynced before the head moves, so a crash leaves at worst an entry the head does not cover
yet (reported as such), never a head pointing at nothing.

Limits, as for any log signed by a key on the same machine: someone holding the node key, or
restoring an older log together with its head, is not detected. Keep copies of the head off
the node.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from federation.errors import SignatureError
from federation.files import open_private, private_dir
from federation.signing import (
    PrivateKey,
    PublicKey,
    key_fingerprint,
    load_private_key,
    load_public_key,
    sign,
    verify,
)

GENESIS = "0" * 64
NODE_KEY = "node.key"
NODE_PUB = "node.key.pub"


def canonical(obj: Any) -> bytes:
    """The bytes that are hashed and signed: sorted keys, no spaces, floats by repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of an entry's canonical form (signature included): what ``prev`` names."""
    return hashlib.sha256(canonical(entry)).hexdigest()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class SignedLog:
    """Where one log lives: its JSONL file and its signed head, and what an entry is called.

    ``what`` names an entry in messages ("receipt", "approval").
    """

    path: Path
    head: Path
    what: str

    @classmethod
    def in_dir(cls, state_dir: Path, log_name: str, head_name: str, what: str) -> SignedLog:
        return cls(state_dir / log_name, state_dir / head_name, what)


@dataclass(frozen=True)
class Problem:
    entry: int  # 1-based line number in the log file (0: the log as a whole)
    check: str
    detail: str

    def __str__(self) -> str:
        where = f"entry {self.entry}" if self.entry else "log"
        return f"{where}: {self.check}: {self.detail}"


# --- keys --------------------------------------------------------------------------------

def node_public_key(state_dir: Path, private: PrivateKey | None = None,
                    public_key: Path | None = None) -> PublicKey:
    """The key a node's logs must verify with: ``public_key`` if given, else the state
    folder's node.key.pub, else the public half of ``private`` (or of node.key).

    An auditor should pass their own copy of node.key.pub: the one in the state folder is
    only as trustworthy as the folder.
    """
    if public_key is not None:
        return load_public_key(public_key)
    if (state_dir / NODE_PUB).is_file():
        return load_public_key(state_dir / NODE_PUB)
    if private is not None:
        return private.public_key()
    return load_private_key(state_dir / NODE_KEY).public_key()


# --- writing -----------------------------------------------------------------------------

def append(log: SignedLog, key: PrivateKey, fields: dict[str, Any], *,
           time_field: str | None = None) -> dict[str, Any]:
    """Sign and append one entry made of ``fields``, then move the signed head.

    ``seq``, ``prev`` and ``key_fingerprint`` are added here; with ``time_field``, that field
    gets the current UTC time, taken under the lock so that times never go backwards along
    the chain. Returns the entry as written.
    """
    private_dir(log.path.parent)  # 0700 when this makes it; the log itself 0600
    fd = open_private(log.path, os.O_RDWR | os.O_APPEND)
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one writer at a time; released on close
        return _append_locked(log, handle, key, fields, time_field)


def _last_line(fd: int) -> str | None:
    """The log's last line that is not blank, read from the end: an append costs the same
    with ten entries or a million (a node appends a receipt for every message it sends)."""
    size = os.fstat(fd).st_size
    chunk = 1 << 16
    while True:
        start = max(0, size - chunk)
        data = os.pread(fd, size - start, start).rstrip()
        cut = data.rfind(b"\n")
        if cut >= 0 or start == 0:
            return data[cut + 1:].decode("utf-8") if data else None
        chunk *= 4


def _append_locked(log: SignedLog, handle: IO[str], key: PrivateKey, fields: dict[str, Any],
                   time_field: str | None) -> dict[str, Any]:
    last = _last_line(handle.fileno())
    prev, seq = GENESIS, 0
    if last is not None:
        entry = json.loads(last)
        prev = entry_hash(entry)
        last_seq = entry.get("seq") if isinstance(entry, dict) else None
        if isinstance(last_seq, int) and not isinstance(last_seq, bool):
            seq = last_seq + 1
        else:  # not an entry of ours: number it by its line, as the log is counted
            handle.seek(0)
            seq = sum(1 for ln in handle.read().splitlines() if ln.strip())
    body: dict[str, Any] = {"seq": seq, "prev": prev}
    if time_field is not None:
        body[time_field] = utc_now()
    body.update(fields)
    body["key_fingerprint"] = key_fingerprint(key.public_key())
    entry = {**body, "signature": base64.b64encode(sign(key, canonical(body))).decode("ascii")}
    handle.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())
    head = {"seq": entry["seq"], "hash": entry_hash(entry)}
    head["signature"] = base64.b64encode(sign(key, canonical(head))).decode("ascii")
    tmp = log.head.with_name(log.head.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as out:
        out.write(json.dumps(head, sort_keys=True) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, log.head)
    return entry


# --- reading and checking -------------------------------------------------------------------

def entries(log: SignedLog) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number from 1, the entry or None when the line is not a JSON object, the line)."""
    if not log.path.is_file():
        return
    lines = [ln for ln in log.path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            yield number, None, line
            continue
        yield number, entry if isinstance(entry, dict) else None, line


def verify_log(log: SignedLog, public_key: PublicKey) -> tuple[int, list[Problem]]:
    """Check every entry's signature, sequence number and link, then the head.

    Returns (entries read, problems). Each problem names the entry (its line) and the check
    that failed; checking goes on past a break so that every damaged entry is listed.
    """
    fingerprint = key_fingerprint(public_key)
    problems: list[Problem] = []
    prev_hash = GENESIS
    count = 0
    last: dict[str, Any] | None = None
    for number, entry, _ in entries(log):
        count = number
        if entry is None:
            problems.append(Problem(number, "format", "not a JSON object"))
            prev_hash = "unknown"
            continue
        body = {k: v for k, v in entry.items() if k != "signature"}
        if entry.get("key_fingerprint") != fingerprint:
            problems.append(Problem(number, "key", f"signed by {entry.get('key_fingerprint')}, "
                                    f"not by the node key {fingerprint}"))
        try:
            signature = base64.b64decode(str(entry.get("signature", "")), validate=True)
            verify(public_key, signature, canonical(body), what=f"{log.what} {number}")
        except (SignatureError, binascii.Error, ValueError):
            problems.append(Problem(number, "signature", "the signature does not match the "
                                    "entry: a field was changed after signing"))
        if entry.get("seq") != number - 1:
            problems.append(Problem(number, "sequence", f"seq is {entry.get('seq')!r}, expected "
                                    f"{number - 1}: an entry before it was deleted, or entries "
                                    "were reordered or inserted"))
        if prev_hash != "unknown" and entry.get("prev") != prev_hash:
            problems.append(Problem(number, "chain", "prev does not match the hash of the entry "
                                    "before it: that entry was changed, removed or moved"))
        prev_hash = entry_hash(entry)
        last = entry
    problems.extend(_check_head(log, public_key, count, last))
    return count, problems


def _check_head(log: SignedLog, public_key: PublicKey, count: int,
                last: dict[str, Any] | None) -> list[Problem]:
    head_path = log.head
    if not head_path.is_file():
        return [Problem(0, "head", f"{head_path} is missing")] if count else []
    try:
        head = json.loads(head_path.read_text(encoding="utf-8"))
        head_sig = base64.b64decode(str(head.pop("signature")), validate=True)
        verify(public_key, head_sig, canonical(head), what=head_path.name)
    except (json.JSONDecodeError, KeyError, AttributeError, binascii.Error, ValueError,
            SignatureError):
        return [Problem(0, "head", f"{head_path} is malformed or its signature does not "
                        "verify")]
    head_seq = head.get("seq")
    if not isinstance(head_seq, int):
        return [Problem(0, "head", f"{head_path} has no sequence number")]
    if head_seq > count - 1:
        return [Problem(count + 1, "head", f"the signed head records {head_seq + 1} entries, "
                        f"the log has {count}: entries {count + 1} to {head_seq + 1} were cut "
                        "off the end")]
    if head_seq < count - 1:
        return [Problem(head_seq + 2, "head", f"entries from {head_seq + 2} on are not covered "
                        "by the signed head")]
    if last is not None and head.get("hash") != entry_hash(last):
        return [Problem(count, "head", "the last entry differs from the one the signed head "
                        "records")]
    return []
