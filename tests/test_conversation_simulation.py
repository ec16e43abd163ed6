"""The simulation's generator registry and the per-task default federation (issue 15)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from cli.research import CONFIG_DIR
from federation.errors import ConfigError
from simulation.generators import GENERATORS, generator_for


def test_every_registered_generator_names_its_task() -> None:
    assert generator_for("advert-risk").record_noun == "adverts"
    assert generator_for("conversation-risk").default_preset == "conversations_six"
    assert all(g.task == name for name, g in GENERATORS.items())


def test_a_task_without_a_generator_is_refused_naming_the_fix() -> None:
    with pytest.raises(ConfigError) as exc:
        generator_for("no-such-task")
    assert "GENERATORS" in str(exc.value) and "task=advert_risk" in str(exc.value)


def test_the_task_picks_its_default_federation_and_an_override_wins() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        assert compose("config").federation.name == "six_agency"
        assert compose("config", overrides=["federation=three_agency"]
                       ).federation.name == "three_agency"
