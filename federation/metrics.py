"""Ranking and calibration metrics for a rare-positive risk score.

Plain numpy so that agencies, the aggregator and the simulator compute them identically.
A metric that is undefined on the data (ROC-AUC with one class present) is NaN, never a
made-up 0.5: callers must say "undefined" rather than average it in.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from federation.protocol import Metric


def _as_arrays(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels have {y.size} entries but scores have {s.size}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return y, s


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_vals)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [values.size]))
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1..end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties counted as half."""
    y, s = _as_arrays(y_true, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = _ranks(s)
    u = r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pr_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Average precision: the mean of precision at each positive, best score first.

    Tied scores are ranked as one block, so the result does not depend on row order.
    """
    y, s = _as_arrays(y_true, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    # Treat a block of tied scores as one threshold.
    last_of_block = np.r_[np.flatnonzero(np.diff(ss)), ys.size - 1]
    tp = np.cumsum(ys)[last_of_block]
    seen = last_of_block + 1
    precision = tp / seen
    recall_gain = np.diff(np.r_[0.0, tp]) / n_pos
    return float(np.sum(precision * recall_gain))


def precision_at_k(y_true: ArrayLike, scores: ArrayLike, k: int) -> float:
    """Share of positives among the k highest scores (k capped at the number of rows)."""
    y, s = _as_arrays(y_true, scores)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if y.size == 0:
        return math.nan
    top = np.argsort(-s, kind="mergesort")[: min(k, y.size)]
    return float(y[top].mean())


def recall_at_k(y_true: ArrayLike, scores: ArrayLike, k: int) -> float:
    """Share of all positives found among the k highest scores."""
    y, s = _as_arrays(y_true, scores)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    n_pos = y.sum()
    if n_pos == 0:
        return math.nan
    top = np.argsort(-s, kind="mergesort")[: min(k, y.size)]
    return float(y[top].sum() / n_pos)


def brier(y_true: ArrayLike, probabilities: ArrayLike) -> float:
    """Mean squared error of predicted probabilities (lower is better)."""
    y, p = _as_arrays(y_true, probabilities)
    if y.size == 0:
        return math.nan
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    return float(np.mean((p - y) ** 2))


def summary(y_true: ArrayLike, probabilities: ArrayLike, *, k: int) -> dict[str, float]:
    """All metrics the project reports for one set of scored adverts."""
    return {
        "roc_auc": roc_auc(y_true, probabilities),
        "pr_auc": pr_auc(y_true, probabilities),
        f"precision_at_{k}": precision_at_k(y_true, probabilities, k),
        f"recall_at_{k}": recall_at_k(y_true, probabilities, k),
        "brier": brier(y_true, probabilities),
    }


# --- pooled metrics from summed score histograms (secure evaluation) ------------------------

#: Score bins over the logit, [-LOGIT_RANGE, LOGIT_RANGE]: an agency's evaluation leaves it
#: only as positive and negative counts per bin, inside a secure sum.
SCORE_BINS = 128
LOGIT_RANGE = 8.0


def score_bins(probabilities: ArrayLike, *, bins: int = SCORE_BINS,
               logit_range: float = LOGIT_RANGE) -> np.ndarray:
    """The bin of each score on a fixed grid over the logit (out-of-range scores go to the
    end bins); every agency uses the same grid, so histograms add up."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), 1e-12, 1 - 1e-12)
    z = np.log(p) - np.log1p(-p)
    idx = np.floor((z + logit_range) / (2 * logit_range) * bins)
    return np.clip(idx, 0, bins - 1).astype(np.int64)


def histograms(y_true: ArrayLike, probabilities: ArrayLike, *, bins: int = SCORE_BINS
               ) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives) per score bin."""
    y, p = _as_arrays(y_true, probabilities)
    b = score_bins(p, bins=bins)
    pos = np.bincount(b[y == 1], minlength=bins)
    neg = np.bincount(b[y == 0], minlength=bins)
    return pos.astype(np.int64), neg.astype(np.int64)


def from_histograms(positives: ArrayLike, negatives: ArrayLike, *, k: int) -> dict[str, float]:
    """Ranking metrics of the pooled scores from summed per-bin counts.

    Scores in one bin count as tied, exactly as the exact metrics above treat ties: ROC-AUC
    and PR-AUC equal ``roc_auc`` and ``pr_auc`` of the bin indices. Precision and recall at
    k split the bin that straddles rank k in proportion (the expectation over tie orders).
    """
    pos = np.asarray(positives, dtype=np.float64).ravel()
    neg = np.asarray(negatives, dtype=np.float64).ravel()
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    total = n_pos + n_neg
    out: dict[str, float] = {}
    if n_pos and n_neg:
        below = np.concatenate(([0.0], np.cumsum(neg)[:-1]))
        out["roc_auc"] = float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))
    else:
        out["roc_auc"] = math.nan
    # best score first
    pos_d, cnt_d = pos[::-1], (pos + neg)[::-1]
    tp, seen = np.cumsum(pos_d), np.cumsum(cnt_d)
    if n_pos:
        has = pos_d > 0
        out["pr_auc"] = float(np.sum((tp[has] / seen[has]) * (pos_d[has] / n_pos)))
    else:
        out["pr_auc"] = math.nan
    kk = min(k, total)
    hits, taken = 0.0, 0.0
    for p_b, c_b in zip(pos_d, cnt_d, strict=True):
        if taken >= kk:
            break
        take = min(c_b, kk - taken)
        if c_b:
            hits += p_b * take / c_b
        taken += take
    out[f"precision_at_{k}"] = hits / kk if kk else math.nan
    out[f"recall_at_{k}"] = hits / n_pos if n_pos else math.nan
    return out


def bin_edge(index: int, *, bins: int = SCORE_BINS, logit_range: float = LOGIT_RANGE) -> float:
    """The logit at which bin ``index`` starts: a score is in bin ``index`` or above exactly
    when its logit is at least this (for ``1 <= index < bins``)."""
    return -logit_range + index * (2 * logit_range / bins)


#: The figures ``operating_point`` gives (a secure evaluation's pooled result holds them).
OPERATING_KEYS = (Metric.OPERATING_LOGIT, Metric.OPERATING_PRECISION, Metric.OPERATING_RECALL,
                  Metric.OPERATING_F1, Metric.OPERATING_FLAGGED_SHARE)


def operating_point(positives: ArrayLike, negatives: ArrayLike, *,
                    logit_range: float = LOGIT_RANGE) -> dict[str, float]:
    """The threshold that maximises F1 on pooled score histograms, with its figures.

    Why F1: it needs no target chosen in advance (a recall target is a policy each agency
    sets for itself, with ``--threshold``), and it ignores true negatives, so the point does
    not slide down as the pool fills with easy benign records; it weighs an analyst's time
    spent on false leads (precision) against leads missed (recall) equally. Candidates are
    the grid's bin edges (flag every score in bin ``i`` or above, ``1 <= i < bins``); of
    equal F1 the higher threshold (fewer leads) is taken. Computed from counts alone, so
    the aggregator can compute it from a secure sum of every agency's histograms without
    seeing any agency's own. NaN figures when the histograms hold no positive.
    """
    pos = np.asarray(positives, dtype=np.float64).ravel()
    neg = np.asarray(negatives, dtype=np.float64).ravel()
    bins = pos.size
    n_pos, total = float(pos.sum()), float(pos.sum() + neg.sum())
    nan = {str(k): math.nan for k in OPERATING_KEYS}
    if bins < 2 or n_pos <= 0:
        return nan
    tp = np.cumsum(pos[::-1])[::-1]  # tp[i]: positives in bin i or above
    flagged = np.cumsum((pos + neg)[::-1])[::-1]
    best, best_f1 = -1, -1.0
    for i in range(bins - 1, 0, -1):  # highest threshold first: ties keep the higher one
        f1 = 2 * tp[i] / (flagged[i] + n_pos) if flagged[i] + n_pos else 0.0
        if f1 > best_f1 + 1e-12:
            best, best_f1 = i, float(f1)
    if best < 0 or tp[best] == 0:
        return nan
    return {Metric.OPERATING_LOGIT: bin_edge(best, bins=bins, logit_range=logit_range),
            Metric.OPERATING_PRECISION: float(tp[best] / flagged[best]),
            Metric.OPERATING_RECALL: float(tp[best] / n_pos),
            Metric.OPERATING_F1: best_f1,
            Metric.OPERATING_FLAGGED_SHARE: float(flagged[best] / total)}
