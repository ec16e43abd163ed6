"""The node's secure-aggregation (SecAgg+) stages: read the stage's values, run the node's
side of the protocol (clients/secagg.py), keep the session in ``context.state``, reply.
Each stage is registered under ``train.<stage>`` and ``evaluate.<stage>``
(clients/client_app.py); the masked-input stage trains or evaluates (clients/rounds.py)
and sends only the masked vector.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message

from clients import receipts, replies
from clients.approvals import approved_roster
from clients.mods import keep_figures
from clients.rounds import Where, evaluate_once, keep, train_once, validate_export, where
from clients.secagg import Identity, NodeSecAgg, Safety
from federation import metrics as fm
from federation import secagg as sa
from federation.config import NodeView
from federation.errors import FederationError, ProtocolError
from federation.policy import Policy
from federation.protocol import MASKED_ARRAY, NEXT_ROUND, Metric, Record, Stage
from federation.signing import load_private_key

Handler = Callable[[Message, Context], Message]

#: This run's secure-aggregation session at the node, in ``context.state``.
SESSION_STATE = "secagg"


def _session(context: Context, w: Where) -> NodeSecAgg:
    s = w.settings.secagg
    identity = Identity(node_id=int(context.node_id), agency=w.agency, run_id=str(context.run_id),
                        key=load_private_key(w.state_dir / receipts.NODE_KEY),
                        roster=approved_roster(w.state_dir))
    safety = Safety(fraction=s.threshold, degree=s.num_neighbours,
                    quantization_bits=s.quantization_bits,
                    min_threshold=w.policy.secure_min_threshold,
                    min_agencies=int(w.policy.secure_min_agencies))
    kept = replies.config_record(context.state, SESSION_STATE)
    text = None if kept is None else str(kept["json"])
    return NodeSecAgg.load(identity, safety, text)


def _save(context: Context, node: NodeSecAgg) -> None:
    context.state[SESSION_STATE] = ConfigRecord({"json": node.dump()})


def _cfg(msg: Message) -> dict[str, Any]:
    """The stage's values; a stage without its record is a ProtocolError (a refusal)."""
    record = replies.config_record(msg.content, Record.SECAGG)
    if record is None:
        raise ProtocolError(f"secure aggregation refused by this node: the "
                            f"{msg.metadata.message_type} message lacks the "
                            f"{Record.SECAGG!s} record")
    return dict(record)


def _next_round(nxt: dict[str, Any]) -> int:
    """The round a riding set-up belongs to, taken out of its values (the set-up itself
    then holds exactly its own keys); absent, a ProtocolError (a refusal) naming it."""
    if NEXT_ROUND not in nxt:
        raise ProtocolError(f"secure aggregation refused by this node: the "
                            f"{Record.SECAGG_NEXT!s} record lacks {NEXT_ROUND!r}")
    return int(cast(int, nxt.pop(NEXT_ROUND)))


def _sum_of(msg: Message) -> str:
    return msg.metadata.message_type.split(".", 1)[0]


def _same_round(msg: Message, node: NodeSecAgg) -> None:
    if replies.server_round(msg) != int(node.state.get("round", -1)):
        raise FederationError("secure aggregation refused by this node: a stage of another "
                              "round than the session it belongs to")


def _secagg_reply(msg: Message, agency: str, values: dict[str, Any], *,
                  ledger: dict[str, Any] | None = None) -> Message:
    return replies.reply(msg, agency, ledger=ledger, records={Record.SECAGG: ConfigRecord(values)})


def secagg_setup(msg: Message, context: Context) -> Message:
    w = where(context)
    if _sum_of(msg) == "train":
        validate_export(context)
    node = _session(context, w)
    values = node.setup(_cfg(msg), server_round=replies.server_round(msg))
    _save(context, node)
    return _secagg_reply(msg, w.agency, values, ledger=replies.attest(w.state_dir))


def secagg_share(msg: Message, context: Context) -> Message:
    w = where(context)
    node = _session(context, w)
    _same_round(msg, node)
    values = node.share(_cfg(msg))
    _save(context, node)
    return _secagg_reply(msg, w.agency, values)


def _open_boxes(node: NodeSecAgg, cfg: dict[str, Any]) -> None:
    """The first masked stage of a session delivers the share bundles; a later one (the
    evaluation of a session set up in training) delivers none."""
    if cfg:
        node.receive_shares(cfg)
    elif not node.state.get("received"):
        raise FederationError("secure aggregation refused by this node: masking requested "
                              "before any share bundles arrived")


def _masked_reply(msg: Message, agency: str, packed: bytes, *, policy: Policy,
                  figures: dict[str, float], ledger: dict[str, Any] | None) -> Message:
    return replies.reply(msg, agency, ledger=ledger, shared=replies.shared(policy, figures),
                         records={Record.SECAGG: ArrayRecord(
                             {MASKED_ARRAY: Array(np.frombuffer(packed, dtype=np.uint8))})})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A record's arrays as numpy (federation/secagg.py never sees a Flower type)."""
    return {name: arr.numpy() for name, arr in record.items()}


def _weight(count: float, settings: NodeView) -> tuple[float, float]:
    """(capped count, weight): the node's own share of the mean, never the server's."""
    capped = float(min(count, settings.secagg.max_weight))
    return capped, capped / settings.secagg.max_weight


def _masked_stage(msg: Message, context: Context) -> tuple[Where, NodeSecAgg]:
    """Every masked-input stage starts alike: this round's session, its bundles opened."""
    w = where(context)
    node = _session(context, w)
    _same_round(msg, node)
    _open_boxes(node, _cfg(msg))
    _save(context, node)
    return w, node


def secagg_masked_train(msg: Message, context: Context) -> Message:
    w, node = _masked_stage(msg, context)
    t = train_once(msg, context)
    if t.model is None:  # refused: this node drops out of the round's sum
        keep(context, "train", msg, t)
        keep_figures(context, t.figures)
        return replies.reply(msg, t.node.agency, status=t.status, reason=t.public_reason,
                             ledger=replies.attest(t.node.state_dir),
                             shared=replies.shared(t.policy, t.figures))
    global_flat, _ = sa.flatten(_numpy(msg.content.array_records[Record.ARRAYS]))
    trained, _ = sa.flatten(_numpy(ArrayRecord(t.model.state_dict())))
    capped, weight = _weight(t.figures[Metric.NUM_EXAMPLES], w.settings)
    layout = sa.train_layout(global_flat.size, w.settings.secagg.clip_range)
    loss = t.figures[Metric.TRAIN_LOSS] if math.isfinite(t.figures[Metric.TRAIN_LOSS]) else 0.0
    vector, clipped = layout.encode(
        {"update": weight * (trained - global_flat), "loss": [weight * loss],
         "examples": [capped], "rows_set_aside": [float(t.node.rows_set_aside)]},
        qbits=w.settings.secagg.quantization_bits)
    packed = node.mask("train", vector)
    _save(context, node)
    t.figures[Metric.SECAGG_CLIPPED] = float(clipped)  # clipping changes the sum: kept here
    keep(context, "train", msg, t)
    keep_figures(context, t.figures)
    return _masked_reply(msg, t.node.agency, packed, policy=t.policy, figures=t.figures,
                         ledger=replies.head(t.node.state_dir))


def secagg_masked_evaluate(msg: Message, context: Context) -> Message:
    w, node = _masked_stage(msg, context)
    e = evaluate_once(msg, context)
    keep(context, "evaluate", msg, e)
    capped, weight = _weight(e.figures[Metric.NUM_EXAMPLES], w.settings)
    pos, neg = fm.histograms(e.node.labels, e.probabilities)
    loss = e.figures[Metric.LOSS] if math.isfinite(e.figures[Metric.LOSS]) else 0.0
    brier = e.figures[Metric.BRIER] if math.isfinite(e.figures[Metric.BRIER]) else 0.0
    vector, _ = sa.eval_layout().encode(
        {"positives": pos, "negatives": neg, "loss": [weight * loss],
         "brier": [weight * brier], "examples": [capped]},
        qbits=w.settings.secagg.quantization_bits)
    packed = node.mask("evaluate", vector)
    _save(context, node)
    keep_figures(context, e.figures)
    return _masked_reply(msg, e.node.agency, packed, policy=e.policy, figures=e.figures,
                         ledger=None)


def secagg_consistency(msg: Message, context: Context) -> Message:
    w = where(context)
    node = _session(context, w)
    _same_round(msg, node)
    values = node.consistency(_sum_of(msg), _cfg(msg))
    _save(context, node)
    return _secagg_reply(msg, w.agency, values)


def secagg_unmask(msg: Message, context: Context) -> Message:
    """Reveal this sum's shares; if the message carries the next round's set-up (the last
    exchange of a round does), open that session too: one round trip less per round."""
    w = where(context)
    node = _session(context, w)
    _same_round(msg, node)
    values = node.unmask(_sum_of(msg), _cfg(msg))
    _save(context, node)
    riding = replies.config_record(msg.content, Record.SECAGG_NEXT)
    if riding is None:
        return _secagg_reply(msg, w.agency, values)
    nxt = dict(riding)
    server_round = _next_round(nxt)
    if server_round != replies.server_round(msg) + 1:
        raise FederationError("secure aggregation refused by this node: a set-up for a round "
                              "other than the next one")
    validate_export(context)
    following = _session(context, w)
    next_values = following.setup(nxt, server_round=server_round)
    _save(context, following)
    return replies.reply(msg, w.agency, ledger=replies.attest(w.state_dir), records={
        Record.SECAGG: ConfigRecord(values), Record.SECAGG_NEXT: ConfigRecord(next_values)})


#: Every stage's handler for a training and for an evaluation round trip: an evaluation
#: either continues the round's session (masked input on) or, if training ran in the
#: clear, opens its own.
STAGES: dict[Stage, tuple[Handler, Handler]] = {
    Stage.SETUP: (secagg_setup, secagg_setup),
    Stage.SHARE: (secagg_share, secagg_share),
    Stage.MASKED: (secagg_masked_train, secagg_masked_evaluate),
    Stage.CONSISTENCY: (secagg_consistency, secagg_consistency),
    Stage.UNMASK: (secagg_unmask, secagg_unmask),
}
