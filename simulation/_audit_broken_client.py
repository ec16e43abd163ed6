"""The simulation's audited ClientApp: the node's own app, changed for the audit only.

Used only when a simulation sets ``audit.enabled=true`` (see simulation.audit); a deployed
node runs ``clients.client_app:app``, and nothing outside the simulation imports this file.
Two changes, each made for one call through the name ``train_local`` that the node's
round logic (clients/rounds.py) looks up at call time. That name is replaced once by a
dispatcher that uses the function set for the current call (a context variable: the
in-process backend runs several agencies' calls at once, each on its own thread, and one
agency's audit must never change another's training):

- ``audit.mode=whitebox``: at an agency whose state folder holds a canary design
  (``<state_dir>/audit/whitebox-canaries.npz``), every DP round also trains a side copy of
  the round's incoming model, with the same data, settings and noise plan, through the
  same training function, with federation.audit's Dirac canaries observing each step.
  The side copy is thrown away; the real model, the reply and the ledger are the node's
  own. The canaries' scores stay in the agency's state folder between rounds.
- TEST ONLY ``audit.break_noise_for_testing=true``: every round trains with noise
  multiplier 0 while the reply, the ledger and the accountant history keep the planned
  noise, so the run claims an epsilon it does not have. The audit must catch it. The
  white-box side copy then trains without noise too (it goes through the same function).
"""

from __future__ import annotations

import contextvars
import copy
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

import clients.client_app as node_app
import clients.rounds as node_rounds  # the module whose train_local the node calls
from federation.privacy import epsilon_spent

log = logging.getLogger("heroes.audit")

TrainFn = Callable[..., Any]

#: Where an audited agency keeps the white-box audit, inside its own state folder.
AUDIT_DIR = "audit"


def _train_local(*args: Any, **kwargs: Any) -> Any:
    from federation.training import train_local

    return train_local(*args, **kwargs)


def _train_without_noise(*args: Any, **kwargs: Any) -> Any:
    from federation.training import train_local

    plan = kwargs.get("plan")
    if plan is None:
        return train_local(*args, **kwargs)
    kwargs["plan"] = replace(plan, noise_multiplier=0.0)
    result = train_local(*args, **kwargs)
    claimed = [(plan.noise_multiplier, q, n) for _, q, n in result.history]
    return replace(result, history=claimed, noise_multiplier=plan.noise_multiplier,
                   epsilon=epsilon_spent(claimed, delta=plan.target_delta,
                                         accountant=plan.accountant))


def with_whitebox_audit(inner: TrainFn, audit_dir: Path) -> TrainFn:
    """``inner`` (the node's training function), plus a side copy of each DP round that
    ``inner`` trains with Dirac canaries observing every step; scores saved in
    ``audit_dir``. Returns exactly what ``inner`` returns for the real model."""
    from federation.audit import DESIGN_FILE, SCORES_FILE, Design, DiracCanaries

    def train(model: Any, *args: Any, **kwargs: Any) -> Any:
        plan = kwargs.get("plan")
        if plan is None:  # not a DP round: nothing claimed, nothing to audit
            return inner(model, *args, **kwargs)
        side = copy.deepcopy(model)  # the round's incoming model, before the real step
        result = inner(model, *args, **kwargs)
        canaries = DiracCanaries(design=Design.load(audit_dir / DESIGN_FILE),
                                 max_grad_norm=kwargs["privacy"].max_grad_norm,
                                 sample_rate=plan.sample_rate,
                                 noise_multiplier=plan.noise_multiplier,
                                 planned_steps=plan.steps_per_round * plan.planned_rounds)
        rounds = canaries.resume(audit_dir / SCORES_FILE)
        inner(side, *args, **{**kwargs, "observer": canaries})
        canaries.save(audit_dir / SCORES_FILE, rounds=rounds + 1)
        log.info("white-box audit: side copy of round %d observed (%d steps so far)",
                 rounds + 1, canaries.steps)
        return result

    return train


def _audit_dir(context: Context) -> Path | None:
    """This node's audit folder if it holds a white-box canary design."""
    from clients.node import export_agency, resolve_data_dir, resolve_state_dir
    from federation.audit import DESIGN_FILE
    from federation.config import NodeView

    settings = NodeView.from_flat(context.run_config, source="run config (client)")
    data_dir = resolve_data_dir(context.node_config, settings.paths)
    agency = export_agency(data_dir)
    folder = resolve_state_dir(context.node_config, settings.paths, agency) / AUDIT_DIR
    return folder if (folder / DESIGN_FILE).is_file() else None


#: The training function of the call running in this thread (None: the node's own).
_CALL_TRAIN: contextvars.ContextVar[TrainFn | None] = contextvars.ContextVar(
    "heroes_audit_train", default=None)
_INSTALL_LOCK = threading.Lock()


def _dispatch(*args: Any, **kwargs: Any) -> Any:
    train = _CALL_TRAIN.get()
    return (train or _train_local)(*args, **kwargs)


def _install_dispatch() -> None:
    """Make clients/rounds.py's ``train_local`` the dispatcher (once per process)."""
    with _INSTALL_LOCK:
        namespace = vars(node_rounds)
        if namespace["train_local"] is not _dispatch:
            namespace["train_local"] = _dispatch


class AuditClientApp(ClientApp):
    """Every message (train, evaluate, the secure-aggregation stages, anything the node's
    app registers) goes to the node's own ClientApp, with ``train_local`` swapped for the
    call: noise removed (``noiseless``, test only) and/or the white-box side copy."""

    def __init__(self, *, noiseless: bool) -> None:
        super().__init__()
        self.noiseless = noiseless

    def __call__(self, message: Message, context: Context) -> Message:
        train: TrainFn = _train_without_noise if self.noiseless else _train_local
        if self.noiseless and message.metadata.message_type.startswith("train"):
            log.warning("audit.break_noise_for_testing: training WITHOUT DP noise (test only)")
        audit_dir = _audit_dir(context)
        if audit_dir is not None:
            train = with_whitebox_audit(train, audit_dir)
        _install_dispatch()
        token = _CALL_TRAIN.set(train)
        try:
            return node_app.app(message, context)
        finally:
            _CALL_TRAIN.reset(token)
