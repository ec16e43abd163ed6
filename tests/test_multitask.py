"""One agency node, several tasks: each task reads its own export, chosen by the run's
``task.name``; the ledger keeps one stream per (task, dataset) with the task's unit of
privacy; budgets are per dataset, enforced by ``reserve``.

The second task is tests/test_tasks.py's thread task, registered for these tests only.
Real files, the real ledger (SQLite, signed), the real policy parser, the real
``heroes agency init`` and ``heroes agency ledger`` commands, Flower's own node-config
parser; no mocks.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import parse_config_args

from clients import agency
from clients import node_config as nc
from clients.node import load_node_data, resolve_export
from federation.config import RunSettings
from federation.errors import ConfigError, TaskError
from federation.ledger import (
    BudgetExceeded,
    Ledger,
    Release,
    calibrate_to_budget,
    fingerprint_file,
)
from federation.pki import make_ca, make_node_key
from federation.policy import POLICY_FILE, Policy, PolicyError, load_policy, write_policy
from federation.privacy import epsilon_spent, plan_noise
from federation.signing import generate_signing_key
from federation.tasks import get_task, register_task, unregister_task
from server.deploy import task_overrides
from tests._heroes import HEROES
from tests.test_tasks import ThreadTask, good_rows, write_agency

ROOT = Path(__file__).resolve().parents[1]
ADVERT, THREAD = "advert-risk", ThreadTask.name
#: Planted in names an agency writes: never in an error.
CANARY = "qzx-multitask-canary-7c21"


@pytest.fixture(scope="module")
def thread_task() -> Iterator[type[ThreadTask]]:
    register_task(ThreadTask)
    try:
        yield ThreadTask
    finally:
        unregister_task(ThreadTask.name)


def write_adverts(d: Path, n: int = 12) -> Path:
    """A small advert-risk export (CSV), as an agency writes it."""
    d.mkdir(parents=True, exist_ok=True)
    header = "advert_id,posted_at,site,language,category,text,label\n"
    for split, offset in (("train", 0), ("test", 1000)):
        rows = "".join(f"a-{offset + i},2026-01-0{1 + i % 9},site-{i % 3},en,escort,"
                       f"synthetic advert {i} {'new in town' if i % 2 else 'lovely'},{i % 2}\n"
                       for i in range(n))
        (d / f"{split}.csv").write_text(header + rows, encoding="utf-8")
    (d / "manifest.json").write_text(json.dumps(
        {"agency": "es-police", "label_scheme": "binary", "train": "train.csv",
         "test": "test.csv", "synthetic": True}), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, thread_task: type[ThreadTask]
            ) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {ADVERT: write_adverts(root / "adverts"),
            THREAD: write_agency(root / "threads", good_rows(10), good_rows(4))}


def settings(task: str) -> RunSettings:
    return RunSettings.from_flat({"task.name": task, "privacy.enabled": False},
                                 source="test run config")


def node(state: Path) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    make_node_key(state / "node.key", state / "node.key.pub", comment="es-police")
    return state


# --- which export a round reads ------------------------------------------------------------

def test_a_node_reads_the_export_the_runs_task_names(tmp_path: Path,
                                                     exports: dict[str, Path]) -> None:
    config = {nc.STATE_DIR: str(tmp_path / "state"), nc.ALLOWED_TASKS: f"{ADVERT},{THREAD}",
              nc.DATA_DIR: str(exports[ADVERT]), nc.DATASET_ID: "es-police/adverts",
              nc.task_data_dir_key(THREAD): str(exports[THREAD]),
              nc.task_dataset_id_key(THREAD): "es-police/threads"}
    adverts = load_node_data(config, settings(ADVERT), split="train")
    threads = load_node_data(config, settings(THREAD), split="train")
    assert (adverts.task.name, adverts.dataset, adverts.agency) == (
        ADVERT, "es-police/adverts", "es-police")
    assert (threads.task.name, threads.dataset, threads.agency) == (
        THREAD, "es-police/threads", "thread-agency")
    assert adverts.fingerprint == fingerprint_file(exports[ADVERT] / "train.csv")
    assert threads.fingerprint == fingerprint_file(exports[THREAD] / "train.jsonl")
    assert (adverts.train_size, threads.train_size) == (12, 10)
    # without a dataset id of its own, a task's ledger key is agency/fingerprint
    del config[nc.task_dataset_id_key(THREAD)]
    again = load_node_data(config, settings(THREAD), split="test")
    assert again.dataset == f"thread-agency/{threads.fingerprint[:16]}"
    assert again.labels.size == 4


def test_a_task_not_allowed_or_without_a_folder_is_refused_with_the_fix(
        tmp_path: Path, exports: dict[str, Path]) -> None:
    only_adverts = {nc.STATE_DIR: str(tmp_path), nc.ALLOWED_TASKS: ADVERT,
                    nc.DATA_DIR: str(exports[ADVERT]),
                    nc.task_data_dir_key(THREAD): str(exports[THREAD])}
    with pytest.raises(TaskError, match="not among the tasks this agency allows"):
        load_node_data(only_adverts, settings(THREAD), split="train")
    # allowed, but its only export is advert-risk's: refused, not read with another schema
    no_folder = {nc.STATE_DIR: str(tmp_path), nc.ALLOWED_TASKS: f"{ADVERT},{THREAD}",
                 nc.DATA_DIR: str(exports[ADVERT])}
    with pytest.raises(TaskError) as err:
        load_node_data(no_folder, settings(THREAD), split="train")
    assert f'[node.datasets."{THREAD}"] data_dir' in str(err.value)
    assert f"--data {THREAD}=DIR" in str(err.value)
    # a node whose exports are all per task has no advert-risk folder either
    per_task = {nc.STATE_DIR: str(tmp_path), nc.ALLOWED_TASKS: f"{ADVERT},{THREAD}",
                nc.task_data_dir_key(THREAD): str(exports[THREAD])}
    with pytest.raises(TaskError, match=r'\[node\.datasets\."advert-risk"\]'):
        resolve_export(per_task, settings(ADVERT).paths, ADVERT)
    # the agency's name can still be read from any export (the state folder needs it)
    assert resolve_export(per_task, settings(ADVERT).paths, None)[0] == exports[THREAD]


# --- the node's settings: init, [node.datasets], the SuperNode's node config ---------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    make_ca(d / "ca.crt", d / "ca.key")
    generate_signing_key(d / "signing.key", d / "signing.pub")
    return {"ca": d / "ca.crt", "pub": d / "signing.pub"}


def test_init_names_each_tasks_export_and_flower_passes_it_to_the_clientapp(
        tmp_path: Path, exports: dict[str, Path], keys: dict[str, Path]) -> None:
    state = tmp_path / "node"
    proc = subprocess.run(
        [*HEROES, "agency", "init", "--dir", str(state), "--name", "es-police",
         "--data-dir", str(exports[ADVERT]), "--data", f"{THREAD}={exports[THREAD]}",
         "--task-dataset-id", f"{THREAD}=es-police/threads-2026",
         "--consortium", "127.0.0.1:9092", "--ca-cert", str(keys["ca"]),
         "--consortium-key", str(keys["pub"]), "--max-epsilon", "10", "--delta", "1e-5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    home = agency.AgencyHome(state)
    settings_ = home.node()
    # both tasks allowed (each was given a folder), each with its own export
    assert settings_.allowed_tasks == (ADVERT, THREAD)
    assert {t: e.data_dir for t, e in settings_.exports().items()} == {
        ADVERT: exports[ADVERT].resolve(), THREAD: exports[THREAD].resolve()}
    assert load_policy(state).max_epsilon == 10.0  # [node] tables do not disturb the policy
    # what `agency serve` gives the SuperNode, parsed by Flower's own parser
    config = parse_config_args([agency.node_config(home, settings_)])
    assert config[nc.task_data_dir_key(THREAD)] == str(exports[THREAD].resolve())
    for task, name in ((ADVERT, "train.csv"), (THREAD, "train.jsonl")):
        folder, dataset_id = resolve_export(config, settings(task).paths, task)
        assert (folder / name).is_file()
        assert dataset_id == ("" if task == ADVERT else "es-police/threads-2026")
    summary = agency.validate_data(home, settings_)  # every export, by its own task
    assert summary.count("training and") == 2
    assert (state / "quarantine" / THREAD / "quarantine-report.json").is_file()


def _node_section(**node: Any) -> dict[str, Any]:
    base = {"name": "es-police", "consortium": "127.0.0.1:9092"}
    return {"node": {**base, **node}}


def test_node_dataset_tables_are_parsed_strictly_and_without_content(tmp_path: Path) -> None:
    good = agency.parse_node(_node_section(
        allowed_tasks=[ADVERT, "conversation-risk"],
        datasets={"conversation-risk": {"data_dir": "/srv/chats", "dataset_id": "c-1"}}),
        source="t")
    assert good.data_dir is None and good.exports()["conversation-risk"].dataset_id == "c-1"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"datasets": {f"Bad {CANARY}": {"data_dir": "/x"}}}, "not named after a task"),
        ({"datasets": {"conversation-risk": {"data_dir": "/x"}}}, "not in allowed_tasks"),
        ({"data_dir": "/x", "datasets": {ADVERT: {"data_dir": "/y"}}}, "keep one of the two"),
        ({"datasets": {ADVERT: {"dataset_id": CANARY}}}, "has no data_dir"),
        ({"datasets": {ADVERT: {"data_dir": 3}}}, "must be a string"),
        ({"datasets": {ADVERT: {"data_dir": "/x", CANARY: 1}}}, "that are not known"),
        ({"datasets": CANARY}, "must be a table of one table per task"),
        ({}, "has no data folder"),
        ({"dataset_id": CANARY}, "dataset_id names the dataset of data_dir"),
    ]
    for extra, rule in cases:
        with pytest.raises(ConfigError) as err:
            agency.parse_node(_node_section(**extra), source="t")
        text = str(err.value)
        assert rule in text and "Fix" in text, (rule, text)
        assert CANARY not in text


# --- the ledger: streams per (task, dataset), budgets per dataset ---------------------------

REL = Release(dataset="es-police/adverts", fingerprint="ab" * 32, run_id="1", round=1,
              task=ADVERT, model="advert-risk:AdvertRiskModel", noise_multiplier=1.0,
              sample_rate=0.05, steps=40, max_grad_norm=0.5, delta=1e-5, accountant="rdp",
              unit="one advert record in one agency's training export")
THREADS = replace(REL, dataset="es-police/threads", fingerprint="cd" * 32, task=THREAD,
                  model="test-thread:ThreadModel", unit=ThreadTask.privacy_unit)


def test_two_tasks_are_two_streams_and_one_dataset_composes_across_tasks(
        tmp_path: Path) -> None:
    state = node(tmp_path / "state")
    policy = Policy(max_epsilon=50.0, delta=1e-5)
    shared = replace(THREADS, dataset=REL.dataset, fingerprint=REL.fingerprint, round=2)
    with Ledger.open(state) as ledger:
        for release in (REL, THREADS, shared):
            ledger.complete(ledger.reserve(release, policy)[0])
        report = ledger.report(policy)
    streams = {(i["task"], i["dataset"]): i for i in report}
    assert list(streams) == [(ADVERT, REL.dataset), (THREAD, REL.dataset),
                             (THREAD, THREADS.dataset)]
    assert streams[(ADVERT, REL.dataset)]["unit"].startswith("one advert record")
    assert streams[(THREAD, THREADS.dataset)]["unit"] == ThreadTask.privacy_unit
    one = epsilon_spent([REL.mechanism()], delta=1e-5, accountant="rdp")
    two = epsilon_spent([REL.mechanism(), shared.mechanism()], delta=1e-5, accountant="rdp")
    # the dataset trained by both tasks spends one budget: both streams show its total
    for task in (ADVERT, THREAD):
        item = streams[(task, REL.dataset)]
        assert item["epsilon"]["rdp"] == pytest.approx(two)
        assert item["stream_epsilon"]["rdp"] == pytest.approx(one)
        assert item["remaining"] == pytest.approx(50.0 - two)
        assert item["tasks_on_dataset"] == [ADVERT, THREAD]
        assert [r["task"] for r in item["releases"]] == [task]
    alone = streams[(THREAD, THREADS.dataset)]
    assert alone["epsilon"]["rdp"] == pytest.approx(one) and alone["tasks_on_dataset"] == [
        THREAD]


def test_a_datasets_own_budget_is_what_reserve_and_the_plan_enforce(tmp_path: Path) -> None:
    state = node(tmp_path / "state")
    one = epsilon_spent([REL.mechanism()], delta=1e-5, accountant="rdp")
    two = epsilon_spent([REL.mechanism()] * 2, delta=1e-5, accountant="rdp")
    budget = (one + two) / 2  # room for one release, not for two
    write_policy(state, Policy(max_epsilon=50.0, delta=1e-5,
                               dataset_budgets={THREADS.dataset: budget}))
    policy = load_policy(state)  # read back from the file as the node reads it
    assert policy.budget_for(THREADS.dataset) == pytest.approx(budget)
    assert policy.budget_for(REL.dataset) == 50.0
    with Ledger.open(state) as ledger:
        ledger.complete(ledger.reserve(THREADS, policy)[0])
        entries = len(ledger.rows())
        with pytest.raises(BudgetExceeded) as err:
            ledger.reserve(replace(THREADS, round=2), policy)  # the agency-wide one is passed
        assert err.value.budget == pytest.approx(budget) and len(ledger.rows()) == entries
        for r in (1, 2):  # the advert dataset still has the agency-wide 50
            ledger.complete(ledger.reserve(replace(REL, round=r), policy)[0])
        (adverts, threads) = ledger.report(policy)
        prior = ledger.history(THREADS.dataset)
    assert (threads["budget"], threads["own_budget"]) == (pytest.approx(budget), True)
    assert (adverts["budget"], adverts["own_budget"]) == (50.0, False)
    assert threads["remaining"] == pytest.approx(budget - one)
    plan = plan_noise(num_records=3000, batch_size=128, local_epochs=1, planned_rounds=3,
                      target_epsilon=3.0, target_delta=1e-5, accountant="rdp", where="t")
    stretched = calibrate_to_budget(plan, prior, policy.for_dataset(THREADS.dataset))
    total = epsilon_spent([*prior, (stretched.noise_multiplier, plan.sample_rate,
                                    plan.steps_per_round * plan.planned_rounds)],
                          delta=1e-5, accountant="rdp")
    assert stretched.budget_limited and total <= budget * (1 + 1e-6)


def test_per_dataset_budget_errors_name_the_key_and_fix_never_the_dataset(
        tmp_path: Path) -> None:
    (tmp_path / POLICY_FILE).write_text(
        "[privacy_budget]\nmax_epsilon = 10.0\ndelta = 1e-5\n"
        f'[privacy_budget.datasets."{CANARY}-a"]\nmax_epsilon = "2"\n'
        f'[privacy_budget.datasets."{CANARY}-b"]\nmax_epsilon = -1.0\n'
        f'[privacy_budget.datasets."{CANARY}-c"]\ndelta = 1e-3\n'
        f'[privacy_budget.datasets."{CANARY}-d"]\nmax_epsilon = inf\n', encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path)
    text = str(err.value)
    assert CANARY not in text
    for rule in ("dataset 1 (counting from 1, in file order): max_epsilon must be a number",
                 "dataset 2 (counting from 1, in file order): max_epsilon=-1.0 must be "
                 "finite and > 0", "dataset 3 (counting from 1, in file order) has 1 key(s) "
                 "other than max_epsilon", "dataset 3 (counting from 1, in file order) has no "
                 "max_epsilon", "dataset 4 (counting from 1, in file order): max_epsilon=inf"):
        assert rule in text, rule
    assert text.count("Fix") >= 5
    (tmp_path / POLICY_FILE).write_text(
        "[privacy_budget]\nmax_epsilon = 10.0\ndelta = 1e-5\ndatasets = 3\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"datasets must be a table of datasets, not an "
                                          r"integer\. Fix"):
        load_policy(tmp_path)
    with pytest.raises(PolicyError, match=r"max_epsilon=0\.0 must be finite and > 0"):
        Policy(max_epsilon=1.0, delta=1e-5, dataset_budgets={"x": 0.0})


def test_the_ledger_command_shows_each_stream_with_its_unit(tmp_path: Path) -> None:
    state = node(tmp_path / "state")
    write_policy(state, Policy(max_epsilon=8.0, delta=1e-5,
                               dataset_budgets={THREADS.dataset: 4.0}))
    with Ledger.open(state) as ledger:
        for release in (REL, THREADS):
            ledger.complete(ledger.reserve(release, load_policy(state))[0])
        # a release recorded before the ledger kept units: advert-risk's, word for word
        ledger.complete(ledger.reserve(replace(REL, round=2, unit=""), load_policy(state))[0])
    cmd = [*HEROES, "agency", "ledger", "--dir", str(state)]
    out = subprocess.run([*cmd, "--json"], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=300).stdout
    data = json.loads(out)
    streams = {(d["task"], d["dataset"]): d for d in data["datasets"]}
    assert set(streams) == {(ADVERT, REL.dataset), (THREAD, THREADS.dataset)}
    adverts, threads = streams[(ADVERT, REL.dataset)], streams[(THREAD, THREADS.dataset)]
    assert adverts["unit"] == REL.unit
    assert [r["unit"] for r in adverts["releases"]] == [REL.unit, REL.unit]
    assert threads["unit"] == ThreadTask.privacy_unit
    assert (adverts["budget"], threads["budget"]) == (8.0, 4.0)
    assert threads["remaining"] == pytest.approx(4.0 - threads["epsilon"]["rdp"])
    assert adverts["delta"] == threads["delta"] == 1e-5
    assert math.isfinite(adverts["epsilon"]["rdp"])
    text = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=300).stdout
    assert f"task {THREAD}, dataset {THREADS.dataset} (unit of privacy: " \
           f"{ThreadTask.privacy_unit})" in text
    assert "budget 4 (this dataset's own) (rdp)" in text and "budget 8 (rdp)" in text


# --- a consortium run names its task --------------------------------------------------------

def test_a_consortium_run_names_a_registered_task(thread_task: type[ThreadTask]) -> None:
    assert task_overrides(ADVERT, []) == ['task.name="advert-risk"']
    # another task starts from its own parameters, not pyproject.toml's advert ones
    assert task_overrides(THREAD, ["strategy.num_rounds=2"]) == [
        f'task.name="{THREAD}"', 'task.params="{}"']
    assert task_overrides(THREAD, ['task.params="{\\"num_buckets\\": 32}"']) == [
        f'task.name="{THREAD}"']
    assert task_overrides(THREAD, [f'task.name="{THREAD}"']) == ['task.params="{}"']
    from federation.errors import DeploymentError

    with pytest.raises(DeploymentError, match="not a registered task"):
        task_overrides("conversation-risks", [])
    with pytest.raises(DeploymentError, match="Fix: name the task with --task only"):
        task_overrides(THREAD, ["privacy.enabled=true task.name=advert-risk"])


def test_the_aggregators_round_line_names_the_runs_own_unit_of_privacy() -> None:
    from federation.protocol import Metric, NodeOutcome, RoundRecord, Status
    from server.strategy import progress_line

    r = RoundRecord(round=1, train=[NodeOutcome(1, "a", Status.OK)],
                    train_aggregate={Metric.EPSILON_SHARED_BY: 1.0, Metric.MAX_EPSILON: 1.5,
                                     Metric.DELTA: 1e-5})
    unit = get_task("conversation-risk", {}).privacy_unit
    line = progress_line(r, 5, unit)
    assert "cumulative per conversation (all its messages) in one agency's training export" \
        in line and "advert" not in line
