"""Metrics against hand-computed reference values, plus invariants."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation import metrics

Y = [0, 0, 1, 1, 0, 1]
S = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]


def test_roc_auc_reference() -> None:
    # positives 0.35, 0.8, 0.9 vs negatives 0.1, 0.4, 0.2: 8 of 9 pairs ordered
    assert metrics.roc_auc(Y, S) == pytest.approx(8 / 9)


def test_roc_auc_ties_count_half() -> None:
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_pr_auc_reference() -> None:
    # ranked: .9(+) .8(+) .4(-) .35(+) .2(-) .1(-): AP = (1 + 1 + 3/4) / 3
    assert metrics.pr_auc(Y, S) == pytest.approx((1 + 1 + 0.75) / 3)


def test_precision_recall_at_k() -> None:
    assert metrics.precision_at_k(Y, S, 2) == 1.0
    assert metrics.precision_at_k(Y, S, 3) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(Y, S, 2) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(Y, S, 100) == 1.0


def test_brier_reference() -> None:
    assert metrics.brier([0, 1], [0.2, 0.6]) == pytest.approx((0.04 + 0.16) / 2)


def test_undefined_metrics_are_nan_not_half() -> None:
    assert math.isnan(metrics.roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(metrics.pr_auc([0, 0], [0.1, 0.2]))


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="entries"):
        metrics.roc_auc([0, 1], [0.1])


labels_scores = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 1000).map(lambda i: i / 1000), min_size=n, max_size=n),
    )
)


@settings(max_examples=60, deadline=None)
@given(labels_scores)
def test_roc_auc_invariants(data: tuple[list[int], list[float]]) -> None:
    y, s = np.asarray(data[0]), np.asarray(data[1])
    auc = metrics.roc_auc(y, s)
    if y.min() == y.max():
        assert math.isnan(auc)
        return
    assert 0.0 <= auc <= 1.0
    # Reversing the ranking mirrors the AUC; a monotone transform leaves it unchanged.
    assert metrics.roc_auc(y, -s) == pytest.approx(1 - auc)
    assert metrics.roc_auc(y, np.exp(3 * s)) == pytest.approx(auc)
    # Brute-force pair counting agrees.
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc == pytest.approx(pairs / (pos.size * neg.size))
