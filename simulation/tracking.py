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
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _ok(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def write_tensorboard(summary: Mapping[str, Any], log_dir: Path) -> Path:
    """Write the summary's scalars as TensorBoard events under ``log_dir``."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        p = summary["privacy"]
        delta = f"{p['target_delta']:g}" if p.get("enabled") else "none"
        writer.add_text("privacy", (
            f"DP {'on' if p.get('enabled') else 'OFF'}; target epsilon {p.get('target_epsilon')} "
            f"at delta {p.get('target_delta')} per {p.get('unit')}; epsilon tags are "
            "cumulative over every round of every run (the ledger)"))
        # Per-agency figures come from each agency's own record (the simulator owns them);
        # a consortium's round log holds only pooled sums and statuses.
        local = summary.get("agency_rounds", {})

        def agency_values(kind: str, name: str, step: int) -> dict[str, float]:
            out = {}
            for agency, entries in local.items():
                for e in entries:
                    v = e["figures"].get(name)
                    if (e["kind"] == kind and e["round"] == step and e["status"] == "ok"
                            and _ok(v)):
                        out[agency] = float(v)
            return out

        for r in summary.get("rounds", []):
            step = int(r["round"])
            tr, ev = r.get("train_aggregate", {}), r.get("evaluate_aggregate", {})
            eps = agency_values("train", "epsilon", step)
            aucs = agency_values("evaluate", "roc_auc", step)
            scalars: tuple[tuple[str, Any], ...] = (
                               ("train/loss", tr.get("train_loss")),
                               (f"privacy/max_epsilon_delta_{delta}",
                                max(eps.values()) if eps else None),
                               ("eval/loss", ev.get("loss")), ("eval/roc_auc", ev.get("roc_auc")),
                               ("eval/worst_agency_roc_auc",
                                min(aucs.values()) if aucs else None),
                               ("round/wall_seconds", r.get("wall_seconds")))
            for tag, value in scalars:
                if _ok(value):
                    writer.add_scalar(tag, float(value), step)
            for agency, value in eps.items():
                writer.add_scalar(f"privacy/epsilon_delta_{delta}/{agency}", value, step)
            for agency, value in aucs.items():
                writer.add_scalar(f"agency_roc_auc/{agency}", value, step)
        final = {"final/pooled_roc_auc": summary.get("global", {}).get("roc_auc"),
                 "final/pooled_pr_auc": summary.get("global", {}).get("pr_auc"),
                 "final/oracle_roc_auc": summary.get("oracle_roc_auc"),
                 "final/centralised_roc_auc":
                     summary.get("centralised_baseline", {}).get("roc_auc"),
                 "final/wall_seconds": summary.get("wall_seconds")}
        audit = summary.get("audit")
        if audit:
            final["audit/epsilon_lower_bound"] = audit.get("epsilon_lower_bound")
            final["audit/claimed_epsilon"] = audit.get("claimed_epsilon")
        for g in summary.get("baselines", {}).get("gain", []):
            final[f"baselines/gain_own_test/{g['agency']}"] = g.get("gain_own_test")
            final[f"baselines/gain_pooled_test/{g['agency']}"] = g.get("gain_pooled_test")
        for tag, value in final.items():
            if _ok(value):
                writer.add_scalar(tag, float(value), 0)
    finally:
        writer.close()
    return log_dir
