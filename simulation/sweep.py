"""``heroes sweep-table MULTIRUN_DIR``: one table from every run of a Hydra multirun.

Each run folder holds ``config.yaml`` (the resolved configuration) and ``metrics.json``.
Runs are grouped into points by the sweep axes (the task, privacy on/off and epsilon,
federation preset and number of agencies, scale, non-IID skew, strategy, rounds, mode) plus
any other override the run was given except ``seed``, so runs that differ in anything but the seed
never share a point. Per point and metric: mean, sample standard deviation and a 95%
Student-t confidence interval over the seeds (mean +- t(0.975, n-1) * sd / sqrt(n); none
with a single seed). Written as ``sweep.csv`` and ``sweep.parquet`` (one row per point) and
``runs.csv`` (one row per run) in the multirun folder, or ``--out``.

Secure aggregation is an axis by its configured ``secagg.mode`` (auto, on, off); the run
row also counts the rounds that were really aggregated securely (``secagg_rounds``).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from federation.errors import ConfigError
from federation.protocol import SUMMARY_FILE, Metric, RoundRecord, RunSummary, figure, need
from simulation.tasks_index import TASKS_FILE, read_index

AXES = ("task", "mode", "privacy_enabled", "target_epsilon", "target_delta", "federation",
        "num_agencies", "scale", "skew", "strategy", "num_rounds", "secagg",
        "other_overrides")

METRICS = ("global_roc_auc", "global_pr_auc", "global_brier", "ratio_to_oracle",
           "oracle_roc_auc", "centralised_roc_auc", "worst_agency_local_roc_auc",
           "max_agency_epsilon", "mean_gain_own_test", "mean_gain_pooled_test",
           "audit_epsilon_lower_bound", "audit_claimed_epsilon", "wall_seconds")

CONFIDENCE = 0.95


def find_runs(root: Path) -> list[Path]:
    """Every folder under ``root`` (or ``root`` itself) with a run's metrics and config."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError([f"{root} is not a folder; give the multirun folder, e.g. "
                           "multirun/2026-11-29/10-00-00"], source="heroes sweep-table")
    runs = sorted({p.parent for p in root.rglob("metrics.json")
                   if (p.parent / "config.yaml").is_file() and p.parent.name != "server"},
                  key=lambda p: (len(p.parts), str(p)))
    if not runs:
        raise ConfigError([f"no run under {root} has both metrics.json and config.yaml; "
                           "run a sweep first, e.g. heroes simulate -m "
                           "privacy.target_epsilon=1,8 seed=0,1"], source="heroes sweep-table")
    return runs


def incomplete_runs(root: Path) -> list[Path]:
    """Job folders of the multirun (they hold Hydra's .hydra/) without a metrics.json:
    runs that failed or are still going. Named, never silently left out."""
    return sorted(p.parent for p in Path(root).rglob(".hydra")
                  if not (p.parent / "metrics.json").is_file()
                  and not _tasks_complete(p.parent))


def _tasks_complete(job: Path) -> bool:
    """A job of several tasks (experiment=both_tasks) keeps each task's metrics.json in
    the task's folder, listed by its tasks.json: complete when every one is there."""
    if not (job / TASKS_FILE).is_file():
        return False
    return all((folder / "metrics.json").is_file() for _, folder in read_index(job))


def _overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file() and (run.parent / TASKS_FILE).is_file():
        path = run.parent / ".hydra" / "overrides.yaml"  # a task of an experiment=both_tasks job
    if not path.is_file():
        return []
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return [str(o) for o in data]


def _finite(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def run_row(run: Path) -> dict[str, Any]:
    """One run's axes and headline metrics."""
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    summary = RunSummary.read(run / SUMMARY_FILE)
    fed = cfg.get("federation", {})
    privacy = summary.privacy  # what the run did, read strictly (no "DP on" by default)
    enabled = privacy.enabled
    axis_keys = ("privacy", "federation", "strategy", "seed", "mode", "experiment",
                 "secagg.mode")
    other = sorted(o for o in _overrides(run)
                   if not o.lstrip("+~").startswith(axis_keys))
    row: dict[str, Any] = {
        "run": str(run),
        "task": cfg.get("task", {}).get("name"),
        "seed": cfg.get("seed"),
        "mode": summary.mode,
        "privacy_enabled": enabled,
        "target_epsilon": privacy.target_epsilon if enabled else None,
        "target_delta": privacy.target_delta if enabled else None,
        "federation": fed.get("name"),
        "num_agencies": len(fed.get("agencies", [])),
        "scale": fed.get("scale"),
        "skew": fed.get("skew", 1.0),
        "strategy": cfg.get("strategy", {}).get("name"),
        "num_rounds": cfg.get("strategy", {}).get("num_rounds"),
        "secagg": cfg.get("secagg", {}).get("mode"),
        "other_overrides": " ".join(other),
    }
    row.update(_headline(summary))
    return row


def _headline(summary: RunSummary) -> dict[str, Any]:
    """A run's headline metrics. A part the run did not have is None in the summary; its
    columns are empty here. A part that lacks a figure it must hold is a ProtocolError."""
    g, where = summary.global_metrics, "'global' of the run summary"
    oracle = _finite(summary.oracle_roc_auc)
    auc = _finite(figure(g, Metric.ROC_AUC, where=where))
    agencies = summary.agencies or []
    local = [v for v in (_finite(a.local_roc_auc) for a in agencies) if v is not None]
    eps = [v for v in (_finite(a.epsilon) for a in agencies) if v is not None]
    gain = summary.gain_rows()
    at = "a gain row of the run summary's baselines"
    own = [v for v in (_finite(need(r, "gain_own_test", where=at)) for r in gain)
           if v is not None]
    pooled = [v for v in (_finite(need(r, "gain_pooled_test", where=at)) for r in gain)
              if v is not None]
    audit, at = summary.audit, "'audit' of the run summary"
    return {
        "global_roc_auc": auc,
        "global_pr_auc": _finite(figure(g, Metric.PR_AUC, where=where)),
        "global_brier": _finite(figure(g, Metric.BRIER, where=where)),
        "oracle_roc_auc": oracle,
        "ratio_to_oracle": auc / oracle if auc is not None and oracle else None,
        "centralised_roc_auc": _finite(figure(summary.centralised_baseline, Metric.ROC_AUC,
                                              where="'centralised_baseline' of the run "
                                                    "summary")),
        "worst_agency_local_roc_auc": min(local) if local else None,
        "max_agency_epsilon": max(eps) if eps else None,
        "mean_gain_own_test": sum(own) / len(own) if own else None,
        "mean_gain_pooled_test": sum(pooled) / len(pooled) if pooled else None,
        "audit_epsilon_lower_bound": _finite(figure(audit, "epsilon_lower_bound", where=at)),
        "audit_claimed_epsilon": _finite(figure(audit, "claimed_epsilon", where=at)),
        "wall_seconds": _finite(summary.wall_seconds),
        "secagg_rounds": secure_rounds(summary.rounds),
    }


def secure_rounds(rounds: Sequence[RoundRecord]) -> int:
    """Rounds whose training the server saw only as a secure sum (its replies carry the
    pooled result's mark; a figure table holds only the figures a reply had)."""
    return sum(1 for r in rounds if any(Metric.SECURE_SUM in o.metrics for o in r.train))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE
               ) -> tuple[float, float | None, float | None, float | None]:
    """Mean, sample sd and the two-sided Student-t interval (None below two values)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def point_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per point (the axes), every metric summarised over the point's seeds."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[a] for a in AXES), []).append(r)
    out = []
    for key, members in groups.items():
        point: dict[str, Any] = dict(zip(AXES, key, strict=True))
        point["seeds"] = " ".join(str(m["seed"]) for m in sorted(
            members, key=lambda m: (m["seed"] is None, m["seed"])))
        point["n_runs"] = len(members)
        for metric in METRICS:
            values = [float(m[metric]) for m in members if m[metric] is not None]
            point[f"{metric}_n"] = len(values)
            mean, sd, lo, hi = t_interval(values) if values else (None, None, None, None)
            point[f"{metric}_mean"] = mean
            point[f"{metric}_sd"] = sd
            point[f"{metric}_ci95_low"] = lo
            point[f"{metric}_ci95_high"] = hi
        out.append(point)
    out.sort(key=lambda p: tuple("" if p[a] is None else str(p[a]) for a in AXES))
    return out


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
    tmp.replace(path)


def _write_parquet(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(rows[0])
    table = pa.table({c: [r[c] for r in rows] for c in columns})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def collect(root: Path, out: Path | None = None) -> dict[str, Path]:
    """Write sweep.csv, sweep.parquet and runs.csv; return their paths."""
    runs = [run_row(r) for r in find_runs(root)]
    points = point_table(runs)
    out = Path(out) if out is not None else Path(root)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"points_csv": out / "sweep.csv", "points_parquet": out / "sweep.parquet",
             "runs_csv": out / "runs.csv"}
    _write_csv(paths["points_csv"], points)
    _write_parquet(paths["points_parquet"], points)
    _write_csv(paths["runs_csv"], runs)
    return paths


def render(points: Sequence[Mapping[str, Any]]) -> str:
    """A short view of the table: the axes that vary and pooled ROC-AUC with its interval."""
    varying = [a for a in AXES if len({p[a] for p in points}) > 1] or ["federation"]
    head = "".join(f"{a:>16}" for a in varying)
    lines = [f"{head}{'seeds':>8}{'ROC-AUC mean':>14}{'95% CI (t)':>20}{'audit eps lb':>14}"]
    for p in points:
        ci = ("n/a" if p["global_roc_auc_ci95_low"] is None else
              f"[{p['global_roc_auc_ci95_low']:.3f}, {p['global_roc_auc_ci95_high']:.3f}]")
        auc = p["global_roc_auc_mean"]
        lb = p["audit_epsilon_lower_bound_mean"]
        lines.append("".join(f"{'off' if p[a] is None and a == 'target_epsilon' else p[a]!s:>16}"
                             for a in varying)
                     + f"{p['n_runs']:>8}{'n/a' if auc is None else f'{auc:.3f}':>14}"
                     f"{ci:>20}{'n/a' if lb is None else f'{lb:.2f}':>14}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="heroes sweep-table",
        description="Collect every run of a Hydra multirun into sweep.csv/.parquet "
                    "(one row per point: mean, sd and 95%% t-interval over seeds).")
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the tables (default: the multirun folder)")
    args = parser.parse_args(argv)
    paths = collect(args.multirun_dir, args.out)
    import pyarrow.parquet as pq

    points = pq.read_table(paths["points_parquet"]).to_pylist()
    print(render(points))
    missing = incomplete_runs(args.multirun_dir)
    if missing:
        print(f"left out {len(missing)} run folder(s) without metrics.json (failed or still "
              f"running): {', '.join(str(m) for m in missing)}")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
