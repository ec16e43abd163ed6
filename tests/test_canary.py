"""Canaries in hostile exports never reach the consortium: through real nodes in a Flower
simulation, and through a real deployment on loopback.

Each hostile agency's export carries a unique canary in every field and in its header,
and breaks one rule: no header row, semicolons, a symbolic link out of the data folder, a
broken JSON line, a damaged Parquet file, a repeated column, a broken manifest, oversized
fields (set aside: that agency trains), or data that passes every check while the node's
own feature cache (derived from its adverts) makes its data loading raise a ValueError that
quotes it: an exception deep in the node, not one of heroes-fl's own. The whole consortium
side (server outputs, metrics.json, the processes' stdout and stderr, in deployment the
SuperLink's state.db and the consortium's logs) is then searched for every canary: none
may be there, while each agency's own log holds the details (so the test can fail).

No mocks: the real ClientApp and ServerApp, Flower's simulation engine (Ray), real
SuperLink and SuperNodes. Both tests are slow; the simulation runs once with all the
hostile agencies, the deployment once with two.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients.mods import NODE_ERROR_LOG
from clients.node import CACHE_DIR
from federation.config import RunSettings
from federation.data import load_agency
from federation.errors import DataError
from federation.ledger import Policy, fingerprint_file, write_policy
from federation.limits import MAX_TEXT_CHARS
from federation.pki import make_node_key
from federation.schema import REQUIRED_COLUMNS, TEXT_TOO_LONG
from federation.tasks import get_task
from federation.text import FEATURES_VERSION
from simulation.generator import generate_federation, load_preset
from simulation.run import approve_simulated_roster
from tests._wait import RUN_DEADLINE_S, wait_for
from tests.test_deployment import Deployment, approve_bundle, free_port, heroes

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "ZQH13CANARY"  # every canary starts so: one search finds them all
COLUMNS = [*REQUIRED_COLUMNS, "phone"]

pytestmark = pytest.mark.slow


def canary(path: str) -> str:
    return f"{PREFIX}-{path}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def canary_rows(c: str, n: int = 40) -> list[dict[str, Any]]:
    """Usable adverts (0-6 labels) with the canary in every field."""
    return [{"advert_id": f"{c}-{i}", "posted_at": f"2026-01-01 {c}", "site": f"{c}.example",
             "language": "es-ES", "category": f"escort {c}",
             "text": f"{c} nueva en la ciudad, llama ya {i}", "label": i % 7,
             "phone": f"+34 {c}"} for i in range(n)]


def write_csv(path: Path, rows: list[dict[str, Any]], *, columns: list[str] = COLUMNS,
              header: bool = True, delimiter: str = ",") -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header:
            w.writerow(columns)
        w.writerows([[r.get(c, r.get("label")) for c in columns] for r in rows])


def set_train(d: Path, name: str) -> Path:
    m = json.loads((d / "manifest.json").read_text())
    (d / m["train"]).unlink()
    m["train"] = name
    (d / "manifest.json").write_text(json.dumps(m))
    return d / name


# --- the hostile exports ---------------------------------------------------------------------

def headerless(d: Path, c: str, tmp: Path) -> None:
    write_csv(d / "adverts_train.csv", canary_rows(c), header=False)


def semicolons(d: Path, c: str, tmp: Path) -> None:
    write_csv(d / "adverts_train.csv", canary_rows(c), delimiter=";")


def symlink_out(d: Path, c: str, tmp: Path) -> None:
    secret = tmp / f"outside-{c}" / "passwd"
    secret.parent.mkdir()
    secret.write_text(f"root:x:0:0:{c}:/root:/bin/bash\n")
    (d / "adverts_train.csv").unlink()
    (d / "adverts_train.csv").symlink_to(secret)


def broken_json(d: Path, c: str, tmp: Path) -> None:
    path = set_train(d, "adverts_train.jsonl")
    lines = [json.dumps(r) for r in canary_rows(c)]
    lines.insert(20, f'{{"advert_id": "{c}", "text": "{c} unterminated')
    path.write_text("\n".join(lines) + "\n")


def damaged_parquet(d: Path, c: str, tmp: Path) -> None:
    path = set_train(d, "adverts_train.parquet")
    rows = canary_rows(c)
    buf = io.BytesIO()
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in COLUMNS}), buf)
    raw = bytearray(buf.getvalue())
    third = len(raw) // 3
    raw[third:2 * third] = (c.encode() * (third // len(c) + 1))[:third]
    path.write_bytes(bytes(raw))


def repeated_column(d: Path, c: str, tmp: Path) -> None:
    write_csv(d / "adverts_train.csv", canary_rows(c), columns=[*COLUMNS, c, "label"])


def broken_manifest(d: Path, c: str, tmp: Path) -> None:
    write_csv(d / "adverts_train.csv", canary_rows(c))
    m = json.loads((d / "manifest.json").read_text())
    body = json.dumps({**m, "label_scheme": c, c: c})
    (d / "manifest.json").write_text(body[:-1] + f', "{c}": "{c}"}}')


def oversized(d: Path, c: str, tmp: Path) -> None:
    """Set aside, not refused: the good rows train, the canary rows stay at the node."""
    rows = canary_rows(c)
    rows[3]["text"] = f"{c} " + "x" * MAX_TEXT_CHARS
    rows[5]["text"] = f"{c} " * 300_000  # over a megabyte
    rows[7][c] = "y" * 1_000_000 + c  # an extra column, ignored: a 1 MB field in it
    write_csv(d / "adverts_train.csv", rows, columns=[*COLUMNS, c])


def deep_failure(d: Path, c: str, tmp: Path) -> None:
    write_csv(d / "adverts_train.csv", canary_rows(c))  # usable: the cache is what breaks


HOSTILE: dict[str, tuple[Callable[[Path, str, Path], None], str]] = {
    "headerless": (headerless, "the header row seems to be missing"),
    "semicolons": (semicolons, "separated by semicolons, not commas"),
    "symlink": (symlink_out, "resolves outside the data folder (through a symbolic link)"),
    "badjson": (broken_json, "line 21 is not valid JSON"),
    "badparquet": (damaged_parquet, "not a readable Parquet file"),
    "duplicate": (repeated_column, "column 'label' appears 2 times in the header"),
    "manifest": (broken_manifest, "appears more than once"),
    "oversized": (oversized, ""),
    "deep": (deep_failure, "failed at the node with ValueError"),
}


def plant_corrupt_cache(state: Path, export: Path, flat: dict[str, Any], c: str) -> None:
    """The node's feature cache entry for this export (the key clients/node.py computes),
    damaged so that reading it raises a ValueError quoting the canary."""
    settings = RunSettings.from_flat(flat)
    task = get_task(settings.task_name, settings.task_params)
    params = json.dumps([task.name, task.params.to_flat(), FEATURES_VERSION,
                         fingerprint_file(export)], sort_keys=True)
    key = hashlib.sha256(params.encode()).hexdigest()[:32]
    (state / CACHE_DIR).mkdir(parents=True, exist_ok=True)
    np.savez(state / CACHE_DIR / f"{key}.npz", indptr=np.zeros(1, np.int64),
             indices=np.zeros(0, np.int64), values=np.zeros(0, np.float32),
             width=np.array(f"{c} corrupt width"))


def build_hostile(data: Path, base: str, names: list[str], tmp: Path) -> list[str]:
    """Copies of agency ``base``'s folder, each renamed and broken one way."""
    made = []
    for name in names:
        agency = f"h-{name}"
        d = data / "agencies" / agency
        shutil.copytree(data / "agencies" / base, d)
        m = json.loads((d / "manifest.json").read_text())
        (d / "manifest.json").write_text(json.dumps({**m, "agency": agency}))
        HOSTILE[name][0](d, canary(name), tmp)
        made.append(agency)
    return made


def hits(paths: Iterator[Path], texts: list[str]) -> list[str]:
    """Every consortium-side file or text that holds a canary (by prefix)."""
    seen = [str(p) for p in paths if p.is_file() and not p.is_symlink()
            and PREFIX.encode() in p.read_bytes()]
    return seen + [f"output #{i}" for i, t in enumerate(texts) if PREFIX in t]


def flwr_config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


# --- a simulation with every hostile agency ----------------------------------------------------

RUNNER = """
import json, sys
from simulation.run import run_flower_simulation
flat = json.loads(sys.argv[1])
run_flower_simulation(flat, num_nodes=int(sys.argv[2]), client_cpus=1, verbose=True)
"""


def test_hostile_agencies_in_a_simulation_leak_nothing(tmp_path: Path) -> None:
    data, state, server = tmp_path / "data", tmp_path / "state", tmp_path / "server"
    preset = replace(load_preset(ROOT / "configs" / "federation" / "three_agency.yaml"),
                     scale=0.05)
    manifest = generate_federation(preset, data, seed=11)
    good = list(manifest.agencies)
    hostile = build_hostile(data, "es-police", list(HOSTILE), tmp_path)
    index = json.loads((data / "federation.json").read_text())
    (data / "federation.json").write_text(json.dumps({**index, "agencies": good + hostile}))
    for agency in good + hostile:
        write_policy(state / agency, Policy(max_epsilon=10.0, delta=1e-4))
        make_node_key(state / agency / "node.key", state / agency / "node.key.pub",
                      comment=agency)
    approve_simulated_roster(state, [(a, state / a / "node.key.pub") for a in good + hostile])
    flat = flwr_config()
    flat.update({"paths.data_root": str(data), "paths.state_root": str(state),
                 "paths.output_dir": str(server), "strategy.num_rounds": 1,
                 "strategy.min_nodes": len(good + hostile), "strategy.quorum": len(good) + 1,
                 "privacy.target_delta": 1e-4})
    d = data / "agencies" / "h-deep"
    plant_corrupt_cache(state / "h-deep", d / "adverts_train.csv", flat, canary("deep"))
    # preconditions: each hostile export holds its canary and breaks its rule (or is usable)
    for name in HOSTILE:
        folder = data / "agencies" / f"h-{name}"
        files = [*folder.iterdir(), *(tmp_path / f"outside-{canary(name)}").glob("*")]
        assert any(canary(name).encode() in p.read_bytes() for p in files if p.is_file())
        if name in ("oversized", "deep"):
            assert len(load_agency(folder).train) > 0
        else:
            with pytest.raises(DataError, match=re.escape(HOSTILE[name][1])):
                load_agency(folder)

    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(flat), str(len(good + hostile))], cwd=ROOT,
        capture_output=True, text=True, timeout=RUN_DEADLINE_S, check=False,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-4000:]

    # the round went on without the hostile agencies, and their failures were named
    (rnd,) = json.loads((server / "metrics.json").read_text())["rounds"]
    statuses = sorted(o["status"] for o in rnd["train"])
    assert statuses.count("ok") == len(good) + 1 and statuses.count("failed") == 8
    reasons = " | ".join(o["reason"] for o in rnd["train"] if o["status"] == "failed")
    for name, (_, rule) in HOSTILE.items():
        assert rule in reasons, (name, reasons)
    # nothing of any canary on the consortium's side (where the failures did arrive) ...
    output = proc.stdout + proc.stderr
    assert "failed in training" in output and HOSTILE["headerless"][1] in output
    assert not hits(server.rglob("*"), [proc.stdout, proc.stderr])
    # ... while the agencies kept the details, and set the oversized rows aside
    deep_log = (state / "h-deep" / "logs" / NODE_ERROR_LOG).read_text()
    assert canary("deep") in deep_log and "ValueError" in deep_log
    for name, (_, rule) in HOSTILE.items():
        if rule and name != "deep":
            assert rule in (state / f"h-{name}" / "logs" / NODE_ERROR_LOG).read_text(), name
    assert load_agency(data / "agencies" / "h-oversized").train.rejected == {TEXT_TOO_LONG: 2}


# --- a deployment: two agencies whose exports turn hostile after their nodes started -----------

RUN_CONFIG = ("strategy.num_rounds=1 privacy.target_delta=1e-4 strategy.min_nodes=2 "
              "strategy.quorum=1 strategy.round_timeout=180")


def test_hostile_agencies_in_a_deployment_leak_nothing(tmp_path: Path) -> None:
    preset = replace(load_preset(ROOT / "configs" / "federation" / "three_agency.yaml"),
                     scale=0.05)
    manifest = generate_federation(preset, tmp_path / "data", seed=12)
    agencies = list(manifest.agencies[:2])
    public = f"127.0.0.1:{free_port()}"
    cons = tmp_path / "consortium"
    r = heroes("consortium", "init", "--dir", str(cons), "--public-address", public,
               "--private-port", str(free_port()), "--health-port", str(free_port()))
    assert r.returncode == 0, r.stderr
    dep = Deployment(tmp_path, cons, public, agencies)
    try:
        dep.start("consortium", ["consortium", "serve", "--dir", str(cons)])
        wait_for(lambda: "aggregator up" in dep.output("consortium"), "the aggregator",
                 seen=lambda: dep.output("consortium")[-3000:])
        for agency in agencies:
            dep.init_agency(agency, tmp_path / "data" / "agencies" / agency)
            r = heroes("consortium", "enroll", agency,
                       str(dep.state(agency) / "node.key.pub"), "--dir", str(cons))
            assert r.returncode == 0, r.stdout + r.stderr
            dep.start(agency, ["agency", "serve", "--dir", str(dep.state(agency))])
        for agency in agencies:
            wait_for(lambda a=agency: "running" in dep.output(a), f"node {agency}",
                     seen=lambda a=agency: dep.output(a)[-3000:])
        r = heroes("consortium", "roster", "--dir", str(cons))
        assert r.returncode == 0, r.stdout + r.stderr
        for agency in agencies:
            r = heroes("agency", "approve", str(cons / "roster.json"), "--dir",
                       str(dep.state(agency)), "--yes")
            assert r.returncode == 0, r.stdout + r.stderr
        # the nodes started on good exports; now the first loses its header row, and the
        # second's feature cache goes bad (its new export passes every check)
        first, second = (tmp_path / "data" / "agencies" / a for a in agencies)
        write_csv(first / "adverts_train.csv", canary_rows(canary("dep-headerless")),
                  header=False)
        export = set_train(second, "adverts_train.csv")
        m = json.loads((second / "manifest.json").read_text())
        (second / "manifest.json").write_text(json.dumps({**m, "label_scheme": "0-6"}))
        write_csv(export, canary_rows(canary("dep-deep")))
        assert len(load_agency(second).train) == 40
        plant_corrupt_cache(dep.state(agencies[1]), export, flwr_config(), canary("dep-deep"))

        approve_bundle(dep)  # of this source tree, as `train` submits it just after
        out = tmp_path / "run"
        r = heroes("consortium", "train", "--dir", str(cons), "--run-config", RUN_CONFIG,
                   "--out", str(out), timeout=RUN_DEADLINE_S)
        text = r.stdout + r.stderr
        failures = [line for line in text.splitlines() if "failed in training" in line]
        assert r.returncode != 0 and "below the quorum" in text, text[-3000:]  # both failed
        assert any("the header row seems to be missing" in f for f in failures), failures
        assert any("failed at the node with ValueError" in f for f in failures), failures
        assert not hits(cons.rglob("*"), [text, dep.output("consortium")])
        assert not hits(out.rglob("*"), [])
        (state_db,) = cons.rglob("state.db")  # the SuperLink's: runs, messages, logs
        db = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
        try:
            tables = [t for (t,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")]
            assert tables
            for table in tables:
                for row in db.execute(f'SELECT * FROM "{table}"'):
                    assert PREFIX not in repr(row), table
        finally:
            db.close()
        # the agencies kept the details
        assert "header row seems to be missing" in (
            dep.state(agencies[0]) / "logs" / NODE_ERROR_LOG).read_text()
        assert canary("dep-deep") in (
            dep.state(agencies[1]) / "logs" / NODE_ERROR_LOG).read_text()
    finally:
        for name in list(dep.procs):
            dep.stop(name)
        for pid in dep.child_pids():  # nothing may outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
