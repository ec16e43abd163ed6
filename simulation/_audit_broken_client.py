"""TEST ONLY: the node's ClientApp with its DP noise removed, for the audit's broken mode.

Used only when a simulation sets ``audit.break_noise_for_testing=true`` (see
simulation.audit): every round trains with noise multiplier 0 while the reply, the ledger
and the accountant history keep the planned noise, so the run claims an epsilon it does
not have. The audit must catch it. A deployed node runs ``clients.client_app:app``, which
has no such switch; nothing outside this simulation module imports this file.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

import clients.client_app as node_app
from federation.privacy import epsilon_spent
from federation.training import LocalResult, train_local

log = logging.getLogger("heroes.audit")


def _train_without_noise(*args: Any, **kwargs: Any) -> LocalResult:
    plan = kwargs.get("plan")
    if plan is None:
        return train_local(*args, **kwargs)
    kwargs["plan"] = replace(plan, noise_multiplier=0.0)
    result = train_local(*args, **kwargs)
    claimed = [(plan.noise_multiplier, q, n) for _, q, n in result.history]
    return replace(result, history=claimed, noise_multiplier=plan.noise_multiplier,
                   epsilon=epsilon_spent(claimed, delta=plan.target_delta,
                                         accountant=plan.accountant))


class NoiselessClientApp(ClientApp):
    """Every message (train, evaluate, the secure-aggregation stages, anything the node's
    app registers) goes to the node's own ClientApp, with DP noise removed for the call."""

    def __call__(self, message: Message, context: Context) -> Message:
        if message.metadata.message_type.startswith("train"):
            log.warning("audit.break_noise_for_testing: training WITHOUT DP noise (test only)")
        # The node's module looks train_local up at call time; swap it for this call only.
        namespace = vars(node_app)
        namespace["train_local"] = _train_without_noise
        try:
            return node_app.app(message, context)
        finally:
            namespace["train_local"] = train_local


app = NoiselessClientApp()
