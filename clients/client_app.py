"""The agency node's ClientApp: validate local data, train with DP-SGD, evaluate locally.

What leaves the node, by construction (clients/replies.py holds the only writers of what is
sent):

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

The handlers below only route: the round logic is in clients/rounds.py and
clients/secagg_stages.py. Every handler runs inside the node's mods (clients/mods.py):
errors leave the node only as ``outgoing_error`` allows (a DataError, a FederationError or a
TaskError as they are; any other error as its type name and a fixed sentence, the details
kept in the node's own ``logs/node-errors.log``), and every reply gets a signed receipt
before it leaves.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import rounds
from clients.mods import NODE_MODS
from clients.secagg_stages import STAGES

app = ClientApp(mods=NODE_MODS)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return rounds.train_round(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return rounds.evaluate_round(msg, context)


for _stage, (_on_train, _on_evaluate) in STAGES.items():
    app.train(_stage)(_on_train)
    app.evaluate(_stage)(_on_evaluate)
