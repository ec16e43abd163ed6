"""The run summary's simulation parts, shared by ``heroes simulate`` (simulation/run.py) and
its baselines (simulation/baselines.py): the per-agency table read from each agency's own
state folder, the agencies' own records, and the end-of-run table a researcher reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clients import local_metrics
from federation.data import AgencyRecords
from federation.ledger import Ledger, load_policy
from federation.protocol import (
    AgencyRow,
    Metric,
    PrivacySummary,
    RoundRecord,
    RunSummary,
    Status,
    figure,
)
from simulation.sweep import secure_rounds


def fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ledger_epsilon(state: Path, dataset: str | None = None) -> tuple[float | None, bool]:
    """(the largest epsilon the agency's ledger holds at its own delta, over its datasets
    or for ``dataset`` alone, whether its policy shares figures with the consortium);
    (None, False) before it has either file."""
    if not (state / "policy.toml").exists():
        return None, False
    policy = load_policy(state)
    if not (state / "privacy-ledger.sqlite").exists():
        return None, policy.share_local_metrics
    with Ledger.open(state, create=False) as ledger:
        spent = max((ledger.spent(ds, delta=policy.delta, accountant=policy.accountant)
                     for ds in ledger.datasets() if dataset in (None, ds)), default=None)
    return spent, policy.share_local_metrics


def simulated_dataset(a: AgencyRecords) -> str:
    """The ledger key a simulated node gives this export: agency/fingerprint (a simulated
    node has no dataset_id; clients/node.py load_node_data)."""
    from federation.ledger import fingerprint_file

    return f"{a.agency}/{fingerprint_file(a.train.path)[:16]}"


def _agency_row(a: AgencyRecords, rounds: list[RoundRecord], oracle: Mapping[str, float],
                state: Path, since: int | None = None) -> AgencyRow:
    local = local_metrics.read(state)[since or 0:]
    trained = [e for e in local if e["kind"] == "train" and e["status"] == Status.OK]
    evaluated = [e for e in local if e["kind"] == "evaluate" and e["status"] == Status.OK]
    refused = [e for e in local if e["kind"] == "train" and e["status"] == Status.REFUSED]
    mine = [(r.round, o) for r in rounds for o in r.train if o.agency == a.agency]
    failed = [o for _, o in mine if o.status in (Status.FAILED, Status.MISSING)]
    rejected = [(n, o) for n, o in mine if o.status is Status.REJECTED]
    ledger_eps, shares = _ledger_epsilon(state, None if since is None else simulated_dataset(a))
    # The agency's own figure tables: a figure it never computed is absent (None here).
    last: dict[str, Any] = trained[-1]["figures"] if trained else {}
    return AgencyRow(
        agency=a.agency, train_examples=len(a.train), test_examples=len(a.test),
        rounds_trained=sum(o.status is Status.OK for _, o in mine),
        epsilon=last.get(Metric.EPSILON), delta=last.get(Metric.DELTA),
        run_epsilon=last.get(Metric.RUN_EPSILON), ledger_epsilon=ledger_eps,
        budget_remaining=last.get(Metric.BUDGET_REMAINING),
        noise_multiplier=last.get(Metric.NOISE_MULTIPLIER),
        local_roc_auc=evaluated[-1]["figures"].get(Metric.ROC_AUC) if evaluated else None,
        local_oracle_roc_auc=_finite_or_none(oracle.get(a.agency)),
        rows_set_aside=a.train.rejected_total + a.test.rejected_total,
        failed_rounds=len(failed), rejected_rounds=len(rejected),
        rejected=(f"rejected in round(s) {', '.join(str(n) for n, _ in rejected)}"
                  f"; last: {rejected[-1][1].reason}" if rejected else None),
        stopped=(f"refused from round {refused[0]['round']}: {refused[0]['reason']}"
                 if refused else None),
        shared_with_consortium=shares)


def agency_table(rounds: list[RoundRecord], agencies: list[AgencyRecords],
                 oracle: Mapping[str, float], state_root: Path,
                 since: Mapping[str, int] | None = None) -> list[AgencyRow]:
    """One row per agency. The figures come from each agency's OWN state folder (its local
    record and ledger), which a simulation can read because it owns every agency; a
    consortium sees only what ``consortium_sees`` says. Outcomes the server decided (failed,
    missing, rejected) come from the server's round log.

    ``since``: per agency, how many entries of its own record came before this run (a
    node state shared with another task's federation); those entries are left out and the
    ledger epsilon is this task's dataset's alone."""
    return [_agency_row(a, rounds, oracle, state_root / a.agency,
                        None if since is None else since[a.agency]) for a in agencies]


def local_rounds(state_root: Path, agencies: list[str],
                 since: Mapping[str, int] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each agency's own per-round record (clients/local_metrics.py), for plots and tables;
    with ``since``, only the entries after that many (see ``agency_table``)."""
    return {a: local_metrics.read(state_root / a)[(since or {}).get(a, 0):] for a in agencies}


CONSORTIUM_SEES = (
    "who took part in each round and each agency's status (ok, refused, failed, rejected), "
    "message sizes and timing; the secure sums (summed update and example count, pooled "
    "training loss and rows set aside, pooled evaluation metrics from summed score "
    "histograms); per-agency figures only from agencies whose policy sets [sharing] "
    "share_local_metrics = true. The per-agency table is read from each agency's own state "
    "folder, which a simulation owns")


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _agency_lines(rows: list[AgencyRow], p: PrivacySummary) -> list[str]:
    """The per-agency table, then who stopped or was rejected and the worst agency."""
    lines = [f"{'agency':<22}{'train':>7}{'test':>6}{'rounds':>7}  "
             f"{'epsilon (delta)':<18}{'budget left':>12}{'local ROC-AUC':>14}"
             f"{'(oracle)':>9}{'set aside':>10}{'failed':>7}"]
    for r in rows:
        eps = (f"{fmt(r.epsilon, 2)} ({r.delta:.0e})" if p.enabled and r.epsilon is not None
               and r.delta is not None else ("no DP" if not p.enabled else "-"))
        lines.append(f"{r.agency:<22}{r.train_examples:>7}{r.test_examples:>6}"
                     f"{r.rounds_trained:>7}  {eps:<18}"
                     f"{fmt(r.budget_remaining, 2):>12}{fmt(r.local_roc_auc):>14}"
                     f"{fmt(r.local_oracle_roc_auc):>9}{r.rows_set_aside:>10}"
                     f"{r.failed_rounds:>7}")
    for r in rows:
        if r.stopped:
            lines.append(f"STOPPED {r.agency}: {r.stopped}")
        if r.rejected:
            lines.append(f"REJECTED {r.agency}: {r.rejected}")
    rated = [r for r in rows if r.local_roc_auc is not None]
    if rated:
        worst = min(rated, key=lambda r: r.local_roc_auc or 0.0)
        lines.append(f"worst agency: {worst.agency} (local ROC-AUC "
                     f"{fmt(worst.local_roc_auc)})")
    return lines


def _federation_lines(summary: RunSummary, rows: list[AgencyRow]) -> list[str]:
    """What the epsilons mean, how many rounds were secure and who shares its figures."""
    p, lines = summary.privacy, []
    if p.enabled:
        delta = "None" if p.target_delta is None else f"{p.target_delta:g}"
        lines.append(f"epsilon: cumulative over every round of every run on each "
                     f"agency's dataset (its privacy ledger), per {p.unit}, at the "
                     f"agency's delta ({p.accountant} accountant); this run's target "
                     f"was {p.target_epsilon} at delta={delta}")
    masked = secure_rounds(summary.rounds)
    lines.append(f"secure aggregation (SecAgg+): {masked} of {len(summary.rounds)} rounds; in "
                 "those the server saw only sums: the agencies' summed update and count, "
                 "pooled loss and pooled evaluation")
    sharing = [r.agency for r in rows if r.shared_with_consortium]
    lines.append("the figures per agency above are read from each agency's own state "
                 "folder (the simulator owns them); a consortium sees them only where the "
                 "agency's policy shares them: "
                 + (", ".join(sharing) if sharing else "none here"))
    return lines


def _pooled_lines(summary: RunSummary) -> list[str]:
    """The pooled test split: this run, the centralised baseline, the oracle."""
    oracle = summary.oracle_roc_auc
    lines = [f"{'pooled test split':<30}{'ROC-AUC':>9}{'PR-AUC':>8}{'Brier':>8}"
             f"{'vs oracle':>11}"]
    for label, key, table in (
            ("federated (this run)", "global", summary.global_metrics),
            ("centralised, non-private", "centralised_baseline", summary.centralised_baseline)):
        if table is None:
            continue
        where = f"{key!r} of the run summary"
        auc = figure(table, Metric.ROC_AUC, where=where)
        ratio = None if auc is None or not oracle else auc / oracle
        lines.append(f"{label:<30}{fmt(auc):>9}{fmt(figure(table, Metric.PR_AUC, where=where)):>8}"
                     f"{fmt(figure(table, Metric.BRIER, where=where)):>8}"
                     f"{fmt(ratio, 2) + 'x':>11}")
    lines.append(f"{'oracle (generator latent risk)':<30}{fmt(oracle):>9}")
    return lines


def render(summary: RunSummary) -> str:
    """The end-of-run table a researcher reads, from the typed summary: a part the run did
    not have (None) is left out, and a part without a figure it must hold is an error."""
    lines = [""]
    if summary.agencies is not None:
        lines += _agency_lines(summary.agencies, summary.privacy)
        lines += _federation_lines(summary, summary.agencies)
        lines.append("")
    lines += _pooled_lines(summary)
    lines.append(f"wall time {summary.wall_seconds:.1f} s")
    return "\n".join(lines)
