"""Optional experiment tracking: TensorBoard event files next to the run (no server).

``heroes simulate tracking.tensorboard=true`` writes ``tensorboard/`` in the run folder
from the run's summary: per round the training and evaluation loss, ROC-AUC (mean and
worst agency), the largest cumulative epsilon and each agency's cumulative epsilon and
local ROC-AUC; at the end the pooled test metrics, the oracle, the baselines and the audit.
Every epsilon tag names its delta. View with ``tensorboard --logdir outputs`` (or the
multirun folder: each run is its own TensorBoard run). MLflow is not offered: even its
"skinny" client pulls 17 packages (databricks-sdk, google-auth, OpenTelemetry) into the
environment.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from federation.protocol import Metric, RunSummary, figure, need


def _ok(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _local_values(summary: RunSummary, kind: str, name: str, step: int) -> dict[str, float]:
    """One figure of every agency in one round, from the agencies' own records (a figure
    table holds only what the agency computed that round)."""
    out = {}
    for agency, entries in summary.local_records().items():
        for e in entries:
            if (e.kind == kind and e.round == step and e.ok and name in e.figures
                    and _ok(e.figures[name])):
                out[agency] = e.figures[name]
    return out


def _finals(summary: RunSummary) -> dict[str, Any]:
    """The end-of-run scalars; a part the run did not have (None) gives None, which writes
    nothing, and a part that lacks a figure it must hold is a ProtocolError."""
    at = "'audit' of the run summary"
    final = {"final/pooled_roc_auc": figure(summary.global_metrics, Metric.ROC_AUC,
                                            where="'global' of the run summary"),
             "final/pooled_pr_auc": figure(summary.global_metrics, Metric.PR_AUC,
                                           where="'global' of the run summary"),
             "final/oracle_roc_auc": summary.oracle_roc_auc,
             "final/centralised_roc_auc": figure(
                 summary.centralised_baseline, Metric.ROC_AUC,
                 where="'centralised_baseline' of the run summary"),
             "final/wall_seconds": summary.wall_seconds}
    if summary.audit:
        final["audit/epsilon_lower_bound"] = figure(summary.audit, "epsilon_lower_bound",
                                                    where=at)
        final["audit/claimed_epsilon"] = figure(summary.audit, "claimed_epsilon", where=at)
    where = "a gain row of the run summary's baselines"
    for g in summary.gain_rows():
        agency = need(g, "agency", where=where)
        final[f"baselines/gain_own_test/{agency}"] = need(g, "gain_own_test", where=where)
        final[f"baselines/gain_pooled_test/{agency}"] = need(g, "gain_pooled_test",
                                                             where=where)
    return final


def write_tensorboard(summary: RunSummary, log_dir: Path) -> Path:
    """Write the summary's scalars as TensorBoard events under ``log_dir``. A part the run
    did not have (null in the summary: no audit, no baselines) writes no scalars."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        p = summary.privacy
        delta = f"{p.target_delta:g}" if p.enabled and p.target_delta is not None else "none"
        writer.add_text("privacy", (
            f"DP {'on' if p.enabled else 'OFF'}; target epsilon {p.target_epsilon} "
            f"at delta {p.target_delta} per {p.unit}; epsilon tags are "
            "cumulative over every round of every run (the ledger)"))
        # Per-agency figures come from each agency's own record (the simulator owns them);
        # a consortium's round log holds only pooled sums and statuses.
        for r in summary.rounds:
            step = r.round
            # aggregate tables hold what the round had (no evaluation: no loss)
            tr, ev = r.train_aggregate, r.evaluate_aggregate
            eps = _local_values(summary, "train", Metric.EPSILON, step)
            aucs = _local_values(summary, "evaluate", Metric.ROC_AUC, step)
            scalars: tuple[tuple[str, Any], ...] = (
                ("train/loss", tr.get(Metric.TRAIN_LOSS)),
                (f"privacy/max_epsilon_delta_{delta}", max(eps.values()) if eps else None),
                ("eval/loss", ev.get(Metric.LOSS)), ("eval/roc_auc", ev.get(Metric.ROC_AUC)),
                ("eval/worst_agency_roc_auc", min(aucs.values()) if aucs else None),
                ("round/wall_seconds", r.wall_seconds))
            for tag, value in scalars:
                if _ok(value):
                    writer.add_scalar(tag, float(value), step)
            for agency, value in eps.items():
                writer.add_scalar(f"privacy/epsilon_delta_{delta}/{agency}", value, step)
            for agency, value in aucs.items():
                writer.add_scalar(f"agency_roc_auc/{agency}", value, step)
        for tag, value in _finals(summary).items():
            if _ok(value):
                writer.add_scalar(tag, float(value), 0)
    finally:
        writer.close()
    return log_dir
