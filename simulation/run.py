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

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch
from omegaconf import DictConfig, OmegaConf

from clients import local_metrics
from federation import metrics
from federation.config import RunSettings, Scalar
from federation.data import AgencyRecords
from federation.errors import ConfigError
from federation.ledger import Ledger, load_policy, write_policy
from federation.pki import make_node_key
from federation.privacy import validate_targets
from federation.tasks import Task, get_task
from federation.text import SparseRows
from federation.training import predict_proba, train_local
from simulation import preflight
from simulation.generator import FederationManifest, generate_federation
from simulation.sweep import secure_rounds

log = logging.getLogger("heroes.simulate")


def _write_text(path: Path, text: str) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


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


def write_policies(cfg: DictConfig, agencies: list[str], state_root: Path) -> None:
    """Each simulated agency's own policy file, as its node would find it.

    ``agency_policy.per_agency`` maps an agency id to a budget, or to a mapping of policy
    fields (max_epsilon, delta, accountant, allow_non_private, on_budget, ...); read as
    strictly as a node reads its policy.toml (simulation/preflight.py).
    """
    whole = OmegaConf.to_container(cfg, resolve=True)
    problems: list[str] = []
    policies = preflight.agency_policies(whole, agencies, problems)
    if problems:
        raise ConfigError(problems, source="simulation config")
    keys: list[tuple[str, Path]] = []
    for agency in agencies:
        write_policy(state_root / agency, policies[agency])  # a 0700 folder, a 0600 file
        if not (state_root / agency / "node.key").exists():  # signs ledger, receipts, keys
            make_node_key(state_root / agency / "node.key", state_root / agency / "node.key.pub",
                          comment=f"heroes-fl simulated node {agency}")
        keys.append((agency, state_root / agency / "node.key.pub"))
    approve_simulated_roster(state_root, keys)


def approve_simulated_roster(state_root: Path, keys: list[tuple[str, Path]]) -> None:
    """The roster of every simulated agency, approved by each one automatically (a deployed
    agency checks the fingerprints out of band and runs `heroes agency approve`)."""
    from clients.approvals import auto_approve_roster
    from federation.roster import Member, Roster
    from federation.signing import key_fingerprint, load_public_key

    members = tuple(Member(agency=a, public_key=p.read_text(encoding="utf-8").strip(),
                           fingerprint=key_fingerprint(load_public_key(p))) for a, p in keys)
    roster = Roster(version=1, issued_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    consortium="simulation", members=members)
    for agency, _ in keys:
        auto_approve_roster(state_root / agency, roster)
    print(f"simulation: each of the {len(keys)} agencies approved the roster of all simulated "
          "agencies automatically (a deployed agency reviews it: `heroes agency approve`); no "
          "app bundle travels in a simulation, so the nodes run this source tree as it is",
          flush=True)


def _write_app_dir(app_dir: Path, flat: Mapping[str, Scalar]) -> None:
    """A minimal Flower app folder whose config is this run's resolved settings."""
    doc = {
        "project": {"name": "heroes-fl-simulation", "version": "0.1.0",
                    "description": "resolved heroes simulate run", "license": "MIT"},
        "tool": {"flwr": {"app": {
            "publisher": "heroes-fl",
            "components": {"serverapp": "server.server_app:app",
                           "clientapp": "clients.client_app:app"},
            "config": dict(flat),
        }}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")


def run_flower_simulation(flat: Mapping[str, Scalar], *, num_nodes: int, client_cpus: float,
                          verbose: bool, client_app: Any = None) -> None:
    """Run our ServerApp and ClientApp in Flower's simulation engine (Ray backend).

    ``client_app`` replaces the node's ClientApp (only the audit: its white-box side copy,
    its test-only broken mode; simulation/_audit_broken_client.py).
    """
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation

    from clients.client_app import app as node_app

    client_app = node_app if client_app is None else client_app
    server_done, finished = threading.Event(), threading.Event()
    threading.Thread(target=_stop_stragglers, args=(server_done, finished, STRAGGLER_GRACE_S),
                     name="heroes-straggler-watch", daemon=True).start()

    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.WARNING)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    with tempfile.TemporaryDirectory(prefix="heroes-app-") as tmp:
        _write_app_dir(Path(tmp), flat)
        context = Context(run_id=0, node_id=SUPERLINK_NODE_ID, node_config={},
                          state=RecordDict(), run_config=dict(flat))
        from flwr.supercore.telemetry import EventType

        try:
            _run_simulation(
                num_supernodes=num_nodes,
                exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                client_app=client_app,
                server_app=_watched_server_app(server_done),
                backend_name="ray",
                backend_config={
                    "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
                    "init_args": {"include_dashboard": False, "log_to_driver": verbose},
                },
                server_app_context=context,
                app_dir=tmp,
                is_app=True,  # makes Flower read the run config from app_dir for every node
                verbose_logging=verbose,
            )
        finally:
            finished.set()
            server_done.set()  # the watch ends too


#: Seconds the ClientApp calls still in flight get once the ServerApp has ended.
STRAGGLER_GRACE_S = 10.0


def _watched_server_app(done: threading.Event) -> Any:
    """Our ServerApp (server/server_app.py), telling ``done`` when it has ended."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from server.server_app import main as server_main

    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            server_main(grid, context)
        finally:
            done.set()

    return app


def _stop_stragglers(server_done: threading.Event, finished: threading.Event,
                     grace: float) -> None:
    """Never hang on a node that does not answer. The ServerApp waits at most
    strategy.round_timeout per exchange and, below the quorum, ends the run with a
    QuorumError; but Flower's simulation engine then waits for every ClientApp call still
    in flight before it stops Ray, so one node stuck in its ClientApp would keep the run
    alive forever. Once the ServerApp has ended, the engine gets ``grace`` seconds to stop;
    then this run's Ray worker processes are killed (by PID, found among this process's
    descendants), the stuck calls fail, and the run ends with the ServerApp's own error (or
    result). Workers on a Ray cluster joined with RAY_ADDRESS are not ours to kill."""
    server_done.wait()
    if finished.wait(grace):
        return
    stuck = _ray_workers_of(os.getpid())
    log.warning("the simulation engine has not stopped %.0f s after the ServerApp ended (a "
                "ClientApp call is still running: a node that never answered); stopping this "
                "run's %d Ray worker processes so that the run ends", grace, len(stuck))
    for pid in stuck:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _ray_workers_of(root: int) -> list[int]:
    """The Ray worker processes (their title starts with ``ray::``) descending from process
    ``root``: the ones this run's own Ray instance started. Read from /proc (Linux); none
    elsewhere. Ray's own services (raylet, GCS) are left to Ray's shutdown."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat_line.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"ray::"):
            found.append(pid)
    return found


@dataclass(frozen=True)
class Pooled:
    features: SparseRows
    labels: np.ndarray
    agency: np.ndarray


def _pool(task: Task, agencies: list[AgencyRecords], split: str) -> Pooled:
    records: list[Any] = []
    labels: list[np.ndarray] = []
    owner: list[str] = []
    for a in agencies:
        table = a.train if split == "train" else a.test
        rows = task.rows(table)
        records.extend(task.records(table, rows))
        labels.append(table.positive[rows])
        owner.extend([a.agency] * rows.size)
    return Pooled(task.featurize(records), np.concatenate(labels), np.asarray(owner))


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


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def privacy_summary(settings: RunSettings) -> dict[str, Any]:
    """The run's privacy target as every summary states it: epsilon, delta and unit."""
    p = settings.privacy
    return {"enabled": p.enabled, "target_epsilon": p.target_epsilon,
            "target_delta": p.target_delta,
            "unit": "one advert record in one agency's training export",
            "accountant": p.accountant}


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run one simulation described by ``cfg``; write and return its summary."""
    t0 = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    data_root = out_dir / "data"
    server_out = out_dir / "server"
    state_root = out_dir / "agency_state"
    # every check that needs no data, before any is generated (simulation/preflight.py)
    checked = preflight.check(cfg, data_root=data_root, output_dir=server_out,
                              state_root=state_root)
    flat, settings, preset = checked.flat, checked.settings, checked.preset
    print(f"generating {len(preset.agencies)} synthetic agencies ({preset.name}, "
          f"seed {cfg.seed}) into {data_root}", flush=True)
    manifest = generate_federation(preset, data_root, seed=int(cfg.seed),
                                   test_fraction=float(cfg.test_fraction))
    audit = None
    if bool(cfg.audit.enabled):
        if cfg.mode != "federated":
            raise ConfigError([f"audit.enabled=true needs mode=federated (got {cfg.mode})"])
        from simulation.audit import prepare_audit

        audit = prepare_audit(cfg.audit, manifest, settings, out_dir / "audit",
                              state_root=state_root, seed=int(cfg.seed))
    elif bool(cfg.audit.break_noise_for_testing):
        raise ConfigError(["audit.break_noise_for_testing=true needs audit.enabled=true"])
    agencies = _validate_agencies(manifest, settings)
    write_policies(cfg.agency_policy, [a.agency for a in agencies], state_root)
    for a in agencies:
        aside = a.rejection_report()
        if any(aside.values()):
            print(f"  {a.agency}: rows set aside {aside}", flush=True)
    _write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    _write_text(out_dir / "run_config.json", json.dumps(flat, indent=2))
    if cfg.mode == "baselines":
        from simulation.baselines import run_baselines

        return run_baselines(cfg, out_dir, flat=flat, settings=settings, manifest=manifest,
                             agencies=agencies, t0=t0)

    fed_metrics: list[dict[str, Any]] = []
    if cfg.mode == "federated":
        print(f"running {settings.strategy.num_rounds} rounds of {settings.strategy.name} over "
              f"{len(agencies)} agencies (DP {'on' if settings.privacy.enabled else 'OFF'})",
              flush=True)
        run_flower_simulation(flat, num_nodes=len(agencies),
                              client_cpus=float(cfg.simulation.client_cpus),
                              verbose=bool(cfg.simulation.verbose),
                              client_app=audit.client_app() if audit else None)
        fed_metrics = json.loads((server_out / "metrics.json").read_text())["rounds"]

    task = get_task(settings.task_name, settings.task_params)
    test = _pool(task, agencies, "test")
    summary: dict[str, Any] = {
        "preset": preset.name, "seed": int(cfg.seed), "mode": str(cfg.mode),
        "privacy": privacy_summary(settings),
        "oracle_roc_auc": manifest.oracle_roc_auc,
    }
    if cfg.mode == "federated":
        saved = torch.load(server_out / "model.pt", weights_only=True)
        model = task.build_model()
        model.load_state_dict(saved["state_dict"])
        summary["global"] = metrics.summary(test.labels, predict_proba(model, test.features),
                                            k=settings.eval.k)
        summary["agencies"] = _agency_table(fed_metrics, agencies, manifest.oracle_per_agency,
                                            state_root)
        summary["rounds"] = fed_metrics
        summary["agency_rounds"] = local_rounds(state_root, [a.agency for a in agencies])
        summary["consortium_sees"] = CONSORTIUM_SEES
        if audit is not None:
            summary["audit"] = audit.evaluate(model, summary["agencies"])
    if cfg.mode == "centralised" or bool(cfg.baseline):
        train = _pool(task, agencies, "train")
        summary["centralised_baseline"] = centralised_baseline(task, settings, train, test)
    summary["wall_seconds"] = time.monotonic() - t0
    _write_text(out_dir / "metrics.json", json.dumps(summary, indent=2, default=lambda v: None))
    if bool(cfg.tracking.tensorboard):
        from simulation.tracking import write_tensorboard

        write_tensorboard(summary, out_dir / "tensorboard")
    if cfg.mode == "federated":
        shutil.copyfile(server_out / "model.pt", out_dir / "model.pt")
    print(render(summary), flush=True)
    if "audit" in summary:
        from simulation.audit import render as render_audit

        print(render_audit(summary["audit"]), flush=True)
    print(f"outputs: {out_dir}", flush=True)
    return summary


def _agency_table(rounds: list[dict[str, Any]], agencies: list[AgencyRecords],
                  oracle: Mapping[str, float], state_root: Path) -> list[dict[str, Any]]:
    """One row per agency. The figures come from each agency's OWN state folder (its local
    record and ledger), which a simulation can read because it owns every agency; a
    consortium sees only what ``consortium_sees`` says. Outcomes the server decided (failed,
    missing, rejected) come from the server's round log."""
    rows = []
    for a in agencies:
        state = state_root / a.agency
        local = local_metrics.read(state)
        trained = [e for e in local if e["kind"] == "train" and e["status"] == "ok"]
        evaluated = [e for e in local if e["kind"] == "evaluate" and e["status"] == "ok"]
        refused = [e for e in local if e["kind"] == "train" and e["status"] == "refused"]

        def mine(kind: str, agency: str = a.agency) -> list[dict[str, Any]]:
            return [o | {"round": r["round"]} for r in rounds for o in r[kind]
                    if o["agency"] == agency]
        accepted = [o for o in mine("train") if o["status"] == "ok"]
        failed = [o for o in mine("train") if o["status"] in ("failed", "missing")]
        rejected = [o for o in mine("train") if o["status"] == "rejected"]
        ledger_eps = None
        shares = False
        if (state / "policy.toml").exists():
            policy = load_policy(state)
            shares = policy.share_local_metrics
            if (state / "privacy-ledger.sqlite").exists():
                with Ledger.open(state, create=False) as ledger:
                    ledger_eps = max((ledger.spent(ds, delta=policy.delta,
                                                   accountant=policy.accountant)
                                      for ds in ledger.datasets()), default=None)
        last = trained[-1]["figures"] if trained else {}
        rows.append({
            "agency": a.agency,
            "train_examples": len(a.train),
            "test_examples": len(a.test),
            "rounds_trained": len(accepted),
            "epsilon": last.get("epsilon"),
            "delta": last.get("delta"),
            "run_epsilon": last.get("run_epsilon"),
            "ledger_epsilon": ledger_eps,
            "budget_remaining": last.get("budget_remaining"),
            "noise_multiplier": last.get("noise_multiplier"),
            "local_roc_auc": evaluated[-1]["figures"].get("roc_auc") if evaluated else None,
            "local_oracle_roc_auc": _finite_or_none(oracle.get(a.agency)),
            "rows_set_aside": a.train.rejected_total + a.test.rejected_total,
            "failed_rounds": len(failed),
            "rejected_rounds": len(rejected),
            "rejected": (f"rejected in round(s) {', '.join(str(o['round']) for o in rejected)}"
                         f"; last: {rejected[-1]['reason']}" if rejected else None),
            "stopped": (f"refused from round {refused[0]['round']}: {refused[0]['reason']}"
                        if refused else None),
            "shared_with_consortium": shares,
        })
    return rows


def local_rounds(state_root: Path, agencies: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each agency's own per-round record (clients/local_metrics.py), for plots and tables."""
    return {a: local_metrics.read(state_root / a) for a in agencies}


CONSORTIUM_SEES = (
    "who took part in each round and each agency's status (ok, refused, failed, rejected), "
    "message sizes and timing; the secure sums (summed update and example count, pooled "
    "training loss and rows set aside, pooled evaluation metrics from summed score "
    "histograms); per-agency figures only from agencies whose policy sets [sharing] "
    "share_local_metrics = true. The per-agency table is read from each agency's own state "
    "folder, which a simulation owns")


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def render(summary: Mapping[str, Any]) -> str:
    """The end-of-run table a researcher reads."""
    lines = [""]
    p = summary["privacy"]
    if "agencies" in summary:
        lines.append(f"{'agency':<22}{'train':>7}{'test':>6}{'rounds':>7}  "
                     f"{'epsilon (delta)':<18}{'budget left':>12}{'local ROC-AUC':>14}"
                     f"{'(oracle)':>9}{'set aside':>10}{'failed':>7}")
        for r in summary["agencies"]:
            eps = (f"{_fmt(r['epsilon'], 2)} ({r['delta']:.0e})" if p["enabled"]
                   and r["epsilon"] is not None else ("no DP" if not p["enabled"] else "-"))
            lines.append(f"{r['agency']:<22}{r['train_examples']:>7}{r['test_examples']:>6}"
                         f"{r['rounds_trained']:>7}  {eps:<18}"
                         f"{_fmt(r['budget_remaining'], 2):>12}{_fmt(r['local_roc_auc']):>14}"
                         f"{_fmt(r['local_oracle_roc_auc']):>9}{r['rows_set_aside']:>10}"
                         f"{r['failed_rounds']:>7}")
        for r in summary["agencies"]:
            if r["stopped"]:
                lines.append(f"STOPPED {r['agency']}: {r['stopped']}")
            if r.get("rejected"):
                lines.append(f"REJECTED {r['agency']}: {r['rejected']}")
        aucs = [r["local_roc_auc"] for r in summary["agencies"] if r["local_roc_auc"] is not None]
        if aucs:
            worst = min(summary["agencies"], key=lambda r: r["local_roc_auc"] if
                        r["local_roc_auc"] is not None else math.inf)
            lines.append(f"worst agency: {worst['agency']} (local ROC-AUC "
                         f"{_fmt(worst['local_roc_auc'])})")
        if p["enabled"]:
            lines.append(f"epsilon: cumulative over every round of every run on each "
                         f"agency's dataset (its privacy ledger), per {p['unit']}, at the "
                         f"agency's delta ({p['accountant']} accountant); this run's target "
                         f"was {p['target_epsilon']} at delta={p['target_delta']:g}")
        rounds = summary.get("rounds", [])
        masked = secure_rounds(rounds)
        lines.append(f"secure aggregation (SecAgg+): {masked} of {len(rounds)} rounds; in those "
                     "the server saw only sums: the agencies' summed update and count, pooled "
                     "loss and pooled evaluation")
        sharing = [r["agency"] for r in summary["agencies"] if r.get("shared_with_consortium")]
        lines.append("the figures per agency above are read from each agency's own state "
                     "folder (the simulator owns them); a consortium sees them only where the "
                     "agency's policy shares them: "
                     + (", ".join(sharing) if sharing else "none here"))
        lines.append("")
    oracle = summary["oracle_roc_auc"]
    lines.append(f"{'pooled test split':<30}{'ROC-AUC':>9}{'PR-AUC':>8}{'Brier':>8}"
                 f"{'vs oracle':>11}")
    for label, key in (("federated (this run)", "global"),
                       ("centralised, non-private", "centralised_baseline")):
        if key in summary:
            m = summary[key]
            lines.append(f"{label:<30}{_fmt(m['roc_auc']):>9}{_fmt(m['pr_auc']):>8}"
                         f"{_fmt(m['brier']):>8}{_fmt(m['roc_auc'] / oracle, 2) + 'x':>11}")
    lines.append(f"{'oracle (generator latent risk)':<30}{_fmt(oracle):>9}")
    lines.append(f"wall time {summary['wall_seconds']:.1f} s")
    return "\n".join(lines)
