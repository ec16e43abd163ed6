"""Which synthetic generator makes a task's federation: one registry keyed by task name.

A simulation generates the agencies' exports before it trains; which generator writes them
depends only on the task (adverts for advert-risk, conversations for conversation-risk).
Everything in simulation/ that needs the generator (preflight's preset check, the run, the
baselines, the audit) asks this registry, so a new task's simulation is one entry here and
one generator module. Generators are imported on first use: preflight and ``--help`` stay
light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from federation.errors import ConfigError


class Preset(Protocol):
    """What the simulation reads from any generator's preset."""

    name: str
    scale: float

    @property
    def agencies(self) -> tuple[Any, ...]: ...

    def sizes(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Generator:
    """One task's generator: its module, preset reader, generating function and the word
    for one of its records (for messages and limits)."""

    task: str
    module: str
    generate_name: str
    record_noun: str  # plural, e.g. "adverts"
    default_preset: str  # the configs/federation/ option a run of the task uses by default

    def _mod(self) -> Any:
        return importlib.import_module(self.module)

    def preset_from_mapping(self, data: Mapping[str, Any], *, source: str) -> Preset:
        preset: Preset = self._mod().preset_from_mapping(data, source=source)
        return preset

    def generate(self, preset: Preset, out_dir: Path, *, seed: int, test_fraction: float
                 ) -> Any:
        """The exports and ground truth under ``out_dir``; a FederationManifest."""
        fn: Callable[..., Any] = getattr(self._mod(), self.generate_name)
        return fn(preset, out_dir, seed=seed, test_fraction=test_fraction)


GENERATORS: dict[str, Generator] = {
    "advert-risk": Generator(task="advert-risk", module="simulation.generator",
                             generate_name="generate_federation", record_noun="adverts",
                             default_preset="six_agency"),
    "conversation-risk": Generator(task="conversation-risk",
                                   module="simulation.conversations",
                                   generate_name="generate_conversations",
                                   record_noun="conversations",
                                   default_preset="conversations_six"),
}


def generator_for(task: object) -> Generator:
    """The generator of ``task`` (a task name); a ConfigError naming the fix otherwise."""
    if isinstance(task, str) and task in GENERATORS:
        return GENERATORS[task]
    raise ConfigError([f"task.name={task!r} has no synthetic generator, so a simulation "
                       f"cannot make its agencies' data; tasks with one: {sorted(GENERATORS)}. "
                       "Fix: pick one of them (e.g. task=advert_risk), or add the task's "
                       "generator to simulation/generators.py GENERATORS"],
                      source="simulation config")
