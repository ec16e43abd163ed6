"""The ``heroes`` command.

    heroes simulate [HYDRA OVERRIDES...]   run a simulated federation (see configs/)
    heroes privacy epsilon|plan ...        privacy accounting and planning
    heroes agency ...                      an agency's node: init, serve, status, ledger
    heroes consortium ...                  the aggregator: init, enroll, revoke, serve, train
    heroes bench [--quick]                 speed and memory, side by side, saved as JSON
    heroes sweep-table MULTIRUN_DIR        one table (CSV, Parquet) from a Hydra multirun
    heroes report RUN_OR_SWEEP_DIR         a self-contained HTML report of a run or sweep

Configuration errors, data errors and privacy errors print one clear message and exit
with status 2; nothing has been trained when they do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from federation.errors import HeroesError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _simulate(overrides: list[str]) -> int:
    """Run Hydra's app with our run as its task. Exit status 2, with the message and no
    traceback, for every configuration error: ours (HeroesError), Hydra's own (an override
    that does not parse, a key or option that does not exist, a group that does not
    compose) and OmegaConf's (an interpolation that does not resolve). Anything else is a
    bug and keeps its traceback (status 1)."""
    import os

    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    from simulation.run import run

    status = {"code": 0}

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        try:
            run(cfg, Path(HydraConfig.get().runtime.output_dir))
        except HeroesError as exc:
            print(f"heroes simulate: {exc}", file=sys.stderr)
            status["code"] = 2
        except OmegaConfBaseException as exc:
            print(f"heroes simulate: configuration error: {exc}", file=sys.stderr)
            status["code"] = 2

    saved, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = ["heroes simulate", *overrides]
    # Hydra prints its own errors and exits 1 unless HYDRA_FULL_ERROR=1, which makes it
    # raise them instead: they are caught below and reported as configuration errors.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _main()
    except (HydraException, OmegaConfBaseException) as exc:
        cause = exc.__cause__
        extra = f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else ""
        print(f"heroes simulate: configuration error: {exc}{extra}\n"
              "Fix: check the override's spelling (`heroes simulate --help` lists the groups; "
              "`heroes simulate --cfg job` prints the composed configuration)", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
    return status["code"]


def main(argv: list[str] | None = None) -> int:
    from clients import cli as agency_cli
    from federation import privacy_cli
    from server import cli as consortium_cli

    parser = argparse.ArgumentParser(prog="heroes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a simulated federation of synthetic agencies",
                         add_help=False)
    sim.add_argument("overrides", nargs=argparse.REMAINDER,
                     help="Hydra overrides, e.g. privacy.target_epsilon=1.0 strategy=fedprox")
    sub.add_parser("bench", help="speed and memory benchmarks (see heroes bench --help)",
                   add_help=False)
    sub.add_parser("sweep-table", help="collect a multirun into sweep.csv/.parquet",
                   add_help=False)
    sub.add_parser("report", help="render a run or sweep as a self-contained HTML report",
                   add_help=False)
    privacy_cli.add_commands(sub)
    agency_cli.add_commands(sub)
    consortium_cli.add_commands(sub)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "simulate":
        # Everything after the subcommand belongs to Hydra (-m, --help, --cfg job, ...).
        return _simulate(argv[1:])
    if argv and argv[0] == "bench":
        from simulation.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] in ("sweep-table", "report"):
        import importlib

        module = "simulation.sweep" if argv[0] == "sweep-table" else "simulation.report"
        try:
            return int(importlib.import_module(module).main(argv[1:]))
        except HeroesError as exc:
            print(f"heroes {argv[0]}: {exc}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    try:
        if args.command == "privacy":
            return privacy_cli.main(args)
        if args.command == "agency":
            return agency_cli.main(args)
        if args.command == "consortium":
            return consortium_cli.main(args)
    except HeroesError as exc:
        print(f"heroes {args.command}: {exc}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse exits on anything else


if __name__ == "__main__":
    sys.exit(main())
