"""The agency node's ClientApp: validate local data, train with DP-SGD, evaluate locally.

What leaves the node, by construction (``_reply``/``_shared`` below are the only writers of
what is sent):

- in a secure round (SecAgg+, clients/secagg.py): signed public keys, sealed shares for other
  agencies, masked vectors (the count-weighted update with its count, loss and rows set aside;
  evaluation histograms), signatures over survivor sets, revealed shares of one kind per
  neighbour; plus the agency's name, its status and its ledger head;
- in a plain round: the DP-protected update and the example count FedAvg weights it by, the
  status and the ledger head (the agency's policy may forbid plain rounds:
  ``[secure_aggregation] required = true``);
- per-agency figures (loss, epsilon, DP parameters, evaluation metrics, the numbers behind a
  refusal) only where the agency's policy says so (``[sharing] share_local_metrics = true``);
  they are always kept at the agency (clients/local_metrics.py) and in its ledger.

Never rows, texts, ids or labels. Cross-round state lives in ``context.state`` (this run's
noise plan and accountant history, the secure-aggregation session); the epsilon a node
keeps is its dataset's cumulative value from the privacy ledger, over every round of every
run, non-private rounds included (as infinity).

Errors leave the node too (Flower returns them to the aggregator), so ``contained`` lets out
only what ``outgoing_error`` allows: a DataError (content-free by construction), a
FederationError or a TaskError as they are; any other error, heroes-fl's own included, as
its type name and a fixed sentence. The details (message, causes, traceback) go to the
node's own ``logs/node-errors.log`` in its state folder.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
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

from clients import local_metrics, receipts
from clients.approvals import approved_roster
from clients.node import NodeData, load_node_data, resolve_data_dir, resolve_state_dir
from clients.secagg import Identity, NodeSecAgg, Safety
from federation import metrics as fm
from federation import secagg as sa
from federation.config import NodeView, RunSettings
from federation.data import read_manifest
from federation.errors import (
    ConfigError,
    DataError,
    DeploymentError,
    FederationError,
    HeroesError,
    LedgerError,
    PrivacyConfigError,
    SignatureError,
    TaskError,
)
from federation.files import open_private, private_dir
from federation.ledger import (
    BudgetExceeded,
    Ledger,
    Release,
    calibrate_to_budget,
)
from federation.policy import Policy, load_policy
from federation.signing import load_private_key

if TYPE_CHECKING:
    import torch

    from federation.privacy import HistoryEntry, NoisePlan

log = logging.getLogger("heroes.client")

app = ClientApp()

# torch, Opacus and the task models take seconds to import, and a deployed node starts a
# process per message: they are imported only by the steps that train or evaluate, so the
# stages that only sign, share or reveal start in a fraction of that.


def train_local(*args: Any, **kwargs: Any) -> Any:
    """federation.training.train_local (the audit's test-only broken mode swaps this name)."""
    from federation.training import train_local as run

    return run(*args, **kwargs)


@dataclass
class Outgoing:
    """A reply and the node's own figures behind it (for its receipt and local record)."""

    reply: Message
    figures: dict[str, float] = field(default_factory=dict)


Handler = Callable[[Message, Context], Outgoing]


class NodeFailure(HeroesError):
    """A node failed for a reason whose details stay at the node."""


#: The errors whose message leaves the node as it is. A DataError is content-free by
#: construction (federation/errors.py); a FederationError (a round or secure-aggregation
#: refusal) and a TaskError (a task unknown or not allowed) are composed from the run
#: configuration and protocol messages the aggregator itself sent. Every other error goes
#: out as its type name and the fixed sentence below; its details stay in the node's own log.
FORWARDED: tuple[type[HeroesError], ...] = (DataError, FederationError, TaskError)
WITHHELD: tuple[tuple[type[BaseException], str], ...] = (  # most specific first
    (PrivacyConfigError, "the run's privacy settings cannot be met at this agency"),
    (ConfigError, "a setting this node needs is missing or unusable"),
    (BudgetExceeded, "the agency's privacy budget does not allow it"),
    (LedgerError, "the agency's privacy ledger or policy is unusable, so the node does not "
                  "train"),
    (SignatureError, "a signature at this node did not verify"),
    (DeploymentError, "the node's keys, approvals or roster do not allow it"),
)
#: The node's own record of every error it replied with: type, message and traceback.
#: In ``<state_dir>/logs/``; it never leaves the machine.
NODE_ERROR_LOG = "node-errors.log"


def outgoing_error(handler: str, exc: BaseException) -> HeroesError:
    """What an error reply may carry, as a fresh exception (no traceback, no cause): a
    forwarded kind's own message, else the type name and a fixed sentence."""
    if isinstance(exc, DataError):
        return DataError(exc.problems, file=exc.file, row=exc.row)
    if isinstance(exc, FORWARDED):
        try:
            return type(exc)(str(exc))
        except TypeError:  # a subclass with another signature: its base class carries it
            return next(k for k in FORWARDED if isinstance(exc, k))(str(exc))
    what = next((text for kind, text in WITHHELD if isinstance(exc, kind)), "it failed")
    return NodeFailure(f"{handler} failed at the node with {type(exc).__name__}: {what}; the "
                       "details are in the node's own log and were not sent")


def _state_dir_of(context: Context) -> Path | None:
    """Where this node keeps its state, for its error log; None when it cannot tell."""
    try:
        config = context.node_config
        if "state_dir" in config:
            return Path(str(config["state_dir"]))
        paths = NodeView.from_flat(context.run_config, source="run config (client)").paths
        if "partition-id" not in config or not paths.state_root:
            return None
        data_dir = resolve_data_dir(config, paths)
        try:
            agency = str(read_manifest(data_dir)["agency"])
        except HeroesError:  # a simulated agency's folder is named after it
            agency = data_dir.name
        return resolve_state_dir(config, paths, agency)
    except Exception:  # the node's configuration itself is what failed
        return None


def keep_details(context: Context, handler: str, exc: BaseException) -> Path | None:
    """Append the whole error (message, chained causes, traceback) to the node's own
    NODE_ERROR_LOG; return its path, or None when it could not be written."""
    state_dir = _state_dir_of(context)
    if state_dir is None:
        return None
    path = state_dir / "logs" / NODE_ERROR_LOG
    entry = (f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} run "
             f"{context.run_id} {handler}\n" + "".join(traceback.format_exception(exc)))
    try:
        private_dir(path.parent)
        fd = open_private(path, os.O_WRONLY | os.O_APPEND)
        with os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(entry)
    except OSError:
        return None
    return path


def contained(fn: Handler) -> Callable[[Message, Context], Message]:
    """Sign a receipt for every reply before it leaves (no key: not sent); turn any error
    into what an error reply may carry (outgoing_error), keeping the details at the node."""

    @functools.wraps(fn)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            out = fn(msg, context)
            receipts.record_outgoing(msg, context, out.reply, fn.__name__, figures=out.figures)
            return out.reply
        except Exception as exc:
            sent = outgoing_error(fn.__name__, exc)
            kept = keep_details(context, fn.__name__, exc)
            if kept is not None:
                log.error("%s failed at this node (%s); details in %s", fn.__name__,
                          type(exc).__name__, kept)
            else:  # the process's own log (a deployed node's logs/, at the agency)
                log.error("%s failed at this node", fn.__name__, exc_info=exc)
            receipts.record_error(msg, context, fn.__name__, sent)  # best effort, never raises
            raise sent from None

    return wrapper


# --- what leaves the node -----------------------------------------------------------------

def _shared(policy: Policy, figures: dict[str, float]) -> ConfigRecord | None:
    """The per-agency figures the agency's policy lets leave in the clear, or nothing."""
    if not policy.share_local_metrics or not figures:
        return None
    return ConfigRecord({k: float(v) for k, v in figures.items()})


def _reply(msg: Message, agency: str, *, status: str = "ok", reason: str = "",
           metrics: dict[str, float] | None = None, arrays: ArrayRecord | None = None,
           shared: ConfigRecord | None = None, ledger: dict[str, Any] | None = None,
           records: dict[str, Any] | None = None) -> Message:
    content = RecordDict({"agency": ConfigRecord({"agency": agency, "status": status,
                                                  "reason": reason})})
    if metrics is not None:
        content["metrics"] = MetricRecord(dict(metrics))
    if arrays is not None:
        content["arrays"] = arrays
    if shared is not None:
        content["shared"] = shared
    if ledger is not None:
        content["ledger"] = ConfigRecord(ledger)
    for name, record in (records or {}).items():
        content[name] = record
    return Message(content=content, reply_to=msg)


def _server_round(msg: Message) -> int:
    config = msg.content.config_records.get("config")
    return int(cast(int, config.get("server-round", 0))) if config is not None else 0


def _attest(state_dir: Path) -> dict[str, Any]:
    """This node's signed ledger head and the heads it reported before, for the consortium's
    rollback check (sent once per round: with the set-up, or with a plain round's reply)."""
    with Ledger.open(state_dir) as ledger:
        return ledger.attest()


def _head(state_dir: Path) -> dict[str, Any]:
    """The ledger head alone, for a secure round's masked input: the server checks that it
    is not behind the one attested at set-up; the next set-up's attestation covers it."""
    with Ledger.open(state_dir) as ledger:
        seq, entry_hash = ledger.head()
    return {"seq": seq, "hash": entry_hash}


# --- training ----------------------------------------------------------------------------------

ACCOUNTANT_STATE = "dp-accountant"
PLAN_STATE = "dp-plan"


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


def _run_plan(settings: RunSettings, node: NodeData, context: Context, ledger: Ledger,
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
    status: str = "ok"
    reason: str = ""

    @property
    def public_reason(self) -> str:
        """A refusal's reason as it may leave: the numbers only if the policy shares them."""
        if self.status == "ok" or self.policy.share_local_metrics:
            return self.reason
        return ("the agency's privacy budget or policy does not allow this round (the numbers "
                "stay at the agency: [sharing] share_local_metrics = false)")


def _refusal(node: NodeData, policy: Policy, exc: BudgetExceeded) -> Trained:
    log.warning("agency %s refuses to train: %s", node.agency, exc)
    return Trained(node, policy, {"num-examples": 0.0, "dataset_epsilon": exc.spent,
                                  "budget": exc.budget, "epsilon_if_trained": exc.after},
                   status="refused", reason=str(exc))


def train_once(msg: Message, context: Context) -> Trained:
    """Local DP-SGD on the message's arrays, with the ledger written first (write-ahead);
    or a clean refusal. Shared by plain rounds and secure-aggregation rounds."""
    import torch

    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    node = load_node_data(context.node_config, settings, split="train")
    policy = load_policy(node.state_dir)
    torch.set_num_threads(1)
    model = node.task.build_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    config = msg.content["config"]
    mu = float(cast(float, config["proximal-mu"])) if "proximal-mu" in config else 0.0
    server_round = _server_round(msg)
    release = Release(
        dataset=node.dataset, fingerprint=node.fingerprint, run_id=str(context.run_id),
        round=server_round, task=settings.task_name, model=node.model_name,
        noise_multiplier=0.0, sample_rate=0.0, steps=0,
        max_grad_norm=settings.privacy.max_grad_norm, delta=policy.delta,
        accountant=policy.accountant,
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
            "num-examples": result.num_examples, "train_loss": result.train_loss,
            "epsilon": math.inf, "run_epsilon": math.inf, "delta": policy.delta,
            "noise_multiplier": 0.0, "sample_rate": 0.0, "steps": result.steps,
            "budget_remaining": 0.0, "rows_set_aside": node.rows_set_aside}, model)
    with Ledger.open(node.state_dir) as ledger:
        try:
            plan = _run_plan(settings, node, context, ledger, policy)
        except BudgetExceeded as exc:
            return _refusal(node, policy, exc)
        history = _load_history(context)
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
        _save_history(context, result.history)
        ledger.complete(seq)
    figures: dict[str, float] = {
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
    log.info("agency %s trained round %d: %s", node.agency, server_round, figures)
    return Trained(node, policy, figures, model)


def _keep(context: Context, kind: str, msg: Message, t: Trained | Evaluated) -> None:
    local_metrics.record(t.node.state_dir, run_id=str(context.run_id),
                         server_round=_server_round(msg), kind=kind, status=t.status,
                         reason=t.reason, figures=t.figures)


def _plain_allowed(policy: Policy) -> str | None:
    if policy.require_secure_aggregation:
        return ("this agency takes part only in securely aggregated rounds ([secure_aggregation]"
                " required = true): its update and figures never leave it in the clear")
    return None


@app.train()
@contained
def train(msg: Message, context: Context) -> Outgoing:
    refusal = _plain_allowed(_where(context).policy)
    if refusal is not None:
        raise FederationError(refusal)  # before anything trains
    t = train_once(msg, context)
    _keep(context, "train", msg, t)
    ledger = _attest(t.node.state_dir)
    if t.model is None:
        return Outgoing(_reply(msg, t.node.agency, status=t.status, reason=t.public_reason,
                               metrics={"num-examples": 0.0}, ledger=ledger,
                               shared=_shared(t.policy, t.figures)), t.figures)
    # FedAvg weighs the update by the example count: in a plain round it is visible.
    return Outgoing(_reply(msg, t.node.agency, metrics={"num-examples": t.figures["num-examples"]},
                           arrays=ArrayRecord(t.model.state_dict()), ledger=ledger,
                           shared=_shared(t.policy, t.figures)), t.figures)


# --- evaluation ----------------------------------------------------------------------------------

@dataclass
class Evaluated:
    node: NodeData
    policy: Policy
    figures: dict[str, float]
    probabilities: np.ndarray
    status: str = "ok"
    reason: str = ""


def evaluate_once(msg: Message, context: Context) -> Evaluated:
    import torch

    from federation.training import predict_proba

    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    node = load_node_data(context.node_config, settings, split="test")
    policy = load_policy(node.state_dir)
    torch.set_num_threads(1)
    model = node.task.build_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    proba = predict_proba(model, node.features).astype(np.float64)
    clipped = np.clip(proba, 1e-7, 1 - 1e-7)
    y = node.labels
    loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))) if y.size \
        else math.nan
    figures = {"num-examples": float(y.size), "loss": loss,
               **fm.summary(y, proba, k=settings.eval.k)}
    return Evaluated(node, policy, figures, proba)


@app.evaluate()
@contained
def evaluate(msg: Message, context: Context) -> Outgoing:
    refusal = _plain_allowed(_where(context).policy)
    if refusal is not None:
        raise FederationError(refusal)
    e = evaluate_once(msg, context)
    _keep(context, "evaluate", msg, e)
    if not e.policy.share_local_metrics:
        # Nothing per agency in the clear: the figures stay in local-metrics.jsonl.
        return Outgoing(_reply(msg, e.node.agency, status="withheld",
                               reason="evaluation figures stay at the agency ([sharing] "
                                      "share_local_metrics = false)",
                               metrics={"num-examples": 0.0}), e.figures)
    return Outgoing(_reply(msg, e.node.agency, metrics=e.figures), e.figures)


# --- secure aggregation (SecAgg+): the node's stages, see clients/secagg.py ------------------

SECAGG_STATE = "secagg"


@dataclass(frozen=True)
class _Where:
    settings: NodeView
    agency: str
    state_dir: Path
    policy: Policy


def _where(context: Context) -> _Where:
    settings = NodeView.from_flat(context.run_config, source="run config (client)")
    agency = str(read_manifest(resolve_data_dir(context.node_config, settings.paths))["agency"])
    state_dir = resolve_state_dir(context.node_config, settings.paths, agency)
    return _Where(settings, agency, state_dir, load_policy(state_dir))


def _validate_export(context: Context) -> None:
    """The whole export, read and checked before the node joins a session (fails fast)."""
    settings = RunSettings.from_flat(context.run_config, source="run config (client)")
    load_node_data(context.node_config, settings, split="train")


def _session(context: Context, w: _Where) -> NodeSecAgg:
    s = w.settings.secagg
    identity = Identity(node_id=int(context.node_id), agency=w.agency, run_id=str(context.run_id),
                        key=load_private_key(w.state_dir / receipts.NODE_KEY),
                        roster=approved_roster(w.state_dir))
    safety = Safety(fraction=s.threshold, degree=s.num_neighbours,
                    quantization_bits=s.quantization_bits,
                    min_threshold=w.policy.secure_min_threshold,
                    min_agencies=int(w.policy.secure_min_agencies))
    text = None
    if SECAGG_STATE in context.state:
        text = str(context.state.config_records[SECAGG_STATE]["json"])
    return NodeSecAgg.load(identity, safety, text)


def _save(context: Context, node: NodeSecAgg) -> None:
    context.state[SECAGG_STATE] = ConfigRecord({"json": node.dump()})


def _cfg(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records[SECAGG_STATE])


def _sum_of(msg: Message) -> str:
    return msg.metadata.message_type.split(".", 1)[0]


def _same_round(msg: Message, node: NodeSecAgg) -> None:
    if _server_round(msg) != int(node.state.get("round", -1)):
        raise FederationError("secure aggregation refused by this node: a stage of another "
                              "round than the session it belongs to")


def _secagg_reply(msg: Message, agency: str, values: dict[str, Any], *,
                  ledger: dict[str, Any] | None = None) -> Message:
    return _reply(msg, agency, ledger=ledger, records={SECAGG_STATE: ConfigRecord(values)})


def secagg_setup(msg: Message, context: Context) -> Outgoing:
    w = _where(context)
    if _sum_of(msg) == "train":
        _validate_export(context)
    node = _session(context, w)
    values = node.setup(_cfg(msg), server_round=_server_round(msg))
    _save(context, node)
    return Outgoing(_secagg_reply(msg, w.agency, values, ledger=_attest(w.state_dir)))


def secagg_share(msg: Message, context: Context) -> Outgoing:
    w = _where(context)
    node = _session(context, w)
    _same_round(msg, node)
    values = node.share(_cfg(msg))
    _save(context, node)
    return Outgoing(_secagg_reply(msg, w.agency, values))


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
    return _reply(msg, agency, ledger=ledger, shared=_shared(policy, figures),
                  records={SECAGG_STATE: ArrayRecord(
                      {"masked": Array(np.frombuffer(packed, dtype=np.uint8))})})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A record's arrays as numpy (federation/secagg.py never sees a Flower type)."""
    return {name: arr.numpy() for name, arr in record.items()}


def _weight(count: float, settings: NodeView) -> tuple[float, float]:
    """(capped count, weight): the node's own share of the mean, never the server's."""
    capped = float(min(count, settings.secagg.max_weight))
    return capped, capped / settings.secagg.max_weight


def _masked_stage(msg: Message, context: Context) -> tuple[_Where, NodeSecAgg]:
    """Every masked-input stage starts alike: this round's session, its bundles opened."""
    w = _where(context)
    node = _session(context, w)
    _same_round(msg, node)
    _open_boxes(node, _cfg(msg))
    _save(context, node)
    return w, node


def secagg_masked_train(msg: Message, context: Context) -> Outgoing:
    w, node = _masked_stage(msg, context)
    t = train_once(msg, context)
    if t.model is None:  # refused: this node drops out of the round's sum
        _keep(context, "train", msg, t)
        return Outgoing(_reply(msg, t.node.agency, status=t.status, reason=t.public_reason,
                               ledger=_attest(t.node.state_dir),
                               shared=_shared(t.policy, t.figures)), t.figures)
    global_flat, _ = sa.flatten(_numpy(msg.content.array_records["arrays"]))
    trained, _ = sa.flatten(_numpy(ArrayRecord(t.model.state_dict())))
    capped, weight = _weight(t.figures["num-examples"], w.settings)
    layout = sa.train_layout(global_flat.size, w.settings.secagg.clip_range)
    loss = t.figures["train_loss"] if math.isfinite(t.figures["train_loss"]) else 0.0
    vector, clipped = layout.encode(
        {"update": weight * (trained - global_flat), "loss": [weight * loss],
         "examples": [capped], "rows_set_aside": [float(t.node.rows_set_aside)]},
        qbits=w.settings.secagg.quantization_bits)
    packed = node.mask("train", vector)
    _save(context, node)
    t.figures["secagg_clipped"] = float(clipped)  # clipping changes the sum: kept here
    _keep(context, "train", msg, t)
    return Outgoing(_masked_reply(msg, t.node.agency, packed, policy=t.policy,
                                  figures=t.figures, ledger=_head(t.node.state_dir)),
                    t.figures)


def secagg_masked_evaluate(msg: Message, context: Context) -> Outgoing:
    w, node = _masked_stage(msg, context)
    e = evaluate_once(msg, context)
    _keep(context, "evaluate", msg, e)
    capped, weight = _weight(e.figures["num-examples"], w.settings)
    pos, neg = fm.histograms(e.node.labels, e.probabilities)
    loss = e.figures["loss"] if math.isfinite(e.figures["loss"]) else 0.0
    brier = e.figures["brier"] if math.isfinite(e.figures["brier"]) else 0.0
    vector, _ = sa.eval_layout().encode(
        {"positives": pos, "negatives": neg, "loss": [weight * loss],
         "brier": [weight * brier], "examples": [capped]},
        qbits=w.settings.secagg.quantization_bits)
    packed = node.mask("evaluate", vector)
    _save(context, node)
    return Outgoing(_masked_reply(msg, e.node.agency, packed, policy=e.policy,
                                  figures=e.figures, ledger=None), e.figures)


def secagg_consistency(msg: Message, context: Context) -> Outgoing:
    w = _where(context)
    node = _session(context, w)
    _same_round(msg, node)
    values = node.consistency(_sum_of(msg), _cfg(msg))
    _save(context, node)
    return Outgoing(_secagg_reply(msg, w.agency, values))


NEXT_STATE = "secagg_next"


def secagg_unmask(msg: Message, context: Context) -> Outgoing:
    """Reveal this sum's shares; if the message carries the next round's set-up (the last
    exchange of a round does), open that session too: one round trip less per round."""
    w = _where(context)
    node = _session(context, w)
    _same_round(msg, node)
    values = node.unmask(_sum_of(msg), _cfg(msg))
    _save(context, node)
    if NEXT_STATE not in msg.content.config_records:
        return Outgoing(_secagg_reply(msg, w.agency, values))
    nxt = dict(msg.content.config_records[NEXT_STATE])
    server_round = int(cast(int, nxt.pop("server_round", -1)))
    if server_round != _server_round(msg) + 1:
        raise FederationError("secure aggregation refused by this node: a set-up for a round "
                              "other than the next one")
    _validate_export(context)
    following = _session(context, w)
    next_values = following.setup(nxt, server_round=server_round)
    _save(context, following)
    return Outgoing(_reply(msg, w.agency, ledger=_attest(w.state_dir), records={
        SECAGG_STATE: ConfigRecord(values), NEXT_STATE: ConfigRecord(next_values)}))


def _register() -> None:
    """Every stage under train.<stage> and evaluate.<stage>: an evaluation either continues
    the round's session (masked input on) or, if training ran in the clear, opens its own."""
    stages: dict[str, tuple[Handler, Handler]] = {
        "secagg_setup": (secagg_setup, secagg_setup),
        "secagg_share": (secagg_share, secagg_share),
        "secagg_masked": (secagg_masked_train, secagg_masked_evaluate),
        "secagg_consistency": (secagg_consistency, secagg_consistency),
        "secagg_unmask": (secagg_unmask, secagg_unmask),
    }
    for stage, (on_train, on_eval) in stages.items():
        app.train(stage)(contained(on_train))
        app.evaluate(stage)(contained(on_eval))


_register()
