"""What leaves the node: the only writers of a reply's records (federation/protocol.py
names them). Per-agency figures go out only where the agency's policy shares them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from federation.errors import ProtocolError
from federation.ledger import Ledger
from federation.policy import Policy
from federation.protocol import SERVER_ROUND, AgencyKey, Record, Status


def shared(policy: Policy, figures: dict[str, float]) -> ConfigRecord | None:
    """The per-agency figures the agency's policy lets leave in the clear, or nothing."""
    if not policy.share_local_metrics or not figures:
        return None
    return ConfigRecord({k: float(v) for k, v in figures.items()})


def reply(msg: Message, agency: str, *, status: Status = Status.OK, reason: str = "",
           metrics: dict[str, float] | None = None, arrays: ArrayRecord | None = None,
           shared: ConfigRecord | None = None, ledger: dict[str, Any] | None = None,
           records: dict[str, Any] | None = None) -> Message:
    """The only writer of a node's reply: who it is, its status and reason always; the rest
    only where the caller passes it."""
    content = RecordDict({Record.AGENCY: ConfigRecord({
        AgencyKey.AGENCY: agency, AgencyKey.STATUS: status.value, AgencyKey.REASON: reason})})
    if metrics is not None:
        content[Record.METRICS] = MetricRecord(dict(metrics))
    if arrays is not None:
        content[Record.ARRAYS] = arrays
    if shared is not None:
        content[Record.SHARED] = shared
    if ledger is not None:
        content[Record.LEDGER] = ConfigRecord(ledger)
    for name, record in (records or {}).items():
        content[name] = record
    return Message(content=content, reply_to=msg)


def config_record(content: RecordDict, name: str) -> ConfigRecord | None:
    """``content.config_records.get(name)``, without Flower building its typed view of
    every record in ``content`` (it does on each access of ``config_records``, a few times
    per message before this)."""
    if name not in content:
        return None
    record = content[name]
    return record if isinstance(record, ConfigRecord) else None


def server_round(msg: Message) -> int:
    """The round a server message belongs to (its ``config`` record), strictly."""
    config = config_record(msg.content, Record.CONFIG)
    if config is None:
        raise ProtocolError(f"the server's message lacks the {Record.CONFIG!s} record; the "
                            "aggregator must run the same heroes-fl version as this node")
    if SERVER_ROUND not in config:
        raise ProtocolError(f"the {Record.CONFIG!s} record of the server's message lacks "
                            f"{SERVER_ROUND!r}; the aggregator must run the same heroes-fl "
                            "version as this node")
    return int(cast(int, config[SERVER_ROUND]))


def attest(state_dir: Path) -> dict[str, Any]:
    """This node's signed ledger head and the heads it reported before, for the consortium's
    rollback check (sent once per round: with the set-up, or with a plain round's reply)."""
    with Ledger.open(state_dir) as ledger:
        return ledger.attest()


def head(state_dir: Path) -> dict[str, Any]:
    """The ledger head alone, for a secure round's masked input: the server checks that it
    is not behind the one attested at set-up; the next set-up's attestation covers it."""
    with Ledger.open(state_dir) as ledger:
        seq, entry_hash = ledger.head()
    return {"seq": seq, "hash": entry_hash}

