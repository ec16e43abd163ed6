"""``heroes simulate``: generate a synthetic federation and run it in Flower's simulation engine.

Order of work, so that bad input fails before anything trains: compose the configuration
and check everything that needs no data (simulation/preflight.py: every key and type, the
limits, the federation against the strategy, the agencies' own policies against the run),
generate the agencies' exports, read and validate every export (and every agency's privacy
targets against its size), then start the Flower simulation (Ray).
Afterwards the final model is scored on the pooled entity-disjoint test split next to the
generator's oracle and, unless switched off, a centralised non-private baseline.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from clients import local_metrics
from federation import metrics
from federation.config import RunSettings
from federation.data import AgencyRecords
from federation.errors import ConfigError
from federation.privacy import validate_targets
from federation.protocol import SUMMARY_FILE, PrivacySummary, RunSummary
from federation.tasks import Task, get_task
from federation.text import SparseRows
from federation.training import predict_proba, train_local
from simulation import preflight
from simulation.audit import prepare_audit
from simulation.audit import render as render_audit
from simulation.baselines import run_baselines
from simulation.both_tasks import run_tasks
from simulation.federation_run import (  # re-exported: tests and tools import them from here
    approve_simulated_roster,
    node_features,
    run_flower_simulation,
    write_policies,
    write_text,
)
from simulation.generator import FederationManifest
from simulation.generators import generator_for
from simulation.summary import CONSORTIUM_SEES, agency_table, local_rounds, render

__all__ = ["approve_simulated_roster", "render", "run", "run_flower_simulation", "run_one",
           "write_policies"]

log = logging.getLogger("heroes.simulate")


def _validate_agencies(manifest: FederationManifest, settings: RunSettings
                       ) -> list[AgencyRecords]:
    task = get_task(settings.task_name, settings.task_params)
    agencies = [task.load(manifest.root / "agencies" / a) for a in manifest.agencies]
    p = settings.privacy
    if p.enabled:
        assert p.target_epsilon is not None and p.target_delta is not None
        for data in agencies:
            validate_targets(target_epsilon=p.target_epsilon, target_delta=p.target_delta,
                             num_records=len(data.train), where=f"agency {data.agency}")
    return agencies


def privacy_summary(settings: RunSettings) -> PrivacySummary:
    """The run's privacy target in its task's unit of privacy (one advert, one
    conversation): every epsilon the run states is about that unit."""
    from dataclasses import replace

    task = get_task(settings.task_name, settings.task_params)
    return replace(PrivacySummary.of(settings.privacy), unit=task.privacy_unit)


@dataclass(frozen=True)
class Pooled:
    features: SparseRows
    labels: np.ndarray
    agency: np.ndarray


def _pool(task: Task, agencies: list[AgencyRecords], split: str, state_root: Path) -> Pooled:
    """Every agency's split stacked, featurised through the agencies' own node feature
    caches (``node_features``): not featurised again where the nodes already did."""
    parts: list[SparseRows] = []
    labels: list[np.ndarray] = []
    owner: list[str] = []
    for a in agencies:
        table = a.train if split == "train" else a.test
        rows = task.rows(table)
        parts.append(node_features(task, table, state_root / a.agency))
        labels.append(table.positive[rows])
        owner.extend([a.agency] * rows.size)
    return Pooled(SparseRows.concat(parts), np.concatenate(labels), np.asarray(owner))


def centralised_baseline(task: Task, settings: RunSettings, train: Pooled, test: Pooled
                         ) -> dict[str, float]:
    """Pooled, non-federated, non-private training with the same local optimiser and the
    same number of passes over the data as the federated run."""
    torch.manual_seed(settings.train.seed)
    model = task.build_model()
    from dataclasses import replace

    epochs = settings.train.local_epochs * settings.strategy.num_rounds
    train_local(model, train.features, train.labels,
                train=replace(settings.train, local_epochs=epochs),
                privacy=replace(settings.privacy, enabled=False), plan=None)
    return metrics.summary(test.labels, predict_proba(model, test.features), k=settings.eval.k)


def run(cfg: DictConfig, out_dir: Path) -> RunSummary | None:
    """Run the simulation described by ``cfg``; write and return its summary. With
    ``tasks`` (experiment=both_tasks) every task's federation runs, one after the other,
    each summary in its own folder (simulation/both_tasks.py), and None is returned."""
    if cfg.get("tasks"):
        run_tasks(cfg, out_dir, run_one)
        return None
    return run_one(cfg, out_dir)


def run_one(cfg: DictConfig, out_dir: Path, *, state_root: Path | None = None,
            checked: preflight.Checked | None = None) -> RunSummary:
    """One task's simulation. ``state_root``: the agencies' node state folders, when they
    are shared with another task's federation (default: ``out_dir/agency_state``); the
    per-agency table then reads only this run's own entries and this task's dataset.
    ``checked``: the configuration as preflight already passed it."""
    t0 = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    data_root = out_dir / "data"
    server_out = out_dir / "server"
    shared = state_root is not None
    state_root = out_dir / "agency_state" if state_root is None else state_root
    # every check that needs no data, before any is generated (simulation/preflight.py)
    if checked is None:
        checked = preflight.check(cfg, data_root=data_root, output_dir=server_out,
                                  state_root=state_root)
    flat, settings, preset = checked.flat, checked.settings, checked.preset
    gen = generator_for(settings.task_name)
    print(f"generating {len(preset.agencies)} synthetic agencies of {gen.record_noun} "
          f"({preset.name}, seed {cfg.seed}) into {data_root}", flush=True)
    manifest = gen.generate(preset, data_root, seed=int(cfg.seed),
                            test_fraction=float(cfg.test_fraction))
    audit = None
    if bool(cfg.audit.enabled):
        if cfg.mode != "federated":
            raise ConfigError([f"audit.enabled=true needs mode=federated (got {cfg.mode})"])
        audit = prepare_audit(cfg.audit, manifest, settings, out_dir / "audit",
                              state_root=state_root, seed=int(cfg.seed))
    elif bool(cfg.audit.break_noise_for_testing):
        raise ConfigError(["audit.break_noise_for_testing=true needs audit.enabled=true"])
    agencies = _validate_agencies(manifest, settings)
    write_policies(cfg.agency_policy, [a.agency for a in agencies], state_root)
    # entries the agencies' own records already hold (another task's federation): not ours
    since = ({a.agency: len(local_metrics.read(state_root / a.agency)) for a in agencies}
             if shared else None)
    for a in agencies:
        aside = a.rejection_report()
        if any(aside.values()):
            print(f"  {a.agency}: rows set aside {aside}", flush=True)
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_text(out_dir / "run_config.json", json.dumps(flat, indent=2))
    if cfg.mode == "baselines":
        return run_baselines(cfg, out_dir, flat=flat, settings=settings, manifest=manifest,
                             agencies=agencies, t0=t0)

    summary = RunSummary(rounds=[], wall_seconds=0.0,
                         privacy=privacy_summary(settings), preset=preset.name,
                         seed=int(cfg.seed), mode=str(cfg.mode),
                         oracle_roc_auc=manifest.oracle_roc_auc)
    task = get_task(settings.task_name, settings.task_params)
    test = _pool(task, agencies, "test", state_root)
    if cfg.mode == "federated":
        print(f"running {settings.strategy.num_rounds} rounds of {settings.strategy.name} over "
              f"{len(agencies)} agencies (DP {'on' if settings.privacy.enabled else 'OFF'})",
              flush=True)
        run_flower_simulation(flat, num_nodes=len(agencies),
                              client_cpus=float(cfg.simulation.client_cpus),
                              backend=str(cfg.simulation.backend),
                              verbose=bool(cfg.simulation.verbose),
                              client_app=audit.client_app() if audit else None)
        summary.rounds = RunSummary.read(server_out / SUMMARY_FILE).rounds
        saved = torch.load(server_out / "model.pt", weights_only=True)
        model = task.build_model()
        model.load_state_dict(saved["state_dict"])
        summary.global_metrics = metrics.summary(
            test.labels, predict_proba(model, test.features), k=settings.eval.k)
        summary.agencies = agency_table(summary.rounds, agencies, manifest.oracle_per_agency,
                                        state_root, since=since)
        summary.agency_rounds = local_rounds(state_root, [a.agency for a in agencies],
                                             since=since)
        summary.consortium_sees = CONSORTIUM_SEES
        if audit is not None:
            summary.audit = audit.evaluate(model, [r.to_json() for r in summary.agencies])
    if cfg.mode == "centralised" or bool(cfg.baseline):
        train = _pool(task, agencies, "train", state_root)
        summary.centralised_baseline = centralised_baseline(task, settings, train, test)
    summary.wall_seconds = time.monotonic() - t0
    summary.write(out_dir / SUMMARY_FILE)
    if bool(cfg.tracking.tensorboard):
        from simulation.tracking import write_tensorboard  # torch's tensorboard: only here

        write_tensorboard(summary, out_dir / "tensorboard")
    if cfg.mode == "federated":
        shutil.copyfile(server_out / "model.pt", out_dir / "model.pt")
    print(render(summary), flush=True)
    if summary.audit is not None:
        print(render_audit(summary.audit), flush=True)
    print(f"outputs: {out_dir}", flush=True)
    return summary
