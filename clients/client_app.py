"""The agency node's ClientApp: validate local data, train with DP-SGD, evaluate locally.

What leaves the node per message: model arrays (train only) and aggregate numbers
(example count, loss, cumulative epsilon with its delta, the noise parameters, counts of
rows set aside) plus the agency's public name. Never rows, texts, ids or labels.

Cross-round state lives in ``context.state``: the DP accountant history of this run, so
each round's epsilon is the run's cumulative epsilon.
"""

from __future__ import annotations

import logging
from typing import cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.node import NodeData, load_node_data
from federation.config import RunSettings
from federation.errors import PrivacyConfigError
from federation.privacy import HistoryEntry, NoisePlan, plan_noise
from federation.training import evaluate as evaluate_model
from federation.training import train_local

log = logging.getLogger("heroes.client")

app = ClientApp()

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


def _plan(settings: RunSettings, node: NodeData) -> NoisePlan | None:
    p = settings.privacy
    if not p.enabled:
        return None
    assert p.target_epsilon is not None and p.target_delta is not None
    return plan_noise(
        num_records=node.train_size,
        batch_size=settings.train.batch_size,
        local_epochs=settings.train.local_epochs,
        planned_rounds=settings.strategy.num_rounds,
        target_epsilon=p.target_epsilon,
        target_delta=p.target_delta,
        accountant=p.accountant,
        where=f"agency {node.agency}",
    )


def _reply(msg: Message, node: NodeData, metrics: dict[str, float], arrays: ArrayRecord | None
           ) -> Message:
    content = RecordDict({"metrics": MetricRecord(dict(metrics)),
                          "agency": ConfigRecord(
        {"agency": node.agency})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    node = load_node_data(context.node_config, settings, split="train")
    torch.set_num_threads(1)
    model = node.task.build_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    plan = _plan(settings, node)
    history = _load_history(context)
    if plan is not None:
        spent = sum(n for _, _, n in history)
        planned = plan.steps_per_round * plan.planned_rounds
        if spent + plan.steps_per_round > planned:
            raise PrivacyConfigError(
                [
                    f"agency {node.agency} has taken {spent} of {planned} planned DP steps; "
                    "another round would exceed privacy.target_epsilon="
                    f"{plan.target_epsilon} at delta={plan.target_delta}. Start a new run "
                    "with a budget planned for all its rounds"
                ],
                source="privacy budget",
            )
    config = msg.content["config"]
    mu = float(config["proximal-mu"]) if "proximal-mu" in config else 0.0  # type: ignore[arg-type]
    result = train_local(
        model,
        node.features,
        node.labels,
        train=settings.train,
        privacy=settings.privacy,
        plan=plan,
        history=history,
        proximal_mu=mu,
    )
    if plan is not None:
        _save_history(context, result.history)
    metrics: dict[str, float] = {
        "num-examples": result.num_examples,
        "train_loss": result.train_loss,
        "epsilon": result.epsilon,
        "delta": plan.target_delta if plan else 0.0,
        "noise_multiplier": result.noise_multiplier,
        "sample_rate": plan.sample_rate if plan else 0.0,
        "steps": result.steps,
        "rows_set_aside": node.rows_set_aside,
    }
    log.info("agency %s trained: %s", node.agency, metrics)
    return _reply(msg, node, metrics, ArrayRecord(model.state_dict()))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    node = load_node_data(context.node_config, settings, split="test")
    torch.set_num_threads(1)
    model = node.task.build_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    scores = evaluate_model(model, node.features, node.labels, k=settings.eval.k)
    metrics = {"num-examples": float(len(node.labels)), **scores}
    return _reply(msg, node, metrics, None)

