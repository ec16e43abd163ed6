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

The chain, signature, head and checking mechanics are clients/signed_log.py's, shared with
the agency's approvals log (clients/approvals.py); this module decides what a receipt holds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients import signed_log
from clients.signed_log import GENESIS, NODE_KEY, NODE_PUB, Problem, canonical
from federation.errors import DeploymentError, ProtocolError
from federation.protocol import AgencyKey, Record, Status
from federation.signing import PrivateKey, PublicKey, load_private_key

RECEIPTS = "receipts.jsonl"
HEAD = "receipts.head"
APP_BUNDLE_ENV = "HEROES_APP_BUNDLE_SHA256"  # set by clients/verified_clientapp.py

__all__ = ["APP_BUNDLE_ENV", "GENESIS", "HEAD", "NODE_KEY", "NODE_PUB", "RECEIPTS", "Problem",
           "Receipt", "append", "canonical", "entries", "payload_digest", "record_error",
           "record_outgoing", "record_reply", "render_entries", "trusted_public_key",
           "verify_log"]


def receipts_log(state_dir: Path) -> signed_log.SignedLog:
    """The node's receipts as a signed log (the mechanics live in clients/signed_log.py)."""
    return signed_log.SignedLog.in_dir(state_dir, RECEIPTS, HEAD, "receipt")


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
    status: str  # a Status value: ok, refused, withheld or failed
    payload_sha256: str
    payload_bytes: int
    epsilon: float | None  # cumulative over every run on the dataset, after this round
    delta: float | None
    dp: dict[str, Any]
    app_bundle_sha256: str
    # The privacy ledger's head (seq, hash) when the message left: binds every receipt to a
    # point of the ledger, so a ledger rolled back behind its receipts shows.
    ledger_head: dict[str, Any] | None = None


def ledger_head(state_dir: Path) -> dict[str, Any] | None:
    """The ledger's signed head copy (federation/ledger.py writes it), or None before any."""
    from federation.ledger import HEAD_FILE

    try:
        head = json.loads((state_dir / HEAD_FILE).read_text(encoding="utf-8"))
        return {"seq": int(head["seq"]), "hash": str(head["hash"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


def append(state_dir: Path, receipt: Receipt) -> dict[str, Any]:
    """Sign and append one receipt, then move the signed head; return the entry."""
    key = _load_signing_key(state_dir)
    fields = {k: getattr(receipt, k) for k in Receipt.__dataclass_fields__}
    fields["epsilon"] = _plain(fields["epsilon"]) if fields["epsilon"] is not None else None
    fields["dp"] = {k: _plain(v) for k, v in fields["dp"].items()}
    return signed_log.append(receipts_log(state_dir), key, fields, time_field="recorded_at")


def record_reply(state_dir: Path, *, agency: str, run_id: str, server_round: int, task: str,
                 message: str, content: Any, status: str, metrics: dict[str, Any],
                 max_grad_norm: float | None, accountant: str | None,
                 app_bundle_sha256: str | None = None) -> dict[str, Any]:
    """A receipt for a reply the ClientApp is about to return (clients/mods.py, sign_receipts)."""
    digest, size = payload_digest(content)

    def num(key: str) -> float | None:
        v = metrics.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    # a plain round's reply, or a secure round's masked update: both carry a trained model
    trained = message in ("train", "secagg_masked_train") and status == Status.OK
    return append(state_dir, Receipt(
        agency=agency, run_id=run_id, round=server_round, task=task, message=message,
        status=status, payload_sha256=digest, payload_bytes=size,
        epsilon=num("epsilon") if trained else num("dataset_epsilon"),
        delta=num("delta"),
        dp={"noise_multiplier": num("noise_multiplier"), "sample_rate": num("sample_rate"),
            "steps": num("steps"), "max_grad_norm": max_grad_norm if trained else None,
            "accountant": accountant},
        app_bundle_sha256=app_bundle_sha256 or os.environ.get(APP_BUNDLE_ENV) or "unknown",
        ledger_head=ledger_head(state_dir),
    ))


# --- checking ---------------------------------------------------------------------------------

def trusted_public_key(state_dir: Path, public_key: Path | None = None) -> PublicKey:
    """The key receipts must verify with: given, else node.key.pub, else node.key's half."""
    if public_key is None and not (state_dir / NODE_PUB).is_file():
        return _load_signing_key(state_dir).public_key()  # its message says how to make one
    return signed_log.node_public_key(state_dir, public_key=public_key)


def entries(state_dir: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    return signed_log.entries(receipts_log(state_dir))


def verify_log(state_dir: Path, public_key: PublicKey) -> tuple[int, list[Problem]]:
    """Check every entry's signature, sequence number and link, then the head.

    Returns (entries read, problems). Each problem names the entry (its line) and the check
    that failed; checking goes on past a break so that every damaged entry is listed.
    """
    return signed_log.verify_log(receipts_log(state_dir), public_key)


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
                 "that message, per record of the message's task (one advert, one "
                 "conversation: `heroes agency ledger` names each stream's unit), at the "
                 "delta shown")
    return "\n".join(lines)


def _sender(content: Any) -> tuple[str, str]:
    """(agency, status) of a reply the node is about to send, strictly: the node's own
    replies (clients/replies.py) always carry both."""
    from clients.replies import config_record  # Flower's types: not at the CLI's start

    info = config_record(content, Record.AGENCY)
    if info is None:
        raise ProtocolError(f"the reply lacks the {Record.AGENCY!s} record; every reply is "
                            "written by clients/replies.py")
    for key in (AgencyKey.AGENCY, AgencyKey.STATUS):
        if key not in info:
            raise ProtocolError(f"the reply's {Record.AGENCY!s} record lacks {str(key)!r}; "
                                "every reply is written by clients/replies.py")
    return str(info[AgencyKey.AGENCY]), Status.parse(info[AgencyKey.STATUS],
                                                     where="the node's reply").value


def record_outgoing(msg: Any, context: Any, reply: Any, kind: str, *,
                    figures: dict[str, float] | None = None) -> dict[str, Any]:
    """The ClientApp's hook: a receipt for ``reply`` before Flower sends it.

    ``figures`` are the node's own numbers behind the reply (epsilon, delta, DP parameters);
    they complete what the reply's metric records carry, since an agency's policy may keep
    them out of the reply while its receipt must still record them.

    Raises DeploymentError when the node has no key to sign with, so the reply is not sent.
    """
    # Flower's records are read only here, inside the node: `heroes agency audit` reads
    # receipts without importing Flower (tests/test_imports.py).
    from clients import replies
    from clients.node import resolve_state_dir
    from federation.config import NodeView

    settings = NodeView.from_flat(context.run_config, source="run config (client)")
    content = reply.content
    agency, status = _sender(content)
    metrics: dict[str, Any] = {}
    for record in content.metric_records.values():
        metrics.update(record)
    metrics.update(figures or {})
    server_round = replies.server_round(msg)
    return record_reply(
        resolve_state_dir(context.node_config, settings.paths, agency), agency=agency,
        run_id=str(context.run_id), server_round=server_round, task=settings.task_name,
        message=kind, content=content, status=status, metrics=metrics,
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

    from clients import replies  # inside the node only, as in record_for_reply
    from clients.node import export_agency, resolve_data_dir, resolve_state_dir
    from federation.config import NodeView
    from federation.errors import HeroesError

    try:
        settings = NodeView.from_flat(context.run_config, source="run config (client)")
        agency = export_agency(resolve_data_dir(context.node_config, settings.paths))
        state_dir = resolve_state_dir(context.node_config, settings.paths, agency)
        text = f"{type(error).__name__}: {error}".encode()
        server_round = replies.server_round(msg)
        return append(state_dir, Receipt(
            agency=agency, run_id=str(context.run_id), round=server_round,
            task=settings.task_name, message=kind, status=Status.FAILED.value,
            payload_sha256=hashlib.sha256(text).hexdigest(), payload_bytes=len(text),
            epsilon=None, delta=None, dp={},
            app_bundle_sha256=os.environ.get(APP_BUNDLE_ENV) or "unknown",
            ledger_head=ledger_head(state_dir)))
    except (HeroesError, OSError, KeyError, ValueError, AttributeError) as exc:
        logging.getLogger("heroes.client").warning(
            "no receipt for the error reply of %s: %s", kind, type(exc).__name__)
        return None
