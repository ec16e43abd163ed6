"""Update validation and robust aggregation, on the model arrays the server can see.

Validation (every round, whatever the aggregation): each agency's reply must carry exactly
one array record with the names, shapes and dtypes of the global model it was sent, only
finite values and a positive, finite example count; with ``strategy.max_norm_ratio > 0`` the
L2 norm of its update (reply minus the global model of the round) must not exceed that
multiple of the round's median update norm. A reply that fails is *rejected*: named with
its reason in the round summary, left out of the aggregate, and not counted towards the
quorum. None of this is possible under secure aggregation, where the server never sees one
agency's update.

Robust aggregation (``strategy.aggregation``), per coordinate unless stated:

* ``mean``: Flower's example-weighted FedAvg (no robustness beyond validation).
* ``median``: the coordinate-wise median of the agencies' models (unweighted).
* ``trimmed_mean``: drop the ``floor(trim_fraction * n)`` largest and smallest values of
  each coordinate, average the rest (unweighted).
* ``krum``: Multi-Krum. Each update is scored by the summed squared distance to its
  ``n - f - 2`` nearest other updates (``f = strategy.krum_byzantine``); the ``n - f``
  best-scored updates are averaged, weighted by example count. Whole updates are kept or
  dropped, so with ``n >= 2f + 3`` up to ``f`` arbitrary agencies cannot be selected
  unless they sit among the honest ones.

Median and trimmed mean ignore the example counts on purpose: a count is what the agency
claims, and a weighted median would let one agency that claims many examples decide alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

Arrays = dict[str, np.ndarray]


def to_numpy(record: ArrayRecord) -> Arrays:
    return {name: arr.numpy() for name, arr in record.items()}


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})


def _names(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_update(reference: Mapping[str, np.ndarray], content: RecordDict,
                 weight_key: str) -> tuple[str | None, Arrays | None]:
    """Check one training reply against the global model it was sent.

    Returns ``(reason, None)`` when the update must be rejected, ``(None, arrays)`` when it
    may be aggregated. The reason names the rule broken and never quotes values beyond
    counts, shapes and dtypes.
    """
    records = list(content.array_records.values())
    if len(records) != 1:
        return (f"sent {len(records)} array records, expected exactly 1 (the model)", None)
    record = records[0]
    missing = sorted(set(reference) - set(record.keys()))
    extra = sorted(set(record.keys()) - set(reference))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing arrays {_names(missing)}")
        if extra:
            parts.append(f"unexpected arrays {_names(extra)}")
        return ("model arrays do not match the global model: " + "; ".join(parts), None)
    arrays: Arrays = {}
    for name, ref in reference.items():
        try:
            value = record[name].numpy()
        except Exception as exc:  # a corrupt payload from a remote node: name it, go on
            return (f"array {name!r} could not be decoded ({type(exc).__name__})", None)
        if value.shape != ref.shape:
            return (f"array {name!r} has shape {tuple(value.shape)}, the global model's is "
                    f"{tuple(ref.shape)}", None)
        if value.dtype != ref.dtype:
            return (f"array {name!r} has dtype {value.dtype}, the global model's is "
                    f"{ref.dtype}", None)
        if value.dtype.kind in "fc":
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                return (f"array {name!r} holds {bad} non-finite values (NaN or infinity)",
                        None)
        arrays[name] = value
    weight = _weight(content, weight_key)
    if weight is None or not math.isfinite(weight) or weight <= 0:
        return (f"example count {weight_key!r} is {weight!r}; it must be a finite number "
                "above 0", None)
    return None, arrays


def _weight(content: RecordDict, key: str) -> float | None:
    for rec in content.metric_records.values():
        if key in rec:
            value = rec[key]
            return float(value) if isinstance(value, int | float) else None
    return None


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``arrays - reference`` over every floating-point array (in float64)."""
    total = 0.0
    for name, ref in reference.items():
        if ref.dtype.kind not in "fc":
            continue
        diff = arrays[name].astype(np.float64) - ref.astype(np.float64)
        total += float(np.vdot(diff, diff).real)
    return math.sqrt(total)


def norm_rejections(norms: Mapping[int, float], max_ratio: float) -> dict[int, str]:
    """Updates whose norm exceeds ``max_ratio`` x the round's median update norm.

    The median is the lower median (for an even count, the smaller middle value), so that
    with two agencies a 100x update cannot set the bar itself. Off when ``max_ratio`` is 0,
    with fewer than two updates, or when the median update is zero (nothing to compare to).
    """
    if max_ratio <= 0 or len(norms) < 2:
        return {}
    ordered = sorted(norms.values())
    median = ordered[(len(ordered) - 1) // 2]
    if median <= 0:
        return {}
    return {
        node: (f"update L2 norm {norm:.4g} is {norm / median:.1f}x the round's median "
               f"update norm {median:.4g} (limit strategy.max_norm_ratio={max_ratio:g})")
        for node, norm in norms.items() if norm > max_ratio * median
    }


@dataclass(frozen=True)
class RobustResult:
    arrays: Arrays
    selected: tuple[int, ...]  # indices of the updates that entered the aggregate


def trim_count(n: int, trim_fraction: float) -> int:
    """Values cut at each end of every coordinate; at least one value always stays."""
    return min(math.floor(trim_fraction * n), (n - 1) // 2)


def krum_scores(flat: np.ndarray, byzantine: int) -> np.ndarray:
    """Krum score per row of ``flat`` (n x d): summed squared distance to its
    ``max(1, n - f - 2)`` nearest other rows."""
    n = flat.shape[0]
    sq = np.einsum("ij,ij->i", flat, flat)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
    np.fill_diagonal(dist, np.inf)
    closest = max(1, min(n - 1, n - byzantine - 2))
    scores: np.ndarray = np.sort(dist, axis=1)[:, :closest].sum(axis=1)
    return scores


def robust_aggregate(models: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                     method: str, *, trim_fraction: float = 0.2,
                     krum_byzantine: int = 1) -> RobustResult:
    """Aggregate the agencies' models (all with the same names, shapes, dtypes)."""
    n = len(models)
    if n == 0:
        raise ValueError("robust_aggregate needs at least one model")
    if len(weights) != n:
        raise ValueError(f"{n} models but {len(weights)} weights")
    names = list(models[0])
    out: Arrays = {}
    selected: tuple[int, ...] = tuple(range(n))
    if method == "krum":
        flat = np.stack([np.concatenate([np.asarray(m[k], dtype=np.float64).ravel()
                                         for k in names]) for m in models])
        scores = krum_scores(flat, krum_byzantine) if n > 1 else np.zeros(1)
        keep = max(1, n - krum_byzantine)
        selected = tuple(sorted(int(i) for i in np.argsort(scores, kind="stable")[:keep]))
        w = np.asarray([weights[i] for i in selected], dtype=np.float64)
        w = w / w.sum()
        for k in names:
            stack = np.stack([np.asarray(models[i][k], dtype=np.float64) for i in selected])
            out[k] = np.tensordot(w, stack, axes=1).astype(models[0][k].dtype)
        return RobustResult(out, selected)
    for k in names:
        stack = np.stack([np.asarray(m[k], dtype=np.float64) for m in models])
        if method == "median":
            value = np.median(stack, axis=0)
        elif method == "trimmed_mean":
            cut = trim_count(n, trim_fraction)
            value = np.sort(stack, axis=0)[cut:n - cut].mean(axis=0)
        elif method == "mean":
            w = np.asarray(weights, dtype=np.float64)
            value = np.tensordot(w / w.sum(), stack, axes=1)
        else:
            raise ValueError(f"unknown aggregation {method!r}; use mean, trimmed_mean, "
                             "median or krum")
        out[k] = value.astype(models[0][k].dtype)
    return RobustResult(out, selected)
