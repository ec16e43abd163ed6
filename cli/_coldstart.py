"""Cold start of the commands an agency's IT team runs most: printed, never asserted.

    python -m cli._coldstart [--runs 5] [--before REF]

Each command runs in a fresh interpreter, as ``heroes`` does; the figure is the best of
``--runs`` wall-clock times (the least disturbed by other work on the machine). The state
folder D is a real node: made with ``heroes consortium init`` and ``heroes agency init``,
with two rounds recorded in its privacy ledger by the ledger's own code, so ``agency
ledger`` and ``agency status`` report a spent epsilon, and 20 signed egress receipts for
``agency audit verify``. The reports keep the epsilons they computed
(federation/epsilon_cache.py); "first call after a round" times ``agency ledger`` with
that cache removed before each call, as after a new release. NaN: the command failed (a
revision without it).

With ``--before REF`` the same commands also run on the git revision REF (exported with
``git archive`` to a temporary folder, run through the entry module it had then), and the two
columns are printed side by side. Machine noise matters: on a busy machine compare columns
measured in the same call.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The entry module of a source tree: the one package since issue 14, simulation/cli.py before.
ENTRIES = (("cli/__main__.py", "cli"), ("simulation/cli.py", "simulation.cli"))


def entry_module(tree: Path) -> str:
    for path, module in ENTRIES:
        if (tree / path).is_file():
            return module
    raise SystemExit(f"{tree} has no heroes entry module ({', '.join(p for p, _ in ENTRIES)})")


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "FLWR_TELEMETRY_ENABLED": "0"}


def _heroes(tree: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", entry_module(tree), *args]


def make_state(tree: Path, work: Path) -> Path:
    """A real agency state folder D with a two-round ledger; ``tree``'s own CLI makes it."""
    consortium, data, state = work / "consortium", work / "data", work / "agency"
    data.mkdir()
    for args in (("consortium", "init", "--dir", str(consortium), "--public-address",
                  "127.0.0.1:9092"),
                 ("agency", "init", "--dir", str(state), "--name", "es-police", "--data-dir",
                  str(data), "--consortium", "127.0.0.1:9092", "--ca-cert",
                  str(consortium / "tls" / "ca.crt"), "--consortium-key",
                  str(consortium / "signing.pub"), "--max-epsilon", "10", "--delta", "1e-5")):
        subprocess.run(_heroes(tree, *args), cwd=tree, env=_env(tree), check=True,
                       capture_output=True, text=True)
    from federation.ledger import Ledger, Release
    from federation.policy import load_policy

    policy = load_policy(state)
    first = Release(dataset="es-police/export", fingerprint="ab" * 32, run_id="coldstart",
                    round=1, task="advert-risk", model="advert-risk:AdvertRiskModel",
                    noise_multiplier=1.0, sample_rate=0.05, steps=40, max_grad_norm=0.5,
                    delta=policy.delta, accountant=policy.accountant)
    with Ledger.open(state) as ledger:
        for release in (first, replace(first, round=2)):
            seq, _ = ledger.reserve(release, policy)
            ledger.complete(seq)
    from clients import receipts

    for rnd in range(1, 21):  # a run's worth of signed egress receipts for `audit verify`
        receipts.append(state, receipts.Receipt(
            agency="es-police", run_id="coldstart", round=rnd, task="advert-risk",
            message="train", status="ok", payload_sha256="cd" * 32, payload_bytes=16_000,
            epsilon=1.0, delta=policy.delta, dp={"noise_multiplier": 1.0},
            app_bundle_sha256="unknown", ledger_head=receipts.ledger_head(state)))
    return state


def _no_epsilon_cache(state: Path) -> None:
    """As on the first call after a round: no epsilon computed yet for the new history."""
    (state / "epsilon-cache.json").unlink(missing_ok=True)


def best_of(tree: Path, args: list[str], runs: int,
            before_each: Callable[[], None] | None = None) -> float:
    """Best wall time of ``runs`` fresh-interpreter calls; NaN where the command fails (a
    command that revision did not have). `agency status` of the folder timed here, a node
    never started, answers CRITICAL (exit 2) by the Nagios convention: that counts as
    done; only 3 (UNKNOWN) and other codes fail."""
    done_codes = {0, 1, 2} if args[:2] == ["agency", "status"] else {0}
    times = []
    for _ in range(runs):
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        done = subprocess.run(_heroes(tree, *args), cwd=tree, env=_env(tree), check=False,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start if done.returncode in done_codes
                     else math.nan)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli._coldstart",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (best is shown)")
    parser.add_argument("--before", metavar="REF", default=None,
                        help="also time git revision REF, side by side")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="heroes-coldstart-") as tmp:
        work = Path(tmp)
        trees = {"now": ROOT}
        if args.before:
            old = work / "before"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            trees = {f"before ({args.before})": old, "now": ROOT}
        (work / "state").mkdir()
        state = make_state(ROOT, work / "state")
        commands = {"heroes --help": ["--help"],
                    "heroes agency status --dir D": ["agency", "status", "--dir", str(state)]}
        ledger = {name: ["agency", "ledger", "--dir" if entry_module(t) == "cli"
                         else "--state-dir", str(state)] for name, t in trees.items()}
        verify = ["agency", "audit", "verify", "--dir", str(state)]
        labels = [*commands, "heroes agency ledger --dir D",
                  "  the same, first call after a round", "heroes agency audit verify --dir D"]
        width = max(len(c) for c in labels)
        print(f"cold start, best of {args.runs}, seconds (python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs)")
        print(f"{'command':<{width}}" + "".join(f"  {n:>22}" for n in trees))

        def show(label: str, row: list[float]) -> None:
            print(f"{label:<{width}}" + "".join(f"  {v:>22.2f}" for v in row), flush=True)

        for label, cmd in commands.items():
            show(label, [best_of(t, cmd, args.runs) for t in trees.values()])
        show("heroes agency ledger --dir D",
             [best_of(t, ledger[n], args.runs) for n, t in trees.items()])
        show("  the same, first call after a round",  # no epsilon cached for the new history
             [best_of(t, ledger[n], args.runs, partial(_no_epsilon_cache, state))
              for n, t in trees.items()])
        show("heroes agency audit verify --dir D",
             [best_of(t, verify, args.runs) for t in trees.values()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
