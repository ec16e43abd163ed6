"""Flower strategies that name every agency's outcome and enforce a quorum.

Each round records, per sampled node: the agency's name (as it reported it), whether it
replied, the error if it failed, and its numbers (server/run_log.py). A node that was
sampled but did not reply is counted as missing. A training reply that fails update
validation (server/robust.py: shape, dtype, finite values, norm bound) is counted as
rejected, with the reason, and left out of the aggregate. Below ``strategy.quorum``
successful training replies the round fails with QuorumError instead of averaging a handful
of updates.

Composition, as Flower's own DP and secure-aggregation wrappers do it: Flower's FedAvg,
FedProx or FedAdam (``base``) sits inside ``RobustAggregation`` (``strategy.aggregation``:
the weighted mean, or a robust one from server/robust.py), which sits inside
``AccountableStrategy`` (outcomes, validation, quorum, progress lines). Each is whole when
its ``__init__`` returns; nothing is set on it afterwards.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, Strategy

from federation.config import RunSettings
from federation.errors import QuorumError
from federation.protocol import SUM_KEY, Metric, NodeOutcome, Record, RoundRecord, Status
from federation.tasks import get_task
from server.robust import (
    check_update,
    norm_rejections,
    robust_aggregate,
    to_numpy,
    to_record,
    update_norm,
)
from server.round_metrics import aggregate_evaluate_metrics, aggregate_train_metrics
from server.run_log import RunLog, scalar

if TYPE_CHECKING:
    from server.ledger_heads import HeadBook

__all__ = ["SUM_KEY", "AccountableStrategy", "NodeOutcome", "RobustAggregation",
           "RoundRecord", "RunLog", "aggregate_evaluate_metrics", "aggregate_train_metrics",
           "build_strategy"]

log = logging.getLogger("heroes.server")


class RobustAggregation(Strategy):
    """``base`` with its array aggregate replaced by ``aggregation`` (server/robust.py).

    The base strategy still does its own step: before it aggregates, every accepted reply's
    arrays are swapped for the robust aggregate, so its weighted mean is that aggregate and
    FedAdam's server optimiser steps from it instead of from the mean. The replies' metric
    records are untouched, so the round's figures are the base strategy's as before."""

    def __init__(self, base: FedAvg, *, aggregation: str = "mean", trim_fraction: float = 0.2,
                 krum_byzantine: int = 1) -> None:
        self.base = base
        self.aggregation = aggregation
        self.trim_fraction = trim_fraction
        self.krum_byzantine = krum_byzantine
        self.selected_nodes: set[int] | None = None  # Multi-Krum's choice in the last round

    @property
    def weighted_by_key(self) -> str:
        return self.base.weighted_by_key

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.base.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.base.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.base.aggregate_evaluate(server_round, replies)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.selected_nodes = None
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        if self.aggregation == "mean" or not valid:
            return self.base.aggregate_train(server_round, replies)
        key = self.weighted_by_key
        models = [to_numpy(next(iter(m.content.array_records.values()))) for m in valid]
        weights = [scalar(next(iter(m.content.metric_records.values()))[key], key)
                   for m in valid]
        result = robust_aggregate(models, weights, self.aggregation,
                                  trim_fraction=self.trim_fraction,
                                  krum_byzantine=self.krum_byzantine)
        if self.aggregation == "krum":
            self.selected_nodes = {valid[i].metadata.src_node_id for i in result.selected}
        return self.base.aggregate_train(server_round, [_with_arrays(m, result.arrays)
                                                        for m in valid])

    def summary(self) -> None:
        self.base.summary()


def _with_arrays(msg: Message, arrays: dict[str, Any]) -> Message:
    """The same reply (metadata, metric and config records) carrying ``arrays`` instead."""
    content = RecordDict()
    for name, record in msg.content.items():
        content[name] = to_record(arrays) if isinstance(record, ArrayRecord) else record
    # Flower's constructor takes the metadata of a reply that already exists (how its own
    # tests and our tests build replies); its type stubs list only the public overloads.
    return cast(Message, Message(content, metadata=msg.metadata))  # type: ignore[call-overload]


def await_nodes(node_ids: Callable[[], Iterable[int]], needed: int, *,
                poll_s: float = 1.0) -> int:
    """Wait until ``needed`` nodes are connected; return how many are.

    Flower's FedAvg sizes its sample from the nodes connected *before* it waits for
    ``min_available_nodes`` (flwr/serverapp/strategy/fedavg.py, ``configure_train``): while
    the nodes of a simulation are still registering, a round of three agencies could be
    sampled as two, and a secure session of two is below every agency's ``min_agencies``.
    Waiting here first makes the sample whole. Unbounded, as Flower's own wait is: a
    deployment waits for its agencies to come online."""
    waited = False
    while (connected := len(list(node_ids()))) < needed:
        if not waited:
            log.info("waiting for agencies to connect: %d of %d", connected, needed)
            waited = True
        time.sleep(poll_s)
    return connected


@dataclass(frozen=True)
class Accounting:
    """What the accountable wrapper enforces, from ``strategy.*`` in the run settings."""

    quorum: int
    num_rounds: int
    max_norm_ratio: float = 0.0
    # Nodes connected before a round is sampled (``max(min_nodes, min_available)``).
    min_available: int = 0
    # Validation needs each agency's update in the clear; a secure-aggregation path, which
    # only ever holds masked values, turns it off.
    validate_updates: bool = True
    # The run's unit of privacy (its task's), named next to any shared epsilon.
    unit: str = "one record in one agency's training export"


class AccountableStrategy(Strategy):
    """Per-node outcomes, ledger-head checks, update validation, quorum and progress lines
    around ``inner``."""

    def __init__(self, inner: RobustAggregation, run_log: RunLog, accounting: Accounting,
                 heads: HeadBook | None = None) -> None:
        self.inner = inner
        self.run_log = run_log
        self.accounting = accounting
        self.heads = heads
        self._sampled: dict[tuple[int, str], list[int]] = {}
        self._sent: dict[int, dict[str, Any]] = {}  # the global model each round was sent

    @property
    def base(self) -> FedAvg:
        """Flower's strategy at the core (its optimiser state lives there: checkpoints)."""
        return self.inner.base

    def begin_round(self, server_round: int, kind: str, nodes: list[int],
                    arrays: ArrayRecord | None = None) -> None:
        """Record which nodes a round trip went to and, for training, the model they were
        sent (the reference for validation). configure_* call it; so can a test that hands
        the strategy replies without a grid."""
        self._sampled[(server_round, kind)] = list(nodes)
        if kind == "train":
            self.run_log.start(server_round)
            if arrays is not None and self.accounting.validate_updates:
                self._sent = {server_round: to_numpy(arrays)}  # only the round in flight

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        await_nodes(grid.get_node_ids, self.accounting.min_available)
        msgs = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.begin_round(server_round, "train", [m.metadata.dst_node_id for m in msgs], arrays)
        return msgs

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        await_nodes(grid.get_node_ids, self.accounting.min_available)
        msgs = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        self.begin_round(server_round, "evaluate", [m.metadata.dst_node_id for m in msgs])
        return msgs

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record = self.run_log.round(server_round)
        record.train = self.run_log.outcomes(self._sampled.get((server_round, "train"), []),
                                             replies)
        self._check_heads(replies, record.train)
        if self.accounting.validate_updates:
            self._validate(server_round, replies, record.train)
        ok = self._quorum(server_round, record.train)
        ok_nodes = {o.node_id for o in ok}
        good = [m for m in replies if m.metadata.src_node_id in ok_nodes]
        arrays, metrics = self.inner.aggregate_train(server_round, good)
        selected = self.inner.selected_nodes
        if selected is not None:  # Multi-Krum: which accepted updates entered the aggregate
            for o in ok:
                o.metrics[Metric.KRUM_SELECTED] = float(o.node_id in selected)
                if o.node_id not in selected:
                    log.warning("round %d: krum left out %s's update", server_round, o.agency)
        if metrics is not None:
            record.train_aggregate = {k: scalar(v, k) for k, v in metrics.items()}
        return arrays, metrics

    def _quorum(self, server_round: int, outcomes: list[NodeOutcome]) -> list[NodeOutcome]:
        """The successful training outcomes, or QuorumError naming every other one."""
        ok = [o for o in outcomes if o.status is Status.OK]
        bad = [o for o in outcomes if o.status is not Status.OK]
        for o in bad:
            log.warning("round %d: %s %s in training: %s", server_round, o.agency, o.status,
                        o.reason)
        if len(ok) < self.accounting.quorum:
            raise QuorumError(
                f"round {server_round}: {len(ok)} agencies trained successfully, below the "
                f"quorum of {self.accounting.quorum}. Failed or missing: "
                + "; ".join(f"{o.agency} ({o.status}: {o.reason})" for o in bad)
                + ". Fix those nodes or lower strategy.quorum."
            )
        return ok

    def _check_heads(self, replies: list[Message], outcomes: list[NodeOutcome]) -> None:
        """Reject a plain round's reply whose privacy-ledger head went backwards or does not
        extend the last one this consortium saw (secure rounds check it in server/secagg.py,
        before the agency trains); keep the book on disk after every round."""
        if self.heads is None:
            return
        by_node = {m.metadata.src_node_id: m for m in replies if not m.has_error()}
        for o in outcomes:
            m = by_node.get(o.node_id)
            if o.status is not Status.OK or m is None or Record.LEDGER not in \
                    m.content.config_records:
                continue
            attestation = dict(m.content.config_records[Record.LEDGER])
            reason = self.heads.check(o.agency, attestation)
            if reason is None:
                self.heads.accept(o.agency, attestation, run=str(m.metadata.run_id))
            else:
                o.status, o.reason = Status.REJECTED, reason
        self.heads.save()

    def _validate(self, server_round: int, replies: list[Message],
                  outcomes: list[NodeOutcome]) -> None:
        """Mark as rejected every "ok" reply whose update fails validation."""
        reference = self._sent.get(server_round)
        if reference is None:
            return
        by_node = {m.metadata.src_node_id: m for m in replies if not m.has_error()}
        accepted: dict[int, dict[str, Any]] = {}
        for o in outcomes:
            if o.status is not Status.OK or o.node_id not in by_node:
                continue
            reason, arrays = check_update(reference, by_node[o.node_id].content,
                                          self.inner.weighted_by_key)
            if reason is not None:
                o.status, o.reason = Status.REJECTED, f"update rejected: {reason}"
            elif arrays is not None:
                accepted[o.node_id] = arrays
        norms = {nid: update_norm(a, reference) for nid, a in accepted.items()}
        too_large = norm_rejections(norms, self.accounting.max_norm_ratio)
        for o in outcomes:
            if o.node_id in norms:
                o.metrics[Metric.UPDATE_NORM] = norms[o.node_id]
            if o.node_id in too_large:
                o.status, o.reason = Status.REJECTED, f"update rejected: {too_large[o.node_id]}"

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        replies = list(replies)
        record = self.run_log.round(server_round)
        record.evaluate = self.run_log.outcomes(
            self._sampled.get((server_round, "evaluate"), []), replies
        )
        for o in record.evaluate:
            if o.status is not Status.OK:
                log.warning("round %d: %s %s in evaluation: %s", server_round, o.agency,
                            o.status, o.reason)
        ok_nodes = {o.node_id for o in record.evaluate if o.status is Status.OK}
        good = [m for m in replies if m.metadata.src_node_id in ok_nodes]
        metrics = self.inner.aggregate_evaluate(server_round, good)
        if metrics is not None:
            record.evaluate_aggregate = {k: scalar(v, k) for k, v in metrics.items()}
        self.run_log.finish(server_round)
        self.progress(record)
        return metrics

    def summary(self) -> None:
        self.inner.summary()

    def progress(self, r: RoundRecord) -> None:
        """The round's line in the aggregator's log."""
        log.info("%s", progress_line(r, self.accounting.num_rounds, self.accounting.unit))


def _eval_line(r: RoundRecord) -> str:
    e = r.evaluate_aggregate
    if e.get(Metric.SECURE_SUM):
        return (f"pooled eval ROC-AUC {e.get(Metric.ROC_AUC, math.nan):.3f}, PR-AUC "
                f"{e.get(Metric.PR_AUC, math.nan):.3f} (secure sum of "
                f"{int(e.get(Metric.AGENCIES_IN_SUM, 0))})")
    if not e:
        return "eval: no agency shares figures"
    worst = min((o for o in r.evaluate if o.status is Status.OK
                 and math.isfinite(o.metrics.get(Metric.ROC_AUC, math.nan))),
                key=lambda o: o.metrics[Metric.ROC_AUC], default=None)
    return (f"eval ROC-AUC {e.get(Metric.ROC_AUC, math.nan):.3f} (worst "
            f"{worst.agency if worst else '-'} "
            f"{worst.metrics[Metric.ROC_AUC] if worst else math.nan:.3f}), PR-AUC "
            f"{e.get(Metric.PR_AUC, math.nan):.3f}")


def progress_line(r: RoundRecord, num_rounds: int,
                  unit: str = "one record in one agency's training export") -> str:
    """One round in a line: who trained, who was rejected, loss, epsilon, evaluation. The
    aggregates are Flower's metric records of this round: a figure no agency shares is
    absent, and reads as n/a (nan) here."""
    t = r.train_aggregate
    ok = sum(o.status is Status.OK for o in r.train)
    rejected = [o.agency for o in r.train if o.status is Status.REJECTED]
    secure = bool(t.get(Metric.SECURE_SUM)) or bool(r.evaluate_aggregate.get(Metric.SECURE_SUM))
    shared = int(t.get(Metric.EPSILON_SHARED_BY, 0) or 0)
    eps = (f"max epsilon {t.get(Metric.MAX_EPSILON, math.nan):.3f} (delta "
           f"{t.get(Metric.DELTA, math.nan):.0e}, cumulative per {unit.removeprefix('one ')} "
           "over all runs; "
           f"shared by {shared} of {ok} agencies)" if shared else
           "epsilon: kept by each agency (none shares it)")
    left_out = f" ({len(rejected)} rejected: {', '.join(rejected)})" if rejected else ""
    return (f"round {r.round}/{num_rounds}: {ok}/{len(r.train)} agencies trained"
            f"{' (secure sum)' if secure else ''}{left_out}, train loss "
            f"{t.get(Metric.TRAIN_LOSS, math.nan):.4f}, {eps} | {_eval_line(r)}")


def _base(settings: RunSettings) -> FedAvg:
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
    if s.name == "fedprox":
        return FedProx(proximal_mu=s.proximal_mu, **common)
    if s.name == "fedadam":
        return FedAdam(eta=s.server_learning_rate, **common)
    if s.name == "fedavgm":
        return FedAvgM(server_learning_rate=s.server_learning_rate,
                       server_momentum=s.server_momentum, **common)
    return FedAvg(**common)


def build_strategy(settings: RunSettings, run_log: RunLog, heads: HeadBook | None = None
                   ) -> AccountableStrategy:
    s = settings.strategy
    inner = RobustAggregation(_base(settings), aggregation=s.aggregation,
                              trim_fraction=s.trim_fraction, krum_byzantine=s.krum_byzantine)
    return AccountableStrategy(inner, run_log, Accounting(
        quorum=s.quorum, num_rounds=s.num_rounds, max_norm_ratio=s.max_norm_ratio,
        min_available=max(s.min_nodes, s.min_available),
        unit=get_task(settings.task_name, settings.task_params).privacy_unit), heads)
