"""``heroes simulate|bench|sweep-table|report``: the researchers' commands.

    heroes simulate [HYDRA OVERRIDES...]   run a simulated federation (see configs/)
    heroes bench [--quick] ...             speed and memory, side by side, saved as JSON
    heroes sweep-table MULTIRUN_DIR        one table (CSV, Parquet) from a Hydra multirun
    heroes report RUN_OR_SWEEP_DIR         a self-contained HTML report of a run or sweep

The only module of the command line that uses Hydra. ``simulate`` hands everything after
it to Hydra (-m, --help, --cfg job, overrides); the other three hand their arguments to
the parser of the simulation/ module that does the work. Configuration errors, data errors
and privacy errors print one clear message and exit with status 2 (USAGE); nothing has
been trained when they do.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cli import exit
from cli._register import Subparsers, raw_command
from federation.errors import HeroesError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def register(subparsers: Subparsers) -> None:
    raw_command(subparsers, "simulate", simulate,
                help="run a simulated federation of synthetic agencies (Hydra overrides)")
    raw_command(subparsers, "bench", _bench,
                help="speed and memory benchmarks (see heroes bench --help)")
    raw_command(subparsers, "sweep-table", _sweep_table,
                help="collect a multirun into sweep.csv/.parquet")
    raw_command(subparsers, "report", _report,
                help="render a run or sweep as a self-contained HTML report")


def simulate(overrides: list[str]) -> int:
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

    status = {"code": exit.OK}

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        try:
            run(cfg, Path(HydraConfig.get().runtime.output_dir))
        except HeroesError as exc:
            print(f"heroes simulate: {exc}", file=sys.stderr)
            status["code"] = exit.USAGE
        except OmegaConfBaseException as exc:
            print(f"heroes simulate: configuration error: {exc}", file=sys.stderr)
            status["code"] = exit.USAGE

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
        return exit.USAGE
    finally:
        sys.argv = saved
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
    return status["code"]


def _bench(argv: list[str]) -> int:
    from simulation.bench import main

    return main(argv)


def _sweep_table(argv: list[str]) -> int:
    from simulation.sweep import main

    return int(main(argv))


def _report(argv: list[str]) -> int:
    from simulation.report import main

    return int(main(argv))
