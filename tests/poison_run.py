"""TEST ONLY: run a real Flower simulation (real ServerApp, real nodes) in which some agencies'
training replies are corrupted by tests/poison_app.py, and score the final global model.

    .venv/bin/python -m tests.poison_run [--scale 0.5] [--rounds 5] [--attack flip4] [--privacy off]

prints the global ROC-AUC on the pooled test split for the configurations reported in the
README (honest and poisoned, each aggregation). The tests call ``run_poisoned``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests._wait import RUN_DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
FIVE = ROOT / "configs" / "federation" / "five_agency.yaml"

RUNNER = """
import json, sys
from simulation.run import run_flower_simulation
from tests.poison_app import make_app
flat, attacks, n = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
app = make_app({int(k): v for k, v in attacks.items()}) if attacks else None
run_flower_simulation(flat, num_nodes=n, client_cpus=1, verbose=False, client_app=app)
"""


def base_config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def prepare(tmp: Path, *, scale: float, seed: int = 0) -> list[str]:
    """Generate the five-agency federation once, with each agency's policy and node key."""
    from dataclasses import replace

    from simulation.generator import generate_federation, load_preset

    preset = replace(load_preset(FIVE), scale=scale)
    manifest = generate_federation(preset, tmp / "data", seed=seed)
    return list(manifest.agencies)


def run_poisoned(tmp: Path, name: str, *, attacks: dict[int, str], agencies: list[str],
                 overrides: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One run: a fresh state folder (ledgers, keys), the given settings and attacks."""
    from federation.ledger import Policy, write_policy
    from federation.pki import make_node_key

    out, state = tmp / name / "server", tmp / name / "state"
    for agency in agencies:
        write_policy(state / agency, Policy(max_epsilon=100.0, delta=1e-5,
                                           allow_non_private=True))
        make_node_key(state / agency / "node.key", state / agency / "node.key.pub",
                      comment=agency)
    flat = base_config()
    flat.update({"paths.data_root": str(tmp / "data"), "paths.state_root": str(state),
                 "paths.output_dir": str(out), "secagg.mode": "off", **overrides})
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(flat), json.dumps(attacks),
         str(len(agencies))],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_DEADLINE_S, check=False,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONWARNINGS": "ignore"},
    )
    return proc, out


def global_roc_auc(tmp: Path, out: Path) -> float:
    """ROC-AUC of the saved global model on the pooled entity-disjoint test split."""
    import torch

    from federation import metrics
    from federation.config import RunSettings
    from federation.tasks import get_task
    from federation.training import predict_proba
    from simulation.run import _pool

    saved = torch.load(out / "model.pt", weights_only=True)
    settings = RunSettings.from_flat(saved["settings"])
    task = get_task(settings.task_name, settings.task_params)
    manifest = json.loads((tmp / "data" / "federation.json").read_text())
    agencies = [task.load(tmp / "data" / "agencies" / a) for a in manifest["agencies"]]
    test = _pool(task, agencies, "test", tmp / "pooled-features")
    model = task.build_model()
    model.load_state_dict(saved["state_dict"])
    return float(metrics.summary(test.labels, predict_proba(model, test.features),
                                 k=settings.eval.k)["roc_auc"])


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--attack", default="flip4")
    parser.add_argument("--poisoned", type=int, default=3, help="partition id")
    parser.add_argument("--aggregations", default="mean,median,trimmed_mean,krum")
    parser.add_argument("--privacy", choices=("on", "off"), default="off")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="heroes-poison-") as tmp_name:
        tmp = Path(tmp_name)
        agencies = prepare(tmp, scale=args.scale)
        print(f"five agencies {agencies}; poisoned: {agencies[args.poisoned]} ({args.attack})")
        for agg in args.aggregations.split(","):
            for poisoned in (False, True):
                for ratio in ((0.0, 10.0) if poisoned else (0.0,)):
                    name = f"{agg}-{'poisoned' if poisoned else 'honest'}-{ratio:g}"
                    proc, out = run_poisoned(
                        tmp, name, agencies=agencies,
                        attacks={args.poisoned: args.attack} if poisoned else {},
                        overrides={"strategy.aggregation": agg,
                                   "strategy.max_norm_ratio": ratio,
                                   "strategy.num_rounds": args.rounds,
                                   "privacy.enabled": args.privacy == "on"})
                    if proc.returncode:
                        print(name, "FAILED", proc.stderr[-2000:])
                        continue
                    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
                    rejected = sum(o["status"] == "rejected" for r in rounds for o in r["train"])
                    print(f"{name:<32} ROC-AUC {global_roc_auc(tmp, out):.4f}  "
                          f"rejected updates {rejected}", flush=True)


if __name__ == "__main__":
    main()
