"""The round's figures as the consortium may know them (Flower's metric aggregation hooks).

A secure round's replies all carry the same pooled result (``SUM_KEY``), taken as it is; a
plain round's are weighted by the example count, and a figure is only ever aggregated over
the agencies where it is defined and shared, never zero-filled.
"""

from __future__ import annotations

import math

from flwr.app import MetricRecord, RecordDict

from federation.protocol import SUM_KEY, Metric, Record
from server.run_log import scalar


def _weights(records: list[RecordDict], key: str) -> list[tuple[MetricRecord, float]]:
    out = []
    for rec in records:
        metric = next(iter(rec.metric_records.values()))
        out.append((metric, scalar(metric[key], key)))
    return out


def _secure(records: list[RecordDict]) -> MetricRecord | None:
    """A secure round's pooled result (every reply carries the same), or None."""
    if records and all(SUM_KEY in next(iter(r.metric_records.values())) for r in records):
        first = next(iter(records[0].metric_records.values()))
        return first
    return None


def _shared_values(records: list[RecordDict], key: str) -> list[float]:
    vals = []
    for rec in records:
        shared = rec.config_records.get(Record.SHARED)
        if shared is not None and key in shared:
            vals.append(scalar(shared[key], key))
    return vals


def aggregate_train_metrics(records: list[RecordDict], key: str) -> MetricRecord:
    """The round's training figures as the consortium may know them: in a secure round the
    pooled loss and example count from the secure sum; in a plain round the example count
    (visible) and, where agencies share them, the weighted loss. Epsilon only from agencies
    whose policy shares it (the largest such cumulative value)."""
    secure = _secure(records)
    eps = [v for v in _shared_values(records, Metric.EPSILON)]
    deltas = _shared_values(records, Metric.DELTA)
    out: dict[str, float] = {
        Metric.MAX_EPSILON: max(eps) if eps else math.nan,
        Metric.DELTA: max(deltas) if deltas else math.nan,
        Metric.AGENCIES: float(len(records)),
        Metric.EPSILON_SHARED_BY: float(len(eps)),
    }
    if secure is not None:
        for name in (Metric.TRAIN_LOSS, Metric.EXAMPLES, Metric.ROWS_SET_ASIDE):
            out[name] = scalar(secure[name], name)
        out[Metric.SECURE_SUM] = 1.0
        return MetricRecord(dict(out.items()))
    pairs = _weights(records, key)
    out[Metric.EXAMPLES] = sum(w for _, w in pairs)
    losses = [(v, w) for rec, (_, w) in zip(records, pairs, strict=True)
              for v in _shared_values([rec], Metric.TRAIN_LOSS) if math.isfinite(v)]
    fw = sum(w for _, w in losses)
    out[Metric.TRAIN_LOSS] = sum(v * w for v, w in losses) / fw if losses and fw else math.nan
    return MetricRecord(dict(out.items()))


def aggregate_evaluate_metrics(records: list[RecordDict], key: str) -> MetricRecord:
    """A secure round: the pooled metrics from the summed histograms, as they are. A plain
    round (only agencies that share their figures reach here): the example-weighted mean of
    each metric over the agencies where it is defined, plus the worst agency's ROC-AUC; an
    undefined metric is skipped, not zero-filled."""
    secure = _secure(records)
    if secure is not None:
        pooled = {k: scalar(v, k) for k, v in secure.items() if k not in (key, SUM_KEY)}
        return MetricRecord(dict({**pooled, Metric.SECURE_SUM: 1.0}.items()))
    pairs = _weights(records, key)
    out: dict[str, float] = {}
    names = [k for k in pairs[0][0] if k != key] if pairs else []
    for name in names:
        vals = [(scalar(m[name], name), w) for m, w in pairs]
        finite = [(v, w) for v, w in vals if math.isfinite(v)]
        wsum = sum(w for _, w in finite)
        out[name] = sum(v * w for v, w in finite) / wsum if finite and wsum else math.nan
    aucs = [v for m, _ in pairs if Metric.ROC_AUC in m
            and math.isfinite(v := scalar(m[Metric.ROC_AUC], Metric.ROC_AUC))]
    out[Metric.WORST_ROC_AUC] = min(aucs) if aucs else math.nan
    out[Metric.AGENCIES_WITH_ROC_AUC] = float(len(aucs))
    return MetricRecord(dict(out))


