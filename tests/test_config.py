"""The run config: one validator for flwr run, the simulator and the apps."""

import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.config import RunSettings
from federation.errors import ConfigError, PrivacyConfigError

ROOT = Path(__file__).resolve().parents[1]


def pyproject_config() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def test_pyproject_run_config_is_valid_and_round_trips() -> None:
    flat = pyproject_config()
    settings_ = RunSettings.from_flat(flat)
    assert settings_.privacy.target_epsilon == 3.0
    assert settings_.to_flat() == flat


def test_missing_privacy_targets_are_an_error_not_a_default() -> None:
    flat = pyproject_config()
    del flat["privacy.target_epsilon"]
    del flat["privacy.target_delta"]
    with pytest.raises(PrivacyConfigError) as err:
        RunSettings.from_flat(flat)
    text = str(err.value)
    assert "privacy.target_epsilon is required" in text
    assert "privacy.target_delta is required" in text


def test_dp_off_needs_no_targets() -> None:
    flat = pyproject_config()
    for k in ("privacy.target_epsilon", "privacy.target_delta"):
        del flat[k]
    flat["privacy.enabled"] = False
    assert not RunSettings.from_flat(flat).privacy.enabled


def test_every_problem_is_listed_once() -> None:
    flat = pyproject_config()
    flat.update({"privacy.target_epsilon": -1.0, "strategy.name": "fedsgd",
                 "train.batch_size": 0, "privacy.epsilon": 3.0, "bogus.key": 1})
    with pytest.raises(ConfigError) as err:
        RunSettings.from_flat(flat)
    problems = err.value.problems
    joined = "\n".join(problems)
    assert "privacy.target_epsilon=-1.0 must be > 0" in joined
    assert ("strategy.name='fedsgd' is unknown; use one of ['fedavg', 'fedprox', 'fedadam', "
            "'fedavgm']") in joined
    assert "train.batch_size=0 must be >= 1" in joined
    assert "privacy.epsilon is not a known setting; allowed here: privacy.enabled" in joined
    assert "section 'bogus' is unknown" in joined
    assert len(problems) == 5


def test_unknown_task_and_task_params() -> None:
    flat = pyproject_config()
    flat["task.name"] = "nope"
    with pytest.raises(ConfigError,
                       match=re.escape("task.name='nope' is unknown; registered tasks")):
        RunSettings.from_flat(flat)
    flat = pyproject_config()
    flat["task.num_buckets"] = 1000
    with pytest.raises(ConfigError,
                       match=re.escape("task.num_buckets=1000 must be a power of two")):
        RunSettings.from_flat(flat)


def test_quorum_above_min_nodes_is_explained() -> None:
    flat = pyproject_config()
    flat["strategy.quorum"] = 5
    with pytest.raises(ConfigError, match="could never reach it"):
        RunSettings.from_flat(flat)


@settings(max_examples=30, deadline=None)
@given(eps=st.floats(0.01, 50), delta=st.floats(1e-9, 1e-3), rounds=st.integers(1, 100),
       name=st.sampled_from(["fedavg", "fedadam"]))
def test_serialise_then_parse_is_identity(eps: float, delta: float, rounds: int,
                                          name: str) -> None:
    flat = pyproject_config()
    flat.update({"privacy.target_epsilon": eps, "privacy.target_delta": delta,
                 "strategy.num_rounds": rounds, "strategy.name": name})
    s = RunSettings.from_flat(flat)
    assert RunSettings.from_flat(s.to_flat()) == s


def test_pyproject_names_no_task_parameter_but_task_params() -> None:
    """A new task, or a new task parameter, needs no new key in pyproject.toml."""
    flat = pyproject_config()
    assert {k for k in flat if k.startswith("task.")} == {"task.name", "task.params"}
    params = RunSettings.from_flat(flat).task_params
    assert dict(params) == {"num_buckets": 4096, "hidden": 0, "word_ngrams": 2, "char_min": 3,
                            "char_max": 5, "exclude_special_categories": True}


def test_task_params_json_is_validated_and_a_flat_key_overrides_it() -> None:
    flat = pyproject_config()
    flat["task.params"] = '{"num_buckets": 1024, "hidden": 8}'
    s = RunSettings.from_flat(flat)
    assert (s.task_params["num_buckets"], s.task_params["hidden"]) == (1024, 8)
    assert s.task_params["word_ngrams"] == 2  # not given: the task's default
    flat["task.num_buckets"] = 512  # a Hydra-style override over task.params
    assert RunSettings.from_flat(flat).task_params["num_buckets"] == 512
    flat["task.params"] = '{"num_buckets": 1000}'
    del flat["task.num_buckets"]
    with pytest.raises(ConfigError, match=re.escape("task.num_buckets=1000 must be a power")):
        RunSettings.from_flat(flat)


@pytest.mark.parametrize(("params", "problem"), [
    ("{num_buckets: 1}", "is not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"num_buckets": [1024]}', "'num_buckets' must be a single value"),
    ('{"bogus": 1}', "task.bogus is not a known setting"),
    ("x" * 70_000, "above the limit of 65536"),
])
def test_broken_task_params_say_what_is_wrong(params: str, problem: str) -> None:
    flat = pyproject_config()
    flat["task.params"] = params
    with pytest.raises(ConfigError) as err:
        RunSettings.from_flat(flat)
    assert problem in str(err.value)
    assert len(str(err.value)) < 1000  # the value is cut short, never echoed whole
