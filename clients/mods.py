"""The node's ClientApp mods: what wraps every handler, so no handler can forget it.

``contain_errors`` (outermost): errors leave the node too (Flower returns them to the
aggregator), so only what ``outgoing_error`` allows goes out: a DataError (content-free by
construction), a FederationError or a TaskError as they are; any other error, heroes-fl's own
included, as its type name and a fixed sentence. The details (message, causes, traceback) go
to the node's own ``logs/node-errors.log`` in its state folder, and the error reply gets a
receipt (best effort).

``sign_receipts``: a signed receipt for every reply before it leaves (clients/receipts.py);
a node without a key does not send. The node's own figures behind a reply (epsilon, DP
parameters: what its policy may keep out of the reply) reach the receipt through
``keep_figures``, which the round logic calls before it replies.

A Flower mod is ``(msg, context, call_next) -> Message``; ``ClientApp(mods=NODE_MODS)``
wraps every registered handler, the secure-aggregation stages included, the first mod
outermost.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import Mod

from clients import receipts, replies
from clients.node import export_agency, resolve_data_dir, resolve_state_dir
from federation.config import NodeView
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
from federation.ledger import BudgetExceeded
from federation.protocol import Stage

log = logging.getLogger("heroes.client")

Handler = Callable[[Message, Context], Message]


class NodeFailure(HeroesError):
    """A node failed for a reason whose details stay at the node."""


#: The errors whose message leaves the node as it is. A DataError is content-free by
#: construction (federation/errors.py); a FederationError (a round or secure-aggregation
#: refusal, a protocol error naming a key) and a TaskError (a task unknown or not allowed)
#: are composed from the run configuration and protocol messages the aggregator itself
#: sent. Every other error goes out as its type name and the fixed sentence below; its
#: details stay in the node's own log.
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
#: Where the round logic leaves the figures behind its reply for the receipt (popped by
#: ``sign_receipts`` before the reply leaves; never sent).
FIGURES_STATE = "egress-figures"


def message_kind(msg: Message) -> str:
    """The handler's name for receipts and logs: ``train``, ``evaluate``, a stage's name,
    and the masked-input stage with its sum (``secagg_masked_train``)."""
    category, _, action = msg.metadata.message_type.partition(".")
    if not action:
        return category
    return f"{action}_{category}" if action == Stage.MASKED else action


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
            agency = export_agency(data_dir)
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


def contain_errors(msg: Message, context: Context, call_next: Handler) -> Message:
    """Turn any error into what an error reply may carry (outgoing_error), keeping the
    details at the node; Flower then replies with that error."""
    try:
        return call_next(msg, context)
    except Exception as exc:
        kind = message_kind(msg)
        sent = outgoing_error(kind, exc)
        kept = keep_details(context, kind, exc)
        if kept is not None:
            log.error("%s failed at this node (%s); details in %s", kind,
                      type(exc).__name__, kept)
        else:  # the process's own log (a deployed node's logs/, at the agency)
            log.error("%s failed at this node", kind, exc_info=exc)
        receipts.record_error(msg, context, kind, sent)  # best effort, never raises
        raise sent from None


def keep_figures(context: Context, figures: dict[str, float]) -> None:
    """The node's own figures behind the reply it is about to send, for its receipt."""
    context.state[FIGURES_STATE] = ConfigRecord({k: float(v) for k, v in figures.items()})


def _take_figures(context: Context) -> dict[str, float]:
    record = replies.config_record(context.state, FIGURES_STATE)
    if record is None:
        return {}
    del context.state[FIGURES_STATE]
    return {k: float(v) for k, v in record.items()}  # type: ignore[arg-type]  # kept as floats


def sign_receipts(msg: Message, context: Context, call_next: Handler) -> Message:
    """Sign a receipt for the reply before it leaves (no key: DeploymentError, not sent)."""
    _take_figures(context)  # never another message's figures
    reply = call_next(msg, context)
    receipts.record_outgoing(msg, context, reply, message_kind(msg),
                             figures=_take_figures(context))
    return reply


#: Every handler of the node's ClientApp runs inside these, the first outermost.
NODE_MODS: list[Mod] = [contain_errors, sign_receipts]


def with_node_mods(handler: Handler) -> Handler:
    """``handler`` inside NODE_MODS exactly as the node's ClientApp runs it (first mod
    outermost): for an app that calls a node handler from its own (the audit, tests)."""
    wrapped = handler
    for mod in reversed(NODE_MODS):
        wrapped = functools.partial(_call_mod, mod, wrapped)
    return wrapped


def _call_mod(mod: Mod, call_next: Handler, msg: Message, context: Context) -> Message:
    return mod(msg, context, call_next)
