"""TEST ONLY: the node's real ClientApp, with one agency's training reply corrupted.

``make_app({partition: attack})`` returns a ClientApp that runs clients.client_app's own
train and evaluate for every node, then, for the nodes with those ``partition-id`` values
only, replaces the model arrays of the training reply after the node really trained (and
spent privacy budget; its egress receipt describes the honest reply). Nothing in the product
imports this module; a deployed node runs ``clients.client_app:app``, which has no such
switch.

Attacks (``u`` = the node's honest update, its model minus the global model it was sent):

* ``nan``: one value of the first float array set to NaN.
* ``shape``: the first matrix loses its last row.
* ``scale100``: global + 100 u.
* ``flipN``: global - N u (sign flipped, scaled by N), e.g. ``flip4``.
* ``noiseS``: global + Gaussian noise of standard deviation S per coordinate, e.g. ``noise1``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

import clients.client_app as node_app
from clients.mods import with_node_mods


def corrupt(sent: dict[str, np.ndarray], trained: dict[str, np.ndarray], attack: str,
            rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {k: v.copy() for k, v in trained.items()}
    floats = [k for k, v in out.items() if v.dtype.kind == "f"]
    if attack == "nan":
        out[floats[0]].reshape(-1)[0] = np.nan
    elif attack == "shape":
        name = next(k for k in floats if out[k].ndim == 2)
        out[name] = out[name][:-1]
    elif attack == "scale100" or attack.startswith("flip"):
        factor = 100.0 if attack == "scale100" else -float(attack.removeprefix("flip"))
        for k in floats:
            out[k] = (sent[k] + factor * (trained[k] - sent[k])).astype(trained[k].dtype)
    elif attack.startswith("noise"):
        scale = float(attack.removeprefix("noise"))
        for k in floats:
            noise = rng.normal(0.0, scale, size=sent[k].shape)
            out[k] = (sent[k] + noise).astype(trained[k].dtype)
    else:
        raise ValueError(f"unknown attack {attack!r}")
    return out


def make_app(attacks: dict[int, str]) -> ClientApp:
    app = ClientApp()
    node_train = with_node_mods(node_app.train)  # contained and receipted like the node's own
    node_evaluate = with_node_mods(node_app.evaluate)
    rng = np.random.default_rng(0)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = node_train(msg, context)
        attack = attacks.get(int(str(context.node_config.get("partition-id", -1))))
        if attack is None:
            return reply
        if reply.has_error() or "arrays" not in reply.content.array_records:
            return reply
        sent = msg.content.array_records["arrays"].to_numpy_ndarrays()
        names = list(msg.content.array_records["arrays"].keys())
        trained = {k: a.numpy() for k, a in reply.content.array_records["arrays"].items()}
        bad = corrupt(dict(zip(names, sent, strict=True)), trained, attack, rng)
        reply.content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                               for k, v in bad.items()})
        return reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return node_evaluate(msg, context)

    return app
