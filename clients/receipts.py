"""Egress receipts: a signed, hash-chained record of every message the node sends.

One JSON line per message in ``STATE_DIR/receipts.jsonl``: the run, round, task and message
kind, the SHA-256 and size of what was sent, the dataset's cumulative epsilon after the
round with its delta, the DP parameters and the app bundle's hash. Each entry names the
previous entry's hash (``prev``) and carries an ECDSA signature by the agency's node key
(``STATE_DIR/node.key``), so a data-protection officer can show what left and when, and
any edit, deletion or reordering is found by ``heroes agency audit verify``.

``receipts.head`` holds the signed sequence number and hash of the last entry, so cutting
entries off the end is found too. (Someone with the node key, or who restores an older log
and head together, is not stopped by this; keep copies of the head elsewhere for that.)

No node key, no message: a node that cannot sign its receipts refuses to send (it raises
DeploymentError, which Flower reports to the aggregator as the node's error), because a
message that left without a receipt could not be accounted for afterwards.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import DeploymentError, SignatureError
from federation.signing import (
    PrivateKey,
    PublicKey,
    key_fingerprint,
    load_private_key,
    load_public_key,
    sign,
    verify,
)

RECEIPTS = "receipts.jsonl"
HEAD = "receipts.head"
NODE_KEY = "node.key"
NODE_PUB = "node.key.pub"
GENESIS = "0" * 64
APP_BUNDLE_ENV = "HEROES_APP_BUNDLE_SHA256"  # set by clients/verified_clientapp.py


def canonical(obj: Any) -> bytes:
    """The bytes that are hashed and signed: sorted keys, no spaces, floats by repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True).encode("utf-8")


def _entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


# --- what a message carries -------------------------------------------------------------------

def _plain(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan", "inf": JSON has no such numbers; keep them distinct
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return "b64:" + base64.b64encode(value).decode("ascii")
    return value


def payload_digest(content: Any) -> tuple[str, int]:
    """SHA-256 and byte count of a Flower RecordDict, independent of dict order.

    Arrays are hashed as name, dtype, shape, storage type and raw bytes; metric and config
    records as canonical JSON. The byte count is the array bytes plus those encodings.
    """
    digest = hashlib.sha256()
    size = 0
    for name in sorted(content.keys()):
        record = content[name]
        kind = type(record).__name__
        digest.update(canonical(["record", name, kind]))
        if kind == "ArrayRecord":
            for key in sorted(record.keys()):
                arr = record[key]
                digest.update(canonical([key, arr.dtype, list(arr.shape), arr.stype]))
                digest.update(arr.data)
                size += len(arr.data)
        else:
            encoded = canonical({k: _plain(v) for k, v in record.items()})
            digest.update(encoded)
            size += len(encoded)
    return digest.hexdigest(), size


# --- writing ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Receipt:
    """What the caller knows about one outgoing message."""

    agency: str
    run_id: str
    round: int
    task: str
    message: str  # "train", "evaluate" or "error"
    status: str  # "ok", "refused" or "failed"
    payload_sha256: str
    payload_bytes: int
    epsilon: float | None  # cumulative over every run on the dataset, after this round
    delta: float | None
    dp: dict[str, Any]
    app_bundle_sha256: str


def node_key_path(state_dir: Path) -> Path:
    return state_dir / NODE_KEY


def _load_signing_key(state_dir: Path) -> PrivateKey:
    path = node_key_path(state_dir)
    if not path.is_file():
        raise DeploymentError(
            f"no node key at {path}: this node signs a receipt for every message it sends and "
            "refuses to send without one. Fix: run `heroes agency init` for a deployed node "
            "(a simulation creates one per agency)."
        )
    return load_private_key(path)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def append(state_dir: Path, receipt: Receipt) -> dict[str, Any]:
    """Sign and append one receipt, then move the signed head; return the entry."""
    key = _load_signing_key(state_dir)
    log_path = state_dir / RECEIPTS
    fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one writer at a time; released on close
        return _append_locked(state_dir, handle, key, receipt)


def _append_locked(state_dir: Path, handle: Any, key: PrivateKey,
                   receipt: Receipt) -> dict[str, Any]:
    handle.seek(0)
    lines = [ln for ln in handle.read().splitlines() if ln.strip()]
    prev = _entry_hash(json.loads(lines[-1])) if lines else GENESIS
    body: dict[str, Any] = {
        "seq": len(lines),
        "prev": prev,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: getattr(receipt, k) for k in Receipt.__dataclass_fields__},
        "key_fingerprint": key_fingerprint(key.public_key()),
    }
    body["epsilon"] = _plain(body["epsilon"]) if body["epsilon"] is not None else None
    body["dp"] = {k: _plain(v) for k, v in body["dp"].items()}
    entry = {**body, "signature": base64.b64encode(sign(key, canonical(body))).decode("ascii")}
    handle.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())
    head = {"seq": entry["seq"], "hash": _entry_hash(entry)}
    head["signature"] = base64.b64encode(sign(key, canonical(head))).decode("ascii")
    tmp = state_dir / (HEAD + ".tmp")
    tmp.write_text(json.dumps(head, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, state_dir / HEAD)
    return entry


def record_reply(state_dir: Path, *, agency: str, run_id: str, server_round: int, task: str,
                 message: str, content: Any, status: str, metrics: dict[str, Any],
                 max_grad_norm: float | None, accountant: str | None,
                 app_bundle_sha256: str | None = None) -> dict[str, Any]:
    """A receipt for a reply the ClientApp is about to return (see clients/client_app.py)."""
    digest, size = payload_digest(content)

    def num(key: str) -> float | None:
        v = metrics.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    # a plain round's reply, or a secure round's masked update: both carry a trained model
    trained = message in ("train", "secagg_masked") and status == "ok"
    return append(state_dir, Receipt(
        agency=agency, run_id=run_id, round=server_round, task=task, message=message,
        status=status, payload_sha256=digest, payload_bytes=size,
        epsilon=num("epsilon") if trained else num("dataset_epsilon"),
        delta=num("delta"),
        dp={"noise_multiplier": num("noise_multiplier"), "sample_rate": num("sample_rate"),
            "steps": num("steps"), "max_grad_norm": max_grad_norm if trained else None,
            "accountant": accountant},
        app_bundle_sha256=app_bundle_sha256 or os.environ.get(APP_BUNDLE_ENV) or "unknown",
    ))


# --- checking ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    entry: int  # 1-based line number in receipts.jsonl (0: the log as a whole)
    check: str
    detail: str

    def __str__(self) -> str:
        where = f"entry {self.entry}" if self.entry else "log"
        return f"{where}: {self.check}: {self.detail}"


def trusted_public_key(state_dir: Path, public_key: Path | None = None) -> PublicKey:
    """The key receipts must verify with: given, else node.key.pub, else node.key's half."""
    if public_key is not None:
        return load_public_key(public_key)
    if (state_dir / NODE_PUB).is_file():
        return load_public_key(state_dir / NODE_PUB)
    return _load_signing_key(state_dir).public_key()


def entries(state_dir: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    for number, line in enumerate(_read_lines(state_dir / RECEIPTS), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            yield number, None, line
            continue
        yield number, entry if isinstance(entry, dict) else None, line


def verify_log(state_dir: Path, public_key: PublicKey) -> tuple[int, list[Problem]]:
    """Check every entry's signature, sequence number and link, then the head.

    Returns (entries read, problems). Each problem names the entry (its line) and the check
    that failed; checking goes on past a break so that every damaged entry is listed.
    """
    fingerprint = key_fingerprint(public_key)
    problems: list[Problem] = []
    prev_hash = GENESIS
    count = 0
    last: dict[str, Any] | None = None
    for number, entry, _ in entries(state_dir):
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
            verify(public_key, signature, canonical(body), what=f"receipt {number}")
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
        prev_hash = _entry_hash(entry)
        last = entry
    head_path = state_dir / HEAD
    if not head_path.is_file():
        if count:
            problems.append(Problem(0, "head", f"{head_path} is missing"))
        return count, problems
    try:
        head = json.loads(head_path.read_text(encoding="utf-8"))
        head_sig = base64.b64decode(str(head.pop("signature")), validate=True)
        verify(public_key, head_sig, canonical(head), what="receipts.head")
    except (json.JSONDecodeError, KeyError, AttributeError, binascii.Error, ValueError,
            SignatureError):
        problems.append(Problem(0, "head", f"{head_path} is malformed or its signature does "
                                "not verify"))
        return count, problems
    head_seq = head.get("seq")
    if not isinstance(head_seq, int):
        problems.append(Problem(0, "head", f"{head_path} has no sequence number"))
    elif head_seq > count - 1:
        problems.append(Problem(count + 1, "head", f"the signed head records {head_seq + 1} "
                                f"entries, the log has {count}: entries {count + 1} to "
                                f"{head_seq + 1} were cut off the end"))
    elif head_seq < count - 1:
        problems.append(Problem(head_seq + 2, "head", f"entries from {head_seq + 2} on are not "
                                "covered by the signed head"))
    elif last is not None and head.get("hash") != _entry_hash(last):
        problems.append(Problem(count, "head", "the last entry differs from the one the signed "
                                "head records"))
    return count, problems


def render_entries(state_dir: Path) -> str:
    lines = [f"{'#':>4} {'recorded':<21}{'run':>14}{'round':>6} {'message':<9}{'status':<8}"
             f"{'bytes':>9}  {'epsilon (delta)':<18}payload sha256"]
    count = 0
    for number, entry, _ in entries(state_dir):
        count += 1
        if entry is None:
            lines.append(f"{number:>4} (not JSON)")
            continue
        eps = entry.get("epsilon")
        eps_text = (f"{eps:.3f} ({entry.get('delta'):g})" if isinstance(eps, float | int)
                    and entry.get("delta") is not None else "-")
        lines.append(f"{number:>4} {entry.get('recorded_at', '?'):<21}"
                     f"{str(entry.get('run_id', '?'))[-14:]:>14}{entry.get('round', '?'):>6} "
                     f"{entry.get('message', '?'):<9}{entry.get('status', '?'):<8}"
                     f"{entry.get('payload_bytes', 0):>9}  {eps_text:<18}"
                     f"{str(entry.get('payload_sha256', ''))[:16]}")
    if not count:
        return f"no receipts in {state_dir / RECEIPTS}: this node has sent nothing yet"
    lines.append("epsilon: the dataset's cumulative value over every round of every run after "
                 "that message, per advert record, at the delta shown")
    return "\n".join(lines)


def record_outgoing(msg: Any, context: Any, reply: Any, kind: str) -> dict[str, Any]:
    """The ClientApp's hook: a receipt for ``reply`` before Flower sends it.

    Raises DeploymentError when the node has no key to sign with, so the reply is not sent.
    """
    from clients.node import resolve_state_dir
    from federation.config import RunSettings

    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    content = reply.content
    info = content.config_records["agency"]
    agency = str(info["agency"])
    metrics: dict[str, Any] = {}
    for record in content.metric_records.values():
        metrics.update(record)
    config = msg.content.config_records.get("config")
    server_round = int(config.get("server-round", 0)) if config is not None else 0
    return record_reply(
        resolve_state_dir(context.node_config, settings, agency), agency=agency,
        run_id=str(context.run_id), server_round=server_round, task=settings.task_name,
        message=kind, content=content, status=str(info.get("status", "ok")), metrics=metrics,
        max_grad_norm=settings.privacy.max_grad_norm if settings.privacy.enabled else None,
        accountant=settings.privacy.accountant if settings.privacy.enabled else None,
    )


def record_error(msg: Any, context: Any, kind: str, error: BaseException) -> dict[str, Any] | None:
    """Best effort: a receipt for an error that is about to leave the node as the reply.

    The payload hashed is the error's text as raised. Returns None, and never raises, when
    the node cannot tell where its state folder is (its data could not be read) or has no
    key: the error still goes out, since refusing it would hide why the node failed.
    """
    import logging

    from clients.node import resolve_data_dir, resolve_state_dir
    from federation.config import RunSettings
    from federation.data import read_manifest
    from federation.errors import HeroesError

    try:
        settings = RunSettings.from_flat(context.run_config, source="run config (client)")
        agency = str(read_manifest(resolve_data_dir(context.node_config, settings))["agency"])
        state_dir = resolve_state_dir(context.node_config, settings, agency)
        text = f"{type(error).__name__}: {error}".encode()
        config = msg.content.config_records.get("config")
        server_round = int(config.get("server-round", 0)) if config is not None else 0
        return append(state_dir, Receipt(
            agency=agency, run_id=str(context.run_id), round=server_round,
            task=settings.task_name, message=kind, status="failed",
            payload_sha256=hashlib.sha256(text).hexdigest(), payload_bytes=len(text),
            epsilon=None, delta=None, dp={},
            app_bundle_sha256=os.environ.get(APP_BUNDLE_ENV) or "unknown"))
    except (HeroesError, OSError, KeyError, ValueError, AttributeError) as exc:
        logging.getLogger("heroes.client").warning(
            "no receipt for the error reply of %s: %s", kind, type(exc).__name__)
        return None
