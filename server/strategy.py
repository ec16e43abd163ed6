"""Flower strategies that name every agency's outcome and enforce a quorum.

Each round records, per sampled node: the agency's name (as it reported it), whether it
replied, the error if it failed, and its numbers. A node that was sampled but did not
reply is counted as missing. A training reply that fails update validation (server/robust.py:
shape, dtype, finite values, norm bound) is counted as rejected, with the reason, and left
out of the aggregate. Below ``strategy.quorum`` successful training replies the round fails
with QuorumError instead of averaging a handful of updates.

``strategy.aggregation`` picks the aggregate of the accepted updates: Flower's weighted
mean, or a robust one (median, trimmed mean, Multi-Krum) from server/robust.py; FedAdam
applies its server optimiser to whichever aggregate was chosen.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from federation.config import RunSettings
from federation.errors import FederationError, QuorumError
from server.robust import (
    check_update,
    norm_rejections,
    robust_aggregate,
    to_numpy,
    to_record,
    update_norm,
)

if TYPE_CHECKING:
    from server.ledger_heads import HeadBook

log = logging.getLogger("heroes.server")

SUM_KEY = "secure_sum"  # marks a secure round's pooled result (server/secagg.py)


@dataclass
class NodeOutcome:
    node_id: int
    agency: str
    status: str  # "ok", "refused" (e.g. privacy budget), "failed", "missing" or "rejected"
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundRecord:
    round: int
    train: list[NodeOutcome] = field(default_factory=list)
    evaluate: list[NodeOutcome] = field(default_factory=list)
    train_aggregate: dict[str, float] = field(default_factory=dict)
    evaluate_aggregate: dict[str, float] = field(default_factory=dict)
    started: float = 0.0  # monotonic clock at configure_train
    wall_seconds: float = math.nan  # configure_train to the end of evaluation


class RunLog:
    """Everything the server learned, round by round, in JSON-ready form."""

    def __init__(self) -> None:
        self.rounds: dict[int, RoundRecord] = {}
        self.agency_of: dict[int, str] = {}

    def round(self, n: int) -> RoundRecord:
        return self.rounds.setdefault(n, RoundRecord(round=n))

    def outcomes(self, sampled: list[int], replies: list[Message]) -> list[NodeOutcome]:
        """Per-agency outcomes of one round trip, with the figures the consortium really
        saw of each agency: what its policy shared (``shared``), what a plain round shows in
        the clear (the example count), and the bytes it uploaded. A secure round's pooled
        result is the same in every reply and is not an agency's figure."""
        out: list[NodeOutcome] = []
        replied = set()
        for msg in replies:
            nid = msg.metadata.src_node_id
            replied.add(nid)
            if msg.has_error():
                out.append(NodeOutcome(nid, self.name(nid), "failed", str(msg.error.reason)))
                continue
            status, reason = "ok", ""
            if "agency" in msg.content.config_records:
                info = msg.content.config_records["agency"]
                self.agency_of[nid] = str(info["agency"])
                status = str(info.get("status", "ok"))
                reason = str(info.get("reason", ""))
            metrics: dict[str, float] = {}
            if "shared" in msg.content.config_records:
                metrics.update({k: _scalar(v, k) for k, v
                                in msg.content.config_records["shared"].items()})
            plain = msg.content.metric_records.get("metrics")
            if plain is not None and SUM_KEY not in plain and "num-examples" in plain:
                metrics["num-examples"] = _scalar(plain["num-examples"], "num-examples")
            if "observed" in msg.content.config_records:  # a secure round: all it uploaded
                metrics["bytes_sent"] = _scalar(
                    msg.content.config_records["observed"]["bytes_sent"], "bytes_sent")
                metrics["secure_sum"] = 1.0
            else:  # what the node uploaded: its model arrays (serialised)
                metrics["bytes_sent"] = float(sum(
                    len(arr.data) for rec in msg.content.array_records.values()
                    for arr in rec.values()))
            out.append(NodeOutcome(nid, self.name(nid), status, reason, metrics=metrics))
        for nid in sampled:
            if nid not in replied:
                out.append(NodeOutcome(nid, self.name(nid), "missing", "no reply before timeout"))
        return out

    def name(self, node_id: int) -> str:
        return self.agency_of.get(node_id, f"node {node_id}")

    def to_json(self) -> list[dict[str, Any]]:
        def clean(d: dict[str, float]) -> dict[str, float | None]:
            return {k: (None if math.isnan(v) else v) for k, v in d.items()}

        rows = []
        for n in sorted(self.rounds):
            r = self.rounds[n]
            rows.append(
                {
                    "round": n,
                    "train": [
                        {"node_id": o.node_id, "agency": o.agency, "status": o.status,
                         "reason": o.reason, "metrics": clean(o.metrics)}
                        for o in r.train
                    ],
                    "evaluate": [
                        {"node_id": o.node_id, "agency": o.agency, "status": o.status,
                         "reason": o.reason, "metrics": clean(o.metrics)}
                        for o in r.evaluate
                    ],
                    "train_aggregate": clean(r.train_aggregate),
                    "evaluate_aggregate": clean(r.evaluate_aggregate),
                    "wall_seconds": None if math.isnan(r.wall_seconds) else r.wall_seconds,
                }
            )
        return rows


def _scalar(value: object, key: str) -> float:
    """A metric as a float; a list where a number belongs is a protocol error."""
    if isinstance(value, int | float):
        return float(value)
    raise FederationError(f"metric {key!r} arrived as {type(value).__name__}, not a number")


def _weights(records: list[RecordDict], key: str) -> list[tuple[MetricRecord, float]]:
    out = []
    for rec in records:
        metric = next(iter(rec.metric_records.values()))
        out.append((metric, _scalar(metric[key], key)))
    return out


def _secure(records: list[RecordDict]) -> MetricRecord | None:
    """A secure round's pooled result (every reply carries the same), or None."""
    if records and all(SUM_KEY in next(iter(r.metric_records.values())) for r in records):
        first = next(iter(records[0].metric_records.values()))
        return first
    return None


def _shared_values(records: list[RecordDict], key: str) -> list[float]:
    vals = []
    for rec in records:
        shared = rec.config_records.get("shared")
        if shared is not None and key in shared:
            vals.append(_scalar(shared[key], key))
    return vals


def aggregate_train_metrics(records: list[RecordDict], key: str) -> MetricRecord:
    """The round's training figures as the consortium may know them: in a secure round the
    pooled loss and example count from the secure sum; in a plain round the example count
    (visible) and, where agencies share them, the weighted loss. Epsilon only from agencies
    whose policy shares it (the largest such cumulative value)."""
    secure = _secure(records)
    eps = [v for v in _shared_values(records, "epsilon")]
    deltas = _shared_values(records, "delta")
    out: dict[str, float] = {
        "max_epsilon": max(eps) if eps else math.nan,
        "delta": max(deltas) if deltas else math.nan,
        "agencies": float(len(records)),
        "epsilon_shared_by": float(len(eps)),
    }
    if secure is not None:
        out.update(train_loss=_scalar(secure["train_loss"], "train_loss"),
                   examples=_scalar(secure["examples"], "examples"),
                   rows_set_aside=_scalar(secure["rows_set_aside"], "rows_set_aside"),
                   secure_sum=1.0)
        return MetricRecord(dict(out.items()))
    pairs = _weights(records, key)
    out["examples"] = sum(w for _, w in pairs)
    losses = [(v, w) for rec, (_, w) in zip(records, pairs, strict=True)
              for v in _shared_values([rec], "train_loss") if math.isfinite(v)]
    fw = sum(w for _, w in losses)
    out["train_loss"] = sum(v * w for v, w in losses) / fw if losses and fw else math.nan
    return MetricRecord(dict(out.items()))


def aggregate_evaluate_metrics(records: list[RecordDict], key: str) -> MetricRecord:
    """A secure round: the pooled metrics from the summed histograms, as they are. A plain
    round (only agencies that share their figures reach here): the example-weighted mean of
    each metric over the agencies where it is defined, plus the worst agency's ROC-AUC; an
    undefined metric is skipped, not zero-filled."""
    secure = _secure(records)
    if secure is not None:
        pooled = {k: _scalar(v, k) for k, v in secure.items() if k not in (key, SUM_KEY)}
        return MetricRecord(dict({**pooled, "secure_sum": 1.0}.items()))
    pairs = _weights(records, key)
    out: dict[str, float] = {}
    names = [k for k in pairs[0][0] if k != key] if pairs else []
    for name in names:
        vals = [(_scalar(m[name], name), w) for m, w in pairs]
        finite = [(v, w) for v, w in vals if math.isfinite(v)]
        wsum = sum(w for _, w in finite)
        out[name] = sum(v * w for v, w in finite) / wsum if finite and wsum else math.nan
    aucs = [v for m, _ in pairs if "roc_auc" in m
            and math.isfinite(v := _scalar(m["roc_auc"], "roc_auc"))]
    out["worst_roc_auc"] = min(aucs) if aucs else math.nan
    out["agencies_with_roc_auc"] = float(len(aucs))
    return MetricRecord(dict(out))


class _Accountable:
    """Mixin over a Flower strategy: per-node outcomes, quorum, progress lines."""

    run_log: RunLog
    quorum: int
    num_rounds: int
    max_norm_ratio: float = 0.0
    # Validation needs each agency's update in the clear; a secure-aggregation path, which
    # only ever holds masked values, turns it off.
    validate_updates: bool = True

    heads: HeadBook | None = None

    def _setup(self, run_log: RunLog, quorum: int, num_rounds: int,
               max_norm_ratio: float = 0.0, heads: HeadBook | None = None) -> None:
        self.heads = heads
        self.run_log = run_log
        self.quorum = quorum
        self.num_rounds = num_rounds
        self.max_norm_ratio = max_norm_ratio
        self._sampled: dict[tuple[int, str], list[int]] = {}
        self._sent: dict[int, dict[str, Any]] = {}  # the global model each round was sent

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.run_log.round(server_round).started = time.monotonic()
        if self.validate_updates:
            self._sent = {server_round: to_numpy(arrays)}  # only the round in flight
        msgs = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]  # mixin: Flower's strategy follows in the MRO
        self._sampled[(server_round, "train")] = [m.metadata.dst_node_id for m in msgs]
        return msgs

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        msgs = list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]  # mixin: Flower's strategy follows in the MRO
        self._sampled[(server_round, "evaluate")] = [m.metadata.dst_node_id for m in msgs]
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record = self.run_log.round(server_round)
        record.train = self.run_log.outcomes(self._sampled.get((server_round, "train"), []),
                                             replies)
        self._check_heads(replies, record.train)
        if self.validate_updates:
            self._validate(server_round, replies, record.train)
        ok = [o for o in record.train if o.status == "ok"]
        bad = [o for o in record.train if o.status != "ok"]
        for o in bad:
            log.warning("round %d: %s %s in training: %s", server_round, o.agency, o.status,
                        o.reason)
        if len(ok) < self.quorum:
            raise QuorumError(
                f"round {server_round}: {len(ok)} agencies trained successfully, below the "
                f"quorum of {self.quorum}. Failed or missing: "
                + "; ".join(f"{o.agency} ({o.status}: {o.reason})" for o in bad)
                + ". Fix those nodes or lower strategy.quorum."
            )
        ok_nodes = {o.node_id for o in ok}
        good = [m for m in replies if m.metadata.src_node_id in ok_nodes]
        arrays, metrics = super().aggregate_train(server_round, good)  # type: ignore[misc]  # mixin: Flower's strategy follows in the MRO
        selected = getattr(self, "selected_nodes", None)
        if selected is not None:  # Multi-Krum: which accepted updates entered the aggregate
            for o in ok:
                o.metrics["krum_selected"] = float(o.node_id in selected)
                if o.node_id not in selected:
                    log.warning("round %d: krum left out %s's update", server_round, o.agency)
        if metrics is not None:
            record.train_aggregate = {k: float(v) for k, v in metrics.items()}
        return arrays, metrics

    def _check_heads(self, replies: list[Message], outcomes: list[NodeOutcome]) -> None:
        """Reject a plain round's reply whose privacy-ledger head went backwards or does not
        extend the last one this consortium saw (secure rounds check it in server/secagg.py,
        before the agency trains); keep the book on disk after every round."""
        if self.heads is None:
            return
        by_node = {m.metadata.src_node_id: m for m in replies if not m.has_error()}
        for o in outcomes:
            m = by_node.get(o.node_id)
            if o.status != "ok" or m is None or "ledger" not in m.content.config_records:
                continue
            attestation = dict(m.content.config_records["ledger"])
            reason = self.heads.check(o.agency, attestation)
            if reason is None:
                self.heads.accept(o.agency, attestation, run=str(m.metadata.run_id))
            else:
                o.status, o.reason = "rejected", reason
        self.heads.save()

    def _validate(self, server_round: int, replies: list[Message],
                  outcomes: list[NodeOutcome]) -> None:
        """Mark as rejected every "ok" reply whose update fails validation."""
        reference = self._sent.get(server_round)
        if reference is None:
            return
        by_node = {m.metadata.src_node_id: m for m in replies if not m.has_error()}
        key = str(getattr(self, "weighted_by_key", "num-examples"))
        accepted: dict[int, dict[str, Any]] = {}
        for o in outcomes:
            if o.status != "ok" or o.node_id not in by_node:
                continue
            reason, arrays = check_update(reference, by_node[o.node_id].content, key)
            if reason is not None:
                o.status, o.reason = "rejected", f"update rejected: {reason}"
            elif arrays is not None:
                accepted[o.node_id] = arrays
        norms = {nid: update_norm(a, reference) for nid, a in accepted.items()}
        too_large = norm_rejections(norms, self.max_norm_ratio)
        for o in outcomes:
            if o.node_id in norms:
                o.metrics["update_norm"] = norms[o.node_id]
            if o.node_id in too_large:
                o.status, o.reason = "rejected", f"update rejected: {too_large[o.node_id]}"

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        record = self.run_log.round(server_round)
        record.evaluate = self.run_log.outcomes(
            self._sampled.get((server_round, "evaluate"), []), replies
        )
        for o in record.evaluate:
            if o.status != "ok":
                log.warning("round %d: %s %s in evaluation: %s", server_round, o.agency,
                            o.status, o.reason)
        ok_nodes = {o.node_id for o in record.evaluate if o.status == "ok"}
        good = [m for m in replies if m.metadata.src_node_id in ok_nodes]
        metrics = super().aggregate_evaluate(server_round, good)  # type: ignore[misc]  # mixin: Flower's strategy follows in the MRO
        if metrics is not None:
            record.evaluate_aggregate = {k: float(v) for k, v in metrics.items()}
        record.wall_seconds = time.monotonic() - record.started
        self._progress(record)
        return metrics  # type: ignore[no-any-return]  # Flower's return is untyped here

    def _progress(self, r: RoundRecord) -> None:
        t, e = r.train_aggregate, r.evaluate_aggregate
        ok = sum(o.status == "ok" for o in r.train)
        rejected = [o.agency for o in r.train if o.status == "rejected"]
        secure = bool(t.get("secure_sum")) or bool(e.get("secure_sum"))
        shared = int(t.get("epsilon_shared_by", 0) or 0)
        eps = (f"max epsilon {t.get('max_epsilon', math.nan):.3f} (delta "
               f"{t.get('delta', math.nan):.0e}, cumulative per advert record over all runs; "
               f"shared by {shared} of {ok} agencies)" if shared else
               "epsilon: kept by each agency (none shares it)")
        if e.get("secure_sum"):
            ev = (f"pooled eval ROC-AUC {e.get('roc_auc', math.nan):.3f}, PR-AUC "
                  f"{e.get('pr_auc', math.nan):.3f} (secure sum of "
                  f"{int(e.get('agencies_in_sum', 0))})")
        else:
            worst = min(
                (o for o in r.evaluate if o.status == "ok"
                 and math.isfinite(o.metrics.get("roc_auc", math.nan))),
                key=lambda o: o.metrics["roc_auc"], default=None,
            )
            ev = (f"eval ROC-AUC {e.get('roc_auc', math.nan):.3f} (worst "
                  f"{worst.agency if worst else '-'} "
                  f"{worst.metrics['roc_auc'] if worst else math.nan:.3f}), PR-AUC "
                  f"{e.get('pr_auc', math.nan):.3f}" if e else "eval: no agency shares figures")
        log.info(
            "round %d/%d: %d/%d agencies trained%s%s, train loss %.4f, %s | %s",
            r.round, self.num_rounds, ok, len(r.train),
            " (secure sum)" if secure else "",
            f" ({len(rejected)} rejected: {', '.join(rejected)})" if rejected else "",
            t.get("train_loss", math.nan), eps, ev,
        )


class _RobustAggregation(FedAvg):
    """FedAvg whose array aggregate is ``strategy.aggregation`` (server/robust.py).

    It sits right above FedAvg in the method resolution order, so FedProx and FedAdam call
    it where they would call FedAvg: FedAdam's server optimiser then steps from the robust
    aggregate instead of the weighted mean."""

    aggregation: str = "mean"
    trim_fraction: float = 0.2
    krum_byzantine: int = 1
    selected_nodes: set[int] | None = None  # Multi-Krum's choice in the last round

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.selected_nodes = None
        if self.aggregation == "mean":
            return super().aggregate_train(server_round, replies)
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        models = [to_numpy(next(iter(c.array_records.values()))) for c in contents]
        weights = [_scalar(next(iter(c.metric_records.values()))[self.weighted_by_key],
                           self.weighted_by_key) for c in contents]
        result = robust_aggregate(models, weights, self.aggregation,
                                  trim_fraction=self.trim_fraction,
                                  krum_byzantine=self.krum_byzantine)
        if self.aggregation == "krum":
            self.selected_nodes = {valid[i].metadata.src_node_id for i in result.selected}
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return to_record(result.arrays), metrics


class AccountableFedAvg(_Accountable, _RobustAggregation):
    pass


class AccountableFedProx(_Accountable, FedProx, _RobustAggregation):
    pass


class AccountableFedAdam(_Accountable, FedAdam, _RobustAggregation):
    pass


def build_strategy(settings: RunSettings, run_log: RunLog, heads: HeadBook | None = None
                   ) -> FedAvg:
    s = settings.strategy
    common: dict[str, Any] = {
        "fraction_train": s.fraction_train,
        "fraction_evaluate": s.fraction_evaluate,
        "min_train_nodes": s.min_nodes,
        "min_evaluate_nodes": s.min_nodes,
        "min_available_nodes": max(s.min_nodes, s.min_available),
        "train_metrics_aggr_fn": aggregate_train_metrics,
        "evaluate_metrics_aggr_fn": aggregate_evaluate_metrics,
    }
    strategy: FedAvg
    if s.name == "fedprox":
        strategy = AccountableFedProx(proximal_mu=s.proximal_mu, **common)
    elif s.name == "fedadam":
        strategy = AccountableFedAdam(eta=s.server_learning_rate, **common)
    else:
        strategy = AccountableFedAvg(**common)
    assert isinstance(strategy, _Accountable) and isinstance(strategy, _RobustAggregation)
    strategy._setup(run_log, s.quorum, s.num_rounds, s.max_norm_ratio, heads)
    strategy.aggregation = s.aggregation
    strategy.trim_fraction = s.trim_fraction
    strategy.krum_byzantine = s.krum_byzantine
    return strategy
