"""The server's side of SecAgg+ (federation/secagg.py has the protocol and the maths).

``SecAggGrid`` wraps Flower's Grid for the strategy: when a round's training messages go to
at least 3 agencies (``secagg.mode=auto``) or always (``on``), it runs the four SecAgg+
stages with the sampled nodes instead of one plain train message, unmasks the sum, and hands
the strategy one reply per agency that trained, each carrying the same (already weighted)
average, so the strategy's weighted mean of them is that average and its per-agency
bookkeeping (outcomes, quorum, progress, privacy numbers) works unchanged. What the server
ever holds per agency is its public keys, encrypted shares addressed to others, and a masked
vector that is uniformly random on its own.

Threat model: an honest-but-curious server, and fewer than ``t`` colluding agencies in any
node's neighbourhood (``t`` = ``secagg.threshold`` of the neighbourhood, at least 2), learn
nothing about one agency's update beyond the round's sum. A round survives dropouts as long
as every survivor's and every dropped node's neighbourhood keeps ``t`` responsive members.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.error import Error
from flwr.serverapp import Grid

from federation import secagg as sa
from federation.config import RunSettings, SecAggSettings
from federation.errors import FederationError

log = logging.getLogger("heroes.secagg")

STAGES = ("secagg_setup", "secagg_share", "secagg_masked", "secagg_unmask")
RECORD = "secagg"


@dataclass
class ServerRound:
    """One round of the protocol, independent of Flower (tests drive it directly)."""

    settings: SecAggSettings
    round_id: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    sizes: dict[int, float] = field(default_factory=dict)
    graph: dict[int, list[int]] = field(default_factory=dict)
    xs: dict[int, int] = field(default_factory=dict)
    thresholds: dict[int, int] = field(default_factory=dict)
    sharers: list[int] = field(default_factory=list)
    weights: dict[int, float] = field(default_factory=dict)
    bits: int = 0

    def setup_config(self) -> dict[str, Any]:
        return {"round_id": self.round_id}

    def share_configs(self, replies: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        for n, r in replies.items():
            self.keys[n] = (bytes(r["c_pk"]), bytes(r["s_pk"]))
            self.sizes[n] = float(r["num_examples"])
        nodes = sorted(self.keys)
        self.graph = sa.neighbours(nodes, self.settings.num_neighbours)
        self.xs = {n: i + 1 for i, n in enumerate(nodes)}
        out = {}
        for n in nodes:
            group = len(self.graph[n]) + 1
            self.thresholds[n] = sa.share_threshold(group, self.settings.threshold)
            out[n] = {"round_id": self.round_id, "neighbours": [str(m) for m in self.graph[n]],
                      "ids": [str(m) for m in nodes], "xs": [self.xs[m] for m in nodes],
                      "c_pks": [self.keys[m][0] for m in nodes],
                      "s_pks": [self.keys[m][1] for m in nodes],
                      "threshold": self.thresholds[n]}
        return out

    def masked_configs(self, replies: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Deliver each node the boxes addressed to it; fix weights over those still in."""
        self.sharers = sorted(replies)
        inbox: dict[int, tuple[list[str], list[bytes]]] = {n: ([], []) for n in self.sharers}
        for sender, r in replies.items():
            for to, box in zip(r["to"], r["boxes"], strict=True):
                if int(to) in inbox:
                    inbox[int(to)][0].append(str(sender))
                    inbox[int(to)][1].append(bytes(box))
        total = sum(self.sizes[n] for n in self.sharers)
        self.weights = {n: self.sizes[n] / total for n in self.sharers}
        self.bits = sa.modulus_bits(self.settings.quantization_bits, len(self.sharers))
        return {n: {"from": inbox[n][0], "boxes": inbox[n][1], "weight": self.weights[n],
                    "bits": self.bits, "qbits": self.settings.quantization_bits,
                    "clip": self.settings.clip_range} for n in self.sharers}

    def unmask_config(self, survivors: Sequence[int]) -> dict[str, Any]:
        dropped = [n for n in self.sharers if n not in set(survivors)]
        return {"survivors": [str(n) for n in survivors], "dropped": [str(n) for n in dropped]}

    def aggregate(self, masked: dict[int, bytes], length: int,
                  unmask_replies: dict[int, dict[str, Any]]) -> np.ndarray:
        """The weighted mean of the survivors' updates, from their masked vectors."""
        survivors = sorted(masked)
        dropped = [n for n in self.sharers if n not in masked]
        modulus = np.uint64((1 << self.bits) - 1)
        total = np.zeros(length, dtype=np.uint64)
        for n in survivors:
            total = (total + sa.unpack(masked[n], self.bits, length)) & modulus
        b_shares: dict[int, dict[int, int]] = {n: {} for n in survivors}
        sk_shares: dict[int, dict[int, int]] = {n: {} for n in dropped}
        for r in unmask_replies.values():
            x = int(r["x"])
            for owner, kind, share in zip(r["ids"], r["kinds"], r["shares"], strict=True):
                target = b_shares if kind == "b" else sk_shares
                if int(owner) in target:
                    target[int(owner)][x] = int.from_bytes(bytes(share), "big")
        for n in survivors:
            seed = sa.combine(b_shares[n], threshold=self.thresholds[n])
            total = (total - sa.mask_stream(seed, length, self.bits)) & modulus
        for j in dropped:
            s_sk = sa.combine(sk_shares[j], threshold=self.thresholds[j])
            for i in self.graph[j]:
                if i not in masked:
                    continue
                key = sa.agree(s_sk, self.keys[i][1], info=sa.MASK_INFO,
                               context=sa.pair_context(self.round_id, i, j))
                m = sa.mask_stream(key, length, self.bits)
                # i added +m if i < j, else -m: take it back out
                total = (total - m) & modulus if i < j else (total + m) & modulus
        weighted_sum = sa.dequantize_sum(total, len(survivors),
                                         clip=self.settings.clip_range,
                                         qbits=self.settings.quantization_bits)
        weight = sum(self.weights[n] for n in survivors)
        return weighted_sum / weight


def active(settings: RunSettings, num_nodes: int) -> bool:
    s = settings.secagg
    if s.mode == "off" or settings.strategy.aggregation != "mean":
        return False
    return s.mode == "on" or num_nodes >= 3


def _payload_bytes(values: dict[str, Any]) -> int:
    """Bytes of keys, sealed shares and revealed shares in one protocol reply."""
    total = 0
    for v in values.values():
        items = v if isinstance(v, list) else [v]
        total += sum(len(x) if isinstance(x, bytes | str) else 8 for x in items)
    return total


def _cfg(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records[RECORD])


class SecAggGrid:
    """A Grid whose training round trips run SecAgg+; everything else passes through."""

    def __init__(self, grid: Grid, settings: RunSettings) -> None:
        self._grid = grid
        self.settings = settings
        self.rounds_masked = 0
        self._round = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        msgs = list(messages)
        if not msgs or any(m.metadata.message_type != "train" for m in msgs) \
                or not active(self.settings, len(msgs)):
            return self._grid.send_and_receive(msgs, timeout=timeout)
        return self._secure_round(msgs, timeout)

    def _stage(self, stage: str, configs: dict[int, dict[str, Any]],
               extra: dict[int, RecordDict] | None, timeout: float | None
               ) -> dict[int, Message]:
        out = []
        for n, cfg in configs.items():
            content = extra[n] if extra is not None else RecordDict(
                {"config": ConfigRecord({"server-round": self._round})})  # for receipts
            content[RECORD] = ConfigRecord(cfg)
            out.append(Message(content=content, dst_node_id=n, message_type=f"train.{stage}"))
        replies = self._grid.send_and_receive(out, timeout=timeout)
        return {m.metadata.src_node_id: m for m in replies}

    def _secure_round(self, msgs: list[Message], timeout: float | None) -> list[Message]:
        t0 = time.monotonic()
        config = msgs[0].content.config_records.get("config")
        self._round = int(cast(int, config.get("server-round", 0))) if config else 0
        srv = ServerRound(self.settings.secagg)
        nodes = [m.metadata.dst_node_id for m in msgs]
        final: dict[int, Message] = {}  # replies the strategy sees (failures included)

        uploaded: dict[int, int] = {n: 0 for n in nodes}  # protocol payload bytes per node

        def usable(stage: str, replies: dict[int, Message]) -> dict[int, dict[str, Any]]:
            ok = {}
            for n, m in replies.items():
                if m.has_error() or RECORD not in m.content.config_records:
                    final[n] = m  # the strategy names it failed/refused
                    log.warning("secure aggregation %s: node %d dropped out", stage, n)
                else:
                    ok[n] = _cfg(m)
                    uploaded[n] += _payload_bytes(ok[n])
            return ok

        r1 = usable("setup", self._stage(STAGES[0], {n: srv.setup_config() for n in nodes},
                                         None, timeout))
        by_node = {m.metadata.dst_node_id: m for m in msgs}

        def abort(reason: str, still_in: Iterable[int]) -> list[Message]:
            """Too few left to hide anyone: name everyone's outcome, let the quorum decide."""
            log.warning("secure aggregation aborted: %s", reason)
            for n in still_in:
                final[n] = Message(Error(code=0, reason=f"secure aggregation aborted: {reason}"),
                                   reply_to=by_node[n])
            return [final[n] for n in nodes if n in final]

        if len(r1) < 2:
            return abort(f"only {len(r1)} agency(ies) completed set-up; at least 2 are needed "
                         "to hide each one's update", r1)
        r2 = usable("share", self._stage(STAGES[1], srv.share_configs(r1), None, timeout))
        if len(r2) < 2:
            return abort(f"only {len(r2)} agency(ies) shared their keys", r2)
        masked_cfgs = srv.masked_configs(r2)
        global_arrays = by_node[nodes[0]].content.array_records["arrays"]
        flat, layout = sa.flatten(global_arrays)
        extra = {n: RecordDict({"arrays": by_node[n].content.array_records["arrays"],
                                "config": by_node[n].content.config_records["config"]})
                 for n in masked_cfgs}
        r3_msgs = self._stage(STAGES[2], masked_cfgs, extra, timeout)
        masked: dict[int, bytes] = {}
        trained: dict[int, Message] = {}
        for n, m in r3_msgs.items():
            if (not m.has_error() and "secagg" in m.content.array_records):
                masked[n] = m.content.array_records["secagg"]["masked"].numpy().tobytes()
                trained[n] = m
            else:
                final[n] = m
        if len(masked) < 2:
            return abort(f"only {len(masked)} agency(ies) submitted a masked update; unmasking "
                         "would reveal that agency's update", masked)
        r4 = usable("unmask", self._stage(
            STAGES[3], {n: srv.unmask_config(sorted(masked)) for n in masked}, None, timeout))
        try:
            mean_delta = srv.aggregate(masked, flat.size, r4)
        except FederationError as exc:
            return abort(str(exc), masked)
        new_arrays = sa.unflatten(flat + mean_delta, layout)
        for n, m in trained.items():
            size = len(masked[n]) + uploaded[n]
            del m.content["secagg"]
            m.content["arrays"] = new_arrays
            metrics = m.content.metric_records["metrics"]
            metrics["secagg_bytes"] = float(size)
            final[n] = m
        self.rounds_masked += 1
        log.info("secure aggregation: %d of %d agencies in the sum, %d dropped, %d-bit "
                 "modulus, %.2f s", len(masked), len(nodes), len(srv.sharers) - len(masked),
                 srv.bits, time.monotonic() - t0)
        return [final[n] for n in nodes if n in final]


def as_grid(grid: Grid, settings: RunSettings) -> Grid:
    """The grid the strategy should use: SecAgg+ unless switched off."""
    if settings.secagg.mode == "off" or settings.strategy.aggregation != "mean":
        return grid
    return cast(Grid, SecAggGrid(grid, settings))
