"""SecAgg+ (federation/secagg.py, clients/secagg.py, server/secagg.py) run honestly in one
process with real cryptography: exactness, dropouts, the sparse graph, what the server holds,
the building blocks. The attacks of a malicious aggregator are in test_secagg_malicious.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from federation import metrics as fm
from federation import secagg as sa
from federation.errors import FederationError
from tests.secagg_driver import (
    Federation,
    decode_mean,
    finish,
    mask_all,
    open_session,
    revealed,
    strip_masks,
    train_vectors,
)


def _updates(fed: Federation, dim: int, seed: int) -> tuple[dict[int, np.ndarray],
                                                             dict[int, int]]:
    rng = np.random.default_rng(seed)
    return ({n: rng.normal(0, 0.3, dim) for n in fed.ids},
            {n: int(rng.integers(50, 5000)) for n in fed.ids})


def weighted_mean(updates: dict[int, np.ndarray], counts: dict[int, int],
                  keep: set[int]) -> np.ndarray:
    total = sum(counts[n] for n in keep)
    return sum(counts[n] / total * updates[n] for n in keep)  # type: ignore[return-value]


def test_secure_sum_equals_count_weighted_fedavg_within_quantisation_error() -> None:
    fed = Federation(5, seed=1)
    updates, counts = _updates(fed, 3000, seed=1)
    rnd = open_session(fed)
    mask_all(fed, rnd, train_vectors(fed, updates, counts))
    length = sa.train_layout(3000, 4.0).length
    got = decode_mean(fed, finish(fed, rnd, length=length), len(rnd.masked), 3000)
    want = weighted_mean(updates, counts, set(fed.ids))
    # per value and agency one stochastic rounding of step 8/(2^24-1), scaled by cap/sum(n)
    step = 8.0 / (2**24 - 1) * 65536 / sum(counts.values())
    assert np.max(np.abs(got - want)) < 5 * step
    assert rnd.srv.bits == 24 + 3


def test_dropouts_after_sharing_do_not_stop_the_round() -> None:
    fed = Federation(6, seed=2)  # t = 4 of 6: two may drop
    updates, counts = _updates(fed, 500, seed=2)
    gone = set(fed.ids[:2])
    rnd = open_session(fed)
    mask_all(fed, rnd, train_vectors(fed, updates, counts), drop=gone)
    length = sa.train_layout(500, 4.0).length
    got = decode_mean(fed, finish(fed, rnd, length=length), len(rnd.masked), 500)
    want = weighted_mean(updates, counts, set(fed.ids) - gone)
    assert np.max(np.abs(got - want)) < 1e-4


def test_too_many_dropouts_fail_loudly_instead_of_guessing() -> None:
    fed = Federation(6, seed=3)
    updates, counts = _updates(fed, 100, seed=3)
    rnd = open_session(fed)
    mask_all(fed, rnd, train_vectors(fed, updates, counts), drop=set(fed.ids[:3]))
    with pytest.raises(FederationError, match="fewer than its threshold 4"):
        finish(fed, rnd, length=sa.train_layout(100, 4.0).length)


def test_sparse_graph_secagg_plus() -> None:
    fed = Federation(9, seed=4, degree=4)
    updates, counts = _updates(fed, 200, seed=4)
    rnd = open_session(fed)
    assert all(len(v) < 8 for v in rnd.srv.graph.values())
    gone = {fed.ids[0]}
    mask_all(fed, rnd, train_vectors(fed, updates, counts), drop=gone)
    got = decode_mean(fed, finish(fed, rnd, length=sa.train_layout(200, 4.0).length),
                      len(rnd.masked), 200)
    want = weighted_mean(updates, counts, set(fed.ids) - gone)
    assert np.max(np.abs(got - want)) < 1e-4


def test_what_the_server_holds_per_node_is_independent_of_its_input() -> None:
    """Three nodes, one with an all-zero input, one with a large structured one: each
    masked vector is uniform on the modulus (chi-square on the top bits) and uncorrelated
    with the input, and the two are indistinguishable in distribution."""
    dim = 20000
    fed = Federation(3, seed=5)
    a, b = np.zeros(dim), np.sin(np.arange(dim) / 50.0) * 3.0
    inputs = dict(zip(fed.ids, (a, b, -b), strict=True))
    vectors = {n: sa.quantize(v, lo=-4, hi=4, qbits=24)[0] for n, v in inputs.items()}
    rnd = open_session(fed)
    mask_all(fed, rnd, vectors)
    for n, blob in rnd.masked.items():
        v = sa.unpack(blob, rnd.srv.bits, dim)
        top = (v >> np.uint64(rnd.srv.bits - 4)).astype(int)  # 16 buckets
        assert stats.chisquare(np.bincount(top, minlength=16)).pvalue > 1e-4, n
        r = np.corrcoef(v.astype(np.float64), inputs[n] if inputs[n].any() else b)[0, 1]
        assert abs(r) < 0.05, n
    va = sa.unpack(rnd.masked[fed.ids[0]], rnd.srv.bits, dim).astype(np.float64)
    vb = sa.unpack(rnd.masked[fed.ids[1]], rnd.srv.bits, dim).astype(np.float64)
    assert stats.ks_2samp(va, vb).pvalue > 1e-4


def test_train_and_evaluation_sums_of_one_session_use_independent_secrets() -> None:
    """The evaluation sum reuses the session's shared keys, not its secrets: an agency that
    survives training (its training self-mask revealed) and then drops out of evaluation
    (its evaluation mask key revealed) still has its training input hidden."""
    fed = Federation(4, seed=6)
    rng = np.random.default_rng(6)
    train = {n: rng.integers(0, 2**24, 64).astype(np.uint64) for n in fed.ids}
    ev = {n: rng.integers(0, 2**24, 16).astype(np.uint64) for n in fed.ids}
    rnd = open_session(fed, sums=("train", "evaluate"))
    mask_all(fed, rnd, train)
    train_masked = dict(rnd.masked)
    total = finish(fed, rnd, length=64)
    modulus = (1 << rnd.srv.bits) - 1
    assert np.array_equal(total, sum(train.values()) & modulus)
    dropper = fed.ids[0]
    ev_masked = {n: fed.step(n, "mask", "evaluate", ev[n]) for n in fed.ids if n != dropper}
    rnd.masked = ev_masked
    total = finish(fed, rnd, sum_name="evaluate", length=16)
    assert np.array_equal(total, sum(ev[n] for n in ev_masked) & modulus)
    # the server now holds the dropper's training self-mask seed (it survived training) and
    # its evaluation mask seed (it dropped out of evaluation); with them its training input
    # stays masked, while the true training seeds would have exposed it
    b_train = sa.combine(revealed(rnd, "train", dropper, "b"), threshold=3)
    s_eval = sa.combine(revealed(rnd, "evaluate", dropper, "s"), threshold=3)
    blob = train_masked[dropper]
    attempt = strip_masks(fed, rnd, dropper, "train", b_train, s_eval, blob, 64)
    assert not np.array_equal(attempt, train[dropper])
    true_s = bytes.fromhex(fed.node(dropper).state["sums"]["train"]["s"])
    assert np.array_equal(strip_masks(fed, rnd, dropper, "train", b_train, true_s, blob, 64),
                          train[dropper])  # the attempt above was computed correctly


def test_mask_streams_use_the_whole_key() -> None:
    key = bytes(range(32))
    base = sa.mask_stream(key, 64, 27)
    for i in range(32):  # any changed byte changes the stream
        other = bytearray(key)
        other[i] ^= 0x01
        assert not np.array_equal(base, sa.mask_stream(bytes(other), 64, 27)), i
    with pytest.raises(ValueError):
        sa.mask_stream(key[:4], 8, 27)  # no short seeds, let alone a 32-bit one
    s1, p1 = sa.new_keypair()
    s2, p2 = sa.new_keypair()
    k12 = sa.agree(s1, p2, info=sa.MASK_INFO, context=b"r")
    assert len(k12) == 32 and k12 == sa.agree(s2, p1, info=sa.MASK_INFO, context=b"r")
    assert k12 != sa.agree(s2, p1, info=sa.MASK_INFO, context=b"another round")
    # seeds are 128-bit and every bit matters for the key they stand for
    seed = bytes(range(16))
    for i in range(16):
        other = bytearray(seed)
        other[i] ^= 0x80
        assert sa.seed_keypair(seed)[1] != sa.seed_keypair(bytes(other))[1]
        assert sa.self_mask_key(seed, b"c") != sa.self_mask_key(bytes(other), b"c")


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
@given(secret=st.binary(min_size=16, max_size=16), t=st.integers(2, 6), extra=st.integers(0, 4))
def test_shamir_any_t_shares_rebuild_and_fewer_do_not(secret: bytes, t: int, extra: int
                                                      ) -> None:
    xs = list(range(1, t + extra + 1))
    shares = sa.split(secret, threshold=t, xs=xs)
    assert all(0 <= v < sa.PRIME for v in shares.values())
    picked = dict(list(shares.items())[extra:])
    assert sa.combine(picked, threshold=t) == secret
    with pytest.raises(FederationError):
        sa.combine(dict(list(shares.items())[: t - 1]), threshold=t)


def test_thresholds_are_a_strict_majority_and_masking_needs_enough_partners() -> None:
    for g in range(2, 40):
        t = sa.share_threshold(g, 0.5)
        assert 2 * t > g and t <= g  # no two disjoint groups of t holders
        # with fewer than g - t + 1 partners, the rest could sign a set that drops them all
        assert g - sa.min_sharers(g, t) < t
    assert sa.share_threshold(6, 0.67) == 5
    assert sa.share_threshold(100, 0.57) == 58  # exact: 0.57 * 100 is 56.99... in floats


def test_nodes_refuse_to_reveal_twice() -> None:
    fed = Federation(4, seed=7)
    rng = np.random.default_rng(7)
    vectors = {n: rng.integers(0, 2**24, 8).astype(np.uint64) for n in fed.ids}
    rnd = open_session(fed)
    mask_all(fed, rnd, vectors)
    cfg = rnd.srv.consistency_config("train", rnd.masked)
    sigs = {n: fed.step(n, "consistency", "train", cfg)["signature"] for n in fed.ids}
    unmask = rnd.srv.unmask_configs("train", sigs)
    n0 = fed.ids[0]
    fed.step(n0, "unmask", "train", unmask[n0])
    with pytest.raises(FederationError, match="already revealed"):
        fed.step(n0, "unmask", "train", unmask[n0])
    with pytest.raises(FederationError, match="already confirmed"):
        fed.step(n0, "consistency", "train", cfg)


def test_graph_is_symmetric_and_logarithmic_by_default() -> None:
    small = sa.neighbours(list(range(1, 8)), 0)
    assert all(len(v) == 6 for v in small.values())  # up to 10 agencies: everyone
    big = sa.neighbours(list(range(1, 101)), 0)
    assert all(14 <= len(v) <= 20 for v in big.values())  # 2*ceil(log2 100)+2 = 16, +ties
    assert all(a in big[b] for a, vs in big.items() for b in vs)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(5, 400), k=st.integers(1, 60))
def test_pooled_metrics_from_histograms_equal_the_metrics_of_binned_scores(seed: int, n: int,
                                                                          k: int) -> None:
    """What the consortium computes from summed histograms is exactly the ranking metrics of
    the pooled scores on the shared grid (ties as the exact metrics treat them)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.15).astype(float)
    p = 1 / (1 + np.exp(-(rng.normal(-2, 2, n) + 2 * y)))
    parts = np.array_split(np.arange(n), 3)  # three agencies
    pos = sum(fm.histograms(y[i], p[i])[0] for i in parts)
    neg = sum(fm.histograms(y[i], p[i])[1] for i in parts)
    got = fm.from_histograms(pos, neg, k=k)
    bins = fm.score_bins(p).astype(float)
    for name, exact in (("roc_auc", fm.roc_auc(y, bins)), ("pr_auc", fm.pr_auc(y, bins))):
        if math.isnan(exact):
            assert math.isnan(got[name])
        else:
            assert got[name] == pytest.approx(exact, abs=1e-12)
    # precision@k: the expectation over orders of the ties in the straddling bin
    order = np.argsort(-bins, kind="mergesort")
    kk = min(k, n)
    edge = bins[order[kk - 1]]
    above = y[bins > edge].sum()
    in_edge = bins == edge
    taken = kk - int((bins > edge).sum())
    expected = (above + taken * y[in_edge].mean()) / kk
    assert got[f"precision_at_{k}"] == pytest.approx(expected, abs=1e-12)


def test_binned_roc_auc_is_close_to_the_exact_one_on_model_like_scores() -> None:
    """The grid (128 bins over logits -8..8) costs little on scores like the advert model's."""
    rng = np.random.default_rng(11)
    n = 20000
    y = (rng.random(n) < 0.06).astype(float)
    z = rng.normal(-3.2, 1.1, n) + 1.6 * y
    p = 1 / (1 + np.exp(-z))
    pos, neg = fm.histograms(y, p)
    got = fm.from_histograms(pos, neg, k=50)
    assert abs(got["roc_auc"] - fm.roc_auc(y, p)) < 0.002
    assert abs(got["pr_auc"] - fm.pr_auc(y, p)) < 0.02  # ties at the top of the ranking
