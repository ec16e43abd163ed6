"""Running heroes-fl's own apps in Flower's simulation engine, shared by ``heroes simulate``
(simulation/run.py) and its baselines (simulation/baselines.py): the simulated agencies'
policies, keys and roster, the app folder, the engine itself and the watch that never lets
a node that does not answer hang the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from omegaconf import DictConfig, OmegaConf

from federation.config import Scalar
from federation.errors import ConfigError
from federation.ledger import fingerprint_file, write_policy
from federation.pki import make_node_key
from federation.records import RecordTable
from federation.tasks import Task
from federation.text import SparseRows
from simulation import preflight

log = logging.getLogger("heroes.simulate")


def write_text(path: Path, text: str) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def node_features(task: Task, table: RecordTable, state_dir: Path) -> SparseRows:
    """The features a simulated node computes for ``table`` (its usable rows), through that
    node's own feature cache in ``state_dir``: the driver's pooled evaluation and baselines
    and the node featurise each export once between them, whichever comes first (the
    cache key is the export's SHA-256, the task, its parameters and features version)."""
    from clients.node import CACHE_DIR, cached_features

    rows = task.rows(table)
    return cached_features(task, fingerprint_file(table.path), task.records(table, rows),
                           state_dir / CACHE_DIR)


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
                          verbose: bool, client_app: Any = None,
                          backend: str = "inprocess") -> None:
    """Run our ServerApp and ClientApp in Flower's simulation engine, its ClientApps on
    ``backend``: "inprocess" (threads of this process, simulation/inprocess.py) or "ray".

    ``client_app`` replaces the node's ClientApp (only the audit: its white-box side copy,
    its test-only broken mode; simulation/_audit_broken_client.py).
    """
    # Flower's database migrations (alembic) log INFO lines when first imported, below.
    logging.getLogger("alembic").setLevel(logging.INFO if verbose else logging.WARNING)
    import torch
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation

    from clients.client_app import app as node_app
    from simulation.inprocess import flower_uses

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

        threads = torch.get_num_threads()  # in-process nodes set one thread each
        try:
            with flower_uses(backend, verbose=verbose):
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
            torch.set_num_threads(threads)
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
    then the calls in flight on the in-process backend are abandoned (simulation/inprocess.py)
    and this run's Ray worker processes are killed (by PID, found among this process's
    descendants), the stuck calls fail, and the run ends with the ServerApp's own error (or
    result). Workers on a Ray cluster joined with RAY_ADDRESS are not ours to kill."""
    server_done.wait()
    if finished.wait(grace):
        return
    from simulation.inprocess import abandon_calls

    if abandon_calls():
        log.warning("the simulation engine has not stopped %.0f s after the ServerApp ended (a "
                    "ClientApp call is still running: a node that never answered); abandoning "
                    "the calls still in flight so that the run ends", grace)
    stuck = _ray_workers_of(os.getpid())
    if not stuck:
        return
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


