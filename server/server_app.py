"""The consortium's ServerApp: federated rounds over the agencies, then save the model.

It sees model arrays and aggregate numbers only. Outputs go to ``paths.output_dir``
(default ``outputs/server/<UTC time>``): ``model.pt`` (weights, task, settings),
``metrics.json`` (per round, per agency) and ``config.json`` (the validated settings).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from federation.config import RunSettings
from federation.protocol import SUMMARY_FILE, PrivacySummary, RunSummary
from federation.tasks import get_task
from server import secagg
from server.checkpoint import ContinuedStrategy, load_checkpoint, restore, write_checkpoint
from server.ledger_heads import HeadBook
from server.run_log import enrolled_names
from server.strategy import RunLog, build_strategy

log = logging.getLogger("heroes.server")

app = ServerApp()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_outputs(out: Path, settings: RunSettings, state: dict[str, torch.Tensor],
                  run_log: RunLog, wall_s: float) -> None:
    """Write model, per-round metrics and config; each file appears whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.pt.tmp"
    torch.save({"task": settings.task_name, "task_params": dict(settings.task_params),
                "state_dict": state, "settings": settings.to_flat()}, tmp)
    tmp.replace(out / "model.pt")
    round_log(settings, run_log, wall_s).write(out / SUMMARY_FILE)
    config = {k: _jsonable(v) for k, v in settings.to_flat().items()}
    t = out / "config.json.tmp"
    t.write_text(json.dumps(config, indent=2), encoding="utf-8")
    t.replace(out / "config.json")


def round_log(settings: RunSettings, run_log: RunLog, wall_s: float) -> RunSummary:
    """The server's metrics.json: the run summary with what only a simulation knows null."""
    return RunSummary(rounds=run_log.records(), wall_seconds=wall_s,
                      privacy=PrivacySummary.of(settings.privacy))


#: The mark `heroes consortium train` keeps on the console (server/deploy.py): the lines
#: of heroes' own loggers in a deployed ServerApp, which Flower streams with its own.
LINE_MARK = "heroes "


def _log_to_stream(run_id: int) -> None:
    """In a deployed ServerApp (flwr-serverapp) nothing handles heroes' loggers, and Flower
    streams only what the process prints: give them one handler on stdout, each line marked,
    with its UTC time and the run id. A simulation's loggers are Hydra's: left alone."""
    root = logging.getLogger("heroes")
    if root.hasHandlers():
        return
    handler = logging.StreamHandler(sys.stdout)
    formatter = logging.Formatter(
        f"{LINE_MARK}%(asctime)s run {run_id} %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


@app.main()
def main(grid: Grid, context: Context) -> None:
    _log_to_stream(context.run_id)
    settings = RunSettings.from_flat(context.run_config, source="run config (server)")
    out = Path(settings.paths.output_dir or
               f"outputs/server/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    torch.manual_seed(settings.train.seed)
    model = get_task(settings.task_name, settings.task_params).build_model()
    run_log = RunLog()
    if settings.paths.registry:
        run_log.know(enrolled_names(Path(settings.paths.registry)))
    # The last privacy-ledger head seen per agency: a node whose ledger went backwards, or
    # was swapped, is refused by name (server/ledger_heads.py).
    heads = HeadBook(Path(settings.paths.ledger_heads or out / "ledger-heads.json"))
    strategy = build_strategy(settings, run_log, heads)
    initial, done = ArrayRecord(model.state_dict()), 0
    if settings.paths.resume_from:  # server/checkpoint.py: continue a killed run
        resume = load_checkpoint(Path(settings.paths.resume_from), settings)
        restore(strategy, run_log, resume)
        initial, done = resume.arrays, resume.round
        log.info("resuming from %s: rounds 1-%d done", resume.path, done)

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        if server_round:  # Flower also calls this before round 1
            write_checkpoint(out, server_round=server_round + done, arrays=arrays,
                             strategy=strategy, run_log=run_log, settings=settings)

    log.info("starting %d rounds of %s for task %s", settings.strategy.num_rounds - done,
             settings.strategy.name, settings.task_name)
    start = time.monotonic()
    try:
        result = (ContinuedStrategy(strategy, done) if done else strategy).start(
            grid=secagg.as_grid(grid, settings, heads),  # SecAgg+ unless switched off
            initial_arrays=initial,
            num_rounds=settings.strategy.num_rounds - done,
            timeout=settings.strategy.round_timeout,
            train_config=ConfigRecord({"learning_rate": settings.train.learning_rate}),
            evaluate_fn=checkpoint,
        )
    finally:
        # Whatever happened, keep what the rounds so far showed, and the heads seen.
        heads.save()
        wall = time.monotonic() - start
        round_log(settings, run_log, wall).write(out / "partial" / SUMMARY_FILE)
    write_outputs(out, settings, result.arrays.to_torch_state_dict(), run_log, wall)
    (out / "partial" / SUMMARY_FILE).unlink()
    (out / "partial").rmdir()
    log.info("saved model and metrics to %s", out)
