"""Per-round checkpoints of the ServerApp, and resuming a run from the last one.

After every round the ServerApp writes ``OUTPUT_DIR/checkpoints/round-NNNN.pt`` (atomically:
a reader never sees half a file): the global weights, the server optimiser's state where the
strategy has one (FedAdam's moments), the round, every round's metrics so far and the run's
settings. With ``paths.resume_from`` set (a previous output folder, its ``checkpoints/``, or
one checkpoint file) the ServerApp starts from the last checkpoint and runs only the rounds
that remain, numbering them on from there, so the finished run has the planned number of
rounds and one continuous metrics history.

What a resume cannot undo: a round that was in flight when the aggregator died may already
have been trained and recorded by agencies (their ledgers count it, conservatively); its
update is not in the checkpoint, and the round is run again.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federation.config import RunSettings
from federation.errors import ConfigError
from federation.protocol import RoundRecord
from server.strategy import AccountableStrategy, RunLog

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^round-(\d{4,})\.pt$")
_OPTIMISER_STATE = ("current_arrays", "m_t", "v_t", "momentum_vector")
#: FedAvgM keeps its momentum as a list of arrays, in the model's order; stored by index.
_LISTS = ("momentum_vector",)


def checkpoint_path(out: Path, server_round: int) -> Path:
    return out / CHECKPOINTS / f"round-{server_round:04d}.pt"


def _optimiser_state(strategy: AccountableStrategy) -> dict[str, dict[str, torch.Tensor]]:
    """The server optimiser's state: FedAdam's moments or FedAvgM's momentum, attributes of
    Flower's strategy at the core."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name in _OPTIMISER_STATE:
        value = getattr(strategy.base, name, None)
        if isinstance(value, dict):
            state[name] = {k: torch.from_numpy(np.array(v)) for k, v in value.items()}
        elif name in _LISTS and isinstance(value, list):
            state[name] = {f"{i:06d}": torch.from_numpy(np.array(v)) for i, v in
                           enumerate(value)}
    return state


def write_checkpoint(out: Path, *, server_round: int, arrays: ArrayRecord,
                     strategy: AccountableStrategy,
                     run_log: RunLog, settings: RunSettings) -> Path:
    """Write one round's checkpoint whole or not at all."""
    path = checkpoint_path(out, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        torch.save({"round": server_round, "num_rounds": settings.strategy.num_rounds,
                    "state_dict": arrays.to_torch_state_dict(),
                    "strategy": settings.strategy.name,
                    "optimiser_state": _optimiser_state(strategy),
                    "rounds": [r.to_json() for r in run_log.records()
                               if r.round <= server_round],
                    "settings": settings.to_flat()}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def latest_checkpoint(resume_from: Path) -> Path:
    """The newest checkpoint under an output folder, a checkpoints folder, or the file itself."""
    if resume_from.is_file():
        return resume_from
    folder = resume_from / CHECKPOINTS if (resume_from / CHECKPOINTS).is_dir() else resume_from
    found = sorted((int(m.group(1)), p) for p in folder.glob("round-*.pt")
                   if (m := _NAME.match(p.name)))
    if not found:
        raise ConfigError([f"paths.resume_from={str(resume_from)!r} holds no checkpoint "
                           "(round-NNNN.pt under checkpoints/); point it at the output folder of "
                           "the run to resume"], source="run config (server)")
    return found[-1][1]


@dataclass(frozen=True)
class Resume:
    round: int  # the last completed round
    arrays: ArrayRecord
    optimiser_state: dict[str, dict[str, torch.Tensor]]
    rounds: list[dict[str, Any]]
    path: Path


def load_checkpoint(resume_from: Path, settings: RunSettings) -> Resume:
    """Read the latest checkpoint and check that it belongs to a run like this one."""
    path = latest_checkpoint(resume_from)
    saved = torch.load(path, weights_only=True)
    problems = []
    # Compared in today's canonical spelling: a checkpoint from before task parameters
    # travelled as one ``task.params`` key (issue 14) still resumes. Settings that no longer
    # parse are compared as they were saved, and every difference is named below.
    before = dict(saved["settings"])
    with contextlib.suppress(ConfigError):
        before = dict(RunSettings.from_flat(before, source=f"{path} settings").to_flat())
    now = settings.to_flat()
    for key in sorted(set(before) | set(now)):
        # Where files go, how long to wait and the bundle's signature (a resumed run is
        # submitted again, signed again; its code may carry a fix) may change.
        if key.startswith("paths.") or key in ("strategy.round_timeout", "app.signature"):
            continue
        if before.get(key) != now.get(key):
            problems.append(f"{key} was {before.get(key)!r} in the checkpointed run, now "
                            f"{now.get(key)!r}; a resumed run must keep its settings")
    if saved["round"] >= settings.strategy.num_rounds:
        problems.append(f"{path} is round {saved['round']} of {settings.strategy.num_rounds}: "
                        "that run had already finished; nothing to resume")
    if problems:
        raise ConfigError(problems, source=f"resume from {path}")
    return Resume(round=int(saved["round"]), arrays=ArrayRecord(saved["state_dict"]),
                  optimiser_state=saved["optimiser_state"], rounds=saved["rounds"], path=path)


def restore(strategy: AccountableStrategy, run_log: RunLog, resume: Resume) -> None:
    """Put the server optimiser's state and the metrics history back. The optimiser's
    attributes are Flower's own (FedOpt keeps them on the strategy), set as FedOpt sets them."""
    for name, arrays in resume.optimiser_state.items():
        if name in _LISTS:
            setattr(strategy.base, name, [arrays[k].numpy() for k in sorted(arrays)])
        else:
            setattr(strategy.base, name, {k: v.numpy() for k, v in arrays.items()})
    for r in resume.rounds:
        record = RoundRecord.from_json(r, where=f"checkpoint {resume.path}")
        run_log.rounds[record.round] = record


class ContinuedStrategy(Strategy):
    """Runs ``inner`` with every round number shifted by ``offset`` (the rounds done before).

    Flower's ``Strategy.start`` counts rounds from 1; the agencies, the run log and FedAdam's
    bias correction must see the run's real round numbers.
    """

    def __init__(self, inner: Strategy, offset: int) -> None:
        self.inner = inner
        self.offset = offset

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)

    def summary(self) -> None:
        self.inner.summary()
