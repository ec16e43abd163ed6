"""SecAgg+ (federation/secagg.py, clients/secagg.py, server/secagg.py): the protocol run in
one process with real cryptography, then through Flower's simulation engine with DP."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from clients.secagg import NodeSecAgg, dump_state, load_state
from federation import secagg as sa
from federation.config import SecAggSettings
from federation.errors import FederationError
from server.secagg import ServerRound


def run_protocol(updates: dict[int, np.ndarray], sizes: dict[int, float], *,
                 drop_after_share: frozenset[int] = frozenset(),
                 cfg: SecAggSettings | None = None, roundtrip_state: bool = True,
                 ) -> tuple[np.ndarray, dict[int, bytes], ServerRound]:
    """All four stages, message by message, as the Flower handlers run them (including the
    node state going through its ConfigRecord form between stages)."""
    srv = ServerRound(cfg or SecAggSettings(mode="on"))
    nodes = {n: NodeSecAgg(n) for n in updates}

    def persist(n: int) -> None:
        if roundtrip_state:
            nodes[n] = load_state(dump_state(nodes[n]))

    r1 = {}
    for n, node in nodes.items():
        r1[n] = {**node.setup(srv.setup_config()), "num_examples": sizes[n]}
        persist(n)
    shares = srv.share_configs(r1)
    r2 = {}
    for n in nodes:
        r2[n] = nodes[n].share(shares[n])
        persist(n)
    masked_cfgs = srv.masked_configs(r2)
    masked = {}
    for n in nodes:
        nodes[n].receive_shares(masked_cfgs[n])
        persist(n)
        if n in drop_after_share:
            continue
        masked[n], clipped = nodes[n].mask(updates[n], masked_cfgs[n])
        assert clipped == 0
        persist(n)
    unmask_cfg = srv.unmask_config(sorted(masked))
    r4 = {n: nodes[n].unmask(unmask_cfg) for n in masked}
    length = next(iter(updates.values())).size
    return srv.aggregate(masked, length, r4), masked, srv


def weighted_mean(updates: dict[int, np.ndarray], sizes: dict[int, float],
                  keep: set[int]) -> np.ndarray:
    total = sum(sizes[n] for n in keep)
    return sum(sizes[n] / total * updates[n] for n in keep)  # type: ignore[return-value]


def _updates(k: int, dim: int, seed: int) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    rng = np.random.default_rng(seed)
    ids = [int(x) for x in rng.integers(1, 2**63, size=k)]
    return ({n: rng.normal(0, 0.3, dim) for n in ids},
            {n: float(rng.integers(50, 5000)) for n in ids})


def test_secure_sum_equals_weighted_fedavg_within_quantisation_error() -> None:
    updates, sizes = _updates(5, 3000, seed=1)
    got, _, srv = run_protocol(updates, sizes)
    want = weighted_mean(updates, sizes, set(updates))
    step = 2 * 4.0 / (2**24 - 1)  # clip range 4, 24 bits
    assert np.max(np.abs(got - want)) < 5 * step * 5  # five stochastic roundings, /weight
    assert srv.bits == 24 + 3


def test_dropouts_after_sharing_do_not_stop_the_round() -> None:
    updates, sizes = _updates(6, 500, seed=2)
    gone = frozenset(sorted(updates)[:2])
    got, _, _ = run_protocol(updates, sizes, drop_after_share=gone)
    want = weighted_mean(updates, sizes, set(updates) - gone)
    assert np.max(np.abs(got - want)) < 1e-4


def test_too_many_dropouts_fail_loudly_instead_of_guessing() -> None:
    updates, sizes = _updates(3, 100, seed=3)
    with pytest.raises(FederationError, match="share"):
        run_protocol(updates, sizes, drop_after_share=frozenset(sorted(updates)[:2]))


def test_sparse_graph_secagg_plus() -> None:
    updates, sizes = _updates(9, 200, seed=4)
    cfg = SecAggSettings(mode="on", num_neighbours=4)
    got, _, srv = run_protocol(updates, sizes, cfg=cfg,
                               drop_after_share=frozenset(sorted(updates)[:1]))
    assert all(len(v) < 8 for v in srv.graph.values())
    want = weighted_mean(updates, sizes, set(updates) - set(sorted(updates)[:1]))
    assert np.max(np.abs(got - want)) < 1e-4


def test_what_the_server_holds_per_node_is_independent_of_its_update() -> None:
    """Two nodes, one with an all-zero update, one with a large structured one: each
    masked vector is uniform on the modulus (chi-square on the top bits) and uncorrelated
    with the update, and the two are indistinguishable in distribution."""
    dim = 20000
    a = np.zeros(dim)
    b = np.sin(np.arange(dim) / 50.0) * 3.0
    updates = {11: a, 22: b, 33: -b}
    sizes = {11: 100.0, 22: 100.0, 33: 100.0}
    _, masked, srv = run_protocol(updates, sizes)
    for n, blob in masked.items():
        v = sa.unpack(blob, srv.bits, dim)
        top = (v >> np.uint64(srv.bits - 4)).astype(int)  # 16 buckets
        counts = np.bincount(top, minlength=16)
        assert stats.chisquare(counts).pvalue > 1e-4, n
        r = np.corrcoef(v.astype(np.float64), updates[n] if updates[n].any() else b)[0, 1]
        assert abs(r) < 0.05, n
    va = sa.unpack(masked[11], srv.bits, dim).astype(np.float64)
    vb = sa.unpack(masked[22], srv.bits, dim).astype(np.float64)
    assert stats.ks_2samp(va, vb).pvalue > 1e-4


def test_mask_streams_use_the_whole_key() -> None:
    key = bytes(range(32))
    base = sa.mask_stream(key, 64, 27)
    for i in range(32):  # any changed byte changes the stream
        other = bytearray(key)
        other[i] ^= 0x01
        assert not np.array_equal(base, sa.mask_stream(bytes(other), 64, 27)), i
    with pytest.raises(ValueError):
        sa.mask_stream(key[:4], 8, 27)  # no short seeds, let alone a 32-bit one
    # the agreed pairwise key is 32 bytes of HKDF output, the same at both ends
    s1, p1 = sa.new_keypair()
    s2, p2 = sa.new_keypair()
    k12 = sa.agree(s1, p2, info=sa.MASK_INFO, context=b"r")
    assert len(k12) == 32 and k12 == sa.agree(s2, p1, info=sa.MASK_INFO, context=b"r")
    assert k12 != sa.agree(s2, p1, info=sa.MASK_INFO, context=b"another round")


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(9, 56), values=st.lists(st.integers(0, 2**56 - 1), min_size=1,
                                                  max_size=70))
def test_pack_then_unpack_is_identity_at_the_modulus_width(bits: int, values: list[int]
                                                           ) -> None:
    v = np.array([x % (1 << bits) for x in values], dtype=np.uint64)
    blob = sa.pack(v, bits)
    assert len(blob) == math.ceil(len(v) * bits / 8)
    assert np.array_equal(sa.unpack(blob, bits, len(v)), v)


@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), t=st.integers(2, 6), extra=st.integers(0, 4))
def test_shamir_any_t_shares_rebuild_and_fewer_do_not(secret: bytes, t: int, extra: int
                                                      ) -> None:
    xs = list(range(1, t + extra + 1))
    shares = sa.split(secret, threshold=t, xs=xs)
    picked = dict(list(shares.items())[extra:])
    assert sa.combine(picked, threshold=t) == secret
    with pytest.raises(FederationError):
        sa.combine(dict(list(shares.items())[: t - 1]), threshold=t)


def test_nodes_refuse_to_reveal_both_secrets_of_one_node() -> None:
    updates, sizes = _updates(3, 10, seed=5)
    srv = ServerRound(SecAggSettings(mode="on"))
    nodes = {n: NodeSecAgg(n) for n in updates}
    r1 = {n: {**nodes[n].setup(srv.setup_config()), "num_examples": sizes[n]} for n in nodes}
    cfgs = srv.share_configs(r1)
    r2 = {n: nodes[n].share(cfgs[n]) for n in nodes}
    mc = srv.masked_configs(r2)
    n0, n1 = sorted(nodes)[:2]
    for n in nodes:
        nodes[n].receive_shares(mc[n])
        nodes[n].mask(updates[n], mc[n])
    bad: dict[str, Any] = {"survivors": [str(n0)], "dropped": [str(n0)]}
    with pytest.raises(FederationError, match="both survivor and dropped"):
        nodes[n1].unmask(bad)
    nodes[n1].unmask(srv.unmask_config(sorted(nodes)))
    with pytest.raises(FederationError, match="already revealed"):
        nodes[n1].unmask(srv.unmask_config([n for n in nodes if n != n0]))


def test_graph_is_symmetric_and_logarithmic_by_default() -> None:
    small = sa.neighbours(list(range(1, 8)), 0)
    assert all(len(v) == 6 for v in small.values())  # up to 10 agencies: everyone
    big = sa.neighbours(list(range(1, 101)), 0)
    assert all(14 <= len(v) <= 20 for v in big.values())  # 2*ceil(log2 100)+2 = 16, +ties
    assert all(a in big[b] for a, vs in big.items() for b in vs)
