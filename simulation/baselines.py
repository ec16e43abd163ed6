"""``heroes simulate mode=baselines``: four arms on the same generated data and splits.

1. centralised, non-private: every agency's training split pooled, the same optimiser and
   the same number of passes over the data as a federated run;
2. each agency alone, with the same DP: local DP-SGD only, noise planned by
   ``federation.privacy.plan_noise`` for the run's rounds and epochs exactly as a node plans
   it, so each agency's epsilon (at the run's delta) is the one it would spend federating;
3. federated, non-private: the real Flower simulation with ``privacy.enabled=false``;
4. federated with DP: the real Flower simulation with the configured privacy.

Every arm is scored on each agency's own test split and on the pooled test split; each
agency's gain from federating is federated DP minus alone with DP, smallest agencies first.
Features for the in-process arms are computed once; the federated non-private arm starts
with the DP arm's node feature caches.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from federation import metrics
from federation.config import RunSettings, Scalar
from federation.data import AgencyRecords
from federation.errors import ConfigError
from federation.privacy import epsilon_spent, plan_noise
from federation.protocol import (
    SUMMARY_FILE,
    AgencyRow,
    Metric,
    PrivacySummary,
    RoundRecord,
    RunSummary,
    figure,
    need,
)
from federation.tasks import Task, get_task
from federation.text import SparseRows
from federation.training import predict_proba, train_local
from simulation.federation_run import node_features, run_flower_simulation, write_policies
from simulation.generator import FederationManifest
from simulation.summary import CONSORTIUM_SEES, agency_table, local_rounds, render
from simulation.units import per_unit

ARMS = ("centralised_non_private", "alone_dp", "federated_non_private", "federated_dp")
ARM_LABELS = {
    "centralised_non_private": "centralised, non-private",
    "alone_dp": "each agency alone, same DP",
    "federated_non_private": "federated, non-private",
    "federated_dp": "federated, DP",
}


@dataclass(frozen=True)
class Split:
    features: SparseRows
    labels: np.ndarray


@dataclass(frozen=True)
class AgencySplits:
    agency: str
    train: Split
    test: Split


def _split(task: Task, data: AgencyRecords, which: str, state_dir: Path) -> Split:
    """One agency's split, featurised through its node's feature cache in ``state_dir``
    (the DP arm's node reads it back instead of featurising again)."""
    table = data.train if which == "train" else data.test
    rows = task.rows(table)
    return Split(node_features(task, table, state_dir),
                 table.positive[rows].astype(np.float32))


def _concat(parts: list[Split]) -> Split:
    return Split(SparseRows.concat([p.features for p in parts]),
                 np.concatenate([p.labels for p in parts]))


def _auc(labels: np.ndarray, proba: np.ndarray) -> float | None:
    value = metrics.roc_auc(labels, proba) if labels.size else math.nan
    return None if math.isnan(value) else float(value)


def score(model: nn.Module, splits: list[AgencySplits], pooled_test: Split, *, k: int
          ) -> dict[str, Any]:
    """ROC-AUC on each agency's own test split and all metrics on the pooled test split."""
    per_agency = {s.agency: _auc(s.test.labels, predict_proba(model, s.test.features))
                  for s in splits}
    pooled = metrics.summary(pooled_test.labels, predict_proba(model, pooled_test.features),
                             k=k)
    return {"pooled": pooled, "per_agency_roc_auc": per_agency}


def _fresh_model(task: Task, settings: RunSettings) -> nn.Module:
    torch.manual_seed(settings.train.seed)  # the same initial model as the ServerApp's
    return task.build_model()


def train_centralised(task: Task, settings: RunSettings, train: Split) -> nn.Module:
    model = _fresh_model(task, settings)
    epochs = settings.train.local_epochs * settings.strategy.num_rounds
    train_local(model, train.features, train.labels,
                train=replace(settings.train, local_epochs=epochs),
                privacy=replace(settings.privacy, enabled=False), plan=None)
    return model


def train_alone(task: Task, settings: RunSettings, split: Split, agency: str
                ) -> tuple[nn.Module, float, float]:
    """One agency's local-only training over the run's rounds, with the run's DP plan.

    Returns the model, its epsilon and its delta.
    """
    model = _fresh_model(task, settings)
    p = settings.privacy
    assert p.enabled and p.target_epsilon is not None and p.target_delta is not None
    plan = plan_noise(num_records=len(split.features), batch_size=settings.train.batch_size,
                      local_epochs=settings.train.local_epochs,
                      planned_rounds=settings.strategy.num_rounds,
                      target_epsilon=p.target_epsilon, target_delta=p.target_delta,
                      accountant=p.accountant, where=f"agency {agency}")
    history: list[tuple[float, float, int]] = []
    for _ in range(settings.strategy.num_rounds):
        result = train_local(model, split.features, split.labels, train=settings.train,
                             privacy=p, plan=plan, history=history)
        history = result.history
    return model, epsilon_spent(history, delta=p.target_delta, accountant=p.accountant), \
        p.target_delta


def _federated_arm(cfg: DictConfig, flat: dict[str, Scalar], arm_dir: Path,
                   agencies: list[str], *, private: bool, seed_cache_from: Path | None
                   ) -> tuple[Path, Path]:
    server_out = arm_dir / "server"
    state_root = arm_dir / "agency_state"
    arm_flat = dict(flat)
    arm_flat["paths.output_dir"] = str(server_out)
    arm_flat["paths.state_root"] = str(state_root)
    arm_flat["privacy.enabled"] = private
    RunSettings.from_flat(arm_flat, source=f"baseline arm {arm_dir.name}")
    write_policies(cfg.agency_policy, agencies, state_root)
    if seed_cache_from is not None:
        from clients.node import CACHE_DIR

        for agency in agencies:
            cache = seed_cache_from / agency / CACHE_DIR
            if cache.is_dir():
                shutil.copytree(cache, state_root / agency / CACHE_DIR, dirs_exist_ok=True)
    print(f"  federated, {'DP' if private else 'NON-PRIVATE'}: Flower simulation", flush=True)
    run_flower_simulation(arm_flat, num_nodes=len(agencies),
                          client_cpus=float(cfg.simulation.client_cpus),
                          backend=str(cfg.simulation.backend),
                          verbose=bool(cfg.simulation.verbose))
    return server_out, state_root


def run_baselines(cfg: DictConfig, out_dir: Path, *, flat: dict[str, Scalar],
                  settings: RunSettings, manifest: FederationManifest,
                  agencies: list[AgencyRecords], t0: float) -> RunSummary:
    """Run the four arms and write ``metrics.json`` with the comparison."""
    problems = []
    if not settings.privacy.enabled:
        problems.append("mode=baselines compares DP arms with non-private ones; set "
                        "privacy.enabled=true (e.g. privacy=eps3)")
    if not bool(cfg.agency_policy.allow_non_private):
        problems.append("mode=baselines runs a non-private federated arm, which the simulated "
                        "agencies' policy refuses; set agency_policy.allow_non_private=true")
    if problems:
        raise ConfigError(problems, source="baselines")
    task = get_task(settings.task_name, settings.task_params)
    arms_root = out_dir / "arms"
    dp_state_root = arms_root / "federated_dp" / "agency_state"  # _federated_arm's
    splits = [AgencySplits(a.agency, _split(task, a, "train", dp_state_root / a.agency),
                           _split(task, a, "test", dp_state_root / a.agency))
              for a in agencies]
    pooled_test = _concat([s.test for s in splits])
    k = settings.eval.k
    arms: dict[str, dict[str, Any]] = {}
    print("baselines on identical splits:", flush=True)

    print(f"  {ARM_LABELS['centralised_non_private']}", flush=True)
    central = train_centralised(task, settings, _concat([s.train for s in splits]))
    arms["centralised_non_private"] = score(central, splits, pooled_test, k=k)

    print(f"  {ARM_LABELS['alone_dp']}", flush=True)
    alone: dict[str, Any] = {"pooled_per_agency": {}, "per_agency_roc_auc": {},
                             "epsilon": {}, "delta": {}}
    for s in splits:
        model, eps, delta = train_alone(task, settings, s.train, s.agency)
        alone["per_agency_roc_auc"][s.agency] = _auc(
            s.test.labels, predict_proba(model, s.test.features))
        alone["pooled_per_agency"][s.agency] = metrics.summary(
            pooled_test.labels, predict_proba(model, pooled_test.features), k=k)
        alone["epsilon"][s.agency] = eps
        alone["delta"][s.agency] = delta
    arms["alone_dp"] = alone

    names = [a.agency for a in agencies]
    fed: dict[str, Path] = {}
    dp_server, dp_state = _federated_arm(cfg, flat, arms_root / "federated_dp", names,
                                         private=settings.privacy.enabled,
                                         seed_cache_from=None)
    np_server, _ = _federated_arm(cfg, flat, arms_root / "federated_non_private", names,
                                  private=False, seed_cache_from=dp_state)
    fed = {"federated_dp": dp_server, "federated_non_private": np_server}
    rounds: dict[str, list[RoundRecord]] = {}
    for arm, server_out in fed.items():
        saved = torch.load(server_out / "model.pt", weights_only=True)
        model = task.build_model()
        model.load_state_dict(saved["state_dict"])
        arms[arm] = score(model, splits, pooled_test, k=k)
        rounds[arm] = RunSummary.read(server_out / SUMMARY_FILE).rounds

    table = agency_table(rounds["federated_dp"], agencies, manifest.oracle_per_agency,
                         dp_state)
    gain = gain_table(arms, agencies, table)
    summary = RunSummary(
        preset=manifest.preset, seed=int(cfg.seed), mode="baselines",
        privacy=replace(PrivacySummary.of(settings.privacy), unit=task.privacy_unit),
        oracle_roc_auc=manifest.oracle_roc_auc,
        global_metrics=arms["federated_dp"]["pooled"],
        agencies=table,
        rounds=rounds["federated_dp"],
        agency_rounds=local_rounds(dp_state, names),
        consortium_sees=CONSORTIUM_SEES,
        centralised_baseline=arms["centralised_non_private"]["pooled"],
        baselines={"arms": arms, "gain": gain},
        wall_seconds=time.monotonic() - t0,
    )
    summary.write(out_dir / SUMMARY_FILE)
    shutil.copyfile(dp_server / "model.pt", out_dir / "model.pt")
    if bool(cfg.tracking.tensorboard):
        from simulation.tracking import write_tensorboard  # torch's tensorboard: only here

        write_tensorboard(summary, out_dir / "tensorboard")
    print(render(summary), flush=True)
    print(render_gain(summary), flush=True)
    print(f"outputs: {out_dir}", flush=True)
    return summary


def gain_table(arms: dict[str, dict[str, Any]], agencies: list[AgencyRecords],
               fed_table: list[AgencyRow]) -> list[dict[str, Any]]:
    """Per agency, smallest training split first: what federating adds over going alone."""
    eps_fed = {r.agency: (r.epsilon, r.delta) for r in fed_table}
    rows = []
    for a in sorted(agencies, key=lambda a: (len(a.train), a.agency)):
        name = a.agency
        alone = arms["alone_dp"]["per_agency_roc_auc"][name]
        fed = arms["federated_dp"]["per_agency_roc_auc"][name]
        alone_pooled = arms["alone_dp"]["pooled_per_agency"][name]["roc_auc"]
        fed_pooled = arms["federated_dp"]["pooled"]["roc_auc"]
        rows.append({
            "agency": name,
            "train_examples": len(a.train),
            "test_examples": len(a.test),
            "test_positives": int(a.test.positive.sum()),
            "alone_dp_roc_auc": alone,
            "federated_dp_roc_auc": fed,
            "gain_own_test": None if alone is None or fed is None else fed - alone,
            "alone_dp_pooled_roc_auc": alone_pooled,
            "federated_dp_pooled_roc_auc": fed_pooled,
            "gain_pooled_test": fed_pooled - alone_pooled,
            "federated_non_private_roc_auc":
                arms["federated_non_private"]["per_agency_roc_auc"][name],
            "centralised_non_private_roc_auc":
                arms["centralised_non_private"]["per_agency_roc_auc"][name],
            "alone_epsilon": arms["alone_dp"]["epsilon"][name],
            "alone_delta": arms["alone_dp"]["delta"][name],
            "federated_epsilon": eps_fed.get(name, (None, None))[0],
            "federated_delta": eps_fed.get(name, (None, None))[1],
        })
    return rows


def _f(v: float | None, digits: int = 3, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _gain_line(r: dict[str, Any]) -> str:
    """One agency's row of the gain table, read strictly (simulation/baselines.py's
    ``gain_table`` writes every key)."""
    where = "a gain row of the run summary's baselines"

    def k(key: str) -> Any:
        return need(r, key, where=where)

    eps = ("no DP" if k("alone_epsilon") is None
           else f"{k('alone_epsilon'):.2f} ({k('alone_delta'):.0e})")
    return (f"{k('agency'):<22}{k('train_examples'):>7}{k('test_positives'):>6}"
            f"{_f(k('alone_dp_roc_auc')):>8}{_f(k('federated_dp_roc_auc')):>8}"
            f"{_f(k('gain_own_test'), sign=True):>8}"
            f"{_f(k('alone_dp_pooled_roc_auc')):>16}{_f(k('federated_dp_pooled_roc_auc')):>8}"
            f"{_f(k('gain_pooled_test'), sign=True):>8}"
            f"{_f(k('federated_non_private_roc_auc')):>12}"
            f"{_f(k('centralised_non_private_roc_auc')):>9}  {eps}")


def _arm_roc_auc(summary: RunSummary, arm: str) -> float | None:
    return figure(summary.arm_pooled(arm), Metric.ROC_AUC,
                  where=f"the pooled figures of arm {arm!r}")


def render_gain(summary: RunSummary) -> str:
    """The baselines table: smallest agencies first."""
    lines = ["", "gain from federating (ROC-AUC; federated DP minus the agency alone with "
             "the same DP), smallest agencies first",
             f"{'agency':<22}{'train':>7}{'test+':>6}{'alone':>8}{'fed DP':>8}{'gain':>8}"
             f"{'| pooled: alone':>16}{'fed DP':>8}{'gain':>8}{'| fed no-DP':>12}"
             f"{'central':>9}  alone epsilon (delta)"]
    lines += [_gain_line(r) for r in summary.gain_rows()]
    lines.append("pooled test split ROC-AUC: " + "; ".join(
        f"{ARM_LABELS[a]} {_f(_arm_roc_auc(summary, a))}"
        for a in ("centralised_non_private", "federated_non_private", "federated_dp")))
    p = summary.privacy
    if p.enabled:
        delta = "None" if p.target_delta is None else f"{p.target_delta:g}"
        lines.append(f"alone epsilon: each agency's epsilon for its local-only run (same "
                     f"noise plan as federating: {p.target_epsilon} at delta="
                     f"{delta}, {per_unit(p.unit)}); the agency alone column "
                     f"is n/a where its test split has one class")
    return "\n".join(lines)
