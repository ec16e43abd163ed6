"""``heroes consortium release RUN_DIR``: turn a finished run into a signed model bundle.

Reads what a run left behind (``model.pt`` and ``metrics.json``; a simulation run folder
also has the per-agency table and ``run_config.json``, an aggregator output folder has the
rounds only), writes a bundle folder (see federation/bundle.py) with a model card and signs
the card with the consortium's Ed25519 key.

Every epsilon on the card is the agency's cumulative epsilon over every round of every run
on its dataset, as the agency's node reported it from its privacy ledger, with the delta it
holds at and the unit of privacy (one advert record).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from federation.appsign import manifest_digest
from federation.bundle import BUNDLE_FORMAT, CARD_JSON, CARD_MD, WEIGHTS
from federation.config import RunSettings
from federation.errors import DeploymentError
from federation.protocol import SUMMARY_FILE, Metric, RoundRecord, RunSummary, Status
from federation.signing import file_sha256, key_fingerprint, load_private_key, sign_file
from federation.tasks import Task, get_task


def _code_version() -> dict[str, str]:
    """Package version, and the git commit when the code runs from a checkout."""
    try:
        package = metadata.version("heroes-fl")
    except metadata.PackageNotFoundError:
        package = "unknown"
    commit = "unknown"
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
        if out.returncode == 0:
            commit = out.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                    "--untracked-files=no"], capture_output=True, text=True,
                                   timeout=10, check=False)
            if dirty.returncode == 0 and dirty.stdout.strip():
                commit += " (with uncommitted changes)"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"package": package, "git_commit": commit}


def _finite(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _agencies_from_rounds(rounds: list[RoundRecord]) -> list[dict[str, Any]]:
    """Per-agency rows from the round log alone (an aggregator output folder). A figure an
    agency's policy does not share is absent from its outcome, and None here."""
    names: list[str] = []
    for r in rounds:
        for o in r.train + r.evaluate:
            if o.agency not in names:
                names.append(o.agency)
    rows = []
    for name in names:
        trained = [o for r in rounds for o in r.train
                   if o.agency == name and o.status is Status.OK]
        evaluated = [o for r in rounds for o in r.evaluate
                     if o.agency == name and o.status is Status.OK]
        last = trained[-1].metrics if trained else {}
        rows.append({
            "agency": name,
            "train_examples": last.get(Metric.NUM_EXAMPLES),
            "rounds_trained": len(trained),
            "epsilon": last.get(Metric.EPSILON),
            "delta": last.get(Metric.DELTA),
            "run_epsilon": last.get(Metric.RUN_EPSILON),
            "noise_multiplier": last.get(Metric.NOISE_MULTIPLIER),
            "sample_rate": last.get(Metric.SAMPLE_RATE),
            "steps_per_round": last.get(Metric.STEPS),
            "local_roc_auc": evaluated[-1].metrics.get(Metric.ROC_AUC) if evaluated else None,
        })
    return rows


def _agencies(summary: RunSummary, task: Task) -> list[dict[str, Any]]:
    from_rounds = {row["agency"]: row for row in _agencies_from_rounds(summary.rounds)}
    if not summary.agencies:  # an aggregator's output: its round log is all there is
        rows = list(from_rounds.values())
    else:
        rows = []
        for a in summary.agencies:
            extra = from_rounds.get(a.agency, {})  # an agency that never replied has none
            rows.append({
                "agency": a.agency, "train_examples": a.train_examples,
                "rounds_trained": a.rounds_trained, "epsilon": a.epsilon, "delta": a.delta,
                "run_epsilon": a.run_epsilon, "ledger_epsilon": a.ledger_epsilon,
                "noise_multiplier": a.noise_multiplier,
                "sample_rate": extra.get("sample_rate"),
                "steps_per_round": extra.get("steps_per_round"),
                "local_roc_auc": a.local_roc_auc,
                "stopped": a.stopped,
            })
    for row in rows:
        row["epsilon_unit"] = task.privacy_unit
        row["epsilon_scope"] = ("cumulative over every round of every run on the agency's "
                                "dataset (its privacy ledger)")
        for key, value in list(row.items()):
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None
    return rows


def _global_metrics(summary: RunSummary, agencies: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if summary.global_metrics is not None:
        out["pooled_test"] = summary.global_metrics
        out["pooled_test_note"] = ("simulation: the pooled entity-disjoint test split of every "
                                   "agency, scored centrally by the simulator")
    rounds = summary.rounds
    if rounds and rounds[-1].evaluate_aggregate:
        out["federated_evaluation_last_round"] = {
            k: _finite(v) for k, v in rounds[-1].evaluate_aggregate.items()}
    aucs = [(a["agency"], a["local_roc_auc"]) for a in agencies
            if _finite(a["local_roc_auc"]) is not None]
    if aucs:
        worst = min(aucs, key=lambda item: float(item[1]))
        out["worst_agency"] = {"agency": worst[0], "local_roc_auc": worst[1]}
    return out


OPERATING_RULE = ("the threshold that maximises F1 on the pooled evaluation of the final "
                  "round (federation.metrics.operating_point)")


def operating_point(summary: RunSummary) -> dict[str, Any]:
    """The card's default threshold, from what the consortium legitimately holds: the
    pooled figures of the final round's secure evaluation, which the aggregator computed
    from the secure sum of every agency's per-bin score histograms on its held-out test
    split (server/secagg.py); no agency's own scores or figures.

    Why a point of its own and not 0.5: the sigmoid output of a DP-trained model is not
    calibrated (clipping and noise shrink the logits towards the prior, which for a rare
    positive sits far below 0), so at 0.5 such a model can rank well and flag nothing.
    Why F1: see ``operating_point`` in federation/metrics.py. The point is chosen on the
    same pooled split its precision and recall are read from, so they are a little
    optimistic; an agency may set its own with ``--threshold``. A run whose final round was
    not evaluated under secure aggregation has no pooled histograms: the card then says
    why, and scoring uses the task's default (saying so)."""
    if not summary.rounds:
        return {"threshold": None, "why_none": "the run completed no round"}
    last = summary.rounds[-1]
    e = last.evaluate_aggregate
    if not e:
        return {"threshold": None,
                "why_none": f"round {last.round}, the final one, has no evaluation"}
    logit = _finite(e.get(Metric.OPERATING_LOGIT))
    if not e.get(Metric.SECURE_SUM) or logit is None:
        why = ("was not a secure sum (fewer agencies than secure aggregation needs, or it "
               "was switched off)" if not e.get(Metric.SECURE_SUM)
               else "had no positive record, or was made by a heroes-fl that did not "
               "compute an operating point")
        return {"threshold": None, "why_none": f"the evaluation of round {last.round}, "
                f"the final one, {why}"}
    figures = {name: _finite(e.get(key)) for name, key in (
        ("pooled_precision", Metric.OPERATING_PRECISION),
        ("pooled_recall", Metric.OPERATING_RECALL), ("pooled_f1", Metric.OPERATING_F1),
        ("pooled_flagged_share", Metric.OPERATING_FLAGGED_SHARE))}
    return {
        "threshold": 1.0 / (1.0 + math.exp(-logit)),
        "logit": logit,
        "rule": OPERATING_RULE,
        "round": last.round,
        "agencies_in_sum": _finite(e.get(Metric.AGENCIES_IN_SUM)),
        "examples": _finite(e.get(Metric.EXAMPLES)),
        **figures,
        "computed_from": "the secure sum of every agency's per-bin score histograms on its "
                         "held-out test split (no agency's own figures)",
        "note": "a threshold on the model's own probability (uncalibrated); precision and "
                "recall are read on the split the point was chosen on, so a little "
                "optimistic",
    }


def _load_run(run_dir: Path) -> tuple[dict[str, Any], RunSummary]:
    problems = [f"{run_dir / name} is missing" for name in (WEIGHTS, "metrics.json")
                if not (run_dir / name).is_file()]
    if problems:
        raise DeploymentError(
            f"{run_dir} is not a finished run: {'; '.join(problems)}. Fix: pass a simulation "
            "run folder (outputs/<date>/<time>) or an aggregator output folder that holds "
            "model.pt and metrics.json (a run that stopped early has only partial/)."
        )
    saved = torch.load(run_dir / WEIGHTS, weights_only=True)
    for key in ("task", "task_params", "state_dict", "settings"):
        if key not in saved:
            raise DeploymentError(f"{run_dir / WEIGHTS} lacks {key!r}; it was not written by "
                                  "heroes-fl's ServerApp.")
    return saved, RunSummary.read(run_dir / SUMMARY_FILE)


def build_card(run_dir: Path, saved: dict[str, Any], metrics: RunSummary, *,
               weights_sha256: str, released_at: float, signer: str,
               app_bundle_sha256: str) -> dict[str, Any]:
    settings = RunSettings.from_flat(saved["settings"], source=f"{run_dir / WEIGHTS} settings")
    task = get_task(settings.task_name, settings.task_params)
    agencies = _agencies(metrics, task)
    p = settings.privacy
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(released_at))
    return {
        "format": BUNDLE_FORMAT,
        "model_version": f"{settings.task_name}-{stamp}-{weights_sha256[:12]}",
        "released_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(released_at)),
        "model_saved_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime((run_dir / WEIGHTS).stat().st_mtime)),
        "source_run": str(run_dir.resolve()),
        "task": {"name": settings.task_name, "params": dict(settings.task_params)},
        "versions": {"data_schema": task.record_schema.name,
                     "features": task.features_version,
                     "code": _code_version(), "app_bundle_sha256": app_bundle_sha256},
        "training": {"strategy": settings.strategy.name,
                     "rounds_planned": settings.strategy.num_rounds,
                     "rounds_completed": len(metrics.rounds),
                     "local_epochs": settings.train.local_epochs,
                     "batch_size": settings.train.batch_size},
        "privacy": {
            "enabled": p.enabled,
            "mechanism": "DP-SGD (Opacus), record-level, at each agency" if p.enabled
            else "none: trained without differential privacy",
            "unit": task.privacy_unit,
            "target_epsilon_per_run": p.target_epsilon,
            "target_delta": p.target_delta,
            "max_grad_norm": p.max_grad_norm,
            "accountant": p.accountant,
            "secure_mode": p.secure_mode,
        },
        "agencies": agencies,
        "metrics": _global_metrics(metrics, agencies),
        "calibration": {
            "method": "none",
            "a": 1.0, "b": 0.0,
            "note": "probability = sigmoid(logit): the model's own output, trained with "
                    "log-loss on the agencies' pooled label mix; not recalibrated for any "
                    "one agency's base rate",
        },
        "operating_point": operating_point(metrics),
        "intended_use": task.intended_use,
        "signed_by": signer,
        "files": {WEIGHTS: weights_sha256},
    }


def _clean(value: Any) -> Any:
    """NaN and infinities become null: the card is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _fmt(v: object, digits: int = 3) -> str:
    f = _finite(v)
    return "n/a" if f is None else f"{f:.{digits}f}"


def render_card(card: dict[str, Any]) -> str:
    """The card for people: what the model is, who trained it, at what privacy cost."""
    p = card["privacy"]
    v = card["versions"]
    lines = [
        f"# Model card: {card['model_version']}",
        "",
        f"Released {card['released_at']} by the consortium key `{card['signed_by']}`.",
        f"Intended use: {card['intended_use']}",
        "",
        "## Versions",
        f"- task: {card['task']['name']} {json.dumps(card['task']['params'], sort_keys=True)}",
        f"- data schema: {v['data_schema']}; features version: {v['features']}",
        f"- code: heroes-fl {v['code']['package']}, git {v['code']['git_commit']}",
        f"- app bundle (sha256 of its manifest, as in agency receipts): "
        f"{v['app_bundle_sha256']}",
        "",
        "## Privacy",
        f"- mechanism: {p['mechanism']}",
        f"- unit of privacy: {p['unit']}",
        f"- per-run target: epsilon {p['target_epsilon_per_run']} at delta {p['target_delta']}; "
        f"clipping norm {p['max_grad_norm']}; accountant {p['accountant']}",
        "",
        "| agency | rounds | cumulative epsilon | delta | noise multiplier | local ROC-AUC |",
        "|---|---|---|---|---|---|",
    ]
    for a in card["agencies"]:
        lines.append(f"| {a['agency']} | {a['rounds_trained']} | {_fmt(a['epsilon'])} | "
                     f"{a['delta']} | {_fmt(a['noise_multiplier'])} | "
                     f"{_fmt(a['local_roc_auc'])} |")
    lines += ["", "Epsilon is each agency's cumulative value over every round of every run on "
              "its dataset (its privacy ledger), per the unit above, at the agency's delta. "
              "n/a: the agency keeps that figure (its policy does not share per-agency "
              "figures with the consortium; its own ledger has it).", "",
              "## Metrics"]
    m = card["metrics"]
    if "pooled_test" in m:
        lines.append("- pooled test split: " + ", ".join(
            f"{k} {_fmt(val)}" for k, val in m["pooled_test"].items()))
    if "federated_evaluation_last_round" in m:
        lines.append("- federated evaluation, last round: " + ", ".join(
            f"{k} {_fmt(val)}" for k, val in m["federated_evaluation_last_round"].items()))
    if "worst_agency" in m:
        w = m["worst_agency"]
        lines.append(f"- worst agency: {w['agency']} (local ROC-AUC {_fmt(w['local_roc_auc'])})")
    lines += ["", "## Operating point", _render_operating_point(card["operating_point"]),
              "", "## Calibration", card["calibration"]["note"], ""]
    return "\n".join(lines)


def _render_operating_point(op: dict[str, Any]) -> str:
    if op.get("threshold") is None:
        return (f"None recorded: {op.get('why_none', 'not computed')}. `heroes agency score` "
                "uses the task's default threshold unless the analyst sets --threshold.")
    return (f"Default threshold {_fmt(op['threshold'], 4)} on the model's probability "
            f"(logit {_fmt(op['logit'])}): {op['rule']} (round {op['round']}), computed "
            f"from {op['computed_from']}. There: precision {_fmt(op['pooled_precision'])}, "
            f"recall {_fmt(op['pooled_recall'])}, F1 {_fmt(op['pooled_f1'])}, "
            f"{_fmt(op['pooled_flagged_share'])} of records flagged, over "
            f"{_fmt(op['examples'], 0)} records from {_fmt(op['agencies_in_sum'], 0)} "
            "agencies. `heroes agency score` uses it unless the analyst sets --threshold.")


#: What `heroes consortium train` keeps in its run folder: the signed bundle it submitted
#: and the digest it recorded at submission (server/deploy.py).
RUN_APP_BUNDLE, RUN_APP_RECORD = "app.fab", "app-bundle.json"


def _app_bundle_sha256(run_dir: Path, app_bundle: Path | None) -> str:
    """The run's app bundle as agencies' receipts record it (its checked manifest's
    SHA-256): from ``app_bundle`` when given, else from the ``app.fab`` that `consortium
    train` kept in the run folder, checked against the digest it recorded when it
    submitted the run; "unknown" for a run without either (a simulation runs no bundle)."""
    if app_bundle is not None:
        return manifest_digest(app_bundle.read_bytes())
    fab, record = run_dir / RUN_APP_BUNDLE, run_dir / RUN_APP_RECORD
    recorded = None
    if record.is_file():
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))["manifest_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DeploymentError(
                f"{record} is not readable as `heroes consortium train` writes it. Fix: "
                "restore it from the run's backup, or pass --app-bundle with the bundle "
                "the run used") from None
    if fab.is_file():
        digest = manifest_digest(fab.read_bytes())
        if recorded is not None and digest != recorded:
            raise DeploymentError(
                f"{fab} is not the bundle this run submitted: its manifest digest differs "
                f"from the one recorded in {record} when the run started. Fix: restore the "
                "submitted app.fab, or pass --app-bundle with the bundle the run used")
        return digest
    return str(recorded) if recorded is not None else "unknown"


def release_run(run_dir: Path, *, signing_key: Path, out: Path | None = None,
                app_bundle: Path | None = None) -> Path:
    """Write a signed bundle folder for a finished run and return its path."""
    key = load_private_key(signing_key)
    saved, metrics = _load_run(run_dir)
    target = out if out is not None else run_dir / "release"
    if target.exists():
        raise DeploymentError(
            f"{target} already exists; a release is never overwritten. Fix: pass --out with a "
            "new folder, or move the old release away."
        )
    app_sha = _app_bundle_sha256(run_dir, app_bundle)
    tmp = target.with_name(target.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from an interrupted release
    tmp.mkdir(parents=True)
    shutil.copyfile(run_dir / WEIGHTS, tmp / WEIGHTS)
    weights_sha = file_sha256(tmp / WEIGHTS)
    card = _clean(build_card(run_dir, saved, metrics, weights_sha256=weights_sha,
                             released_at=time.time(), signer=key_fingerprint(key.public_key()),
                             app_bundle_sha256=app_sha))
    (tmp / CARD_MD).write_text(render_card(card), encoding="utf-8")
    card["files"][CARD_MD] = hashlib.sha256((tmp / CARD_MD).read_bytes()).hexdigest()
    text = json.dumps(card, indent=2, sort_keys=True, allow_nan=False)
    (tmp / CARD_JSON).write_text(text + "\n", encoding="utf-8")
    sign_file(key, tmp / CARD_JSON)
    tmp.replace(target)
    return target
