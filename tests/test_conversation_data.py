"""Conversation exports (federation.schema.CONVERSATION_RECORDS) through the data layer:
the same conversations read alike from CSV, JSONL and Parquet; every set-aside reason
counted once at its record; structural problems refused by rule; a canary planted in
every bad row and broken line shows in no error, report or summary. Real files, real
pyarrow; synthetic conversations only.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation import conversations as fc
from federation import data as fd
from federation.data import load_export, load_records, read_record_table
from federation.errors import DataError
from federation.limits import MAX_MESSAGE_CHARS, MAX_MESSAGES
from federation.quarantine import quarantine_report, render_summary
from federation.records import (
    LABEL_DIFFERS,
    MESSAGE_TOO_LONG,
    NO_MESSAGES,
    POSITION_REPEATED,
    POSITION_UNUSABLE,
    ROLE_UNUSABLE,
    TIMESTAMP_UNUSABLE,
    TOO_MANY_MESSAGES,
    Message,
)
from federation.schema import (
    CONVERSATION_LABEL_SCHEMES,
    CONVERSATION_RECORDS,
    CONVERSATION_SCHEMA_VERSION,
    EMPTY_TEXT,
    MISSING_LABEL,
    TEXT_NOT_STRING,
)
from tests._heroes import main as heroes

CANARY = "qzx-convo-canary-90b3"
BINARY = CONVERSATION_LABEL_SCHEMES["binary"]
CSV_HEADER = ["conversation_id", "position", "role", "timestamp", "text", "label", "synthetic"]
MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("timestamp", pa.string()),
                                   ("text", pa.string())]))


def conversation(i: int, n: int = 3, label: int | None = None) -> dict[str, Any]:
    """A synthetic, benign conversation (a coach announcing practice)."""
    roles = ("reported", "contact", "other")
    return {
        "conversation_id": f"conv-{i}",
        "messages": [{"role": roles[k % 3],
                      "timestamp": None if k % 2 else f"2026-03-0{1 + k % 9}T10:0{k % 10}:00",
                      "text": f"practice moves to field {i}, message {k}"} for k in range(n)],
        "label": i % 2 if label is None else label,
        "synthetic": True,
    }


def csv_rows(conv: dict[str, Any], *, step: int = 3) -> list[list[object]]:
    """One row per message, positions with gaps (0, 3, 6, ...)."""
    return [[conv["conversation_id"], k * step, m["role"], m.get("timestamp") or "",
             m["text"], conv["label"], "true"] for k, m in enumerate(conv["messages"])]


def write_csv(path: Path, rows: list[list[object]], header: list[str] = CSV_HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, convs: list[Any]) -> Path:
    path.write_text("".join((c if isinstance(c, str) else json.dumps(c)) + "\n"
                            for c in convs), encoding="utf-8")
    return path


def write_parquet(path: Path, convs: list[dict[str, Any]],
                  messages_type: pa.DataType = MESSAGE_TYPE) -> Path:
    table = pa.table({
        "conversation_id": pa.array([c["conversation_id"] for c in convs], pa.string()),
        "messages": pa.array([c["messages"] for c in convs], messages_type),
        "label": pa.array([c["label"] for c in convs], pa.int64()),
    })
    pq.write_table(table, path)
    return path


def write_export(d: Path, fmt: str, train: list[dict[str, Any]],
                 test: list[dict[str, Any]]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for split, convs in (("train", train), ("test", test)):
        path = d / f"conversations_{split}.{fmt}"
        if fmt == "csv":
            write_csv(path, [r for c in convs for r in csv_rows(c)])
        elif fmt == "jsonl":
            write_jsonl(path, convs)
        else:
            write_parquet(path, convs)
    (d / "manifest.json").write_text(json.dumps({
        "agency": "hotline-synthetic", "display_name": "Synthetic hotline",
        "label_scheme": "binary", "format": fmt, "train": f"conversations_train.{fmt}",
        "test": f"conversations_test.{fmt}", "schema_version": CONVERSATION_SCHEMA_VERSION,
        "synthetic": True}))
    return d


def read(path: Path) -> fd.RecordTable:
    return read_record_table(path, CONVERSATION_RECORDS, BINARY)


def refused(path: Path) -> DataError:
    with pytest.raises(DataError) as caught:
        read(path)
    assert CANARY not in str(caught.value) and "Fix:" in str(caught.value)
    return caught.value


def as_messages(conv: dict[str, Any]) -> tuple[Message, ...]:
    return tuple(Message(m["role"], m["text"], m.get("timestamp")) for m in conv["messages"])


# --- the three layouts ----------------------------------------------------------------------

def test_the_same_conversations_read_alike_in_every_format(tmp_path: Path) -> None:
    convs = [conversation(i, n=1 + i % 4) for i in range(6)]
    tables = {fmt: load_records(write_export(tmp_path / fmt, fmt, convs, convs[:2]),
                                CONVERSATION_RECORDS) for fmt in ("csv", "jsonl", "parquet")}
    for data in tables.values():
        assert data.train.ids == tuple(c["conversation_id"] for c in convs)
        assert data.train.column("messages") == tuple(as_messages(c) for c in convs)
        assert list(data.train.labels) == [c["label"] for c in convs]
        assert data.train.rejected_total == 0 and len(data.test) == 2
    assert tables["csv"].train.format == "csv" and tables["parquet"].train.format == "parquet"


def test_csv_rows_out_of_order_and_interleaved_are_grouped_by_position(tmp_path: Path) -> None:
    a, b = conversation(1, n=4), conversation(2, n=3)
    ra, rb = csv_rows(a, step=5), csv_rows(b, step=1)
    rows = [ra[3], rb[2], ra[0], rb[0], ra[2], rb[1], ra[1]]
    table = read(write_csv(tmp_path / "mixed.csv", rows))
    assert table.ids == ("conv-1", "conv-2")  # in the order of each one's first row
    assert table.column("messages") == (as_messages(a), as_messages(b))


def test_unknown_message_keys_and_the_timestamp_column_are_optional(tmp_path: Path) -> None:
    conv = conversation(3)
    for m in conv["messages"]:
        m["reaction"] = CANARY
    conv["messages"][1].pop("timestamp")
    assert read(write_jsonl(tmp_path / "t.jsonl", [conv])).column("messages") == (
        as_messages(conv),)
    header = [c for c in CSV_HEADER if c != "timestamp"]
    rows = [[r[0], r[1], r[2], r[4], r[5]] for r in csv_rows(conv)]
    messages = read(write_csv(tmp_path / "t.csv", rows, header)).column("messages")[0]
    assert [m.timestamp for m in messages] == [None] * 3


def test_texts_are_normalised_as_every_text_column(tmp_path: Path) -> None:
    conv = conversation(4, n=1)
    conv["messages"][0]["text"] = "cafe\u0301 at\x1b[2J six"
    message = read(write_jsonl(tmp_path / "n.jsonl", [conv])).column("messages")[0][0]
    assert message.text == fd.clean_text("cafe\u0301 at\x1b[2J six")[0] == "caf\u00e9 at [2J six"


# --- set aside: every reason once, at its record --------------------------------------------

def _bad_message(i: int, **change: object) -> dict[str, Any]:
    conv = conversation(i)
    conv["messages"][1] = {**conv["messages"][1], **change}
    conv["conversation_id"] = f"{CANARY}-{i}"
    return conv


def test_every_csv_reason_is_counted_once_at_its_record(tmp_path: Path) -> None:
    good = conversation(0)
    bad = {
        MESSAGE_TOO_LONG: _bad_message(1, text=CANARY + "x" * MAX_MESSAGE_CHARS),
        ROLE_UNUSABLE: _bad_message(2, role=CANARY),
        TIMESTAMP_UNUSABLE: _bad_message(3, timestamp=CANARY),
        EMPTY_TEXT: _bad_message(4, text="  "),
    }
    rows: list[list[object]] = csv_rows(good)
    first_lines = {}
    for reason, conv in bad.items():
        first_lines[reason] = len(rows) + 2
        rows += csv_rows(conv)
    # Group problems: a position that is no number, one repeated, labels that differ.
    unusable = csv_rows(_bad_message(5))
    unusable[2][1] = f"-{CANARY}"
    repeated = csv_rows(_bad_message(6))
    repeated[2][1] = repeated[0][1]
    differs = csv_rows(_bad_message(7))
    differs[1][5] = 1 - int(differs[0][5])  # type: ignore[call-overload]
    unlabelled = csv_rows(_bad_message(8))
    for r in unlabelled:
        r[5] = ""
    for reason, group in ((POSITION_UNUSABLE, unusable), (POSITION_REPEATED, repeated),
                          (LABEL_DIFFERS, differs), (MISSING_LABEL, unlabelled)):
        first_lines[reason] = len(rows) + 2
        rows += group
    first_lines["missing conversation_id"] = len(rows) + 2
    rows.append(["", 0, "reported", "", f"{CANARY} orphan", 0, "true"])
    too_many = _bad_message(9)
    first_lines[TOO_MANY_MESSAGES] = len(rows) + 2
    rows += [[too_many["conversation_id"], k, "contact", "", CANARY, 0, "true"]
             for k in range(MAX_MESSAGES + 1)]
    table = read(write_csv(tmp_path / "bad.csv", rows))
    assert table.ids == ("conv-0",)
    assert dict(table.rejected) == dict.fromkeys(first_lines, 1)
    by_reason = {r.reason: r for r in table.quarantine}
    for record, (reason, line) in enumerate(first_lines.items(), start=2):
        assert (by_reason[reason].record, by_reason[reason].line) == (record, line), reason
    assert len(table) + table.rejected_total == 1 + len(first_lines)
    _no_canary_in_reports(tmp_path / "bad.csv", table)


def test_every_jsonl_reason_is_counted_once_with_its_line(tmp_path: Path) -> None:
    lines: list[Any] = [conversation(0), conversation(1)]
    not_list = {**conversation(2), "messages": CANARY}
    empty = {**conversation(3), "messages": []}
    many = {**conversation(4), "messages": [{"role": "reported", "text": CANARY}]
            * (MAX_MESSAGES + 1)}
    duplicate = {**conversation(5), "conversation_id": "conv-1"}
    lines += [not_list, empty, many, _bad_message(6, text=7), _bad_message(7, role=None),
              _bad_message(8, timestamp="2026-13-45T99:00"), duplicate]
    table = read(write_jsonl(tmp_path / "bad.jsonl", lines))
    reasons = ["messages not a list", NO_MESSAGES, TOO_MANY_MESSAGES, TEXT_NOT_STRING,
               ROLE_UNUSABLE, TIMESTAMP_UNUSABLE, "duplicate conversation_id"]
    assert dict(table.rejected) == dict.fromkeys(reasons, 1)
    assert [(r.record, r.line, r.reason) for r in table.quarantine] == [
        (i, i, reason) for i, reason in enumerate(reasons, start=3)]
    assert table.quarantine[-1].duplicate_of == 2
    _no_canary_in_reports(tmp_path / "bad.jsonl", table)


def test_parquet_sets_aside_by_the_same_rules(tmp_path: Path) -> None:
    convs = [conversation(0), _bad_message(1, role="moderator"), {
        **conversation(2), "messages": []}]
    table = read(write_parquet(tmp_path / "p.parquet", convs))
    assert [(r.record, r.line, r.reason) for r in table.quarantine] == [
        (2, None, ROLE_UNUSABLE), (3, None, NO_MESSAGES)]


def _no_canary_in_reports(path: Path, table: fd.RecordTable) -> None:
    data = fd.AgencyRecords(agency="hotline-synthetic", scheme=BINARY, train=table,
                            test=table, data_dir=path.parent)
    assert CANARY not in json.dumps(quarantine_report(data)) + render_summary(data)
    assert "a record is a conversation" in quarantine_report(data)["row_numbers"]


# --- structure: refused by rule, without a value --------------------------------------------

def test_a_message_that_is_not_an_object_refuses_the_file(tmp_path: Path) -> None:
    conv = conversation(1)
    conv["messages"][2] = CANARY
    error = refused(write_jsonl(tmp_path / "m.jsonl", [conversation(0), conv]))
    assert error.rule is fc.MESSAGE_NOT_OBJECT and error.row == 2
    assert "message 3 of the conversation is a JSON string" in str(error)
    nulls = pa.array([[None]], MESSAGE_TYPE)
    pq.write_table(pa.table({"conversation_id": ["c"], "messages": nulls, "label": [0]}),
                   tmp_path / "n.parquet")
    assert refused(tmp_path / "n.parquet").rule is fc.MESSAGE_NOT_OBJECT


@pytest.mark.parametrize("messages_type", [
    pa.list_(pa.string()), pa.string(),
    pa.list_(pa.struct([("role", pa.string()), ("body", pa.string())])),
    pa.list_(pa.struct([("role", pa.string()), ("text", pa.int64())]))])
def test_parquet_messages_of_another_type_are_refused(tmp_path: Path,
                                                      messages_type: pa.DataType) -> None:
    samples: dict[str, list[Any]] = {"string": [CANARY], "list<item: string>": [[CANARY]]}
    values = samples.get(str(messages_type), [[]])
    pq.write_table(pa.table({"conversation_id": ["c"], "messages": pa.array(
        values, messages_type), "label": [0]}), tmp_path / "t.parquet")
    error = refused(tmp_path / "t.parquet")
    assert error.rule is fc.MESSAGES_TYPE and "column 'messages' has Parquet type" in str(error)


def test_headers_name_the_conversation_columns(tmp_path: Path) -> None:
    header = [c for c in CSV_HEADER if c != "position"] + [CANARY]
    error = refused(write_csv(tmp_path / "h.csv", [["c", "reported", "", "hi", 0, "", ""]],
                              header))
    assert "missing column(s) ['position']" in str(error)
    assert "['conversation_id', 'position', 'role', 'text', 'label']" in str(error)
    lacking = {k: v for k, v in conversation(0).items() if k != "messages"}
    error = refused(write_jsonl(tmp_path / "h.jsonl", [{**lacking, CANARY: 1}]))
    assert "missing column(s) ['messages']" in str(error)
    assert "['conversation_id', 'messages', 'label']" in str(error)


def test_csv_label_outside_the_scheme_and_broken_lines_are_refused(tmp_path: Path) -> None:
    rows = csv_rows(conversation(0))
    rows[1][5] = f"{CANARY} 7"
    error = refused(write_csv(tmp_path / "l.csv", rows))
    assert error.rule is fd.LABEL_OUTSIDE and error.row == 3
    (tmp_path / "q.csv").write_text(",".join(CSV_HEADER) + f"\nc,0,reported,,{CANARY},0,"
                                    f"true,{CANARY}\n")
    assert refused(tmp_path / "q.csv").rule is fd.CSV_EXTRA_FIELDS
    error = refused(write_jsonl(tmp_path / "j.jsonl", [conversation(0), f'{{"{CANARY}']))
    assert error.rule is fd.JSON_INVALID


# --- the command ----------------------------------------------------------------------------

def test_agency_check_reads_the_schema_its_manifest_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    convs = [conversation(i) for i in range(4)] + [_bad_message(9, role=CANARY)]
    d = write_export(tmp_path / "export", "csv", convs, convs[:2])
    manifest = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**manifest, "label_scheme": "stage"}))
    assert load_export(d).train.schema is CONVERSATION_RECORDS
    assert heroes(["agency", "check", "--data-dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert "5 record(s), 4 usable, 1 set aside" in out
    assert "set aside, role unusable: 1" in out and CANARY not in out
    (d / "manifest.json").write_text(json.dumps({**manifest, "schema_version": "advert-export/1"}))
    assert heroes(["agency", "check", "--data-dir", str(d)]) == 2  # read as adverts: refused
    assert "missing column(s)" in capsys.readouterr().err


# --- any CSV: read or refused, every conversation accounted for --------------------------------

_ROW = st.tuples(
    st.sampled_from(["c0", "c1", " c1 ", "c2", "", CANARY]),  # conversation_id
    st.sampled_from(["0", "1", "2", "7", " 3 ", "", "x", "-1", "1.5", CANARY]),  # position
    st.sampled_from(["reported", "contact", "other", "", CANARY]),  # role
    st.sampled_from(["", "2026-01-01T10:00", "2026-01-01", CANARY]),  # timestamp
    st.sampled_from(["hello", "", "caf\u00e9", "a\x00b", "line\nbreak", CANARY]),  # text
    st.sampled_from(["0", "1", "", "1.0", "x"]))  # label ("x": outside the scheme)


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, min_size=1, max_size=12))
def test_any_csv_reads_or_is_refused(tmp_path: Path, rows: list[tuple[str, ...]]) -> None:
    """usable + set aside = conversations (distinct ids) + rows without an id."""
    path = write_csv(tmp_path / "any.csv", [list(r) for r in rows], CSV_HEADER[:6])
    try:
        table = read(path)
    except DataError as exc:
        assert CANARY not in str(exc)
        return
    ids = [r[0].strip() for r in rows]
    assert len(table) + table.rejected_total == len(set(ids) - {""}) + ids.count("")
    assert all(isinstance(m, Message) for ms in table.column("messages") for m in ms)
    assert CANARY not in json.dumps([r.reason for r in table.quarantine])
