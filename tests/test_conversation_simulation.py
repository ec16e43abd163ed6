"""The simulation's generator registry, the per-task default federation and what a
simulated conversation node reads of its export (issue 15). The conversation task's
end-to-end runs (both tasks, sweep, audit, report, resume, release, baselines) are in
tests/test_both_tasks.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cli.research import CONFIG_DIR
from clients.node import export_agency
from federation.config import TrainSettings
from federation.data import read_manifest
from federation.errors import ConfigError, DataError
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


def test_a_conversation_run_federates_conversations_six_by_default() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["task=conversation_risk"])
    assert cfg.task.name == "conversation-risk"
    assert cfg.federation.name == "conversations_six"
    assert "tasks" not in cfg  # one task: experiment=both_tasks adds the other


def test_a_node_reads_its_agency_from_a_stage_labelled_conversation_manifest(
        tmp_path: Path) -> None:
    """The light node steps (secure-aggregation stages, receipts, the error log) read only
    the agency's name; they read it through the advert label schemes before, so no
    conversation simulation with a stage-labelled agency could run a round."""
    (tmp_path / "manifest.json").write_text(json.dumps({
        "agency": "br-ngo", "label_scheme": "stage", "format": "jsonl",
        "train": "train.jsonl", "test": "test.jsonl",
        "schema_version": "conversation-export/1", "synthetic": True}), encoding="utf-8")
    with pytest.raises(DataError, match="label_scheme"):
        read_manifest(tmp_path)  # the advert-only reader
    assert export_agency(tmp_path) == "br-ngo"
    (tmp_path / "manifest.json").write_text(json.dumps({
        "agency": "br-ngo", "label_scheme": "no-such-scheme", "train": "train.jsonl",
        "test": "test.jsonl"}), encoding="utf-8")
    with pytest.raises(DataError, match="label_scheme"):
        export_agency(tmp_path)  # still every rule of the manifest


def test_each_task_trains_with_its_own_defaults_and_an_override_wins() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        adverts = compose("config")
        conversations = compose("config", overrides=["task=conversation_risk"])
        chosen = compose("config", overrides=["task=conversation_risk", "train=default"])
        key = compose("config", overrides=["task=conversation_risk",
                                           "train.non_private_learning_rate=2"])
    assert adverts.train.non_private_learning_rate is None
    assert conversations.train.non_private_learning_rate == 3.0
    assert chosen.train.non_private_learning_rate is None
    assert key.train.non_private_learning_rate == 2.0
    assert conversations.train.learning_rate == adverts.train.learning_rate  # DP-SGD: shared
    train = TrainSettings(learning_rate=8.0, non_private_learning_rate=3.0)
    assert train.step_size(private=True) == 8.0 and train.step_size(private=False) == 3.0
    assert TrainSettings(learning_rate=8.0).step_size(private=False) == 8.0
    problems = TrainSettings(non_private_learning_rate=-1.0).check()
    assert any("train.non_private_learning_rate" in p for p in problems)
