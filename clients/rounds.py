"""The node's round logic, Flower-light: the noise plan and accountant history kept in
``context.state``, the write-ahead privacy ledger, a clean refusal when the budget or the
policy says no, local DP-SGD, local evaluation, and the agency's own record of each.

The ClientApp handlers (clients/client_app.py) only call these; the mods around them
(clients/mods.py) contain errors and sign receipts. torch, Opacus and the task models take
seconds to import, and a deployed node starts a process per message: they are imported only
by the steps that train or evaluate, so the stages that only sign, share or reveal start in
a fraction of that.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message

from clients import local_metrics, replies
from clients.mods import keep_figures
from clients.node import (
    NodeData,
    export_agency,
    load_node_data,
    resolve_data_dir,
    resolve_state_dir,
)
from federation import metrics as fm
from federation.config import NodeView, RunSettings
from federation.errors import FederationError, PrivacyConfigError
from federation.ledger import BudgetExceeded, Ledger, Release, calibrate_to_budget
from federation.policy import Policy, load_policy
from federation.protocol import PROXIMAL_MU, Metric, Record, Status

if TYPE_CHECKING:
    import torch

    from federation.privacy import HistoryEntry, NoisePlan

log = logging.getLogger("heroes.client")


def train_local(*args: Any, **kwargs: Any) -> Any:
    """federation.training.train_local (the audit's test-only broken mode swaps this name)."""
    from federation.training import train_local as run

    return run(*args, **kwargs)


# This run's accountant history and noise plan at the node, in ``context.state``.
ACCOUNTANT_STATE = "dp-accountant"
PLAN_STATE = "dp-plan"


def load_history(context: Context) -> list[HistoryEntry]:
    if ACCOUNTANT_STATE not in context.state:
        return []
    rec = context.state.config_records[ACCOUNTANT_STATE]
    sigmas = cast(list[float], rec["noise_multipliers"])
    rates = cast(list[float], rec["sample_rates"])
    steps = cast(list[int], rec["steps"])
    return [(float(s), float(q), int(n)) for s, q, n in zip(sigmas, rates, steps, strict=True)]


def save_history(context: Context, history: list[HistoryEntry]) -> None:
    context.state[ACCOUNTANT_STATE] = ConfigRecord(
        {
            "noise_multipliers": [float(s) for s, _, _ in history],
            "sample_rates": [float(q) for _, q, _ in history],
            "steps": [int(n) for _, _, n in history],
        }
    )


def run_plan(settings: RunSettings, node: NodeData, context: Context, ledger: Ledger,
             policy: Policy) -> NoisePlan:
    """The run's noise plan: made once, at the node's first round, then kept in
    ``context.state`` so every round of the run uses the same mechanism."""
    from federation.privacy import NoisePlan, plan_noise

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


@dataclass
class Trained:
    """One local training, before anything is sent: the model, or why the node refused."""

    node: NodeData
    policy: Policy
    figures: dict[str, float]
    model: torch.nn.Module | None = None
    status: Status = Status.OK
    reason: str = ""

    @property
    def public_reason(self) -> str:
        """A refusal's reason as it may leave: the numbers only if the policy shares them."""
        if self.status is Status.OK or self.policy.share_local_metrics:
            return self.reason
        return ("the agency's privacy budget or policy does not allow this round (the numbers "
                "stay at the agency: [sharing] share_local_metrics = false)")


def _refusal(node: NodeData, policy: Policy, exc: BudgetExceeded) -> Trained:
    log.warning("agency %s refuses to train: %s", node.agency, exc)
    return Trained(node, policy, {Metric.NUM_EXAMPLES: 0.0, Metric.DATASET_EPSILON: exc.spent,
                                  Metric.BUDGET: exc.budget, Metric.EPSILON_IF_TRAINED: exc.after},
                   status=Status.REFUSED, reason=str(exc))


def _received_model(msg: Message, context: Context, *, split: str
                    ) -> tuple[RunSettings, NodeData, Policy, torch.nn.Module]:
    """What training and evaluation both start from: the run's settings, the agency's data
    split, its policy, and the task's model holding the arrays the server sent."""
    import torch

    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    node = load_node_data(context.node_config, settings, split=split)
    # The policy as it applies to this dataset: its own budget, if the agency gave it one.
    policy = load_policy(node.state_dir).for_dataset(node.dataset)
    torch.set_num_threads(1)  # one intra-op thread per node: several share the machine
    model = node.task.build_model()
    model.load_state_dict(msg.content.array_records[Record.ARRAYS].to_torch_state_dict())
    return settings, node, policy, model


def train_once(msg: Message, context: Context) -> Trained:
    """Local DP-SGD on the message's arrays, with the ledger written first (write-ahead);
    or a clean refusal. Shared by plain rounds and secure-aggregation rounds."""
    settings, node, policy, model = _received_model(msg, context, split="train")
    config = msg.content.config_records[Record.CONFIG]
    # FedProx sends its weight; FedAvg and FedAdam send none (no proximal term).
    mu = float(cast(float, config[PROXIMAL_MU])) if PROXIMAL_MU in config else 0.0
    server_round = replies.server_round(msg)
    release = Release(
        dataset=node.dataset, fingerprint=node.fingerprint, run_id=str(context.run_id),
        round=server_round, task=settings.task_name, model=node.model_name,
        noise_multiplier=0.0, sample_rate=0.0, steps=0,
        max_grad_norm=settings.privacy.max_grad_norm, delta=policy.delta,
        accountant=policy.accountant, unit=node.task.privacy_unit,
    )
    if not settings.privacy.enabled:
        if not policy.allow_non_private:
            raise PrivacyConfigError(
                [f"the run has privacy.enabled=false but agency {node.agency}'s policy does "
                 "not allow non-private training (allow_non_private = false)"],
                source="agency privacy policy",
            )
        with Ledger.open(node.state_dir) as ledger:
            # A non-private release is recorded too: the dataset's epsilon becomes infinite.
            seq = ledger.reserve_non_private(release)
            result = train_local(model, node.features, node.labels, train=settings.train,
                                 privacy=settings.privacy, plan=None, proximal_mu=mu)
            ledger.complete(seq)
        return Trained(node, policy, {
            Metric.NUM_EXAMPLES: result.num_examples, Metric.TRAIN_LOSS: result.train_loss,
            Metric.EPSILON: math.inf, Metric.RUN_EPSILON: math.inf, Metric.DELTA: policy.delta,
            Metric.NOISE_MULTIPLIER: 0.0, Metric.SAMPLE_RATE: 0.0, Metric.STEPS: result.steps,
            Metric.BUDGET_REMAINING: 0.0, Metric.ROWS_SET_ASIDE: node.rows_set_aside}, model)
    with Ledger.open(node.state_dir) as ledger:
        try:
            plan = run_plan(settings, node, context, ledger, policy)
        except BudgetExceeded as exc:
            return _refusal(node, policy, exc)
        history = load_history(context)
        planned = plan.steps_per_round * plan.planned_rounds
        if sum(n for _, _, n in history) + plan.steps_per_round > planned:
            return _refusal(node, policy, BudgetExceeded(
                f"all {plan.planned_rounds} planned rounds of this run are spent; another "
                "would exceed the run's privacy.target_epsilon", spent=plan.planned_epsilon,
                after=math.inf, budget=plan.target_epsilon))
        release = Release(**{**asdict(release), "noise_multiplier": plan.noise_multiplier,
                             "sample_rate": plan.sample_rate, "steps": plan.steps_per_round})
        try:
            seq, dataset_epsilon = ledger.reserve(release, policy)  # write-ahead
        except BudgetExceeded as exc:
            return _refusal(node, policy, exc)
        result = train_local(model, node.features, node.labels, train=settings.train,
                             privacy=settings.privacy, plan=plan, history=history,
                             proximal_mu=mu)
        save_history(context, result.history)
        ledger.complete(seq)
    figures: dict[str, float] = {
        Metric.NUM_EXAMPLES: result.num_examples,
        Metric.TRAIN_LOSS: result.train_loss,
        # Cumulative over every round of every run on this dataset (the ledger).
        Metric.EPSILON: dataset_epsilon,
        Metric.DELTA: policy.delta,
        # This run alone, at the run's delta.
        Metric.RUN_EPSILON: result.epsilon,
        Metric.RUN_DELTA: plan.target_delta,
        Metric.BUDGET_REMAINING: max(0.0, policy.max_epsilon - dataset_epsilon),
        Metric.NOISE_MULTIPLIER: result.noise_multiplier,
        Metric.SAMPLE_RATE: plan.sample_rate,
        Metric.STEPS: result.steps,
        Metric.ROWS_SET_ASIDE: node.rows_set_aside,
    }
    log.info("agency %s trained round %d: %s", node.agency, server_round, figures)
    return Trained(node, policy, figures, model)


def keep(context: Context, kind: str, msg: Message, t: Trained | Evaluated) -> None:
    local_metrics.record(t.node.state_dir, run_id=str(context.run_id),
                         server_round=replies.server_round(msg), kind=kind, status=t.status,
                         reason=t.reason, figures=t.figures)


def plain_allowed(policy: Policy) -> str | None:
    if policy.require_secure_aggregation:
        return ("this agency takes part only in securely aggregated rounds ([secure_aggregation]"
                " required = true): its update and figures never leave it in the clear")
    return None


def train_round(msg: Message, context: Context) -> Message:
    """A plain (not securely aggregated) training round: train, keep the record, reply."""
    refusal = plain_allowed(where(context).policy)
    if refusal is not None:
        raise FederationError(refusal)  # before anything trains
    t = train_once(msg, context)
    keep(context, "train", msg, t)
    ledger = replies.attest(t.node.state_dir)
    keep_figures(context, t.figures)
    if t.model is None:
        return replies.reply(msg, t.node.agency, status=t.status, reason=t.public_reason,
                             metrics={Metric.NUM_EXAMPLES: 0.0}, ledger=ledger,
                             shared=replies.shared(t.policy, t.figures))
    # FedAvg weighs the update by the example count: in a plain round it is visible.
    return replies.reply(msg, t.node.agency,
                         metrics={Metric.NUM_EXAMPLES: t.figures[Metric.NUM_EXAMPLES]},
                         arrays=ArrayRecord(t.model.state_dict()), ledger=ledger,
                         shared=replies.shared(t.policy, t.figures))


@dataclass
class Evaluated:
    node: NodeData
    policy: Policy
    figures: dict[str, float]
    probabilities: np.ndarray
    status: Status = Status.OK
    reason: str = ""


def evaluate_once(msg: Message, context: Context) -> Evaluated:
    from federation.training import predict_proba

    settings, node, policy, model = _received_model(msg, context, split="test")
    proba = predict_proba(model, node.features).astype(np.float64)
    clipped = np.clip(proba, 1e-7, 1 - 1e-7)
    y = node.labels
    loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))) if y.size \
        else math.nan
    figures = {Metric.NUM_EXAMPLES: float(y.size), Metric.LOSS: loss,
               **fm.summary(y, proba, k=settings.eval.k)}
    return Evaluated(node, policy, figures, proba)


def evaluate_round(msg: Message, context: Context) -> Message:
    """A plain evaluation round: the figures go out only where the policy shares them."""
    refusal = plain_allowed(where(context).policy)
    if refusal is not None:
        raise FederationError(refusal)
    e = evaluate_once(msg, context)
    keep(context, "evaluate", msg, e)
    keep_figures(context, e.figures)
    if not e.policy.share_local_metrics:
        # Nothing per agency in the clear: the figures stay in local-metrics.jsonl.
        return replies.reply(msg, e.node.agency, status=Status.WITHHELD,
                             reason="evaluation figures stay at the agency ([sharing] "
                                    "share_local_metrics = false)",
                             metrics={Metric.NUM_EXAMPLES: 0.0})
    return replies.reply(msg, e.node.agency, metrics=e.figures)


@dataclass(frozen=True)
class Where:
    settings: NodeView
    agency: str
    state_dir: Path
    policy: Policy


def where(context: Context) -> Where:
    settings = NodeView.from_flat(context.run_config, source="run config (client)")
    agency = export_agency(resolve_data_dir(context.node_config, settings.paths))
    state_dir = resolve_state_dir(context.node_config, settings.paths, agency)
    return Where(settings, agency, state_dir, load_policy(state_dir))


def validate_export(context: Context) -> None:
    """The whole export, read and checked before the node joins a session (fails fast)."""
    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    load_node_data(context.node_config, settings, split="train")


