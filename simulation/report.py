"""``heroes report RUN_OR_SWEEP_DIR``: one self-contained HTML file people can read.

For a run folder (``metrics.json`` beside ``config.yaml``): per-round metrics, the
per-agency table, epsilon spent per agency over the rounds (with its delta), the baseline
comparison and the privacy audit. For a run of several tasks (``tasks.json``,
experiment=both_tasks): every task's headline figures, then each task's run report. For
a multirun folder: the sweep table (written as ``sweep.csv`` and ``sweep.parquet`` too),
the privacy-utility curve with 95% t-intervals over seeds, the audit's lower bounds
against the claimed epsilons, then the run report of the sweep's first run. Plots are
inline SVG from matplotlib's SVG backend (federation/plots.py: no scripts, nothing
fetched), so the file opens anywhere, offline.
"""

from __future__ import annotations

import argparse
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from federation.errors import ConfigError
from federation.plots import bar_chart, line_chart
from federation.protocol import (
    SUMMARY_FILE,
    AgencyRow,
    LocalEntry,
    Metric,
    PrivacySummary,
    RoundRecord,
    RunSummary,
    figure,
    need,
)
from simulation import sweep
from simulation.tasks_index import TASKS_FILE
from simulation.units import per_unit

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1120px;color:#222;line-height:1.4}
h1{font-size:24px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:13px}.bad{color:#b00;font-weight:bold}.ok{color:#060}
.plots{display:flex;flex-wrap:wrap;gap:16px}svg.plot{background:#fff;border:1px solid #ddd}
svg text{font-size:11px;fill:#333}svg .title{font-size:13px;font-weight:bold}
"""


def _e(v: object) -> str:
    return html.escape(str(v))


def _num(v: object, digits: int = 3) -> str:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return "n/a" if v is None else _e(v)
    if math.isinf(v):
        return "inf"
    if math.isnan(v):
        return "n/a"
    if isinstance(v, float) and 0 < abs(v) < 10 ** -digits:
        return f"{v:.1g}"  # a delta such as 1e-05
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for _, label in columns)
    body = "".join("<tr>" + "".join(f"<td>{_num(r.get(k))}</td>" for k, _ in columns)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _privacy_line(p: PrivacySummary) -> str:
    if not p.enabled:
        return "<p class='bad'>Differential privacy was OFF in this run.</p>"
    delta = "None" if p.target_delta is None else f"{p.target_delta:g}"
    return (f"<p class='note'>Privacy: target epsilon {_num(p.target_epsilon, 2)} at delta "
            f"{delta} {_e(per_unit(p.unit))} ({_e(p.accountant)} accountant). "
            "Every epsilon below is cumulative over every round of every run on the "
            "agency's dataset (its ledger), at the delta shown beside it.</p>")


def _aggregate(table: Mapping[str, float], key: str) -> float | None:
    """A figure of a round's aggregate table, which holds only what the round had (a round
    whose evaluation did not run has no evaluation loss): absent is a gap in the curve."""
    return table.get(key)


def _round_curves(rounds: list[RoundRecord]) -> tuple[list[dict[str, Any]],
                                                      list[dict[str, Any]]]:
    """The loss and the ROC-AUC curves the server recorded, per round."""
    curves: list[dict[str, Any]] = [
        {"name": "train loss (pooled over agencies)", "points": [
            (r.round, _aggregate(r.train_aggregate, Metric.TRAIN_LOSS), None, None)
            for r in rounds]},
        {"name": "evaluation loss", "points": [
            (r.round, _aggregate(r.evaluate_aggregate, Metric.LOSS), None, None)
            for r in rounds]},
    ]
    aucs: list[dict[str, Any]] = [
        {"name": "ROC-AUC (agencies' test splits)", "points": [
            (r.round, _aggregate(r.evaluate_aggregate, Metric.ROC_AUC), None, None)
            for r in rounds]},
    ]
    return curves, aucs


def _finite_figure(e: LocalEntry, key: str) -> float | None:
    """A figure the agency computed and is a number (an entry holds only what it computed)."""
    v = e.figures.get(key)
    return v if v is not None and math.isfinite(v) else None


def _worst_agency(xs: list[int], local: Mapping[str, list[LocalEntry]]) -> list[Any]:
    """Per round, the lowest ROC-AUC an agency measured on its own test split."""
    worst = []
    for x in xs:  # from each agency's own record: a consortium never sees these
        vals = [v for entries in local.values() for e in entries
                if e.kind == "evaluate" and e.round == x and e.ok
                and (v := _finite_figure(e, Metric.ROC_AUC)) is not None]
        worst.append((x, min(vals) if vals else None, None, None))
    return worst


def _epsilon_series(summary: RunSummary, local: Mapping[str, list[LocalEntry]]
                    ) -> list[dict[str, Any]]:
    """Each agency's cumulative epsilon per round, from its own record."""
    series: list[dict[str, Any]] = []
    if summary.agencies is None or summary.agency_rounds is None:
        return series
    where = "'agency_rounds' of the run summary"
    for a in summary.agencies:
        entries: list[LocalEntry] = need(local, a.agency, where=where)
        pts = [(e.round, v, None, None) for e in entries
               if e.kind == "train" and e.ok
               and (v := _finite_figure(e, Metric.EPSILON)) is not None]
        if pts:
            delta = "None" if a.delta is None else f"{a.delta:g}"
            series.append({"name": f"{a.agency} (delta {delta})", "points": pts})
    return series


def _round_sections(summary: RunSummary) -> str:
    """The per-round plots: loss, ROC-AUC (with the worst agency) and epsilon spent."""
    local = summary.local_records()
    curves, aucs = _round_curves(summary.rounds)
    worst = _worst_agency([r.round for r in summary.rounds], local)
    if any(p[1] is not None for p in worst):
        aucs.append({"name": "worst agency ROC-AUC (agency-local)", "dashed": True,
                     "points": worst})
    eps_series = _epsilon_series(summary, local)
    return ("<h3>Per round</h3><div class='plots'>"
            + line_chart("Loss per round", curves, x_label="round", y_label="loss")
            + line_chart("ROC-AUC per round", aucs, x_label="round", y_label="ROC-AUC")
            + (line_chart("Epsilon spent per agency (cumulative)", eps_series,
                          x_label="round", y_label="epsilon", y_floor=0.0)
               if eps_series else "")
            + "</div>")


def _agency_sections(agencies: list[AgencyRow], p: PrivacySummary) -> list[str]:
    """The per-agency table and the epsilon each agency spent beside the target."""
    parts = ["<h3>Per agency</h3>" + table([a.to_json() for a in agencies], [
        ("agency", "agency"), ("train_examples", "train"), ("test_examples", "test"),
        ("rounds_trained", "rounds"), ("epsilon", "epsilon (cumulative)"),
        ("delta", "delta"), ("noise_multiplier", "noise multiplier"),
        ("budget_remaining", "budget left"), ("local_roc_auc", "local ROC-AUC"),
        ("local_oracle_roc_auc", "oracle"), ("rows_set_aside", "set aside"),
        ("failed_rounds", "failed"), ("rejected_rounds", "rejected"),
        ("stopped", "stopped")])]
    eps = [a.epsilon for a in agencies]
    delta = next((a.delta for a in agencies if a.delta), None)
    if any(v is not None and math.isfinite(v) for v in eps):
        parts.append(bar_chart(
            f"Epsilon spent per agency (delta {delta:g}, {per_unit(p.unit)})"
            if delta else "Epsilon spent per agency",
            [a.agency for a in agencies], [("epsilon (cumulative)", eps)],
            y_label="epsilon",
            reference=("target", p.target_epsilon) if p.target_epsilon else None))
    return parts


def run_sections(summary: RunSummary, title: str) -> list[str]:
    """The report of one run; a part the run did not have (None) is left out."""
    parts = [f"<h2>{_e(title)}</h2>", _privacy_line(summary.privacy)]
    if summary.rounds:
        parts.append(_round_sections(summary))
    if summary.agencies:
        parts += _agency_sections(summary.agencies, summary.privacy)
    parts += _baseline_sections(summary)
    if summary.audit is not None:
        parts.append(_audit_section(summary.audit))
    return parts


def _pooled_bars(summary: RunSummary) -> list[tuple[str, float | None]]:
    """Pooled test split ROC-AUC: the baselines' arms, or this run and the centralised
    model; each read strictly (a part without its ROC-AUC is an error)."""
    b = summary.baselines
    if b:
        from simulation.baselines import ARM_LABELS  # torch: only for a baselines report

        return [(ARM_LABELS[arm], figure(summary.arm_pooled(arm), Metric.ROC_AUC,
                                         where=f"the pooled figures of arm {arm!r}"))
                for arm in ("centralised_non_private", "federated_non_private",
                            "federated_dp")]
    pooled: list[tuple[str, float | None]] = []
    for label, key, part in (
            ("federated (this run)", "global", summary.global_metrics),
            ("centralised, non-private", "centralised_baseline",
             summary.centralised_baseline)):
        if part is not None:
            pooled.append((label, figure(part, Metric.ROC_AUC,
                                         where=f"{key!r} of the run summary")))
    return pooled


def _gain_sections(gain: list[dict[str, Any]]) -> list[str]:
    """Each agency's own-test ROC-AUC in every arm, and the gain table."""
    where = "a gain row of the run summary's baselines"

    def col(key: str) -> list[Any]:
        return [need(g, key, where=where) for g in gain]

    return [bar_chart(
        "Own test split ROC-AUC, smallest agencies first", col("agency"),
        [("alone, same DP", col("alone_dp_roc_auc")),
         ("federated, DP", col("federated_dp_roc_auc")),
         ("federated, non-private", col("federated_non_private_roc_auc")),
         ("centralised, non-private", col("centralised_non_private_roc_auc"))],
        y_label="ROC-AUC", width=720), table(gain, [
            ("agency", "agency (smallest first)"), ("train_examples", "train"),
            ("test_positives", "test positives"), ("alone_dp_roc_auc", "alone, DP"),
            ("federated_dp_roc_auc", "federated, DP"), ("gain_own_test", "gain (own test)"),
            ("alone_dp_pooled_roc_auc", "alone on pooled"),
            ("gain_pooled_test", "gain (pooled)"), ("alone_epsilon", "alone epsilon"),
            ("alone_delta", "delta"), ("federated_epsilon", "federated epsilon")]),
        "<p class='note'>Gain: federated DP ROC-AUC minus the agency's own "
        "model trained alone with the same DP plan (same rounds, epochs and noise "
        "calibration, so the same epsilon at the same delta). n/a: the agency's "
        "test split has one class.</p>"]


def _baseline_sections(summary: RunSummary) -> list[str]:
    oracle = summary.oracle_roc_auc
    pooled = _pooled_bars(summary)
    parts = ["<h3>Baseline comparison</h3>"]
    if pooled:
        parts.append(bar_chart("Pooled test split ROC-AUC", [n for n, _ in pooled],
                               [("ROC-AUC", [v for _, v in pooled])], y_label="ROC-AUC",
                               y_floor=0.0, reference=("oracle", oracle) if oracle else None))
    if summary.baselines:
        parts += _gain_sections(summary.gain_rows())
    elif len(pooled) <= 1:
        parts.append("<p class='note'>No baselines in this run (run with "
                     "<code>mode=baselines</code> for all four arms).</p>")
    return parts


def _audit_row(r: Mapping[str, Any], *, whitebox: bool) -> dict[str, Any]:
    """One audited agency's row, read strictly: every row names its claim, its bound (None:
    not audited, ``status`` says why) and whether it was caught; a white-box audited row
    also its guesses, its ceiling and whether the claim is testable at all."""
    where = "an agency row of the run summary's audit"

    def k(key: str) -> Any:
        return need(r, key, where=where)

    claimed, bound = k("claimed_epsilon"), k("epsilon_lower_bound")
    finite = isinstance(claimed, int | float) and math.isfinite(claimed)
    audited_wb = whitebox and bound is not None
    untestable = audited_wb and k("untestable")
    return {
        **r,
        "claim": ("none (trained no DP round)" if claimed is None else
                  f"{claimed:.2f} at delta {k('claimed_delta'):g}" if finite else "no DP"),
        "bound": (None if bound is None else
                  f"{bound:.2f} at delta {k('claimed_delta') or 0:g} "
                  f"({k('confidence'):.1%} confidence)"),
        "ceiling": f"{k('best_possible_bound'):.2f}" if audited_wb else None,
        "verdict": (k("status") if bound is None else
                    "FAILED: the lower bound exceeds the claim" if k("caught")
                    else "INCONCLUSIVE: the claim is at or above the most this design "
                    f"can certify ({k('ceiling_note')})" if untestable
                    else "not contradicted"),
        "guessed": (f"{k('correct')} of {k('guesses')} ({k('canaries')} canaries)"
                    if audited_wb else None),
    }


def _audit_section(audit: Mapping[str, Any]) -> str:
    """The privacy audit: per audited agency, the empirical lower bound beside the claim,
    each epsilon with its delta and the unit of privacy. Read strictly: both modes write
    the keys read here (simulation/audit.py); only a white-box audit says ``inconclusive``."""
    where = "the run summary's audit"

    def k(key: str) -> Any:
        return need(audit, key, where=where)

    whitebox = k("mode") == "whitebox"
    warn = ("<p class='bad'>This run trained WITHOUT noise on purpose "
            "(audit.break_noise_for_testing): its privacy claims are false.</p>"
            if k("break_noise_for_testing") else "")
    unit = k("unit")
    rows = [_audit_row(r, whitebox=whitebox) for r in k("agencies") or [audit]]
    verdict = ("<span class='bad'>FAILED: a lower bound exceeds its claim</span>"
               if k("caught") else
               "<span class='bad'>INCONCLUSIVE: a claim at or above the most the design can "
               "certify, which no run could contradict</span>"
               if whitebox and k("inconclusive") else "<span class='ok'>not contradicted</span>")
    bars = bar_chart(f"Privacy audit: epsilon per audited agency ({per_unit(unit)})",
                     [r["agency"] for r in rows],
                     [("empirical lower bound", [r["epsilon_lower_bound"] for r in rows]),
                      ("claimed", [r["claimed_epsilon"] if isinstance(r["claimed_epsilon"],
                                                                      int | float) else None
                                   for r in rows])],
                     y_label="epsilon", width=max(360, 120 * len(rows) + 120), height=260)
    columns = [("agency", "audited agency"),
               ("bound", f"empirical epsilon lower bound, {per_unit(unit)}"),
               ("claim", f"claimed epsilon, {per_unit(unit)}"), ("verdict", "verdict")]
    if whitebox:
        head = ("<h3>Privacy audit (white-box, Dirac gradient canaries)</h3>" + warn
                + f"<p>Each audited agency trained a side copy of its DP rounds with gradient "
                f"canaries, which it alone sees and which never reach the federation; the "
                f"claim is its epsilon for this run at the run's delta, {_e(per_unit(unit))}. "
                f"Overall: {verdict}.</p>")
        columns[2:2] = [("guessed", "right guesses"),
                        ("ceiling", "at most (every guess right)")]
        note = ("<p class='note'>A lower bound, not an estimate: an honest run's bound is far "
                "below its claim. One run can certify at most the 'at most' column: with the "
                "default number of canaries (audit.gradient_canaries=auto, 58,300 at delta "
                "1e-5) about 8.2 at delta 1e-5, the most the one-run theorem allows whatever "
                "the run leaks (about 7.5 when the plan's few steps allow only 'member' "
                "guesses), so a claim above that cannot be tested by one run. Method: "
                + _e(k("method")) + ".</p>")
    else:
        head = ("<h3>Privacy audit (black-box canaries)</h3>" + warn
                + f"<p>{k('planted')} canary adverts planted in {_e(k('agency'))}'s "
                f"training export, {k('held_out')} held out. Membership ROC-AUC "
                f"{_num(k('membership_roc_auc'))}; claim {_e(per_unit(unit))}: {verdict}.</p>")
        note = ("<p class='note'>One run and a few hundred canaries give a loose bound "
                "(at most about 2.4 here even with perfect separation): it cannot fail a run "
                "at the default budget (audit.mode=whitebox can). Method: "
                + _e(k("method")) + ".</p>")
    return head + table(rows, columns) + bars + note


def sweep_sections(root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The sweep table, the privacy-utility curve and the audit across the sweep."""
    sweep.collect(root)
    import pyarrow.parquet as pq

    points = pq.read_table(root / "sweep.parquet").to_pylist()
    runs = [sweep.run_row(r) for r in sweep.find_runs(root)]
    varying = [a for a in sweep.AXES if len({p[a] for p in points}) > 1]
    others = [a for a in varying
              if a not in ("target_epsilon", "privacy_enabled", "target_delta")]
    curves: dict[str, list[tuple[float, float, float | None, float | None]]] = {}
    flat_lines: dict[str, tuple[float, float]] = {}
    for p in points:
        name = ", ".join(f"{a}={p[a]}" for a in others)
        if p["global_roc_auc_mean"] is None:
            continue
        if p["target_epsilon"] is None:
            flat_lines[f"{name} no DP".strip()] = (p["global_roc_auc_mean"], 0.0)
            continue
        name = f"{name} DP-SGD (delta {p['target_delta']:g})".strip()
        curves.setdefault(name, []).append(
            (float(p["target_epsilon"]), p["global_roc_auc_mean"],
             p["global_roc_auc_ci95_low"], p["global_roc_auc_ci95_high"]))
    series: list[dict[str, Any]] = [{"name": n, "points": pts} for n, pts in curves.items()]
    xs = sorted({x for pts in curves.values() for x, *_ in pts})
    for name, (y, _) in flat_lines.items():
        if xs:
            series.append({"name": name, "dashed": True,
                           "points": [(xs[0], y, None, None), (xs[-1], y, None, None)]})
    missing = sweep.incomplete_runs(root)
    parts = ["<h2>Sweep</h2>",
             *([f"<p class='bad'>Left out {len(missing)} run folder(s) without metrics.json "
                "(failed or still running): " + ", ".join(_e(m.name) for m in missing)
                + "</p>"] if missing else []),
             f"<p>{len(runs)} runs in {len(points)} points from <code>{_e(root)}</code>. "
             "Points are grouped by every axis except the seed; intervals are 95% Student-t "
             "intervals over the seeds (mean ± t(0.975, n−1)·sd/√n).</p>"]
    if series:
        parts.append("<div class='plots'>" + line_chart(
            "Privacy-utility: pooled test ROC-AUC against target epsilon", series,
            x_label="target epsilon per agency (log scale; delta as configured)",
            y_label="ROC-AUC", log_x=True, width=720, height=360, clip=(0.0, 1.0))
            + "</div><p class='note'>Error bars: 95% t-intervals over seeds, drawn within "
            "[0, 1]; the table gives them whole.</p>")
    audited = [r for r in runs if r["audit_epsilon_lower_bound"] is not None]
    if audited:
        cats = [(f"eps {r['target_epsilon']}" if r["privacy_enabled"] else "no DP")
                + "".join(f" {r[a]}" for a in others) + f" seed {r['seed']}"
                for r in audited]
        parts.append(bar_chart(
            "Audit across the sweep: empirical lower bound vs claimed epsilon", cats,
            [("empirical lower bound", [r["audit_epsilon_lower_bound"] for r in audited]),
             ("claimed (ledger)", [r["audit_claimed_epsilon"] for r in audited])],
            y_label="epsilon", width=720))
    cols = [(a, a) for a in ("target_epsilon", *others)] + [
        ("n_runs", "seeds"), ("global_roc_auc_mean", "ROC-AUC mean"),
        ("global_roc_auc_sd", "sd"), ("global_roc_auc_ci95_low", "95% low"),
        ("global_roc_auc_ci95_high", "95% high"), ("ratio_to_oracle_mean", "/ oracle"),
        ("worst_agency_local_roc_auc_mean", "worst agency"),
        ("max_agency_epsilon_mean", "max epsilon"),
        ("audit_epsilon_lower_bound_mean", "audit eps lb"),
        ("wall_seconds_mean", "wall s")]
    parts.append(table(points, cols))
    return parts, runs


def tasks_sections(path: Path) -> list[str]:
    """A run of several tasks (experiment=both_tasks): an overview of every task, each
    epsilon with its delta and the task's unit of privacy, then each task's run report."""
    from simulation.both_tasks import read_summaries, task_line

    summaries = read_summaries(path)
    rows = []
    for name, s in summaries.items():
        t = task_line(name, s)
        t["epsilon"] = ("no DP" if not t["privacy_enabled"] else
                        f"target {t['target_epsilon']:g} at delta {t['delta']:g}, "
                        f"{t['unit']}")
        rows.append(t)
    parts = ["<h2>Tasks</h2><p>One federation per task, one after the other, each over the "
             "agencies that hold that kind of data; an agency in several keeps one node "
             "state with one ledger stream per task and dataset.</p>" + table(rows, [
                 ("task", "task"), ("federation", "federation"), ("agencies", "agencies"),
                 ("rounds", "rounds"), ("roc_auc", "pooled ROC-AUC"),
                 ("oracle_roc_auc", "oracle"), ("max_agency_epsilon", "max agency epsilon"),
                 ("epsilon", "privacy (epsilon, delta, unit)")])]
    for name, s in summaries.items():
        parts += run_sections(s, f"Task {name}: {s.preset} seed {s.seed}")
    return parts


def build(path: Path) -> str:
    """The whole HTML document for a run or a sweep folder."""
    path = Path(path)
    if (path / SUMMARY_FILE).is_file():
        summary = RunSummary.read(path / SUMMARY_FILE)
        body = run_sections(summary, f"Run: {summary.preset} seed {summary.seed}")
        heading = f"heroes-fl run report: {path}"
    elif (path / TASKS_FILE).is_file():
        body = tasks_sections(path)
        heading = f"heroes-fl run report, several tasks: {path}"
    else:
        body, runs = sweep_sections(path)
        first = Path(runs[0]["run"])
        body += run_sections(RunSummary.read(first / SUMMARY_FILE),
                             f"First run of the sweep: {first.name}")
        heading = f"heroes-fl sweep report: {path}"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(heading)}</title><style>{CSS}</style></head><body>"
            f"<h1>{_e(heading)}</h1><p class='note'>Synthetic agencies; every number comes "
            "from the run folders named here.</p>" + "".join(body) + "</body></html>")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="heroes report",
        description="Render a run folder or a multirun folder as one self-contained HTML file.")
    parser.add_argument("path", type=Path, help="a run folder or a multirun folder")
    parser.add_argument("--out", type=Path, default=None,
                        help="the HTML file (default: report.html in the folder)")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        raise ConfigError([f"{args.path} is not a folder; give a run folder (with "
                           "metrics.json) or a multirun folder"], source="heroes report")
    doc = build(args.path)
    out = args.out or args.path / "report.html"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out)
    print(f"report: {out}")
    return 0
