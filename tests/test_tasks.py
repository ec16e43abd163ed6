"""A task over another record shape needs only a task module: the data layer, the quarantine,
the content-free errors, the run config and train_local serve it as they serve adverts.

The task below lives in this test module (registered for these tests, unregistered after):
one record is a thread of messages, a JSONL line or Parquet row with a list-of-texts
column. Nothing in federation/ knows about it. Real files, real pyarrow, real torch and
Opacus; no mocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from federation.config import PrivacySettings, RunSettings, TrainSettings
from federation.data import AgencyRecords, read_record_table
from federation.errors import ConfigError, DataError, TaskError
from federation.privacy import plan_noise
from federation.quarantine import quarantine_report, render_summary
from federation.records import Column, RecordSchema, RecordTable, declared_reasons
from federation.schema import LABEL_SCHEMES
from federation.tasks import (
    Explainer,
    Task,
    TaskParams,
    get_task,
    register_task,
    task_names,
    unregister_task,
)
from federation.text import HashingFeaturizer, SparseRows
from federation.training import train_local

#: Planted in rows that are set aside and in broken lines: it must never reach an error,
#: a report or its summary.
CANARY = "qzx-thread-canary-41f0"

THREAD_RECORDS = RecordSchema(
    name="test-thread/1",
    columns=(
        Column("thread_id", "id", unique=True),
        Column("turns", "list[str]", text=True),
        Column("label", "label"),
        Column("channel", "str", required=False),  # optional: read when the file has it
    ),
    label_schemes={"binary": LABEL_SCHEMES["binary"]},
)


@dataclass(frozen=True)
class ThreadParams(TaskParams):
    num_buckets: int = 64

    def check(self) -> list[str]:
        n = self.num_buckets
        return [] if n >= 16 and not n & (n - 1) else [
            f"task.num_buckets={n} must be a power of two >= 16"]


@dataclass(frozen=True)
class ClashParams(TaskParams):
    params: int = 0  # would shadow task.params


class ThreadModel(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x).squeeze(-1)
        return out


class ThreadTask(Task):
    """A record is a thread: its messages' texts in order, hashed one message at a time."""

    name: ClassVar[str] = "test-thread"
    params_type: ClassVar[type[TaskParams]] = ThreadParams
    record_schema: ClassVar[RecordSchema] = THREAD_RECORDS
    features_version: ClassVar[int] = 1
    privacy_unit: ClassVar[str] = "one thread in one agency's training export"
    intended_use: ClassVar[str] = "testing that a task is one module"
    default_threshold: ClassVar[float] = 0.8

    @property
    def width(self) -> int:
        p = self.params
        assert isinstance(p, ThreadParams)
        return p.num_buckets

    def records(self, table: RecordTable, rows: np.ndarray | None = None) -> list[Any]:
        turns = table.column("turns")
        return list(turns) if rows is None else [turns[int(i)] for i in rows]

    def featurize(self, records: Sequence[Any]) -> SparseRows:
        f = HashingFeaturizer(num_buckets=self.width, char_max=0)
        return f.transform([" | ".join(turns) for turns in records])

    def build_model(self) -> nn.Module:
        return ThreadModel(self.width)

    def explainer(self, model: nn.Module) -> Explainer:
        raise TaskError("the test thread task explains nothing")


@pytest.fixture
def thread_task() -> Iterator[type[ThreadTask]]:
    register_task(ThreadTask)
    try:
        yield ThreadTask
    finally:
        unregister_task(ThreadTask.name)


def thread(i: int, label: object = 0, turns: object = None) -> dict[str, Any]:
    return {"thread_id": f"t-{i}", "label": label,
            "turns": [f"hello {i}", "are you free tonight"] if turns is None else turns,
            "channel": "sms", "sender_phone": "555-0101"}  # an undeclared column: ignored


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_agency(d: Path, train: list[dict[str, Any]], test: list[dict[str, Any]]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "test.jsonl", test)
    (d / "manifest.json").write_text(json.dumps(
        {"agency": "thread-agency", "label_scheme": "binary", "train": "train.jsonl",
         "test": "test.jsonl"}), encoding="utf-8")
    return d


def good_rows(n: int) -> list[dict[str, Any]]:
    return [thread(i, label=i % 2,
                   turns=[f"message {i}", "we keep your passport" if i % 2 else "see you"])
            for i in range(n)]


def test_the_test_task_is_registered_only_while_a_test_uses_it(
        thread_task: type[ThreadTask]) -> None:
    assert "test-thread" in task_names() and "advert-risk" in task_names()
    task = get_task("test-thread", {"num_buckets": 32})
    assert isinstance(task, ThreadTask) and task.width == 32
    unregister_task("test-thread")
    try:
        assert "test-thread" not in task_names()
        with pytest.raises(TaskError, match="unknown"):
            get_task("test-thread", {})
    finally:
        register_task(ThreadTask)


def test_a_parameter_may_not_shadow_the_run_config_task_keys(
        thread_task: type[ThreadTask]) -> None:
    register_task(ThreadTask)  # the same class again: allowed
    clashing = type("Clash", (ThreadTask,), {"name": "test-clash", "params_type": ClashParams})
    with pytest.raises(TaskError, match="may not be called 'params'"):
        register_task(clashing)
    assert "test-clash" not in task_names()


def test_the_run_config_validates_the_task_through_the_registry(
        thread_task: type[ThreadTask]) -> None:
    flat = {"task.name": "test-thread", "task.num_buckets": 128, "privacy.enabled": False}
    settings = RunSettings.from_flat(flat)
    assert settings.task_name == "test-thread"
    assert dict(settings.task_params) == {"num_buckets": 128}
    with pytest.raises(ConfigError, match=r"task\.num_buckets=100 must be a power of two"):
        RunSettings.from_flat({**flat, "task.num_buckets": 100})
    with pytest.raises(ConfigError, match=r"task\.hidden is not a known setting"):
        RunSettings.from_flat({**flat, "task.hidden": 0})
    as_flower = {"task.name": "test-thread", "task.params": '{"num_buckets": 32}',
                 "privacy.enabled": False}  # the one task key a Flower app config has
    assert dict(RunSettings.from_flat(as_flower).task_params) == {"num_buckets": 32}
    assert RunSettings.from_flat(as_flower).to_flat()["task.params"] == '{"num_buckets": 32}'


def test_bad_rows_are_quarantined_counted_and_never_quoted(
        tmp_path: Path, thread_task: type[ThreadTask]) -> None:
    train = [
        *good_rows(6),
        thread(6, turns=CANARY),  # a CSV-like string, not a list
        thread(7, turns=[]),  # no messages
        thread(8, turns=["fine", 5]),  # a message that is not text
        {**thread(9, turns=[CANARY]), "thread_id": "t-0"},  # a repeated id
        thread(10, label=None, turns=[CANARY]),  # no label
    ]
    data = get_task("test-thread", {}).load(write_agency(tmp_path / "a", train, good_rows(4)))
    assert isinstance(data, AgencyRecords)
    assert len(data.train) == 6 and data.train.rejected_total == 5
    assert dict(data.train.rejected) == {"turns not a list": 1, "empty text": 1,
                                         "text not a string": 1, "duplicate thread_id": 1,
                                         "missing label": 1}
    dup = [r for r in data.train.quarantine if r.reason == "duplicate thread_id"]
    assert [(r.record, r.line, r.duplicate_of) for r in dup] == [(10, 10, 1)]
    assert data.train.ids == tuple(f"t-{i}" for i in range(6))
    assert data.train.column("turns")[1] == ("message 1", "we keep your passport")
    assert set(THREAD_RECORDS.reasons()) <= declared_reasons()
    report = json.dumps(quarantine_report(data)) + render_summary(data)
    # The folder may be named in the report; its path ("pytest-0/...") is not a record's id.
    content = report.replace(str(tmp_path), "<folder>")
    assert CANARY not in content and "t-0" not in content
    assert '"set_aside": 5' in report


def test_a_broken_file_stops_with_a_content_free_error(
        tmp_path: Path, thread_task: type[ThreadTask]) -> None:
    path = tmp_path / "broken.jsonl"
    rows = [json.dumps(r) for r in good_rows(3)]
    path.write_text(rows[0] + "\n" + rows[1] + ",\n" + "{\"" + CANARY + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_record_table(path, THREAD_RECORDS, LABEL_SCHEMES["binary"])
    assert "line 2 is not valid JSON" in str(err.value)
    assert CANARY not in str(err.value)

    lacking = write_jsonl(tmp_path / "lacking.jsonl",
                          [{"thread_id": "t-1", "label": 0, CANARY: ["x"]}])
    with pytest.raises(DataError) as err:
        read_record_table(lacking, THREAD_RECORDS, LABEL_SCHEMES["binary"])
    message = str(err.value)
    assert "missing column(s) ['turns']" in message  # a declared name is shown by name
    assert "['thread_id', 'turns', 'label']" in message  # the fix names this schema's columns
    assert CANARY not in message and "1 other column(s), not shown" in message


def test_a_csv_cell_is_never_a_list_so_every_row_is_set_aside(
        tmp_path: Path, thread_task: type[ThreadTask]) -> None:
    path = tmp_path / "threads.csv"
    path.write_text("thread_id,turns,label\nt-1," + CANARY + ",0\nt-2,hello,1\n",
                    encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_record_table(path, THREAD_RECORDS, LABEL_SCHEMES["binary"])
    assert "no usable rows (set aside: {'turns not a list': 2})" in str(err.value)
    assert CANARY not in str(err.value)


def test_parquet_list_columns_read_like_jsonl_and_a_wrong_type_is_named(
        tmp_path: Path, thread_task: type[ThreadTask]) -> None:
    rows = good_rows(4)
    jsonl = read_record_table(write_jsonl(tmp_path / "t.jsonl", rows), THREAD_RECORDS,
                              LABEL_SCHEMES["binary"])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    parquet = read_record_table(tmp_path / "t.parquet", THREAD_RECORDS, LABEL_SCHEMES["binary"])
    assert parquet.ids == jsonl.ids and parquet.column("turns") == jsonl.column("turns")
    assert parquet.column("channel") == jsonl.column("channel") == ("sms",) * 4
    assert "sender_phone" not in parquet.values
    assert np.array_equal(parquet.labels, jsonl.labels)
    wrong = [{**r, "turns": 3} for r in rows]
    pq.write_table(pa.Table.from_pylist(wrong), tmp_path / "w.parquet")
    with pytest.raises(DataError, match="column 'turns' has Parquet type int64, expected a "
                                        "list of text"):
        read_record_table(tmp_path / "w.parquet", THREAD_RECORDS, LABEL_SCHEMES["binary"])


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
def test_the_task_featurises_and_trains_one_step(
        tmp_path: Path, thread_task: type[ThreadTask], dp: bool) -> None:
    task = get_task("test-thread", {})
    data = task.load(write_agency(tmp_path / "a", good_rows(40), good_rows(8)))
    features = task.featurize_table(data.train, task.rows(data.train))
    assert len(features) == 40 and features.width == 64
    train = TrainSettings(batch_size=40, local_epochs=1, learning_rate=1.0)
    plan = None
    privacy = PrivacySettings(enabled=False)
    if dp:
        privacy = PrivacySettings(target_epsilon=8.0, target_delta=1e-3)
        plan = plan_noise(num_records=40, batch_size=40, local_epochs=1, planned_rounds=1,
                          target_epsilon=8.0, target_delta=1e-3, accountant="rdp", where="t")
    model = task.build_model()
    before = [p.detach().clone() for p in model.parameters()]
    result = train_local(model, features, data.train.positive, train=train, privacy=privacy,
                         plan=plan)
    # one step without DP (a full batch); the plan's steps with it (Poisson samples)
    assert result.steps == (plan.steps_per_round if plan else 1)
    assert result.num_examples == 40
    assert (result.epsilon > 0) == dp
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
