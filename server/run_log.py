"""The server's round log: what each sampled node did in each round trip, by name.

Every reply is read strictly (federation/protocol.py): a reply whose ``agency`` record lacks
its status is not taken as "ok"; it is recorded as rejected, with the missing key named, and
counts against the quorum like any other reply the server could not use.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message

from federation.errors import FederationError, ProtocolError
from federation.protocol import (
    BYTES_SENT,
    SUM_KEY,
    AgencyKey,
    Metric,
    NodeOutcome,
    Record,
    RoundRecord,
    Status,
)

log = logging.getLogger("heroes.server")


def scalar(value: object, key: str) -> float:
    """A metric as a float; a list where a number belongs is a protocol error."""
    if isinstance(value, int | float):
        return float(value)
    raise FederationError(f"metric {str(key)!r} arrived as {type(value).__name__}, not a number")


def _field(record: ConfigRecord, key: str, node_id: int) -> Any:
    if key not in record:
        raise ProtocolError(f"the {Record.AGENCY!s} record of node {node_id}'s reply lacks "
                            f"{str(key)!r}; the node must run the same heroes-fl version as the "
                            "aggregator: update it")
    return record[key]


def reply_info(msg: Message) -> tuple[str, Status, str]:
    """(agency, status, reason) of a reply that is not an error, read strictly."""
    node_id = msg.metadata.src_node_id
    if Record.AGENCY not in msg.content.config_records:
        raise ProtocolError(f"node {node_id}'s reply lacks the {Record.AGENCY!s} record; the "
                            "node must run the same heroes-fl version as the aggregator: "
                            "update it")
    info = msg.content.config_records[Record.AGENCY]
    agency = str(_field(info, AgencyKey.AGENCY, node_id))
    status = Status.parse(_field(info, AgencyKey.STATUS, node_id),
                          where=f"node {node_id}'s reply")
    return agency, status, str(_field(info, AgencyKey.REASON, node_id))


def _figures(msg: Message) -> dict[str, float]:
    """The figures the consortium really saw of one agency: what its policy shared, what a
    plain round shows in the clear (the example count) and the bytes it uploaded. A secure
    round's pooled result is the same in every reply and is not an agency's figure."""
    content = msg.content
    metrics: dict[str, float] = {}
    if Record.SHARED in content.config_records:
        metrics.update({k: scalar(v, k) for k, v in content.config_records[Record.SHARED].items()})
    plain = content.metric_records.get(Record.METRICS)
    if plain is not None and SUM_KEY not in plain and Metric.NUM_EXAMPLES in plain:
        metrics[Metric.NUM_EXAMPLES] = scalar(plain[Metric.NUM_EXAMPLES], Metric.NUM_EXAMPLES)
    if Record.OBSERVED in content.config_records:  # a secure round: all it uploaded
        observed = content.config_records[Record.OBSERVED]
        if BYTES_SENT not in observed:
            raise ProtocolError(f"the {Record.OBSERVED!s} record lacks {BYTES_SENT!r}; it is "
                                "written by server/secagg.py of this version")
        metrics[Metric.BYTES_SENT] = scalar(observed[BYTES_SENT], BYTES_SENT)
        metrics[Metric.SECURE_SUM] = 1.0
    else:  # what the node uploaded: its model arrays (serialised)
        metrics[Metric.BYTES_SENT] = float(sum(
            len(arr.data) for rec in content.array_records.values() for arr in rec.values()))
    return metrics


def enrolled_names(registry: Path) -> dict[int, str]:
    """Node id -> agency from the consortium's registry.json (server/deploy.py writes it),
    every enrolment in its history included; {} with a warning where it cannot be read
    (names are for people; the run does not depend on them)."""
    try:
        data = json.loads(Path(registry).read_text(encoding="utf-8"))
        out: dict[int, str] = {}
        for agency, entry in data["agencies"].items():
            for e in [*entry.get("history", []), entry]:
                out[int(e["node_id"])] = str(agency)
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("the registry %s could not be read (%s): agencies that never reply are "
                    "named by node id", registry, type(exc).__name__)
        return {}


class RunLog:
    """Everything the server learned, round by round, in JSON-ready form."""

    def __init__(self) -> None:
        self.rounds: dict[int, RoundRecord] = {}
        self.agency_of: dict[int, str] = {}
        self.started: dict[int, float] = {}  # monotonic clock at each round's configure_train
        self.enrolled: dict[int, str] = {}  # node id -> agency, from the registry (deployment)

    def round(self, n: int) -> RoundRecord:
        return self.rounds.setdefault(n, RoundRecord(round=n))

    def start(self, n: int) -> None:
        self.round(n)
        self.started[n] = time.monotonic()

    def finish(self, n: int) -> None:
        """The round's wall time: configure_train to the end of evaluation."""
        if n in self.started:
            self.round(n).wall_seconds = time.monotonic() - self.started[n]

    def outcome(self, msg: Message) -> NodeOutcome:
        """One reply as an outcome, named by the agency as it reported itself."""
        nid = msg.metadata.src_node_id
        if msg.has_error():
            return NodeOutcome(nid, self.name(nid), Status.FAILED, str(msg.error.reason))
        try:
            agency, status, reason = reply_info(msg)
        except ProtocolError as exc:
            log.warning("node %d: reply unusable: %s", nid, exc)
            return NodeOutcome(nid, self.name(nid), Status.REJECTED, str(exc))
        enrolled = self.enrolled.get(nid)
        if enrolled is not None and enrolled != agency:
            log.warning("node %d is enrolled as %s but its reply names %s; recorded as %s",
                        nid, enrolled, agency, enrolled)
            agency = enrolled
        self.agency_of[nid] = agency
        return NodeOutcome(nid, agency, status, reason, metrics=_figures(msg))

    def outcomes(self, sampled: list[int], replies: list[Message]) -> list[NodeOutcome]:
        """Per-agency outcomes of one round trip: every reply, then every sampled node that
        did not reply (missing)."""
        out = [self.outcome(msg) for msg in replies]
        replied = {msg.metadata.src_node_id for msg in replies}
        out += [NodeOutcome(nid, self.name(nid), Status.MISSING, "no reply before timeout")
                for nid in sampled if nid not in replied]
        return out

    def name(self, node_id: int) -> str:
        return self.agency_of.get(node_id, f"node {node_id}")

    def know(self, enrolled: dict[int, str]) -> None:
        """The consortium's own names of its nodes (registry.json: who enrolled which key):
        a node that fails or times out before it ever replied is named by them too."""
        self.enrolled = dict(enrolled)
        for nid, agency in enrolled.items():
            self.agency_of.setdefault(nid, agency)

    def records(self) -> list[RoundRecord]:
        return [self.rounds[n] for n in sorted(self.rounds)]

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.records()]
