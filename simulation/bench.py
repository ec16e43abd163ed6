"""``heroes bench``: speed and memory, measured side by side in one run, printed and saved.

    heroes bench [--quick] [--out FILE] [--skip SECTION] [--conversation-model MODEL]

Sections (each a ratio or a figure from the same run, never a pass/fail timing):
  features adverts per second of the advert featuriser, this tree against features version
           2 (commit FEATURES_BASELINE, pure Python), alternating; the node cache's read-back
  node     a node's export per message: read and validated each time (before) against once
           per process while its folder is unchanged (now), six agencies
  step     one DP-SGD step against one non-private step of the same model and batch
  local    records per second of one local round, DP and not
  conversation  conversation-risk: featurisation throughput; one step of the default model
           and the linear baseline, non-private, DP with closed-form per-record norms
           (clipping="layers") and DP with Opacus' hooks, interleaved; step peak memory
  rounds   round wall time and bytes each agency sends per round (6-agency simulation)
  scale    simulation wall time and peak memory (whole process tree) for 6, 20, 100 agencies
  thousand 1,000 agencies x 3 rounds, secure aggregation on: wall time and peak memory
           against issue 16's 15 minutes and 8 GiB (not with --quick; about 8 minutes)
  secagg   six agencies with secure aggregation off, then on (round time, bytes)
  trust    six agencies, the protocol before the malicious-model hardening (a git commit)
           against this tree: secure round time and bytes per agency per round
  ledger   time to compute epsilon over a long ledger history (RDP and PRV)
  score    adverts per second of `heroes agency score` (10,000 adverts), explained vs not
Results also go to JSON (default outputs/bench/<UTC time>.json) to compare commits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from federation.protocol import SUM_KEY, SUMMARY_FILE, RunSummary, Status

ROOT = Path(__file__).resolve().parents[1]


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _sample_data(records: int, tmp: Path) -> tuple[Any, np.ndarray]:
    """Real generated adverts (the three-agency preset), featurised like a node does."""
    from dataclasses import replace

    from federation.data import load_agency
    from federation.tasks import get_task
    from simulation.generator import generate_federation, load_preset

    preset = load_preset(ROOT / "configs" / "federation" / "three_agency.yaml")
    manifest = generate_federation(replace(preset, scale=records / 1500 * 0.15), tmp / "data",
                                   seed=0)
    texts: list[str] = []
    labels = []
    for agency in manifest.agencies:
        table = load_agency(tmp / "data" / "agencies" / agency).train
        texts.extend(table.texts)
        labels.append(table.positive)
    y = np.concatenate(labels)[:records]
    return get_task("advert-risk", {}).featurize(texts[:records]), y


def bench_step(features: Any, labels: np.ndarray, steps: int) -> dict[str, Any]:
    """Median time of one optimiser step (forward, backward, update) on the same batches:
    non-private, DP with Opacus' hooks, and DP with train_local's fused clipping (the
    default for the logistic-regression model), interleaved to share the machine's noise."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    from federation.tasks import get_task
    from federation.training import SparseDataset, fused_clipped_grads, lean_accumulate

    task = get_task("advert-risk", {})
    data = SparseDataset(features, labels)
    kinds = ("non_private", "dp_hooks", "dp_fused")
    result: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(3):
        for kind in kinds:
            model = task.build_model()
            opt = torch.optim.SGD(model.parameters(), lr=1.0)
            loader: DataLoader[Any] = DataLoader(data, batch_size=128, shuffle=True)
            crit = torch.nn.BCEWithLogitsLoss()
            if kind == "dp_hooks":
                engine = PrivacyEngine(accountant="rdp")
                model, opt, loader = engine.make_private(
                    module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
                    max_grad_norm=0.5, poisson_sampling=True)
            elif kind == "dp_fused":
                engine = PrivacyEngine(accountant="rdp")
                model, opt, _, loader = engine.make_private(
                    module=model, optimizer=opt, data_loader=loader, criterion=crit,
                    noise_multiplier=1.0, max_grad_norm=0.5, poisson_sampling=True,
                    grad_sample_mode="ghost")
                model.disable_hooks()
                lean_accumulate(opt)
                model = model._module  # as train_local: the module itself, hooks unused
            batches = [b for _, b in zip(range(steps), loader, strict=False)]

            def one(batch: tuple[torch.Tensor, torch.Tensor], m: Any = model, o: Any = opt,
                    c: Any = crit, fused: bool = kind == "dp_fused") -> None:
                o.zero_grad()
                x, y = batch
                if fused:  # exactly train_local's fused step
                    with torch.no_grad():
                        z = m(x)
                        fused_clipped_grads(m.net, z, x, y, 0.5)
                        torch.nn.functional.binary_cross_entropy_with_logits(z, y)
                else:
                    c(m(x), y).backward()
                o.step()

            times = []
            for b in batches:
                t = time.perf_counter()
                one(b)
                times.append(time.perf_counter() - t)
            result[kind].append(statistics.median(times))
    med = {k: statistics.median(v) for k, v in result.items()}
    return {"batch_size": 128, "parameters": sum(p.numel() for p in task.build_model()
                                                  .parameters()),
            "non_private_step_ms": med["non_private"] * 1e3,
            "dp_step_ms": med["dp_fused"] * 1e3,
            "dp_hooks_step_ms": med["dp_hooks"] * 1e3,
            "ratio_dp_over_non_private": med["dp_fused"] / med["non_private"],
            "ratio_dp_hooks_over_non_private": med["dp_hooks"] / med["non_private"],
            "opacus_mode": "fused (default) and hooks"}


def bench_local(features: Any, labels: np.ndarray) -> dict[str, Any]:
    """Records per second of one local round (the default training settings, batch loading
    included) of the default advert model, the arms alternating, median of 3: train_local
    non-private and with DP (fused clipping on batches densified at once); what a user
    would write with stock Opacus (hooks, Poisson sampling, the same noise plan) over a
    dense TensorDataset of the same rows; and the sparse compute floor: the same number of
    steps of plain logistic-regression SGD on scipy CSR row slices (forward and gradient
    products only, no clipping, noise, optimiser or loader)."""
    from opacus import PrivacyEngine
    from scipy import sparse
    from torch.utils.data import DataLoader, TensorDataset

    from federation.config import PrivacySettings, TrainSettings
    from federation.privacy import plan_noise
    from federation.tasks import get_task

    task = get_task("advert-risk", {})
    train = TrainSettings()
    n = len(labels)
    plan = plan_noise(num_records=n, batch_size=train.batch_size,
                      local_epochs=train.local_epochs, planned_rounds=5, target_epsilon=3.0,
                      target_delta=1e-5, accountant="rdp", where="bench")
    dense = TensorDataset(torch.from_numpy(features.dense()),
                          torch.as_tensor(labels, dtype=torch.float32))
    csr = sparse.csr_matrix((features.values, features.indices, features.indptr),
                            shape=(n, features.width))
    y = labels.astype(np.float32)

    def stock_opacus() -> None:
        model = task.build_model()
        engine = PrivacyEngine(accountant="rdp")
        net, opt, loader = engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(),
                                                    lr=train.learning_rate),
            data_loader=DataLoader(dense, batch_size=plan.batch_size, shuffle=True),
            noise_multiplier=plan.noise_multiplier, max_grad_norm=0.5, poisson_sampling=True)
        crit = torch.nn.BCEWithLogitsLoss()
        for _ in range(train.local_epochs):
            for xb, yb in loader:
                opt.zero_grad()
                if xb.shape[0]:
                    crit(net(xb), yb).backward()
                opt.step()

    steps = plan.steps_per_round

    def sparse_floor() -> None:
        w = np.zeros(features.width, dtype=np.float32)
        order = np.random.default_rng(0).permutation(n)
        b = plan.batch_size
        for s in range(steps):
            idx = order[(s * b) % n:(s * b) % n + b]
            xb = csr[idx]
            coeff = 1.0 / (1.0 + np.exp(-(xb @ w))) - y[idx]
            w -= (train.learning_rate / max(1, idx.size)) * (xb.T @ coeff)

    arms: dict[str, Callable[[], object]] = {
        "non_private": partial(_one_round, task, features, labels, train,
                               PrivacySettings(enabled=False), None),
        "dp": partial(_one_round, task, features, labels, train,
                      PrivacySettings(target_epsilon=3.0, target_delta=1e-5), plan),
        "stock_opacus_dense_dp": stock_opacus, "sparse_floor": sparse_floor}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(3):
        for name, fn in arms.items():
            times[name].append(_median_time(fn, 1))
    secs = {k: statistics.median(v) for k, v in times.items()}
    out: dict[str, Any] = {"records": n, "local_epochs": train.local_epochs,
                           "steps_per_round": steps, "batch_size": plan.batch_size}
    for name, t in secs.items():
        out[f"{name}_records_per_second"] = n * train.local_epochs / t
        out[f"{name}_seconds"] = t
    out["ratio_non_private_over_dp"] = secs["dp"] / secs["non_private"]
    out["ratio_dp_over_sparse_floor"] = secs["dp"] / secs["sparse_floor"]
    out["ratio_stock_opacus_dense_over_dp"] = secs["stock_opacus_dense_dp"] / secs["dp"]
    return out


def _one_round(task: Any, features: Any, labels: np.ndarray, train: Any, privacy: Any,
               plan: Any) -> None:
    from federation.training import train_local

    train_local(task.build_model(), features, labels, train=train, privacy=privacy, plan=plan)


def _tree_rss(root: int) -> int:
    """Resident memory (bytes) of ``root`` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(rss.get(p, 0) for p in tree)


def run_simulation(federation: str, rounds: int, out: Path,
                   overrides: tuple[str, ...] = (), *, src: Path = ROOT) -> dict[str, Any]:
    """One `heroes simulate` in a subprocess: wall time and peak tree memory. ``src`` is the
    source tree to run (another commit's, for side-by-side comparisons)."""
    # the entry module: cli/ since issue 14; an older commit's tree has simulation/cli.py
    entry = "cli" if (src / "cli" / "__main__.py").is_file() else "simulation.cli"
    cmd = [sys.executable, "-m", entry, "simulate", f"federation={federation}",
           "baseline=false", f"strategy.num_rounds={rounds}", f"hydra.run.dir={out}",
           *overrides]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(src)}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=src, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    log_out, err = proc.communicate()
    stop.set()
    watcher.join()
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"simulation of {federation} failed: {err[-2000:]}")
    summary = RunSummary.read(out / SUMMARY_FILE)
    if summary.agencies is None or summary.global_metrics is None:
        raise RuntimeError(f"simulation of {federation} left a summary without the federated "
                           "run's agencies and global metrics (mode=federated expected)")
    return {"federation": federation, "agencies": len(summary.agencies), "rounds": rounds,
            "wall_seconds": wall, "peak_memory_mib": peak / 2**20, "log": log_out + err,
            "global_roc_auc": summary.global_metrics["roc_auc"],
            "oracle_roc_auc": summary.oracle_roc_auc, "summary": summary.to_json()}


def rounds_from(sim: dict[str, Any]) -> dict[str, Any]:
    rounds = sim["summary"]["rounds"]
    per_agency: dict[str, list[float]] = {}
    for r in rounds:
        for o in r["train"]:
            if o["status"] == Status.OK:
                per_agency.setdefault(o["agency"], []).append(o["metrics"]["bytes_sent"])
    walls = [r["wall_seconds"] for r in rounds if r["wall_seconds"] is not None]
    return {"federation": sim["federation"],
            "round_wall_seconds_median": statistics.median(walls),
            "round_wall_seconds": walls,
            "bytes_sent_per_agency_per_round": {a: statistics.median(v)
                                                for a, v in per_agency.items()}}


THOUSAND_TARGET_SECONDS = 15 * 60
THOUSAND_TARGET_MIB = 8 * 1024


def bench_thousand(tmp: Path) -> dict[str, Any]:
    """Issue 16's scale target: 1,000 agencies x 3 rounds with secure aggregation on, on
    this machine's cores, the whole process tree's peak memory alongside."""
    sim = run_simulation("thousand_agency", 3, tmp / "thousand", ("secagg.mode=on",))
    rounds = sim["summary"]["rounds"]
    out = {k: v for k, v in sim.items() if k not in ("summary", "log")}
    out["round_wall_seconds"] = [r["wall_seconds"] for r in rounds]
    out["secure_rounds"] = sum(1 for r in rounds
                               if (r.get("train_aggregate") or {}).get(SUM_KEY))
    out["ratio_wall_over_target"] = sim["wall_seconds"] / THOUSAND_TARGET_SECONDS
    out["ratio_memory_over_target"] = sim["peak_memory_mib"] / THOUSAND_TARGET_MIB
    return out


def bench_secagg(rounds: int, tmp: Path) -> dict[str, Any]:
    """The same six-agency simulation with secure aggregation off and on, back to back:
    median round wall time (rounds after the first, which includes the engine's start-up;
    seven rounds, since plain rounds keep getting faster for two or three rounds and four
    rounds read 1.11-1.18x where seven read 1.28-1.31x)
    and bytes each agency uploads per round (SecAgg+: keys, sealed shares, the packed
    masked vector and revealed shares; plain: the float32 model)."""
    out: dict[str, Any] = {}
    for mode in ("off", "on"):
        sim = run_simulation("six_agency", rounds, tmp / f"secagg-{mode}",
                             (f"secagg.mode={mode}",))
        rs = sim["summary"]["rounds"]
        walls = [r["wall_seconds"] for r in rs[1:] if r["wall_seconds"] is not None]
        sent = [o["metrics"]["bytes_sent"] for r in rs for o in r["train"]
                if o["status"] == Status.OK]
        out[mode] = {"round_wall_seconds_median": statistics.median(walls),
                     "bytes_sent_per_agency_per_round_median": statistics.median(sent),
                     "global_roc_auc": sim["global_roc_auc"], "wall_seconds": sim["wall_seconds"]}
    out["ratio_round_time_on_over_off"] = (out["on"]["round_wall_seconds_median"]
                                           / out["off"]["round_wall_seconds_median"])
    out["ratio_bytes_on_over_off"] = (out["on"]["bytes_sent_per_agency_per_round_median"]
                                      / out["off"]["bytes_sent_per_agency_per_round_median"])
    return out


RAY_STARTUP = """
import json, time
t0 = time.monotonic()
import ray
from flwr.simulation.ray_transport.ray_actor import ClientAppActor
t1 = time.monotonic()
ray.init(include_dashboard=False, log_to_driver=False)
actors = [ClientAppActor.remote() for _ in range(int(ray.available_resources().get("CPU", 1)))]
ray.get([a.__ray_ready__.remote() for a in actors])
t2 = time.monotonic()
ray.shutdown()
print(json.dumps({"import_seconds": t1 - t0, "start_seconds": t2 - t1, "actors": len(actors)}))
"""


def _ray_startup(tmp: Path) -> dict[str, Any]:
    """What Ray costs before any ClientApp runs, in a fresh process: importing it, then
    ``ray.init`` and one ready ClientAppActor per CPU (as Flower's Ray backend builds its
    pool: client_cpus=1)."""
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "PYTHONWARNINGS": "ignore"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", RAY_STARTUP], cwd=tmp, env=env, text=True,
                          capture_output=True, check=False, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"Ray did not start: {proc.stderr[-2000:]}")
    got: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    got["process_seconds"] = time.monotonic() - start
    return got


def rounds_in_one_process(rounds: int, tmp: Path) -> dict[str, Any]:
    """The default run's compute alone: the six-agency federation generated as `heroes
    simulate` does (seed 0), each agency's exports featurised once, then ``rounds`` rounds
    of plain FedAvg in this one process: every agency's local DP-SGD round (train_local,
    the default settings, the noise planned for epsilon 3 at delta 1e-5) on the global model,
    the weighted average, and each agency's evaluation. No Flower, no Ray, no secure
    aggregation, no ledger."""
    from federation.config import PrivacySettings, TrainSettings
    from federation.data import load_agency
    from federation.privacy import plan_noise
    from federation.tasks import get_task
    from federation.training import predict_proba, train_local
    from simulation.generator import generate_federation, load_preset

    preset = load_preset(ROOT / "configs" / "federation" / "six_agency.yaml")
    manifest = generate_federation(preset, tmp / "one-process-data", seed=0)
    start = time.monotonic()
    task = get_task("advert-risk", {})
    train, privacy = TrainSettings(), PrivacySettings(target_epsilon=3.0, target_delta=1e-5)
    nodes = []
    for agency in manifest.agencies:
        data = load_agency(manifest.root / "agencies" / agency)
        splits = []
        for table in (data.train, data.test):
            rows = task.rows(table)
            splits.append((task.featurize(task.records(table, rows)),
                           table.positive[rows].astype(np.float32)))
        n = len(splits[0][1])
        plan = plan_noise(num_records=n, batch_size=train.batch_size,
                          local_epochs=train.local_epochs, planned_rounds=rounds,
                          target_epsilon=3.0, target_delta=1e-5, accountant="rdp",
                          where="bench")
        nodes.append((splits, plan))
    featurised = time.monotonic() - start
    torch.manual_seed(0)
    global_state = {k: v.clone() for k, v in task.build_model().state_dict().items()}
    for _ in range(rounds):
        total, summed = 0, {k: torch.zeros_like(v) for k, v in global_state.items()}
        for ((x, y), (tx, _ty)), plan in nodes:
            model = task.build_model()
            model.load_state_dict(global_state)
            train_local(model, x, y, train=train, privacy=privacy, plan=plan)
            for k, v in model.state_dict().items():
                summed[k] += v * len(y)
            total += len(y)
            predict_proba(model, tx)
        global_state = {k: v / total for k, v in summed.items()}
    return {"agencies": len(nodes), "rounds": rounds, "featurise_seconds": featurised,
            "seconds": time.monotonic() - start}


def bench_backend(rounds: int, tmp: Path) -> dict[str, Any]:
    """Issue 16's fixed costs: the whole default `heroes simulate` (six agencies, secure
    aggregation, DP; no baseline) on each simulation backend, against its floor: Ray's
    start-up plus the same rounds run in one process. Measured back to back."""
    out: dict[str, Any] = {}
    for backend in ("inprocess", "ray"):
        sim = run_simulation("six_agency", rounds, tmp / f"backend-{backend}",
                             (f"simulation.backend={backend}",))
        out[backend] = {"wall_seconds": sim["wall_seconds"],
                        "peak_memory_mib": sim["peak_memory_mib"],
                        "global_roc_auc": sim["global_roc_auc"]}
    out["ray_startup"] = _ray_startup(tmp)
    out["one_process"] = rounds_in_one_process(rounds, tmp)
    floor = out["ray_startup"]["process_seconds"] + out["one_process"]["seconds"]
    out["floor_seconds"] = floor
    out["ratio_inprocess_over_floor"] = out["inprocess"]["wall_seconds"] / floor
    out["ratio_ray_over_floor"] = out["ray"]["wall_seconds"] / floor
    out["ratio_ray_over_inprocess"] = (out["ray"]["wall_seconds"]
                                       / out["inprocess"]["wall_seconds"])
    return out


def _request_bytes(cfg: dict[str, Any]) -> int:
    """Bytes of a stage request's values as they travel: byte and string values, 8 per
    number (the measure server/secagg.py applies to replies)."""
    total = 0
    for v in cfg.values():
        for x in v if isinstance(v, list) else [v]:
            total += len(x) if isinstance(x, bytes | str) else 8
    return total


def bench_share(sizes: tuple[int, ...]) -> dict[str, Any]:
    """Issue 16's SecAgg+ share request, per node, at each federation size: today's (the
    session's ids, 8 bytes each, and the node's neighbourhood's signed keys) against the
    previous protocol's (every node's signed keys, which is what a node received before
    commit 'O(neighbours) share requests'). Real node keys, roster, X25519 keys and
    signatures; the default graph (every node up to 10, else 2 ceil(log2 n) + 2
    neighbours). Also one node's share stage on each request (it verifies every signature
    it is sent), median of 3."""
    import datetime as dt

    from cryptography.hazmat.primitives.asymmetric import ec

    from clients.secagg import Identity, NodeSecAgg, Safety
    from federation import secagg as sa
    from federation.config import SecAggSettings
    from federation.protocol import SecAggKey
    from federation.roster import Member, Roster
    from server.secagg import ServerSession

    out: dict[str, Any] = {"sizes": []}
    for n in sizes:
        # node ids as Flower draws them: random unsigned 64-bit integers
        ids = sorted({int(x) for x in np.random.default_rng(n).integers(1, 2**63, n)})
        keys = {i: ec.generate_private_key(ec.SECP256R1()) for i in ids}
        roster = Roster(version=1, issued_at=dt.datetime.now(dt.UTC).isoformat(),
                        consortium="bench", members=tuple(
                            Member.from_key(f"agency-{i}", keys[i].public_key()) for i in ids))
        safety = Safety(fraction=0.5, degree=0, quantization_bits=24, min_threshold=0.5,
                        min_agencies=3)
        srv = ServerSession(SecAggSettings(mode="on"), sums=sa.SUMS)
        srv.start("bench", 1)
        setup, states = {}, {}
        for i in ids:
            node = NodeSecAgg(Identity(i, f"agency-{i}", "bench", keys[i], roster), safety)
            setup[i] = node.setup(srv.setup_config(), server_round=1)
            states[i] = node.dump()
        now = srv.share_configs(setup)
        before = {SecAggKey.SESSION: sa.pack_ids(srv.ids), **srv.keys_of(srv.ids)}
        before_ids = [str(i) for i in srv.ids]  # the old survivor list: ids as strings
        old_bytes = _request_bytes({k: v for k, v in before.items() if k != SecAggKey.SESSION})
        new_bytes = [_request_bytes(c) for c in now.values()]
        probe = ids[0]

        identity = Identity(probe, f"agency-{probe}", "bench", keys[probe], roster)

        def share(cfg: dict[str, Any], identity: Identity = identity,
                  state: str = states[probe], safety: Safety = safety) -> None:
            NodeSecAgg.load(identity, safety, state).share(cfg)

        t_new = statistics.median(_median_time(partial(share, now[probe]), 1) for _ in range(3))
        t_old = statistics.median(_median_time(partial(share, before), 1) for _ in range(3))
        row = {"agencies": n, "neighbours": len(srv.graph[probe]),
               "request_bytes_before": old_bytes,
               "request_bytes_now_median": statistics.median(new_bytes),
               "request_bytes_now_max": max(new_bytes),
               "round_share_bytes_before": old_bytes * n,
               "round_share_bytes_now": sum(new_bytes),
               "ratio_bytes_before_over_now": old_bytes / statistics.median(new_bytes),
               "node_share_seconds_before": t_old, "node_share_seconds_now": t_new,
               "ratio_node_share_before_over_now": t_old / t_new,
               "consistency_bytes_before": sum(len(x) for x in before_ids),
               "consistency_bytes_now": len(srv.consistency_config("train", srv.ids)[
                   SecAggKey.SURVIVORS])}
        out["sizes"].append(row)
    return out


#: The last commit before the malicious-model protocol (issue 12): SecAgg+ against an
#: honest-but-curious server, unsigned keys, no consistency round, plain evaluation.
TRUST_BASELINE = "6b68687"


def _baseline_tree(commit: str, tmp: Path) -> Path | None:
    """The source tree at ``commit`` (git archive), or None where git or the commit is missing."""
    target = tmp / f"src-{commit}"
    target.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                                 capture_output=True, check=True, timeout=120).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True,
                       timeout=120)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return target


def _secure_round_seconds(log_text: str) -> list[float]:
    """The server's own timing of each secure training round (start of set-up to the end of
    unmasking), from its log line; the first round (engine start-up) is left out."""
    import re

    found = [float(m.group(1)) for m in re.finditer(
        r"secure aggregation: \d+ of \d+ agencies in the sum.*?([0-9.]+) s", log_text)]
    return found[1:]


def _receipt_bytes(state_root: Path) -> list[float]:
    """Bytes each agency uploaded per round, every message included, from its own egress
    receipts (the same measure in both trees)."""
    out = []
    for receipts in sorted(state_root.glob("*/receipts.jsonl")):
        per_round: dict[int, int] = {}
        for line in receipts.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                per_round[int(entry["round"])] = (per_round.get(int(entry["round"]), 0)
                                                  + int(entry["payload_bytes"]))
        out += [float(v) for v in per_round.values()]
    return out


def bench_trust(rounds: int, repeats: int, tmp: Path, baseline: str = TRUST_BASELINE
                ) -> dict[str, Any]:
    """The default six-agency simulation with secure aggregation, this tree against the
    protocol at commit ``baseline``, alternating (before, now, before, now, ...): the secure
    training round's time (signed keys and the consistency round added) and the bytes each
    agency uploads per round, evaluation included (secure evaluation added)."""
    src = _baseline_tree(baseline, tmp)
    if src is None:
        return {"skipped": f"commit {baseline} is not available (no git history here)"}
    out: dict[str, Any] = {"baseline_commit": baseline, "before": {"round_seconds": [],
                           "bytes": [], "roc_auc": []},
                           "now": {"round_seconds": [], "bytes": [], "roc_auc": []}}
    for i in range(repeats):
        for label, tree in (("before", src), ("now", ROOT)):
            run = tmp / f"trust-{label}-{i}"
            sim = run_simulation("six_agency", rounds, run, ("secagg.mode=on",), src=tree)
            out[label]["round_seconds"] += _secure_round_seconds(sim["log"])
            out[label]["bytes"] += _receipt_bytes(run / "agency_state")
            out[label]["roc_auc"].append(sim["global_roc_auc"])
    for label in ("before", "now"):
        d = out[label]
        d["round_seconds_median"] = statistics.median(d["round_seconds"])
        # the lower quartile: a shared machine only ever adds time, so it is the steadier view
        d["round_seconds_q25"] = statistics.quantiles(d["round_seconds"], n=4)[0]
        d["bytes_per_agency_per_round_median"] = statistics.median(d["bytes"])
    out["ratio_round_time_now_over_before"] = (out["now"]["round_seconds_median"]
                                               / out["before"]["round_seconds_median"])
    out["ratio_round_time_q25_now_over_before"] = (out["now"]["round_seconds_q25"]
                                                   / out["before"]["round_seconds_q25"])
    out["ratio_bytes_now_over_before"] = (out["now"]["bytes_per_agency_per_round_median"]
                                          / out["before"]["bytes_per_agency_per_round_median"])
    return out


def bench_ledger(releases: int) -> dict[str, Any]:
    from federation.ledger import Ledger, Release
    from federation.pki import make_node_key
    from federation.policy import Policy

    rel = Release(dataset="bench", fingerprint="0" * 64, run_id="0", round=0, task="t",
                  model="m", noise_multiplier=1.2, sample_rate=0.02, steps=50,
                  max_grad_norm=0.5, delta=1e-5, accountant="rdp")
    out: dict[str, Any] = {"releases": releases}
    with tempfile.TemporaryDirectory() as tmp:
        # the ledger is signed by the node key: one per state folder, as on a node
        make_node_key(Path(tmp) / "node.key", Path(tmp) / "node.key.pub", comment="bench")
        ledger = Ledger.open(Path(tmp))
        policy = Policy(max_epsilon=1e9, delta=1e-5)
        t = time.perf_counter()
        for i in range(releases):
            ledger.reserve(Release(**{**rel.__dict__, "round": i}), policy)
        out["record_seconds_per_release"] = (time.perf_counter() - t) / releases
        for acc in ("rdp", "prv"):
            out[f"{acc}_seconds"] = _median_time(
                partial(ledger.spent, "bench", delta=1e-5, accountant=acc), 3)
        out["epsilon_rdp"] = ledger.spent("bench", delta=1e-5, accountant="rdp")
    return out


#: The last commit whose advert featuriser is features version 2 (pure-Python n-grams and
#: CRC-32, one text at a time); the ``features`` section times it against this tree's.
FEATURES_BASELINE = "239c744"


def _featurizer_module_at(commit: str, tmp: Path) -> Any:
    """federation/text.py as it was at ``commit``, imported under its own name; None where
    git or the commit is missing (a source tarball, a shallow clone)."""
    import importlib.util

    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:federation/text.py"],
                                capture_output=True, check=True, timeout=120).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    path = tmp / f"text_{commit}.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location(f"heroes_bench_text_{commit}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def bench_features(adverts: int, repeats: int, tmp: Path,
                   baseline: str = FEATURES_BASELINE) -> dict[str, Any]:
    """Adverts per second of the advert task's featuriser on the same generated adverts:
    this tree's (scikit-learn's hashing, each distinct word hashed once per call) against
    the features-version-2 featuriser of ``baseline``, alternating, median of ``repeats``;
    and a node's cached features (the .npz its feature cache reads back) for scale."""
    from dataclasses import asdict, replace

    from federation.data import load_agency
    from federation.tasks import get_task
    from simulation.generator import generate_federation, load_preset

    preset = load_preset(ROOT / "configs" / "federation" / "three_agency.yaml")
    manifest = generate_federation(replace(preset, scale=adverts / 15000 * 1.1),
                                   tmp / "features-data", seed=2)
    texts: list[str] = []
    for agency in manifest.agencies:
        data = load_agency(tmp / "features-data" / "agencies" / agency)
        texts.extend(data.train.texts)
        texts.extend(data.test.texts)
    texts = texts[:adverts]
    from federation.tasks.advert_risk import AdvertRiskTask

    task = get_task("advert-risk", {})
    assert isinstance(task, AdvertRiskTask)
    now = task.featurizer
    old_module = _featurizer_module_at(baseline, tmp)
    result: dict[str, Any] = {"adverts": len(texts), "features_version": task.features_version}
    if old_module is None:
        result["skipped"] = f"commit {baseline} is not in this checkout (git show failed)"
        return result
    before = old_module.HashingFeaturizer(**asdict(now))
    now.transform(texts[:8])  # scikit-learn's import and hashers, outside the timing
    old_times, new_times = [], []
    for _ in range(repeats):
        old_times.append(_median_time(partial(before.transform, texts), 1))
        new_times.append(_median_time(partial(now.transform, texts), 1))
    rows = now.transform(texts)
    cache = tmp / "features.npz"
    np.savez(cache, indptr=rows.indptr, indices=rows.indices, values=rows.values)

    def read_cache() -> None:
        with np.load(cache) as z:
            z["indptr"], z["indices"], z["values"]

    cached = _median_time(read_cache, repeats)
    old_s, new_s = statistics.median(old_times), statistics.median(new_times)
    result.update({
        "baseline_commit": baseline, "baseline_features_version": old_module.FEATURES_VERSION,
        "baseline_seconds": old_s, "seconds": new_s,
        "baseline_adverts_per_second": len(texts) / old_s,
        "adverts_per_second": len(texts) / new_s,
        "ratio_now_over_baseline_throughput": old_s / new_s,
        "cached_adverts_per_second": len(texts) / cached,
    })
    return result


def bench_node(tmp: Path) -> dict[str, Any]:
    """What a node spends on its export per message, for the six agencies of the default
    run: reading, validating and hashing the export on every message (as before issue 16)
    against the process's validated copy (clients/node.py ``_load_once``: the folder's
    file signature checked, nothing read), alternating, median of 5."""
    from clients.node import _load_once
    from federation.ledger import fingerprint_file
    from federation.tasks import get_task
    from simulation.generator import generate_federation, load_preset

    preset = load_preset(ROOT / "configs" / "federation" / "six_agency.yaml")
    manifest = generate_federation(preset, tmp / "node-data", seed=0)
    folders = [tmp / "node-data" / "agencies" / a for a in manifest.agencies]
    task = get_task("advert-risk", {})

    def every_message() -> None:
        for folder in folders:
            data = task.load(folder)
            fingerprint_file(data.train.path)
            fingerprint_file(data.test.path)

    def once() -> None:
        for folder in folders:
            _load_once(task, folder)

    once()  # the first message of the run reads them
    before, now = [], []
    for _ in range(5):
        before.append(_median_time(every_message, 1))
        now.append(_median_time(once, 1))
    b, n = statistics.median(before), statistics.median(now)
    loaded = [_load_once(task, f).data for f in folders]
    return {"agencies": len(folders),
            "records": sum(len(d.train) + len(d.test) for d in loaded),
            "read_every_message_seconds": b, "read_once_seconds": n,
            "ratio_every_message_over_once": b / n}


def bench_score(adverts: int, tmp: Path) -> dict[str, Any]:
    """``heroes agency score`` on generated adverts: the whole command (verify the bundle, read
    the CSV, score, explain, write, log) next to features-and-logits alone."""
    import csv
    from dataclasses import replace

    from clients.score import read_adverts, score_file
    from federation.config import RunSettings
    from federation.data import load_agency
    from federation.signing import generate_signing_key
    from federation.tasks import get_task
    from server.release import release_run
    from server.server_app import write_outputs
    from server.strategy import RunLog
    from simulation.generator import generate_federation, load_preset

    preset = load_preset(ROOT / "configs" / "federation" / "three_agency.yaml")
    manifest = generate_federation(replace(preset, scale=adverts / 15000 * 1.1),
                                   tmp / "score-data", seed=1)
    rows: list[tuple[str, str]] = []
    for agency in manifest.agencies:
        data = load_agency(tmp / "score-data" / "agencies" / agency)
        for table in (data.train, data.test):
            rows.extend(zip(table.advert_ids, table.texts, strict=True))
    rows = rows[:adverts]
    src = tmp / "adverts.csv"
    with src.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["advert_id", "text"])
        writer.writerows(rows)
    flat = {"task.name": "advert-risk", "privacy.target_epsilon": 3.0,
            "privacy.target_delta": 1e-5}
    task = get_task("advert-risk", {})
    model = task.build_model()
    torch.nn.init.normal_(model.net.weight)  # type: ignore[union-attr, arg-type]
    write_outputs(tmp / "score-run", RunSettings.from_flat(flat), model.state_dict(), RunLog(),
                  0.0)
    generate_signing_key(tmp / "c.key", tmp / "c.pub")
    bundle = release_run(tmp / "score-run", signing_key=tmp / "c.key", out=tmp / "bundle")
    t = time.perf_counter()
    report = score_file(model=bundle, input_path=src, consortium_key=tmp / "c.pub",
                        purpose="benchmark", state_dir=tmp / "state", analyst="bench")
    whole = time.perf_counter() - t
    texts = read_adverts(src).texts
    t = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(texts), 2048):
            model(torch.from_numpy(task.featurize(texts[lo:lo + 2048]).dense()))
    plain = time.perf_counter() - t
    n = len(report.scored)
    return {"adverts": n, "seconds": whole, "adverts_per_second": n / whole,
            "features_and_logits_only_adverts_per_second": n / plain,
            "ratio_plain_over_explained": whole / plain}


# --------------------------------------------------------------------- conversation-risk

CONVERSATION_TASK = "conversation-risk"
#: The step arms, in the order they are interleaved (rotated each batch).
CONVERSATION_ARMS = ("non_private", "dp_layers", "dp_hooks")


def _conversation_sample(scale: float, tmp: Path) -> tuple[list[Any], np.ndarray]:
    """Synthetic conversations (the three-agency conversation preset at ``scale``), read
    back through federation.data.load_records as a node reads its export, train and test."""
    from dataclasses import replace

    from federation.data import load_records
    from federation.schema import CONVERSATION_RECORDS
    from federation.tasks import get_task
    from simulation.conversations import generate_conversations, load_preset

    preset = load_preset(ROOT / "configs" / "federation" / "conversations_three.yaml")
    manifest = generate_conversations(replace(preset, scale=scale), tmp / "conversations",
                                      seed=0)
    task = get_task(CONVERSATION_TASK, {})
    records: list[Any] = []
    labels = []
    for agency in manifest.agencies:
        data = load_records(tmp / "conversations" / "agencies" / agency, CONVERSATION_RECORDS)
        for table in (data.train, data.test):
            records.extend(task.records(table))
            labels.append(table.positive)
    return records, np.concatenate(labels).astype(np.float32)


def bench_featurize(records: list[Any], repeats: int) -> dict[str, Any]:
    """Conversations and messages per second of the task's ``featurize`` (hashing every
    kept message into its slot, roles, gaps and cuts), median of ``repeats`` passes."""
    from federation.tasks import get_task

    task = get_task(CONVERSATION_TASK, {})
    task.featurize(records[:8])  # build the hashers outside the timing
    secs = _median_time(partial(task.featurize, records), repeats)
    messages = sum(len(r) for r in records)
    return {"conversations": len(records), "messages": messages,
            "seconds": secs, "conversations_per_second": len(records) / secs,
            "messages_per_second": messages / secs}


def _rss_bytes(field: str) -> int | None:
    """``VmRSS`` or ``VmHWM`` of this process (bytes), None where /proc has no such line."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _step_peak_bytes(fn: Callable[[], object]) -> int | None:
    """Peak resident memory that ``fn`` adds to this process: free heap returned to the OS
    (malloc_trim), the kernel's high-water mark reset (``5 > /proc/self/clear_refs``), then
    VmHWM after ``fn`` minus VmRSS before it. None where the kernel or libc does not allow
    it (not Linux/glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except (OSError, AttributeError):
        return None
    before = _rss_bytes("VmRSS")
    fn()
    peak = _rss_bytes("VmHWM")
    return None if before is None or peak is None else max(0, peak - before)


def bench_conversation_step(features: Any, labels: np.ndarray, model_kind: str | None,
                            steps: int, *, seed: int = 0) -> dict[str, Any]:
    """One training step of the conversation-risk model (``task.model=model_kind``, the
    task's default when None) on the same batches, three ways: non-private, DP with the
    closed-form per-record norms (``clipping="layers"``) and DP with Opacus' hooks
    (``clipping="hooks"``), each built by federation.training's own ``privatise`` and
    stepped by its ``step``, as ``train_local`` does. The arms start from the same
    weights and take turns on every batch (the order rotating), so the machine's noise
    hits all three alike; figures are the median over the batches. Batches are fixed
    batches of the training batch size (no Poisson sampling), so every arm sees the same
    records; Opacus' noise, scaling and accountant run as in training."""
    from federation.config import PrivacySettings, TrainSettings
    from federation.privacy import plan_noise
    from federation.tasks import get_task
    from federation.training import SparseDataset, make_loader, privatise, step

    params = {} if model_kind is None else {"model": model_kind}
    task = get_task(CONVERSATION_TASK, params)
    train = TrainSettings()
    privacy = PrivacySettings(target_epsilon=3.0, target_delta=1e-5)
    n = len(labels)
    plan = plan_noise(num_records=n, batch_size=train.batch_size, local_epochs=1,
                      planned_rounds=1, target_epsilon=3.0, target_delta=1e-5,
                      accountant="rdp", where="bench")
    dataset = SparseDataset(features, labels)
    torch.manual_seed(seed)
    init = task.build_model().state_dict()
    arms: dict[str, tuple[torch.nn.Module, Any]] = {}
    for kind in CONVERSATION_ARMS:
        model = task.build_model()
        model.load_state_dict(init)
        dp = kind != "non_private"
        loader = make_loader(dataset, train=train, privacy=privacy, plan=plan if dp else None)
        p = privatise(model, loader, train=train, privacy=privacy, plan=plan if dp else None,
                      history=(), clipping="hooks" if kind == "dp_hooks" else "layers",
                      observer=None)
        p.net.train()
        arms[kind] = (model, p)

    def one(kind: str, x: torch.Tensor, y: torch.Tensor) -> None:
        model, p = arms[kind]
        p.optimizer.zero_grad(set_to_none=True)
        step(model, p, x, y, max_grad_norm=privacy.max_grad_norm)

    rng = np.random.default_rng(seed)
    batch = min(train.batch_size, n)

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        rows = rng.choice(n, size=batch, replace=False)
        return torch.from_numpy(features.dense(rows)), torch.from_numpy(labels[rows])

    x, y = draw()
    for kind in CONVERSATION_ARMS:  # first steps (Opacus' hook set-up) are not timed
        one(kind, x, y)
        one(kind, x, y)
    times: dict[str, list[float]] = {k: [] for k in CONVERSATION_ARMS}
    for i in range(steps):
        x, y = draw()
        order = CONVERSATION_ARMS[i % 3:] + CONVERSATION_ARMS[:i % 3]
        for kind in order:
            t = time.perf_counter()
            one(kind, x, y)
            times[kind].append(time.perf_counter() - t)
    x, y = draw()
    peak = {kind: _step_peak_bytes(partial(one, kind, x, y)) for kind in CONVERSATION_ARMS}
    med = {k: statistics.median(v) for k, v in times.items()}
    mib = {k: None if v is None else v / 2**20 for k, v in peak.items()}
    out: dict[str, Any] = {
        "model": getattr(task.params, "model", None) or type(arms["non_private"][0]).__name__,
        "model_class": type(arms["non_private"][0]).__name__,
        "parameters": sum(q.numel() for q in arms["non_private"][0].parameters()),
        "feature_width": features.width, "batch_size": batch, "steps": steps,
        "max_grad_norm": privacy.max_grad_norm, "torch_threads": torch.get_num_threads(),
        "timing": "median over the batches; arms interleaved, order rotated per batch",
        "memory": "resident memory one step adds (VmHWM after, less VmRSS before, heap "
                  "trimmed and the high-water mark reset first)",
        **{f"{k}_step_ms": v * 1e3 for k, v in med.items()},
        **{f"{k}_step_peak_mib": v for k, v in mib.items()},
        "ratio_layers_over_non_private": med["dp_layers"] / med["non_private"],
        "ratio_hooks_over_layers": med["dp_hooks"] / med["dp_layers"],
        "ratio_hooks_over_non_private": med["dp_hooks"] / med["non_private"],
    }
    if mib["non_private"] and mib["dp_layers"] is not None and mib["dp_hooks"] is not None:
        out["ratio_peak_layers_over_non_private"] = mib["dp_layers"] / mib["non_private"]
        out["ratio_peak_hooks_over_non_private"] = mib["dp_hooks"] / mib["non_private"]
    return out


def conversation_models(requested: list[str]) -> list[str | None]:
    """The models the conversation section measures: those asked for, else the task's
    default (None: whatever ``build_model`` gives without parameters) and, where the task
    has a ``model`` parameter and its default is not it, the ``linear`` baseline."""
    from federation.tasks import get_task

    if requested:
        for kind in requested:  # an unknown model fails here, before any work, in the
            get_task(CONVERSATION_TASK, {"model": kind})  # task's own words
        return list(dict.fromkeys(requested))
    default = getattr(get_task(CONVERSATION_TASK, {}).params, "model", None)
    if default is None or default == "linear":
        return [None]
    return [None, "linear"]


def bench_conversation(models: list[str | None], steps: int, scale: float,
                       tmp: Path) -> dict[str, Any]:
    from federation.tasks import get_task

    records, labels = _conversation_sample(scale, tmp)
    out: dict[str, Any] = {"featurize": bench_featurize(records, 3), "models": []}
    for kind in models:  # featurised with the model's own parameters, as a node does
        features = get_task(CONVERSATION_TASK, {} if kind is None else {"model": kind}
                            ).featurize(records)
        out["models"].append(bench_conversation_step(features, labels, kind, steps))
    return out


def _mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heroes bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller: 6 and 20 agencies, 2 rounds, fewer steps")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["features", "node", "step", "local", "conversation", "rounds",
                                 "scale", "thousand", "backend", "share", "ledger", "score",
                                 "secagg", "trust"])
    parser.add_argument("--conversation-model", action="append", default=[], metavar="MODEL",
                        help="conversation section: measure this task.model (repeatable; "
                             "default: the task's default model and the linear baseline)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="heroes-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if "features" not in args.skip:
            report["features"] = ft = bench_features(3000 if args.quick else 20000,
                                                     3 if args.quick else 5, tmp)
            if "skipped" in ft:
                print(f"features: skipped: {ft['skipped']}", flush=True)
            else:
                print(f"features: {ft['adverts']} adverts: "
                      f"{ft['baseline_adverts_per_second']:,.0f} adverts/s at commit "
                      f"{ft['baseline_commit']} (features version "
                      f"{ft['baseline_features_version']}), {ft['adverts_per_second']:,.0f} "
                      f"adverts/s now (version {ft['features_version']}) -> "
                      f"{ft['ratio_now_over_baseline_throughput']:.1f}x; a node's feature "
                      f"cache reads back {ft['cached_adverts_per_second']:,.0f} adverts/s",
                      flush=True)
        if "node" not in args.skip:
            report["node"] = nd = bench_node(tmp)
            print(f"node: the export per message, {nd['agencies']} agencies "
                  f"({nd['records']:,} records): read and validated every message "
                  f"{nd['read_every_message_seconds'] * 1e3:.0f} ms, once per process "
                  f"{nd['read_once_seconds'] * 1e3:.1f} ms -> "
                  f"{nd['ratio_every_message_over_once']:.0f}x", flush=True)
        if not {"step", "local"} <= set(args.skip):
            features, labels = _sample_data(3000 if args.quick else 9000, tmp)
        if "step" not in args.skip:
            report["step"] = s = bench_step(features, labels, 30 if args.quick else 60)
            print(f"step: non-private {s['non_private_step_ms']:.3f} ms, DP (fused clipping) "
                  f"{s['dp_step_ms']:.3f} ms -> DP/non-private "
                  f"{s['ratio_dp_over_non_private']:.2f}x; DP with Opacus' hooks "
                  f"{s['dp_hooks_step_ms']:.3f} ms -> "
                  f"{s['ratio_dp_hooks_over_non_private']:.2f}x ({s['parameters']} parameters, "
                  f"batch {s['batch_size']})", flush=True)
        if "local" not in args.skip:
            report["local"] = lo = bench_local(features, labels)
            print(f"local: {lo['non_private_records_per_second']:,.0f} records/s "
                  f"non-private, {lo['dp_records_per_second']:,.0f} records/s DP -> DP round "
                  f"{lo['ratio_non_private_over_dp']:.2f}x non-private; stock Opacus over a "
                  f"dense TensorDataset {lo['stock_opacus_dense_dp_records_per_second']:,.0f}"
                  f" records/s ({lo['ratio_stock_opacus_dense_over_dp']:.2f}x the DP round's "
                  f"time); sparse compute floor {lo['sparse_floor_records_per_second']:,.0f} "
                  f"records/s -> DP round {lo['ratio_dp_over_sparse_floor']:.1f}x the floor "
                  f"({lo['records']} records, {lo['steps_per_round']} steps)", flush=True)
        if "conversation" not in args.skip:
            report["conversation"] = cv = bench_conversation(
                conversation_models(args.conversation_model), 10 if args.quick else 40,
                0.3 if args.quick else 1.0, tmp)
            fz = cv["featurize"]
            print(f"conversation: featurize {fz['conversations_per_second']:.0f} "
                  f"conversations/s, {fz['messages_per_second']:.0f} messages/s "
                  f"({fz['conversations']} conversations, {fz['messages']} messages)",
                  flush=True)
            for m in cv["models"]:
                print(f"conversation: {m['model']} model ({m['parameters']:,} parameters, "
                      f"batch {m['batch_size']}): non-private {m['non_private_step_ms']:.1f} "
                      f"ms, DP layers {m['dp_layers_step_ms']:.1f} ms, DP hooks "
                      f"{m['dp_hooks_step_ms']:.1f} ms -> layers DP/non-private "
                      f"{m['ratio_layers_over_non_private']:.2f}x, hooks/layers "
                      f"{m['ratio_hooks_over_layers']:.2f}x; step peak memory "
                      f"{_mib(m['non_private_step_peak_mib'])} non-private, "
                      f"{_mib(m['dp_layers_step_peak_mib'])} layers, "
                      f"{_mib(m['dp_hooks_step_peak_mib'])} hooks", flush=True)
        sims = []
        if "scale" not in args.skip or "rounds" not in args.skip:
            plan = [("six_agency", 2 if args.quick else 5)]
            if "scale" not in args.skip:
                plan += [("twenty_agency", 2 if args.quick else 5)]
                if not args.quick:
                    plan += [("hundred_agency", 5)]
            for federation, rounds in plan:
                print(f"scale: simulating {federation} for {rounds} rounds...", flush=True)
                sim = run_simulation(federation, rounds, tmp / federation)
                sims.append(sim)
                print(f"scale: {sim['agencies']} agencies, {rounds} rounds: "
                      f"{sim['wall_seconds']:.1f} s, peak {sim['peak_memory_mib']:.0f} MiB "
                      f"(ROC-AUC {sim['global_roc_auc']:.3f}, oracle "
                      f"{sim['oracle_roc_auc']:.3f})", flush=True)
            report["scale"] = [{k: v for k, v in s.items() if k != "summary"} for s in sims]
        if "thousand" not in args.skip and not args.quick:
            print("thousand: simulating 1,000 agencies for 3 rounds (several minutes)...",
                  flush=True)
            report["thousand"] = th = bench_thousand(tmp)
            print(f"thousand: {th['agencies']} agencies, 3 rounds, secure aggregation on: "
                  f"{th['wall_seconds']:.0f} s ({th['ratio_wall_over_target']:.2f}x the "
                  f"{THOUSAND_TARGET_SECONDS:.0f} s target), peak "
                  f"{th['peak_memory_mib'] / 1024:.2f} GiB "
                  f"({th['ratio_memory_over_target']:.2f}x the 8 GiB target); rounds "
                  f"{', '.join(f'{w:.0f}' for w in th['round_wall_seconds'])} s", flush=True)
        if "rounds" not in args.skip and sims:
            report["rounds"] = r = rounds_from(sims[0])
            sizes = sorted(set(r["bytes_sent_per_agency_per_round"].values()))
            print(f"rounds: median round {r['round_wall_seconds_median']:.1f} s "
                  f"({r['federation']}); bytes sent per agency per round: "
                  f"{', '.join(f'{b:,.0f}' for b in sizes)}", flush=True)
        if "backend" not in args.skip:
            print("backend: the default simulation on each backend, Ray's start-up and the "
                  "same rounds in one process...", flush=True)
            report["backend"] = bk = bench_backend(2 if args.quick else 5, tmp)
            print(f"backend: whole `heroes simulate` {bk['inprocess']['wall_seconds']:.1f} s "
                  f"in-process, {bk['ray']['wall_seconds']:.1f} s on Ray -> Ray "
                  f"{bk['ratio_ray_over_inprocess']:.2f}x; floor: Ray's start-up "
                  f"{bk['ray_startup']['process_seconds']:.1f} s + the same rounds in one "
                  f"process {bk['one_process']['seconds']:.1f} s = {bk['floor_seconds']:.1f} s"
                  f" -> in-process {bk['ratio_inprocess_over_floor']:.2f}x, Ray "
                  f"{bk['ratio_ray_over_floor']:.2f}x the floor (ROC-AUC "
                  f"{bk['inprocess']['global_roc_auc']:.3f} in-process, "
                  f"{bk['ray']['global_roc_auc']:.3f} Ray)", flush=True)
        if "share" not in args.skip:
            report["share"] = sh = bench_share((6, 100) if args.quick else (6, 100, 1000))
            for row in sh["sizes"]:
                print(f"share: {row['agencies']} agencies ({row['neighbours']} neighbours "
                      f"each): share request per node {row['request_bytes_before']:,} bytes "
                      f"before (everyone's keys), {row['request_bytes_now_median']:,.0f} now "
                      f"(the session's ids and the neighbourhood's keys) -> "
                      f"{row['ratio_bytes_before_over_now']:.1f}x fewer; per round "
                      f"{row['round_share_bytes_before'] / 2**20:,.1f} MiB before, "
                      f"{row['round_share_bytes_now'] / 2**20:,.2f} MiB now; one node's share "
                      f"stage {row['node_share_seconds_before'] * 1e3:,.0f} ms before, "
                      f"{row['node_share_seconds_now'] * 1e3:,.0f} ms now; consistency "
                      f"request {row['consistency_bytes_before']:,} bytes before (the "
                      f"survivors' ids), {row['consistency_bytes_now']:,} now (a bit per "
                      "node)", flush=True)
        if "secagg" not in args.skip:
            print("secagg: simulating six agencies with secure aggregation off, then on...",
                  flush=True)
            report["secagg"] = sg = bench_secagg(3 if args.quick else 7, tmp)
            print(f"secagg: round {sg['off']['round_wall_seconds_median']:.2f} s off, "
                  f"{sg['on']['round_wall_seconds_median']:.2f} s on -> "
                  f"{sg['ratio_round_time_on_over_off']:.2f}x; bytes per agency per round "
                  f"{sg['off']['bytes_sent_per_agency_per_round_median']:,.0f} off, "
                  f"{sg['on']['bytes_sent_per_agency_per_round_median']:,.0f} on -> "
                  f"{sg['ratio_bytes_on_over_off']:.2f}x (ROC-AUC "
                  f"{sg['off']['global_roc_auc']:.3f} off, {sg['on']['global_roc_auc']:.3f} on)",
                  flush=True)
        if "trust" not in args.skip:
            print(f"trust: six agencies, secure aggregation as at commit {TRUST_BASELINE} "
                  "(before) against this tree (now), alternating...", flush=True)
            report["trust"] = tr = bench_trust(3 if args.quick else 5, 1 if args.quick else 3,
                                               tmp)
            if "skipped" in tr:
                print(f"trust: skipped: {tr['skipped']}", flush=True)
            else:
                print(f"trust: secure training round (median) "
                      f"{tr['before']['round_seconds_median']:.2f} s before, "
                      f"{tr['now']['round_seconds_median']:.2f} s now -> "
                      f"{tr['ratio_round_time_now_over_before']:.2f}x, lower quartile "
                      f"{tr['ratio_round_time_q25_now_over_before']:.2f}x (signed keys, "
                      "consistency round, set-up sent with the previous round's last exchange);"
                      " bytes per agency per round, evaluation included, "
                      f"{tr['before']['bytes_per_agency_per_round_median']:,.0f} before, "
                      f"{tr['now']['bytes_per_agency_per_round_median']:,.0f} now -> "
                      f"{tr['ratio_bytes_now_over_before']:.2f}x (secure evaluation)",
                      flush=True)
        if "ledger" not in args.skip:
            report["ledger"] = led = bench_ledger(200 if args.quick else 1000)
            print(f"ledger: {led['releases']} releases -> epsilon in {led['rdp_seconds']:.3f} s "
                  f"(RDP), {led['prv_seconds']:.3f} s (PRV); recording "
                  f"{led['record_seconds_per_release'] * 1e3:.1f} ms per release", flush=True)
        if "score" not in args.skip:
            report["score"] = sc = bench_score(2000 if args.quick else 10000, tmp)
            print(f"score: {sc['adverts']} adverts in {sc['seconds']:.1f} s = "
                  f"{sc['adverts_per_second']:.0f} adverts/s with verification, explanations "
                  f"and the log; features and logits alone "
                  f"{sc['features_and_logits_only_adverts_per_second']:.0f} adverts/s -> "
                  f"{sc['ratio_plain_over_explained']:.2f}x", flush=True)
    out = args.out or ROOT / "outputs" / "bench" / (
        time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
