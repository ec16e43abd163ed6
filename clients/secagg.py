"""The node's side of SecAgg+ (federation/secagg.py has the protocol and the maths).

Four messages per round (``train.secagg_setup``, ``train.secagg_share``,
``train.secagg_masked``, ``train.secagg_unmask``); the node's secrets for the round (its two
X25519 private keys, its self-mask seed, the shares it holds) live in ``context.state`` at the
node and never leave it except as the protocol allows: a share of a neighbour's self-mask
seed only if the server lists that neighbour as a survivor, a share of its mask key only if
the server lists it as dropped, never both for the same node in one round.

The stage functions work on plain dicts so that tests can run the whole protocol in one
process (tests/test_secagg.py); clients/client_app.py wraps them as Flower handlers.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import numpy as np

from federation import secagg as sa
from federation.errors import FederationError


def _ids(values: object) -> list[int]:
    assert isinstance(values, list)
    return [int(v) for v in values]


class NodeSecAgg:
    """One node's state across the four stages of one round."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.state: dict[str, Any] = {}

    # stage 1 ------------------------------------------------------------------------------
    def setup(self, cfg: dict[str, Any]) -> dict[str, Any]:
        c_sk, c_pk = sa.new_keypair()
        s_sk, s_pk = sa.new_keypair()
        self.state = {"round_id": bytes(cfg["round_id"]), "c_sk": c_sk, "s_sk": s_sk,
                      "b": secrets.token_bytes(32), "revealed": False}
        return {"c_pk": c_pk, "s_pk": s_pk}

    # stage 2 ------------------------------------------------------------------------------
    def share(self, cfg: dict[str, Any]) -> dict[str, Any]:
        st = self.state
        if bytes(cfg["round_id"]) != st.get("round_id"):
            raise FederationError("secure aggregation: share request for another round")
        nbrs = _ids(cfg["neighbours"])
        xs = {int(n): int(x) for n, x in zip(_ids(cfg["ids"]), _ids(cfg["xs"]), strict=True)}
        t = int(cfg["threshold"])
        group = [*nbrs, self.node_id]
        if t < 2 or t > len(group):
            raise FederationError(f"secure aggregation: threshold {t} impossible for a "
                                  f"neighbourhood of {len(group)}")
        pts = [xs[n] for n in group]
        sk_sh = sa.split(st["s_sk"], threshold=t, xs=pts)
        b_sh = sa.split(st["b"], threshold=t, xs=pts)
        c_pks = dict(zip(_ids(cfg["ids"]), cfg["c_pks"], strict=True))
        s_pks = dict(zip(_ids(cfg["ids"]), cfg["s_pks"], strict=True))
        st.update(neighbours=nbrs, xs=xs, threshold=t,
                  s_pks={n: bytes(s_pks[n]) for n in nbrs},
                  held={self.node_id: (sk_sh[xs[self.node_id]], b_sh[xs[self.node_id]])})
        to, boxes = [], []
        for n in nbrs:
            key = sa.agree(st["c_sk"], bytes(c_pks[n]), info=sa.SHARE_INFO,
                           context=sa.pair_context(st["round_id"], self.node_id, n))
            payload = sa.encode_shares(sk_sh[xs[n]], b_sh[xs[n]])
            boxes.append(sa.seal(key, self.node_id, n, st["round_id"], payload))
            to.append(str(n))
        st["c_pks"] = {n: bytes(c_pks[n]) for n in nbrs}
        return {"to": to, "boxes": boxes}

    # stage 3 ------------------------------------------------------------------------------
    def receive_shares(self, cfg: dict[str, Any]) -> None:
        st = self.state
        for sender, box in zip(_ids(cfg["from"]), cfg["boxes"], strict=True):
            if sender not in st["neighbours"]:
                raise FederationError(f"secure aggregation: a share from node {sender}, "
                                      "which is not a neighbour")
            key = sa.agree(st["c_sk"], st["c_pks"][sender], info=sa.SHARE_INFO,
                           context=sa.pair_context(st["round_id"], sender, self.node_id))
            st["held"][sender] = sa.decode_shares(
                sa.open_sealed(key, sender, self.node_id, st["round_id"], bytes(box)))

    def mask(self, update: np.ndarray, cfg: dict[str, Any]) -> tuple[bytes, int]:
        """The packed masked vector of ``weight * update``; and how many values were clipped."""
        st = self.state
        bits, qbits, clip = int(cfg["bits"]), int(cfg["qbits"]), float(cfg["clip"])
        q, clipped = sa.quantize(float(cfg["weight"]) * update, clip=clip, qbits=qbits)
        modulus = np.uint64((1 << bits) - 1)
        y = (q + sa.mask_stream(st["b"], q.size, bits)) & modulus
        for n in st["neighbours"]:
            key = sa.agree(st["s_sk"], st["s_pks"][n], info=sa.MASK_INFO,
                           context=sa.pair_context(st["round_id"], self.node_id, n))
            m = sa.mask_stream(key, q.size, bits)
            y = (y + m) & modulus if self.node_id < n else (y - m) & modulus
        st["masked"] = True
        return sa.pack(y, bits), clipped

    # stage 4 ------------------------------------------------------------------------------
    def unmask(self, cfg: dict[str, Any]) -> dict[str, Any]:
        st = self.state
        survivors, dropped = set(_ids(cfg["survivors"])), set(_ids(cfg["dropped"]))
        if survivors & dropped:
            raise FederationError("secure aggregation: a node listed as both survivor and "
                                  "dropped; refusing to reveal any share")
        if self.node_id not in survivors or not st.get("masked"):
            raise FederationError("secure aggregation: asked to unmask a round this node "
                                  "did not submit to; refusing")
        if st.get("revealed"):
            raise FederationError("secure aggregation: shares of this round were already "
                                  "revealed once; refusing a second request")
        st["revealed"] = True
        ids, kinds, shares = [], [], []
        for n, (sk_share, b_share) in st["held"].items():
            if n in survivors:
                ids.append(str(n))
                kinds.append("b")
                shares.append(b_share.to_bytes(66, "big"))
            elif n in dropped:
                ids.append(str(n))
                kinds.append("sk")
                shares.append(sk_share.to_bytes(66, "big"))
        return {"ids": ids, "kinds": kinds, "shares": shares, "x": st["xs"][self.node_id]}


def masked_reply(node: NodeSecAgg, cfg: dict[str, Any], global_flat: np.ndarray,
                 trained_flat: Callable[[], np.ndarray | None]) -> tuple[bytes, int] | None:
    """Receive the shares, train (``trained_flat``), mask the weighted update. None when the
    node trained nothing (refused): it then drops out of this round's sum."""
    node.receive_shares(cfg)
    trained = trained_flat()
    if trained is None:
        return None
    return node.mask(trained - global_flat, cfg)


def dump_state(node: NodeSecAgg) -> dict[str, Any]:
    """The node's round state as ConfigRecord-ready values (kept in ``context.state``)."""
    st = node.state
    out: dict[str, Any] = {"node_id": str(node.node_id)}
    for k in ("round_id", "c_sk", "s_sk", "b"):
        if k in st:
            out[k] = st[k]
    out["revealed"] = bool(st.get("revealed", False))
    out["masked"] = bool(st.get("masked", False))
    if "neighbours" in st:
        out["neighbours"] = [str(n) for n in st["neighbours"]]
        out["threshold"] = int(st["threshold"])
        out["xs_ids"] = [str(n) for n in st["xs"]]
        out["xs"] = [int(x) for x in st["xs"].values()]
        out["s_pks"] = [st["s_pks"][n] for n in st["neighbours"]]
        out["c_pks"] = [st["c_pks"][n] for n in st["neighbours"]]
        out["held_ids"] = [str(n) for n in st["held"]]
        out["held"] = [sa.encode_shares(*v) for v in st["held"].values()]
    return out


def load_state(rec: dict[str, Any]) -> NodeSecAgg:
    node = NodeSecAgg(int(rec["node_id"]))
    st: dict[str, Any] = {k: bytes(rec[k]) for k in ("round_id", "c_sk", "s_sk", "b")
                          if k in rec}
    st["revealed"] = bool(rec.get("revealed", False))
    st["masked"] = bool(rec.get("masked", False))
    if "neighbours" in rec:
        nbrs = _ids(rec["neighbours"])
        st.update(neighbours=nbrs, threshold=int(rec["threshold"]),
                  xs=dict(zip(_ids(rec["xs_ids"]), _ids(rec["xs"]), strict=True)),
                  s_pks={n: bytes(v) for n, v in zip(nbrs, rec["s_pks"], strict=True)},
                  c_pks={n: bytes(v) for n, v in zip(nbrs, rec["c_pks"], strict=True)},
                  held={n: sa.decode_shares(bytes(v))
                        for n, v in zip(_ids(rec["held_ids"]), rec["held"], strict=True)})
    node.state = st
    return node
