"""Update validation and robust aggregation (server/robust.py, server/strategy.py).

Unit level: the checks and aggregates on synthetic arrays, and the real strategy's
aggregate_train on real Flower reply messages. Slow: real Flower simulations with real nodes,
where tests/poison_app.py corrupts one agency's training reply after it really trained.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays as np_arrays

from federation.config import RunSettings
from federation.errors import ConfigError, QuorumError
from server.robust import (
    check_update,
    krum_scores,
    norm_rejections,
    robust_aggregate,
    to_numpy,
    to_record,
    trim_count,
    update_norm,
)
from server.strategy import AccountableStrategy, RunLog, build_strategy

FLAT = {"task.name": "advert-risk", "task.num_buckets": 64, "privacy.target_epsilon": 3.0,
        "privacy.target_delta": 1e-5, "secagg.mode": "off"}
METHODS = ("mean", "median", "trimmed_mean", "krum")


def _model(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"net.weight": (scale * rng.normal(size=(1, 8))).astype(np.float32),
            "net.bias": (scale * rng.normal(size=(1,))).astype(np.float32)}


def _content(arrays: dict[str, np.ndarray], examples: float = 100.0) -> RecordDict:
    return RecordDict({
        "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
        "metrics": MetricRecord({"num-examples": examples, "train_loss": 0.5,
                                 "epsilon": 1.0, "delta": 1e-5}),
        "agency": ConfigRecord({"agency": "agency", "status": "ok", "reason": ""}),
    })


# --- check_update --------------------------------------------------------------------------

def test_an_honest_update_passes_and_each_fault_is_named() -> None:
    rng = np.random.default_rng(0)
    ref = _model(rng)
    good = {k: v + 0.01 for k, v in ref.items()}
    reason, arrays = check_update(ref, _content(good), "num-examples")
    assert reason is None and arrays is not None
    np.testing.assert_array_equal(arrays["net.weight"], good["net.weight"])

    nan = {k: v.copy() for k, v in good.items()}
    nan["net.weight"][0, 3] = np.nan
    nan["net.weight"][0, 4] = np.inf
    reason, arrays = check_update(ref, _content(nan), "num-examples")
    assert arrays is None and reason == ("array 'net.weight' holds 2 non-finite values "
                                         "(NaN or infinity)")

    shape = {**good, "net.weight": good["net.weight"][:, :7]}
    reason, _ = check_update(ref, _content(shape), "num-examples")
    assert reason == "array 'net.weight' has shape (1, 7), the global model's is (1, 8)"

    dtype = {**good, "net.bias": good["net.bias"].astype(np.float64)}
    reason, _ = check_update(ref, _content(dtype), "num-examples")
    assert reason == "array 'net.bias' has dtype float64, the global model's is float32"

    missing = {"net.weight": good["net.weight"], "extra": good["net.bias"]}
    reason, _ = check_update(ref, _content(missing), "num-examples")
    assert reason is not None
    assert "missing arrays 'net.bias'" in reason and "unexpected arrays 'extra'" in reason

    two = _content(good)
    two["more"] = ArrayRecord({"x": Array(np.zeros(2, dtype=np.float32))})
    reason, _ = check_update(ref, two, "num-examples")
    assert reason == "sent 2 array records, expected exactly 1 (the model)"

    for examples in (0.0, -3.0, math.nan, math.inf):
        reason, _ = check_update(ref, _content(good, examples), "num-examples")
        assert reason is not None and "example count 'num-examples'" in reason


def test_norm_bound_rejects_a_100x_update_and_can_be_switched_off() -> None:
    rng = np.random.default_rng(1)
    ref = _model(rng)
    updates = {n: {k: v + 0.1 * rng.normal(size=v.shape).astype(np.float32)
                   for k, v in ref.items()} for n in range(4)}
    updates[9] = {k: ref[k] + 100 * (updates[0][k] - ref[k]) for k in ref}
    norms = {n: update_norm(u, ref) for n, u in updates.items()}
    assert norms[9] == pytest.approx(100 * norms[0], rel=1e-4)
    rejected = norm_rejections(norms, 10.0)
    assert list(rejected) == [9]
    assert "x the round's median update norm" in rejected[9]
    assert "strategy.max_norm_ratio=10" in rejected[9]
    assert norm_rejections(norms, 0.0) == {}
    # Two agencies: the lower median keeps the 100x update from setting the bar itself.
    assert list(norm_rejections({1: 1.0, 2: 100.0}, 10.0)) == [2]
    assert norm_rejections({1: 0.0, 2: 0.0, 3: 5.0}, 10.0) == {}  # nothing moved: no bar


# --- robust_aggregate ----------------------------------------------------------------------

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(np_arrays(np.float32, (3, 4), elements=finite), st.integers(1, 7),
       st.sampled_from(METHODS))
def test_identical_updates_aggregate_to_that_update(x: np.ndarray, n: int, method: str) -> None:
    models = [{"w": x.copy()} for _ in range(n)]
    out = robust_aggregate(models, [float(i + 1) for i in range(n)], method)
    np.testing.assert_allclose(out.arrays["w"], x, rtol=1e-6, atol=1e-4)
    assert out.arrays["w"].dtype == np.float32


@settings(max_examples=40, deadline=None)
@given(np_arrays(np.float64, (5, 6), elements=finite), st.permutations(range(5)),
       st.sampled_from(("median", "trimmed_mean")), st.floats(0.0, 0.49))
def test_coordinatewise_aggregates_ignore_order(stack: np.ndarray, order: list[int],
                                                method: str, trim: float) -> None:
    models = [{"w": row} for row in stack]
    a = robust_aggregate(models, [1.0] * 5, method, trim_fraction=trim).arrays["w"]
    b = robust_aggregate([models[i] for i in order], [1.0] * 5, method,
                         trim_fraction=trim).arrays["w"]
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)
    assert np.all(a >= stack.min(axis=0) - 1e-9) and np.all(a <= stack.max(axis=0) + 1e-9)


def test_trimmed_mean_and_median_by_hand() -> None:
    col = np.array([[1.0], [2.0], [3.0], [4.0], [1000.0]])
    models = [{"w": r} for r in col]
    assert robust_aggregate(models, [1.0] * 5, "median").arrays["w"][0] == 3.0
    assert robust_aggregate(models, [1.0] * 5, "trimmed_mean",
                            trim_fraction=0.2).arrays["w"][0] == 3.0  # mean of 2, 3, 4
    assert robust_aggregate(models, [1.0] * 5, "trimmed_mean",
                            trim_fraction=0.0).arrays["w"][0] == 202.0
    assert [trim_count(n, 0.2) for n in (1, 2, 3, 5, 10)] == [0, 0, 0, 1, 2]
    assert trim_count(3, 0.49) == 1 and trim_count(2, 0.49) == 0


def test_krum_leaves_out_the_arbitrary_update_and_weights_the_rest() -> None:
    rng = np.random.default_rng(2)
    honest = [{"w": 1.0 + 0.01 * rng.normal(size=10)} for _ in range(4)]
    attacker = {"w": -50.0 * np.ones(10)}
    models = [honest[0], honest[1], attacker, honest[2], honest[3]]
    weights = [10.0, 20.0, 1000.0, 30.0, 40.0]
    out = robust_aggregate(models, weights, "krum", krum_byzantine=1)
    assert out.selected == (0, 1, 3, 4)
    expected = sum(w * m["w"] for w, m in zip((10, 20, 30, 40), honest, strict=True)) / 100
    np.testing.assert_allclose(out.arrays["w"], expected)
    flat = np.stack([m["w"] for m in models])
    assert int(np.argmax(krum_scores(flat, 1))) == 2


# --- the strategy on real reply messages ---------------------------------------------------

def _reply(node_id: int, content: RecordDict) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{node_id}", src_node_id=node_id, dst_node_id=0,
                    reply_to_message_id=f"i{node_id}", group_id="1", created_at=0.0,
                    ttl=600.0, message_type="train")
    # a reply as Flower's own runtime builds one: its public overloads leave metadata out
    return Message(content, metadata=meta)  # type: ignore[call-overload,no-any-return]


def _strategy(**overrides: object) -> tuple[AccountableStrategy, RunLog]:
    run_log = RunLog()
    strategy = build_strategy(RunSettings.from_flat({**FLAT, **overrides}), run_log)
    return strategy, run_log


@pytest.mark.parametrize("aggregation", METHODS)
def test_strategy_rejects_nan_shape_and_100x_and_aggregates_the_rest(
        aggregation: str, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    ref = _model(rng)
    honest = {n: {k: v + 0.05 * rng.normal(size=v.shape).astype(np.float32)
                  for k, v in ref.items()} for n in (1, 2, 3)}
    nan = {k: v.copy() for k, v in honest[1].items()}
    nan["net.bias"][0] = np.nan
    shape = {**honest[2], "net.weight": np.zeros((2, 8), dtype=np.float32)}
    scaled = {k: ref[k] + 100 * (honest[3][k] - ref[k]) for k in ref}
    replies = [_reply(n, _content(m)) for n, m in honest.items()]
    replies += [_reply(11, _content(nan)), _reply(12, _content(shape)),
                _reply(13, _content(scaled))]
    strategy, run_log = _strategy(**{"strategy.aggregation": aggregation})
    strategy.begin_round(1, "train", [1, 2, 3, 11, 12, 13], to_record(ref))  # configure_train
    arrays, metrics = strategy.aggregate_train(1, replies)
    status = {o.node_id: (o.status, o.reason) for o in run_log.round(1).train}
    assert {n: s for n, (s, _) in status.items()} == {1: "ok", 2: "ok", 3: "ok",
                                                      11: "rejected", 12: "rejected",
                                                      13: "rejected"}
    assert "non-finite" in status[11][1] and "shape (2, 8)" in status[12][1]
    assert "x the round's median update norm" in status[13][1]
    assert metrics is not None and metrics["agencies"] == 3
    honest_only = robust_aggregate([honest[n] for n in (1, 2, 3)], [100.0] * 3, aggregation)
    assert arrays is not None
    got = to_numpy(arrays)
    for k in ref:
        np.testing.assert_allclose(got[k], honest_only.arrays[k], rtol=1e-6)
    saved = run_log.to_json()[0]["train"]
    assert sorted(o["status"] for o in saved) == ["ok"] * 3 + ["rejected"] * 3
    assert all(o["reason"].startswith("update rejected: ") for o in saved
               if o["status"] == "rejected")
    for o in run_log.round(1).train:  # names as the nodes report them
        o.agency = {11: "nan-agency", 12: "shape-agency", 13: "big-agency"}.get(o.node_id, "x")
    with caplog.at_level(logging.INFO, logger="heroes.server"):
        strategy.progress(run_log.round(1))
    assert ("3/6 agencies trained (3 rejected: nan-agency, shape-agency, big-agency)"
            in caplog.text)


def test_rejected_updates_count_against_the_quorum() -> None:
    rng = np.random.default_rng(4)
    ref = _model(rng)
    good = {k: v + 0.01 for k, v in ref.items()}
    bad = {k: v.copy() for k, v in good.items()}
    bad["net.weight"][0, 0] = np.nan
    strategy, _ = _strategy(**{"strategy.quorum": 2})
    strategy.begin_round(1, "train", [1, 2], to_record(ref))
    with pytest.raises(QuorumError, match=r"1 agencies trained successfully.*rejected: update "
                                          r"rejected: array 'net.weight' holds 1 non-finite"):
        strategy.aggregate_train(
            1, [_reply(1, _content(good)), _reply(2, _content(bad))])


def test_fedadam_steps_from_the_robust_aggregate() -> None:
    rng = np.random.default_rng(5)
    ref = _model(rng)
    honest = [{k: v + 0.05 for k, v in ref.items()} for _ in range(4)]
    attacker = {k: v - 40.0 for k, v in ref.items()}  # within the norm bound: ratio off
    replies = [_reply(n + 1, _content(m)) for n, m in enumerate([*honest, attacker])]
    moved = {}
    for aggregation in ("mean", "median"):
        strategy, _ = _strategy(**{"strategy.name": "fedadam", "strategy.max_norm_ratio": 0.0,
                                   "strategy.aggregation": aggregation})
        strategy.begin_round(1, "train", [1, 2, 3, 4, 5], to_record(ref))
        # Flower's FedOpt sets it in configure_train
        strategy.base.current_arrays = ref  # type: ignore[attr-defined]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        moved[aggregation] = to_numpy(arrays)["net.weight"] - ref["net.weight"]
    # FedAdam's first step moves every coordinate by about eta in the aggregate's direction:
    # down with the poisoned mean, up (the honest direction) with the median.
    assert np.all(moved["mean"] < 0) and np.all(moved["median"] > 0)


def test_robust_aggregation_with_secure_aggregation_on_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="robust aggregation must see every agency's update"):
        RunSettings.from_flat({**FLAT, "strategy.aggregation": "median", "secagg.mode": "on"})


# --- real Flower simulations ---------------------------------------------------------------

@pytest.mark.slow
def test_nan_wrong_shape_and_100x_updates_from_real_nodes_are_rejected_and_named() -> None:
    from tests.poison_run import prepare, run_poisoned

    with tempfile.TemporaryDirectory(prefix="heroes-poison-") as name:
        tmp = Path(name)
        agencies = prepare(tmp, scale=0.05)
        proc, out = run_poisoned(
            tmp, "validation", agencies=agencies,
            attacks={0: "nan", 1: "shape", 2: "scale100"},
            overrides={"strategy.num_rounds": 2, "strategy.min_nodes": 5,
                       "strategy.quorum": 2, "privacy.enabled": False})
        assert proc.returncode == 0, proc.stderr[-3000:]
        rounds = json.loads((out / "metrics.json").read_text())["rounds"]
        assert len(rounds) == 2
        for r in rounds:
            by_agency = {o["agency"]: o for o in r["train"]}
            assert {a: o["status"] for a, o in by_agency.items()} == {
                agencies[0]: "rejected", agencies[1]: "rejected", agencies[2]: "rejected",
                agencies[3]: "ok", agencies[4]: "ok"}
            assert "non-finite values" in by_agency[agencies[0]]["reason"]
            assert "has shape" in by_agency[agencies[1]]["reason"]
            assert "x the round's median update norm" in by_agency[agencies[2]]["reason"]
            assert r["train_aggregate"]["agencies"] == 2
        log = proc.stderr + proc.stdout
        for agency in agencies[:3]:
            assert f"{agency} rejected in training: update rejected" in log


@pytest.mark.slow
def test_one_poisoned_agency_of_five_moves_robust_roc_auc_by_under_two_points() -> None:
    """Same data, seed and settings; agency 3 of five sends its update sign-flipped and
    scaled by 4 (inside the default norm bound, so validation alone does not catch it).
    DP is off: its noise would make a two-point comparison of single runs a coin toss at this
    size (the README lists every aggregation, measured by tests/poison_run.py)."""
    from tests.poison_run import global_roc_auc, prepare, run_poisoned

    common = {"strategy.num_rounds": 5, "privacy.enabled": False}
    auc = {}
    with tempfile.TemporaryDirectory(prefix="heroes-poison-") as name:
        tmp = Path(name)
        agencies = prepare(tmp, scale=0.5)
        for label, agg, attacks in (("honest krum", "krum", {}),
                                    ("poisoned krum", "krum", {3: "flip4"}),
                                    ("poisoned mean", "mean", {3: "flip4"})):
            proc, out = run_poisoned(tmp, label.replace(" ", "-"), agencies=agencies,
                                     attacks=attacks,
                                     overrides={**common, "strategy.aggregation": agg})
            assert proc.returncode == 0, proc.stderr[-3000:]
            auc[label] = global_roc_auc(tmp, out)
    assert abs(auc["poisoned krum"] - auc["honest krum"]) < 0.02, auc
    # The attack is real: plain mean loses far more than two points to it.
    assert auc["honest krum"] - auc["poisoned mean"] > 0.05, auc


def test_simulation_table_names_rejected_agencies() -> None:
    from federation.protocol import AgencyRow, PrivacySummary, RunSummary
    from simulation.run import render

    row = AgencyRow(
        agency="uk-ie-ngo", train_examples=10, test_examples=5, rounds_trained=1, epsilon=None,
        delta=None, run_epsilon=None, ledger_epsilon=None, budget_remaining=None,
        noise_multiplier=None, local_roc_auc=0.7, local_oracle_roc_auc=0.8, rows_set_aside=0,
        failed_rounds=0, rejected_rounds=2, stopped=None, shared_with_consortium=False,
        rejected="rejected in round(s) 1, 2; last: update rejected: array 'net.bias' "
                 "holds 1 non-finite values (NaN or infinity)")
    privacy = PrivacySummary(enabled=False, target_epsilon=None, target_delta=None, unit="",
                             accountant="prv")
    text = render(RunSummary(rounds=[], wall_seconds=1.0, privacy=privacy, agencies=[row],
                             oracle_roc_auc=0.9))
    assert ("REJECTED uk-ie-ngo: rejected in round(s) 1, 2; last: update rejected: array "
            "'net.bias' holds 1 non-finite values") in text
