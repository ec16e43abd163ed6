"""The aggregator's side of SecAgg+ (federation/secagg.py has the protocol and the maths;
clients/secagg.py the node, which enforces every safety rule: nothing here is trusted).

``SecAggGrid`` wraps Flower's Grid for the strategy. When a round's training messages go to
at least 3 agencies (``secagg.mode=auto``) or always (``on``), it runs one session of five
exchanges (set-up, shares, masked input, consistency, unmask) instead of one plain train
message; the session also prepares an evaluation sum, so the round's evaluation takes three
more exchanges (masked input, consistency, unmask) and the consortium learns only pooled
figures: the summed update and count, loss and rows set aside, and summed score histograms
from which it computes pooled ROC-AUC, PR-AUC, Brier, loss and precision/recall at k.

The strategy then sees one reply per agency in the sum, all carrying the same result, so its
per-agency bookkeeping (outcomes, quorum, progress) works unchanged; per-agency figures
appear only where the agency's policy shares them (``shared``). What the server ever holds
per agency: signed public keys, sealed shares addressed to others, masked vectors that are
uniformly random on their own, signatures over survivor sets, and revealed shares of one
kind per node.

The agencies' ledger heads come with the set-up and masked-input replies; an agency whose
head went backwards, or does not extend the one this consortium saw last, is left out of the
round before it trains (server/ledger_heads.py), named as rejected.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.serverapp import Grid

from federation import metrics as fm
from federation import secagg as sa
from federation.config import RunSettings, SecAggSettings
from federation.errors import FederationError, ProtocolError
from federation.protocol import (
    BYTES_SENT,
    MASKED_ARRAY,
    NEXT_ROUND,
    SERVER_ROUND,
    SUM_KEY,
    AgencyKey,
    Metric,
    Record,
    SecAggKey,
    ShareKind,
    Stage,
    Status,
    secagg_value,
)
from server.exchange import exchange, prompt
from server.robust import to_numpy, to_record

if TYPE_CHECKING:
    from server.ledger_heads import HeadBook

log = logging.getLogger("heroes.secagg")

# The protocol's names (federation/protocol.py): the stages in order, the stage's record,
# the next round's set-up riding on this round's last exchange, and the mark of the pooled
# result every strategy-facing reply carries.
STAGES = tuple(Stage)
RECORD = Record.SECAGG
NEXT_RECORD = Record.SECAGG_NEXT
SUM_RECORD = SUM_KEY


@dataclass
class ServerSession:
    """One session of the protocol, independent of Flower (tests drive it directly)."""

    settings: SecAggSettings
    sums: tuple[str, ...] = sa.SUMS
    nonce: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    keys: dict[int, dict[str, Any]] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)
    graph: dict[int, list[int]] = field(default_factory=dict)
    xs: dict[int, int] = field(default_factory=dict)
    thresholds: dict[int, int] = field(default_factory=dict)
    sharers: list[int] = field(default_factory=list)
    survivors: dict[str, list[int]] = field(default_factory=dict)
    # Binds every mask to the run: nodes compute it from their own run id, the server from
    # the run it serves (``start``); nothing a node checks depends on the server's copy.
    session_id: bytes = b""

    def start(self, run_id: str, server_round: int) -> None:
        self.session_id = sa.session_id(run_id, server_round, self.nonce)

    @property
    def bits(self) -> int:
        return sa.modulus_bits(self.settings.quantization_bits, len(self.ids))

    def setup_config(self) -> dict[str, Any]:
        return {SecAggKey.NONCE: self.nonce, SecAggKey.SUMS: list(self.sums)}

    def share_configs(self, replies: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Each node's share request: the session's node ids (8 bytes each, from which the
        node derives the neighbour graph itself) and the signed keys of its own
        neighbourhood only (which it checks), O(neighbours) keys per node rather than
        everyone's."""
        for n, r in replies.items():
            self.keys[n] = _signed_keys(r, where=f"node {n}'s set-up reply")
        self.ids = sorted(self.keys)
        self.graph = sa.neighbours(self.ids, self.settings.num_neighbours)
        self.xs = {n: i + 1 for i, n in enumerate(self.ids)}
        self.thresholds = {n: sa.share_threshold(len(self.graph[n]) + 1,
                                                 self.settings.threshold) for n in self.ids}
        session = sa.pack_ids(self.ids)
        return {n: {SecAggKey.SESSION: session, **self.keys_of(sorted({*self.graph[n], n}))}
                for n in self.ids}

    def keys_of(self, nodes: list[int]) -> dict[str, Any]:
        """The signed keys of ``nodes``, in a share request's layout."""
        return {SecAggKey.IDS: [str(n) for n in nodes],
                SecAggKey.AGENCIES: [self.keys[n][SecAggKey.AGENCY] for n in nodes],
                SecAggKey.C_PKS: [self.keys[n][SecAggKey.C_PK] for n in nodes],
                SecAggKey.S_PKS: [pk for n in nodes for pk in self.keys[n][SecAggKey.S_PKS]],
                SecAggKey.SIGNATURES: [self.keys[n][SecAggKey.SIGNATURE] for n in nodes]}

    def masked_configs(self, replies: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Deliver each node the sealed bundles addressed to it."""
        self.sharers = sorted(replies)
        inbox: dict[int, tuple[list[str], list[bytes]]] = {n: ([], []) for n in self.sharers}
        for sender, r in replies.items():
            at = f"node {sender}'s share reply"
            for to, box in zip(secagg_value(r, SecAggKey.TO, where=at),
                               secagg_value(r, SecAggKey.BOXES, where=at), strict=True):
                if int(to) in inbox:
                    inbox[int(to)][0].append(str(sender))
                    inbox[int(to)][1].append(bytes(box))
        return {n: {SecAggKey.FROM: inbox[n][0], SecAggKey.BOXES: inbox[n][1]}
                for n in self.sharers}

    def consistency_config(self, sum_name: str, survivors: Iterable[int]) -> dict[str, Any]:
        self.survivors[sum_name] = sorted(survivors)
        # one bit per node of the session: ceil(n / 8) bytes to every survivor
        return {SecAggKey.SURVIVORS: sa.pack_members(self.ids, self.survivors[sum_name])}

    def unmask_configs(self, sum_name: str, signatures: dict[int, bytes]
                       ) -> dict[int, dict[str, Any]]:
        """Each signer gets the signatures of the survivors in its own neighbourhood."""
        out: dict[int, dict[str, Any]] = {}
        for n in signatures:
            group = {*self.graph[n], n}
            mine = sorted(m for m in signatures if m in group)
            out[n] = {SecAggKey.SIGNERS: [str(m) for m in mine],
                      SecAggKey.SIGNATURES: [signatures[m] for m in mine]}
        return out

    def unmask(self, sum_name: str, masked: dict[int, bytes], length: int,
               reveals: dict[int, dict[str, Any]]) -> np.ndarray:
        """The integer sum (mod 2**bits) of the survivors' vectors."""
        survivors = self.survivors[sum_name]
        dropped = [n for n in self.sharers if n not in set(survivors)]
        bits = self.bits
        modulus = np.uint64((1 << bits) - 1)
        total = np.zeros(length, dtype=np.uint64)
        for n in survivors:
            total = (total + sa.unpack(masked[n], bits, length)) & modulus
        b_shares: dict[int, dict[int, int]] = {n: {} for n in survivors}
        s_shares: dict[int, dict[int, int]] = {n: {} for n in dropped}
        for n, r in reveals.items():
            at = f"node {n}'s unmask reply"
            x = int(secagg_value(r, SecAggKey.X, where=at))
            for owner, kind, share in zip(*(secagg_value(r, k, where=at) for k in (
                    SecAggKey.IDS, SecAggKey.KINDS, SecAggKey.SHARES)), strict=True):
                target = b_shares if kind == ShareKind.SELF_MASK else s_shares
                if int(owner) in target:
                    target[int(owner)][x] = int.from_bytes(bytes(share), "big")
        for n in survivors:
            seed = sa.combine(b_shares[n], threshold=self.thresholds[n])
            key = sa.self_mask_key(seed, self.session_id + sum_name.encode())
            total = (total - sa.mask_stream(key, length, bits)) & modulus
        for j in dropped:
            s_sk, _ = sa.seed_keypair(sa.combine(s_shares[j], threshold=self.thresholds[j]))
            k = self.sums.index(sum_name)
            for i in self.graph[j]:
                if i not in survivors:
                    continue
                key = sa.agree(s_sk, self.keys[i][SecAggKey.S_PKS][k], info=sa.MASK_INFO,
                               context=sa.pair_context(self.session_id, sum_name, i, j))
                m = sa.mask_stream(key, length, bits)
                # i added +m if i < j, else -m: take it back out
                total = (total - m) & modulus if i < j else (total + m) & modulus
        return total


def _signed_keys(reply: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A node's set-up reply, strictly: its agency, its public keys and their signature
    (the other nodes check the signature; the server only relays)."""
    return {SecAggKey.AGENCY: str(secagg_value(reply, SecAggKey.AGENCY, where=where)),
            SecAggKey.C_PK: bytes(secagg_value(reply, SecAggKey.C_PK, where=where)),
            SecAggKey.S_PKS: [bytes(v) for v in secagg_value(reply, SecAggKey.S_PKS,
                                                             where=where)],
            SecAggKey.SIGNATURE: bytes(secagg_value(reply, SecAggKey.SIGNATURE, where=where))}


def active(settings: RunSettings, num_nodes: int) -> bool:
    s = settings.secagg
    if s.mode == "off" or settings.strategy.aggregation != "mean":
        return False
    return s.mode == "on" or num_nodes >= 3


def _payload_bytes(msg: Message) -> int:
    """Bytes a node uploaded in one reply: byte and string values, arrays, 8 per number (an
    error reply: its reason)."""
    if msg.has_error():
        return len(str(msg.error.reason))
    total = 0
    for record in msg.content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(a.data) for a in record.values())
            continue
        for v in record.values():
            items = v if isinstance(v, list) else [v]
            total += sum(len(x) if isinstance(x, bytes | str) else 8 for x in items)
    return total


def _round_of(msg: Message) -> int:
    """The round of a strategy's instruction (Flower's FedAvg writes it), strictly."""
    config = msg.content.config_records.get(Record.CONFIG)
    if config is None or SERVER_ROUND not in config:
        raise ProtocolError(f"the strategy's instruction lacks {SERVER_ROUND!r} in its "
                            f"{Record.CONFIG!s} record; use a strategy from server/strategy.py")
    return int(cast(int, config[SERVER_ROUND]))


def _cfg(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records[RECORD])


def _masked_bytes(n: int, msg: Message) -> bytes:
    """A node's packed masked vector; its array record without it is a ProtocolError."""
    record = msg.content.array_records[RECORD]
    if MASKED_ARRAY not in record:
        raise ProtocolError(f"the {RECORD!s} array record of node {n}'s masked-input reply "
                            f"lacks {MASKED_ARRAY!r}; the node must run the same heroes-fl "
                            "protocol version as the aggregator")
    return bytes(record[MASKED_ARRAY].numpy().tobytes())


def _agency_of(msg: Message) -> str:
    """The agency a reply names (an error reply names none: its node id stands in)."""
    if Record.AGENCY not in msg.content.config_records:
        return f"node {msg.metadata.src_node_id}"
    info = msg.content.config_records[Record.AGENCY]
    if AgencyKey.AGENCY not in info:
        raise ProtocolError(f"the {Record.AGENCY!s} record of node {msg.metadata.src_node_id}'s "
                            "reply lacks 'agency'; the node must run the same heroes-fl "
                            "version as the aggregator")
    return str(info[AgencyKey.AGENCY])


class SecAggGrid:
    """A Grid whose train and evaluate round trips run SecAgg+; the rest passes through."""

    def __init__(self, grid: Grid, settings: RunSettings, heads: HeadBook | None = None
                 ) -> None:
        self._grid = grid
        self.settings = settings
        self.heads = heads
        self.rounds_masked = 0
        self.evaluations_masked = 0
        self._round = 0
        self._session: _Live | None = None
        # The next round's session, set up during this round's last exchange (a round trip
        # saved per round): its round, the session, and each node's signed keys.
        self._prepared: tuple[int, ServerSession, dict[int, dict[str, Any]]] | None = None
        self.stage_seconds: dict[str, list[float]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _next_setup(self, sum_name: str) -> dict[str, Any] | None:
        """The set-up of round r + 1 to send with round r's last exchange, the evaluation's
        unmask (every round evaluates: strategy.fraction_evaluate > 0), or None in the last
        round. A round whose evaluation was not secure sets up at its own start."""
        if sum_name != "evaluate" or self._round >= self.settings.strategy.num_rounds:
            return None
        session = ServerSession(self.settings.secagg, sums=sa.SUMS)
        self._prepared = (self._round + 1, session, {})
        return {**session.setup_config(), NEXT_ROUND: self._round + 1}

    def _take_prepared(self) -> tuple[ServerSession, dict[int, dict[str, Any]]] | None:
        prepared, self._prepared = self._prepared, None
        if prepared is None or prepared[0] != self._round:
            return None
        return prepared[1], prepared[2]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        msgs = list(messages)
        kinds = {m.metadata.message_type for m in msgs}
        if not msgs or len(kinds) != 1 or not active(self.settings, len(msgs)):
            return exchange(self._grid, msgs, timeout)
        kind = kinds.pop()
        if kind == "train":
            return self._train(msgs, timeout)
        if kind == "evaluate":
            return self._evaluate(msgs, timeout)
        return exchange(self._grid, msgs, timeout)

    # --- one exchange --------------------------------------------------------------------------
    def _exchange(self, msgs: list[Message], timeout: float | None) -> list[Message]:
        return exchange(self._grid, msgs, timeout)

    def _stage(self, kind: str, stage: str, configs: dict[int, dict[str, Any]],
               extra: dict[int, RecordDict] | None, timeout: float | None,
               attach: dict[str, Any] | None = None) -> dict[int, Message]:
        t0 = time.monotonic()
        out = []
        for n, cfg in configs.items():
            content = extra[n] if extra is not None else RecordDict(
                {Record.CONFIG: ConfigRecord({SERVER_ROUND: self._round})})
            content[RECORD] = ConfigRecord(cfg)
            if attach is not None:
                content[NEXT_RECORD] = ConfigRecord(attach)
            out.append(Message(content=content, dst_node_id=n, message_type=f"{kind}.{stage}"))
        got = {m.metadata.src_node_id: m for m in self._exchange(out, timeout)}
        self.stage_seconds.setdefault(f"{kind}.{stage}", []).append(time.monotonic() - t0)
        log.debug("secure aggregation: %s.%s took %.2f s", kind, stage, time.monotonic() - t0)
        return got

    # --- training ---------------------------------------------------------------------------------
    def _train(self, msgs: list[Message], timeout: float | None) -> list[Message]:
        t0 = time.monotonic()
        self._round = _round_of(msgs[0])
        live = _Live(self, msgs, "train", sa.SUMS, timeout)
        self._session = live
        if not live.open(self._take_prepared()):
            return live.results()
        by_node = {m.metadata.dst_node_id: m for m in msgs}
        flat, layout = sa.flatten(to_numpy(
            by_node[live.nodes[0]].content.array_records[Record.ARRAYS]))
        extra = {n: RecordDict({
            Record.ARRAYS: by_node[n].content.array_records[Record.ARRAYS],
            Record.CONFIG: by_node[n].content.config_records[Record.CONFIG]})
                 for n in live.pending}
        length = sa.train_layout(flat.size, self.settings.secagg.clip_range).length
        total = live.masked_sum(extra, length)
        if total is None:
            return live.results()
        cap = float(self.settings.secagg.max_weight)
        sums = sa.train_layout(flat.size, self.settings.secagg.clip_range).decode(
            total, len(live.in_sum), qbits=self.settings.secagg.quantization_bits)
        examples = float(sums["examples"][0])
        if examples <= 0:
            return live.abort("the agencies in the sum reported no training examples")
        mean = cap * sums["update"] / examples
        new_arrays = to_record(sa.unflatten(flat + mean, layout))
        pooled: dict[str, float] = {Metric.TRAIN_LOSS: float(cap * sums["loss"][0] / examples),
                  Metric.EXAMPLES: examples,
                  Metric.ROWS_SET_ASIDE: float(sums["rows_set_aside"][0]),
                  Metric.AGENCIES_IN_SUM: float(len(live.in_sum))}
        live.finish(lambda n: RecordDict({Record.ARRAYS: new_arrays}), pooled)
        self.rounds_masked += 1
        log.info("secure aggregation: %d of %d agencies in the sum, %d dropped, %d-bit "
                 "modulus, %.2f s", len(live.in_sum), len(live.nodes),
                 len(live.session.sharers) - len(live.in_sum), live.session.bits,
                 time.monotonic() - t0)
        return live.results()

    # --- evaluation -------------------------------------------------------------------------------
    def _evaluate(self, msgs: list[Message], timeout: float | None) -> list[Message]:
        t0 = time.monotonic()
        self._round = _round_of(msgs[0])
        nodes = [m.metadata.dst_node_id for m in msgs]
        prior = self._session
        if prior is not None and prior.round == self._round and prior.sum_open("evaluate"):
            # the keys were shared in training: only this round's sharers can take part
            live = prior.continue_with(msgs, "evaluate", timeout)
            if len(live.pending) < 2:
                return live.abort("too few agencies shared keys in this round's training "
                                  "to evaluate securely", nodes)
        else:
            live = _Live(self, msgs, "evaluate", ("evaluate",), timeout)
            if not live.open():
                return live.results()
        by_node = {m.metadata.dst_node_id: m for m in msgs}
        extra = {n: RecordDict({
            Record.ARRAYS: by_node[n].content.array_records[Record.ARRAYS],
            Record.CONFIG: by_node[n].content.config_records[Record.CONFIG]})
                 for n in live.pending}
        layout = sa.eval_layout()
        total = live.masked_sum(extra, layout.length)
        if total is None:
            return live.results()
        sums = layout.decode(total, len(live.in_sum),
                             qbits=self.settings.secagg.quantization_bits)
        examples = float(sums["examples"][0])
        cap = float(self.settings.secagg.max_weight)
        pooled = fm.from_histograms(sums["positives"], sums["negatives"],
                                    k=self.settings.eval.k)
        # the release card's default threshold (server/release.py): from the sum alone
        pooled.update(fm.operating_point(sums["positives"], sums["negatives"]))
        pooled[Metric.LOSS] = float(cap * sums["loss"][0] / examples) if examples else math.nan
        pooled[Metric.BRIER] = (float(cap * sums["brier"][0] / examples) if examples
                                else math.nan)
        pooled[Metric.EXAMPLES] = examples
        pooled[Metric.AGENCIES_IN_SUM] = float(len(live.in_sum))
        live.finish(lambda n: RecordDict(), pooled)
        self.evaluations_masked += 1
        log.info("secure evaluation: %d of %d agencies in the sum, %.2f s", len(live.in_sum),
                 len(nodes), time.monotonic() - t0)
        return live.results()


class _Live:
    """One sum of a session in flight, with the per-agency outcomes the strategy will see."""

    def __init__(self, grid: SecAggGrid, msgs: list[Message], kind: str,
                 sums: tuple[str, ...], timeout: float | None) -> None:
        self.grid = grid
        self.kind = kind
        self.sum_name = kind
        self.timeout = timeout
        self.round = grid._round
        self.session = ServerSession(grid.settings.secagg, sums=sums)
        self.by_node = {m.metadata.dst_node_id: m for m in msgs}
        self.nodes = [m.metadata.dst_node_id for m in msgs]
        self.final: dict[int, Message] = {}
        self.uploaded: dict[int, int] = {n: 0 for n in self.nodes}
        self.agency: dict[int, str] = {}
        self.shared: dict[int, ConfigRecord] = {}
        self.pending: list[int] = []
        self.in_sum: list[int] = []
        self.used: set[str] = set()

    # --- bookkeeping ----------------------------------------------------------------------
    def _accepted(self, stage: str, n: int, m: Message, *, carries: str) -> bool:
        """Count what node n uploaded; False (and its outcome noted) unless its reply carries
        the stage's record (``carries``: config or array) and a ledger head the consortium
        accepts."""
        self.uploaded[n] = self.uploaded.get(n, 0) + _payload_bytes(m)
        present = not m.has_error() and RECORD in (
            m.content.config_records if carries == "config" else m.content.array_records)
        if not present:
            self.final[n] = m  # failed, or refused (its budget): the strategy names it
            log.warning("secure aggregation %s: node %d dropped out", stage, n)
            return False
        self.agency[n] = _agency_of(m)
        if Record.SHARED in m.content.config_records:
            self.shared[n] = m.content.config_records[Record.SHARED]
        reason = self._head_problem(n, m)
        if reason is not None:
            self.final[n] = self._rejected(n, reason)
            return False
        return True

    def _usable(self, stage: str, replies: dict[int, Message]) -> dict[int, dict[str, Any]]:
        return {n: _cfg(m) for n, m in replies.items()
                if self._accepted(stage, n, m, carries="config")}

    def _head_problem(self, n: int, m: Message) -> str | None:
        heads = self.grid.heads
        if heads is None or Record.LEDGER not in m.content.config_records:
            return None
        attestation = dict(m.content.config_records[Record.LEDGER])
        agency = self.agency[n]
        if "signature" not in attestation:
            # the masked input carries only the head after training: it may not be behind
            # the signed head accepted at set-up (the next set-up proves it extends)
            seen = heads.entries().get(agency, {}).get("seq")
            seq = attestation.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or (
                    isinstance(seen, int) and seq < seen):
                return (f"agency {agency}: its ledger head went backwards during the round "
                        f"(seq {seq!r} after {seen!r} at set-up); its privacy ledger was rolled "
                        "back or replaced")
            return None
        reason = heads.check(agency, attestation)
        if reason is None:
            heads.accept(agency, attestation, run=str(self.by_node[n].metadata.run_id))
        return reason

    def _rejected(self, n: int, reason: str) -> Message:
        log.warning("secure aggregation: %s rejected: %s", self.agency.get(n, n), reason)
        return Message(content=RecordDict({Record.AGENCY: ConfigRecord(
            {AgencyKey.AGENCY: self.agency.get(n, f"node {n}"),
             AgencyKey.STATUS: Status.REJECTED.value, AgencyKey.REASON: reason})}),
            reply_to=self.by_node[n])

    def abort(self, reason: str, still_in: Iterable[int] | None = None) -> list[Message]:
        """Too few left to hide anyone: name everyone's outcome, let the quorum decide."""
        log.warning("secure aggregation aborted: %s", reason)
        for n in (self.pending if still_in is None else still_in):
            if n not in self.final:
                self.final[n] = Message(Error(code=0, reason=f"secure aggregation aborted: "
                                                               f"{reason}"),
                                        reply_to=self.by_node[n])
        return self.results()

    def results(self) -> list[Message]:
        return [self.final[n] for n in self.nodes if n in self.final]

    def sum_open(self, name: str) -> bool:
        return name in self.session.sums and name not in self.used

    # --- set-up and shares ------------------------------------------------------------------
    def open(self, prepared: tuple[ServerSession, dict[int, dict[str, Any]]] | None = None
             ) -> bool:
        """Set-up (unless the nodes already sent this round's keys with the last exchange of
        the previous round) and shares."""
        if prepared is not None:
            self.session, ready = prepared
            r1 = {n: cfg for n, cfg in ready.items() if n in self.by_node}
        else:
            r1 = {}
        s = self.session
        missing = [n for n in self.nodes if n not in r1]
        if missing:  # the same session: late-comers set up with the same nonce
            r1.update(self._usable("setup", self.grid._stage(
                self.kind, STAGES[0], {n: s.setup_config() for n in missing}, None,
                self.timeout)))
        if len(r1) < 2:
            self.abort(f"only {len(r1)} agency(ies) completed set-up; at least 2 are needed "
                       "to hide each one's update", r1)
            return False
        share_cfgs = s.share_configs(r1)
        s.start(str(self.by_node[self.nodes[0]].metadata.run_id), self.round)
        r2 = self._usable("share", self.grid._stage(
            self.kind, STAGES[1], share_cfgs, None, self.timeout))
        if len(r2) < 2:
            self.abort(f"only {len(r2)} agency(ies) shared their keys", r2)
            return False
        self.boxes = s.masked_configs(r2)
        self.pending = list(s.sharers)
        return True

    def continue_with(self, msgs: list[Message], kind: str, timeout: float | None) -> _Live:
        """The evaluation sum of a session whose keys were shared in training."""
        live = _Live(self.grid, msgs, kind, self.session.sums, timeout)
        live.session = self.session
        live.agency = dict(self.agency)
        sharers = set(self.session.sharers)
        live.pending = [n for n in live.nodes if n in sharers]
        for n in live.nodes:
            if n not in sharers:
                live.final[n] = Message(Error(code=0, reason="secure evaluation: this agency "
                                              "did not share keys in this round's session"),
                                        reply_to=live.by_node[n])
        live.boxes = {}
        self.used.add(kind)
        live.used = self.used
        return live

    # --- masked input, consistency, unmask --------------------------------------------------
    boxes: dict[int, dict[str, Any]]

    def masked_sum(self, extra: dict[int, RecordDict], length: int) -> np.ndarray | None:
        s, name = self.session, self.sum_name
        self.used.add(name)
        configs = {n: self.boxes.get(n, {}) for n in self.pending}
        replies = self.grid._stage(self.kind, STAGES[2], configs, extra, self.timeout)
        masked = {n: _masked_bytes(n, m) for n, m in replies.items()
                  if self._accepted("masked input", n, m, carries="array")}
        if len(masked) < 2:
            self.abort(f"only {len(masked)} agency(ies) submitted a masked input; unmasking "
                       "would reveal that agency's values", masked)
            return None
        r4 = self._usable("consistency", self.grid._stage(
            self.kind, STAGES[3], {n: s.consistency_config(name, masked) for n in masked},
            None, self.timeout))
        signatures = {n: bytes(secagg_value(c, SecAggKey.SIGNATURE,
                                            where=f"node {n}'s consistency reply"))
                      for n, c in r4.items()}
        attach = self.grid._next_setup(name)
        replies = self.grid._stage(self.kind, STAGES[4], s.unmask_configs(name, signatures),
                                   None, self.timeout, attach=attach)
        r5 = self._usable("unmask", replies)
        if attach is not None and self.grid._prepared is not None:
            ready = self.grid._prepared[2]
            for n in r5:  # a node whose head was refused above is not in r5
                m = replies[n]
                if NEXT_RECORD in m.content.config_records:
                    ready[n] = dict(m.content.config_records[NEXT_RECORD])
        try:
            total = s.unmask(name, masked, length, r5)
        except FederationError as exc:
            self.abort(str(exc), masked)
            return None
        self.in_sum = sorted(masked)
        return total

    def finish(self, content: Any, pooled: dict[str, float]) -> None:
        """One strategy-facing reply per agency in the sum, all with the same result."""
        for n in self.in_sum:
            rec = content(n)
            rec[Record.METRICS] = MetricRecord({Metric.NUM_EXAMPLES: 1.0, SUM_RECORD: 1.0,
                                                **{str(k): float(v) for k, v in pooled.items()}})
            rec[Record.AGENCY] = ConfigRecord({
                AgencyKey.AGENCY: self.agency.get(n, f"node {n}"),
                AgencyKey.STATUS: Status.OK.value, AgencyKey.REASON: ""})
            rec[Record.OBSERVED] = ConfigRecord({BYTES_SENT: float(self.uploaded.get(n, 0))})
            if n in self.shared:
                rec[Record.SHARED] = self.shared[n]
            self.final[n] = Message(content=rec, reply_to=self.by_node[n])


def as_grid(grid: Grid, settings: RunSettings, heads: HeadBook | None = None) -> Grid:
    """The grid the strategy should use: SecAgg+ unless switched off; either way its round
    trips pull replies with a short backoff (server/exchange.py), not Flower's fixed sleep."""
    if settings.secagg.mode == "off" or settings.strategy.aggregation != "mean":
        return prompt(grid)
    return cast(Grid, SecAggGrid(grid, settings, heads))
