"""A federation of SecAgg+ nodes in one process, for the protocol tests.

Real X25519, ChaCha20, Shamir shares, EC P-256 node keys and a real roster; every node's
state goes through its persisted JSON form between stages, as the Flower handlers keep it in
``context.state``. The server is the project's own ServerSession; the malicious tests change
what it sends (tests/test_secagg_malicious.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from clients.secagg import Identity, NodeSecAgg, Safety
from federation import secagg as sa
from federation.config import SecAggSettings
from federation.roster import Member, Roster
from server.secagg import ServerSession

RUN_ID = "4242"


def make_roster(keys: dict[str, ec.EllipticCurvePrivateKey]) -> Roster:
    return Roster(version=1, issued_at=dt.datetime.now(dt.UTC).isoformat(), consortium="test",
                  members=tuple(Member.from_key(a, k.public_key()) for a, k in keys.items()))


@dataclass
class Federation:
    """k agencies with node keys on one approved roster, and the server's session."""

    k: int
    seed: int = 0
    degree: int = 0
    fraction: float = 0.5
    min_threshold: float = 0.5
    min_agencies: int = 3
    qbits: int = 24
    ids: list[int] = field(default_factory=list)
    agency: dict[int, str] = field(default_factory=dict)
    keys: dict[int, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    state: dict[int, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.ids = sorted({int(x) for x in rng.integers(1, 2**62, size=self.k)})
        for i, n in enumerate(self.ids):
            self.agency[n] = f"agency-{i:02d}"
            self.keys[n] = ec.generate_private_key(ec.SECP256R1())
            self.state[n] = None
        self.roster = make_roster({self.agency[n]: self.keys[n] for n in self.ids})

    def safety(self, **changes: Any) -> Safety:
        base = {"fraction": self.fraction, "degree": self.degree,
                "quantization_bits": self.qbits, "min_threshold": self.min_threshold,
                "min_agencies": self.min_agencies}
        return Safety(**{**base, **changes})

    def node(self, n: int, **safety: Any) -> NodeSecAgg:
        identity = Identity(node_id=n, agency=self.agency[n], run_id=RUN_ID, key=self.keys[n],
                            roster=self.roster)
        return NodeSecAgg.load(identity, self.safety(**safety), self.state[n])

    def step(self, n: int, stage: str, *args: Any, **safety: Any) -> Any:
        """Run one stage at node n from its persisted state, then persist it again."""
        node = self.node(n, **safety)
        try:
            return getattr(node, stage)(*args)
        finally:
            self.state[n] = node.dump()

    def server(self, **changes: Any) -> ServerSession:
        settings = SecAggSettings(mode="on", quantization_bits=self.qbits,
                                  num_neighbours=self.degree,
                                  threshold=changes.pop("threshold", self.fraction))
        changes.setdefault("sums", ("train",))
        return ServerSession(settings, **changes)


@dataclass
class Round:
    """What an honest server collected in one session (for attacks to reuse)."""

    srv: ServerSession
    setup: dict[int, dict[str, Any]]
    share_cfg: dict[int, dict[str, Any]]  # each node's share request
    shares: dict[int, dict[str, Any]]
    masked_cfgs: dict[int, dict[str, Any]]
    masked: dict[int, bytes] = field(default_factory=dict)
    reveals: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)


def set_up(fed: Federation, *, server_round: int = 1, sums: tuple[str, ...] = ("train",),
           nodes: Iterable[int] | None = None) -> tuple[ServerSession, dict[int, dict[str, Any]]]:
    """The set-up stage at every node (or ``nodes``): the server's session and the replies."""
    srv = fed.server(sums=sums)
    srv.start(RUN_ID, server_round)
    setup: dict[int, dict[str, Any]] = {}
    for n in (list(nodes) if nodes is not None else fed.ids):
        node = fed.node(n)
        setup[n] = node.setup(srv.setup_config(), server_round=server_round)
        fed.state[n] = node.dump()
    return srv, setup


def open_session(fed: Federation, *, server_round: int = 1, sums: tuple[str, ...] = ("train",),
                 nodes: Iterable[int] | None = None) -> Round:
    """Set-up and share stages, honestly."""
    srv, setup = set_up(fed, server_round=server_round, sums=sums, nodes=nodes)
    members = list(setup)
    share_cfg = srv.share_configs(setup)
    shares = {n: fed.step(n, "share", share_cfg[n]) for n in members}
    return Round(srv, setup, share_cfg, shares, srv.masked_configs(shares))


def mask_all(fed: Federation, rnd: Round, vectors: dict[int, np.ndarray], *,
             sum_name: str = "train", drop: Iterable[int] = (), deliver: bool = True) -> None:
    gone = set(drop)
    for n in rnd.srv.sharers:
        if deliver:
            fed.step(n, "receive_shares", rnd.masked_cfgs[n])
        if n not in gone:
            rnd.masked[n] = fed.step(n, "mask", sum_name, vectors[n])


def finish(fed: Federation, rnd: Round, *, sum_name: str = "train", length: int) -> np.ndarray:
    """Consistency and unmask stages, honestly; the integer sum of the survivors."""
    srv = rnd.srv
    cfg = srv.consistency_config(sum_name, rnd.masked)
    signatures = {n: fed.step(n, "consistency", sum_name, cfg)["signature"] for n in rnd.masked}
    reveals = {n: fed.step(n, "unmask", sum_name, c)
               for n, c in srv.unmask_configs(sum_name, signatures).items()}
    rnd.reveals[sum_name] = reveals
    return srv.unmask(sum_name, rnd.masked, length, reveals)


def revealed(rnd: Round, sum_name: str, owner: int, kind: str) -> dict[int, int]:
    """The shares of one owner's secret that the server collected in one sum."""
    out = {}
    for r in rnd.reveals.get(sum_name, {}).values():
        for o, k, share in zip(r["ids"], r["kinds"], r["shares"], strict=True):
            if int(o) == owner and k == kind:
                out[int(r["x"])] = int.from_bytes(share, "big")
    return out


def strip_masks(fed: Federation, rnd: Round, owner: int, sum_name: str, b_seed: bytes,
                s_seed: bytes, blob: bytes, length: int) -> np.ndarray:
    """What a server holding ``b_seed`` and ``s_seed`` for ``owner`` computes from its masked
    vector: the input itself if both are that sum's true seeds."""
    srv = rnd.srv
    bits = srv.bits
    modulus = np.uint64((1 << bits) - 1)
    k = srv.sums.index(sum_name)
    y = sa.unpack(blob, bits, length)
    y = (y - sa.mask_stream(sa.self_mask_key(b_seed, srv.session_id + sum_name.encode()),
                            length, bits)) & modulus
    s_sk, _ = sa.seed_keypair(s_seed)
    for j in srv.graph[owner]:
        key = sa.agree(s_sk, srv.keys[j]["s_pks"][k], info=sa.MASK_INFO,
                       context=sa.pair_context(srv.session_id, sum_name, owner, j))
        m = sa.mask_stream(key, length, bits)
        y = (y - m) & modulus if owner < j else (y + m) & modulus
    return np.asarray(y)


def train_vectors(fed: Federation, updates: dict[int, np.ndarray], counts: dict[int, int], *,
                  clip: float = 4.0, cap: int = 65536) -> dict[int, np.ndarray]:
    """Each node's train-sum vector, encoded as the ClientApp encodes it."""
    layout = sa.train_layout(next(iter(updates.values())).size, clip)
    out = {}
    for n, u in updates.items():
        w = min(counts[n], cap) / cap
        out[n], _ = layout.encode({"update": w * u, "loss": [0.0],
                                   "examples": [min(counts[n], cap)], "rows_set_aside": [0]},
                                  qbits=fed.qbits)
    return out


def decode_mean(fed: Federation, total: np.ndarray, summands: int, size: int, *,
                clip: float = 4.0, cap: int = 65536) -> np.ndarray:
    sums = sa.train_layout(size, clip).decode(total, summands, qbits=fed.qbits)
    result: np.ndarray = cap * sums["update"] / sums["examples"][0]
    return result
