"""The agency node's ClientApp: validate local data, train with DP-SGD, evaluate locally.

What leaves the node per message: model arrays (train only) and aggregate numbers
(example count, loss, cumulative epsilon with its delta, the noise parameters, counts of
rows set aside) plus the agency's public name. Never rows, texts, ids or labels.

Cross-round state lives in ``context.state`` (this run's noise plan and accountant history);
the epsilon a node reports is its dataset's cumulative value from the privacy ledger, over
every round of every run.

Errors leave the node too (Flower returns them to the aggregator), so only heroes-fl's own
errors, which name files, rows and rules but never content, are passed on as they are; any
other exception is replaced by its type name, with the details kept in the node's own log.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, cast

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from clients import receipts, secagg
from clients.node import NodeData, load_node_data, resolve_data_dir
from federation import secagg as secagg_math
from federation.config import RunSettings
from federation.data import read_manifest
from federation.errors import FederationError, HeroesError, PrivacyConfigError
from federation.ledger import (
    BudgetExceeded,
    Ledger,
    Policy,
    Release,
    calibrate_to_budget,
    load_policy,
)
from federation.privacy import HistoryEntry, NoisePlan, plan_noise
from federation.training import evaluate as evaluate_model
from federation.training import train_local

log = logging.getLogger("heroes.client")

app = ClientApp()

Handler = Callable[[Message, Context], Message]


class NodeFailure(HeroesError):
    """A node failed for a reason whose details stay at the node."""


def contained(fn: Handler) -> Handler:
    """Pass heroes-fl errors on; replace any other exception by a content-free one."""

    @functools.wraps(fn)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            reply = fn(msg, context)
            receipts.record_outgoing(msg, context, reply, fn.__name__)  # no key: not sent
            return reply
        except HeroesError as exc:
            receipts.record_error(msg, context, fn.__name__, exc)  # best effort, never raises
            raise
        except Exception as exc:
            log.exception("%s failed at this node", fn.__name__)  # stays at the agency
            failure = NodeFailure(
                f"{fn.__name__} failed at the node with {type(exc).__name__}; the details "
                "are in the node's own log and were not sent"
            )
            receipts.record_error(msg, context, fn.__name__, failure)
            raise failure from None

    return wrapper

ACCOUNTANT_STATE = "dp-accountant"


def _load_history(context: Context) -> list[HistoryEntry]:
    if ACCOUNTANT_STATE not in context.state:
        return []
    rec = context.state.config_records[ACCOUNTANT_STATE]
    sigmas = cast(list[float], rec["noise_multipliers"])
    rates = cast(list[float], rec["sample_rates"])
    steps = cast(list[int], rec["steps"])
    return [(float(s), float(q), int(n)) for s, q, n in zip(sigmas, rates, steps, strict=True)]


def _save_history(context: Context, history: list[HistoryEntry]) -> None:
    context.state[ACCOUNTANT_STATE] = ConfigRecord(
        {
            "noise_multipliers": [float(s) for s, _, _ in history],
            "sample_rates": [float(q) for _, q, _ in history],
            "steps": [int(n) for _, _, n in history],
        }
    )


PLAN_STATE = "dp-plan"


def _run_plan(settings: RunSettings, node: NodeData, context: Context, ledger: Ledger,
              policy: Policy) -> NoisePlan:
    """The run's noise plan: made once, at the node's first round, then kept in
    ``context.state`` so every round of the run uses the same mechanism."""
    if PLAN_STATE in context.state:
        rec = context.state.config_records[PLAN_STATE]
        return NoisePlan(**cast(dict[str, Any], dict(rec)))
    p = settings.privacy
    assert p.target_epsilon is not None and p.target_delta is not None
    plan = plan_noise(
        num_records=node.train_size,
        batch_size=settings.train.batch_size,
        local_epochs=settings.train.local_epochs,
        planned_rounds=settings.strategy.num_rounds,
        target_epsilon=p.target_epsilon,
        target_delta=p.target_delta,
        accountant=p.accountant,
        where=f"agency {node.agency}",
    )
    plan = calibrate_to_budget(plan, ledger.history(node.dataset), policy)
    context.state[PLAN_STATE] = ConfigRecord(asdict(plan))
    if plan.budget_limited:
        log.warning("agency %s: noise raised to %.3f to fit the remaining privacy budget",
                    node.agency, plan.noise_multiplier)
    return plan


def _reply(msg: Message, node: NodeData, metrics: dict[str, float], arrays: ArrayRecord | None,
           *, status: str = "ok", reason: str = "") -> Message:
    content = RecordDict({
        "metrics": MetricRecord(dict(metrics)),
        "agency": ConfigRecord({"agency": node.agency, "status": status, "reason": reason}),
    })
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


def _refuse(msg: Message, node: NodeData, exc: BudgetExceeded) -> Message:
    """A clean refusal the server understands: no arrays, the reason, the numbers."""
    log.warning("agency %s refuses to train: %s", node.agency, exc)
    metrics = {"num-examples": 0.0, "dataset_epsilon": exc.spent, "budget": exc.budget,
               "epsilon_if_trained": exc.after}
    return _reply(msg, node, metrics, None, status="refused", reason=str(exc))


@app.train()
@contained
def train(msg: Message, context: Context) -> Message:
    return train_core(msg, context)


def train_core(msg: Message, context: Context) -> Message:
    """Local DP-SGD on the message's arrays; the reply carries the trained arrays (or a
    clean refusal). Shared by plain rounds and secure-aggregation rounds."""
    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    node = load_node_data(context.node_config, settings, split="train")
    torch.set_num_threads(1)
    model = node.task.build_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    config = msg.content["config"]
    mu = float(cast(float, config["proximal-mu"])) if "proximal-mu" in config else 0.0
    server_round = int(cast(int, config.get("server-round", 0)))
    policy = load_policy(node.state_dir)
    if not settings.privacy.enabled:
        if not policy.allow_non_private:
            raise PrivacyConfigError(
                [f"the run has privacy.enabled=false but agency {node.agency}'s policy does "
                 "not allow non-private training (allow_non_private = false)"],
                source="agency privacy policy",
            )
        result = train_local(model, node.features, node.labels, train=settings.train,
                             privacy=settings.privacy, plan=None, proximal_mu=mu)
        plain = {"num-examples": result.num_examples, "train_loss": result.train_loss,
                   "epsilon": math.inf, "run_epsilon": math.inf, "delta": 0.0,
                   "noise_multiplier": 0.0, "sample_rate": 0.0, "steps": result.steps,
                   "budget_remaining": math.nan, "rows_set_aside": node.rows_set_aside}
        return _reply(msg, node, plain, ArrayRecord(model.state_dict()))
    with Ledger.open(node.state_dir) as ledger:
        try:
            plan = _run_plan(settings, node, context, ledger, policy)
        except BudgetExceeded as exc:
            return _refuse(msg, node, exc)
        history = _load_history(context)
        planned = plan.steps_per_round * plan.planned_rounds
        if sum(n for _, _, n in history) + plan.steps_per_round > planned:
            return _refuse(msg, node, BudgetExceeded(
                f"all {plan.planned_rounds} planned rounds of this run are spent; another "
                "would exceed the run's privacy.target_epsilon", spent=plan.planned_epsilon,
                after=math.inf, budget=plan.target_epsilon))
        release = Release(
            dataset=node.dataset, fingerprint=node.fingerprint, run_id=str(context.run_id),
            round=server_round, task=settings.task_name, model=node.model_name,
            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
            steps=plan.steps_per_round, max_grad_norm=settings.privacy.max_grad_norm,
            delta=policy.delta, accountant=policy.accountant,
        )
        try:
            seq, dataset_epsilon = ledger.reserve(release, policy)  # write-ahead
        except BudgetExceeded as exc:
            return _refuse(msg, node, exc)
        result = train_local(model, node.features, node.labels, train=settings.train,
                             privacy=settings.privacy, plan=plan, history=history,
                             proximal_mu=mu)
        _save_history(context, result.history)
        ledger.complete(seq)
    metrics: dict[str, float] = {
        "num-examples": result.num_examples,
        "train_loss": result.train_loss,
        # Cumulative over every round of every run on this dataset (the ledger).
        "epsilon": dataset_epsilon,
        "delta": policy.delta,
        # This run alone, at the run's delta.
        "run_epsilon": result.epsilon,
        "run_delta": plan.target_delta,
        "budget_remaining": max(0.0, policy.max_epsilon - dataset_epsilon),
        "noise_multiplier": result.noise_multiplier,
        "sample_rate": plan.sample_rate,
        "steps": result.steps,
        "rows_set_aside": node.rows_set_aside,
    }
    log.info("agency %s trained round %d: %s", node.agency, server_round, metrics)
    return _reply(msg, node, metrics, ArrayRecord(model.state_dict()))


@app.evaluate()
@contained
def evaluate(msg: Message, context: Context) -> Message:
    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    node = load_node_data(context.node_config, settings, split="test")
    torch.set_num_threads(1)
    model = node.task.build_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    scores = evaluate_model(model, node.features, node.labels, k=settings.eval.k)
    metrics = {"num-examples": float(len(node.labels)), **scores}
    return _reply(msg, node, metrics, None)



# --- secure aggregation (SecAgg+): the node's four stages, see clients/secagg.py -------------

SECAGG_STATE = "secagg"


def _agency_name(context: Context, settings: RunSettings) -> str:
    return str(read_manifest(resolve_data_dir(context.node_config, settings))["agency"])


def _secagg_reply(msg: Message, agency: str, values: dict[str, Any]) -> Message:
    return Message(content=RecordDict({
        SECAGG_STATE: ConfigRecord(values),
        "agency": ConfigRecord({"agency": agency, "status": "ok", "reason": ""}),
    }), reply_to=msg)


def _secagg_cfg(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records[SECAGG_STATE])


def _secagg_node(context: Context) -> secagg.NodeSecAgg:
    if SECAGG_STATE not in context.state:
        raise FederationError("secure aggregation: a stage arrived before set-up")
    return secagg.load_state(dict(context.state.config_records[SECAGG_STATE]))


def _secagg_save(context: Context, node: secagg.NodeSecAgg) -> None:
    context.state[SECAGG_STATE] = ConfigRecord(secagg.dump_state(node))


@app.train("secagg_setup")
@contained
def secagg_setup(msg: Message, context: Context) -> Message:
    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    data = load_node_data(context.node_config, settings, split="train")  # validates first
    node = secagg.NodeSecAgg(int(context.node_id))
    values = node.setup(_secagg_cfg(msg))
    values["num_examples"] = float(data.train_size)
    _secagg_save(context, node)
    return _secagg_reply(msg, data.agency, values)


@app.train("secagg_share")
@contained
def secagg_share(msg: Message, context: Context) -> Message:
    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    node = _secagg_node(context)
    values = node.share(_secagg_cfg(msg))
    _secagg_save(context, node)
    return _secagg_reply(msg, _agency_name(context, settings), values)


@app.train("secagg_masked")
@contained
def secagg_masked(msg: Message, context: Context) -> Message:
    node = _secagg_node(context)
    cfg = _secagg_cfg(msg)
    global_flat, _ = secagg_math.flatten(msg.content.array_records["arrays"])
    replies: list[Message] = []

    def trained() -> Any:
        reply = train_core(msg, context)
        replies.append(reply)
        if "arrays" not in reply.content.array_records:
            return None  # refused: this node drops out of the round's sum
        return secagg_math.flatten(reply.content.array_records["arrays"])[0]

    result = secagg.masked_reply(node, cfg, global_flat, trained)
    _secagg_save(context, node)
    reply = replies[0]
    if result is None:
        return reply
    packed, clipped = result
    metrics = MetricRecord(dict(reply.content.metric_records["metrics"]))
    metrics["secagg_clipped"] = float(clipped)
    return Message(content=RecordDict({
        "metrics": metrics,
        "agency": reply.content.config_records["agency"],
        SECAGG_STATE: ArrayRecord({"masked": Array(np.frombuffer(packed, dtype=np.uint8))}),
    }), reply_to=msg)


@app.train("secagg_unmask")
@contained
def secagg_unmask(msg: Message, context: Context) -> Message:
    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    node = _secagg_node(context)
    values = node.unmask(_secagg_cfg(msg))
    _secagg_save(context, node)
    return _secagg_reply(msg, _agency_name(context, settings), values)
