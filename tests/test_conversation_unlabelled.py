"""Unlabelled conversation files, as an agency scores them (seized chats, a hotline's
reports): read by federation.data.read_unlabelled with every rule but the label's, and
scored end to end by the real ``heroes agency score``. Every conversation is scored; the
same conversations score identically from CSV, JSONL and Parquet, with or without a label
column (never read, so even a label no scheme allows changes nothing); a conversation
that breaks a rule is counted as set aside and not scored; a canary planted in every
set-aside conversation shows nowhere: not in the report, the results or the log. Real
files, real pyarrow, a real signed release of a (small, untrained) conversation model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clients.score import CONSULTATION_LOG
from federation.config import RunSettings
from federation.data import NO_USABLE_RECORDS, read_record_table, read_unlabelled
from federation.errors import DataError
from federation.limits import MAX_MESSAGE_CHARS, MAX_MESSAGES
from federation.records import (
    MESSAGE_TOO_LONG,
    POSITION_REPEATED,
    ROLE_UNUSABLE,
    TOO_MANY_MESSAGES,
    UnlabelledTable,
)
from federation.schema import CONVERSATION_LABEL_SCHEMES, CONVERSATION_RECORDS
from federation.signing import generate_signing_key
from federation.tasks import get_task
from server.release import release_run
from server.server_app import write_outputs
from server.strategy import RunLog
from tests._heroes import heroes, main

CANARY = "qzx-unlabelled-canary-5e71"
FORMATS = ("csv", "jsonl", "parquet")
PARAMS = {"num_buckets": 64, "max_messages": 6, "head_messages": 2, "hidden": 8}
FLAT = {"task.name": "conversation-risk", **{f"task.{k}": v for k, v in PARAMS.items()},
        "privacy.target_epsilon": 3.0, "privacy.target_delta": 1e-5}
MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("timestamp", pa.string()),
                                   ("text", pa.string())]))
_LINES = ("hey, how old are you?", "you can trust me, you are so mature for your age",
          "practice moves to the north field on friday", "delete this chat, it is our secret",
          "add me on another app", "send a photo or everyone will see it",
          "thanks, see you at the match", "can we meet after school")


def conversation(i: int, n: int = 4) -> dict[str, Any]:
    """A synthetic conversation without a label: varied lines, so scores differ."""
    roles = ("reported", "contact", "other")
    return {"conversation_id": f"chat-{i}",
            "messages": [{"role": roles[(i + k) % 3],
                          "timestamp": None if k % 2 else f"2026-04-0{1 + k}T1{i % 10}:00:00",
                          "text": f"{_LINES[(3 * i + k) % len(_LINES)]} ({i}.{k})"}
                         for k in range(n)]}


def broken(reason: str, i: int) -> dict[str, Any]:
    """A conversation set aside for ``reason``, a canary in its id and every message."""
    conv = conversation(i)
    conv["conversation_id"] = f"{CANARY}-{i}"
    for m in conv["messages"]:
        m["text"] = f"{m['text']} {CANARY}"
    if reason == ROLE_UNUSABLE:
        conv["messages"][1]["role"] = CANARY
    elif reason == MESSAGE_TOO_LONG:
        conv["messages"][2]["text"] = CANARY + "x" * MAX_MESSAGE_CHARS
    elif reason == TOO_MANY_MESSAGES:
        conv["messages"] = [{"role": "reported", "text": f"{CANARY} {k}"}
                            for k in range(MAX_MESSAGES + 1)]
    return conv


def write(path: Path, convs: list[dict[str, Any]], *, labels: list[Any] | None = None,
          repeat_position: str | None = None) -> Path:
    """``convs`` in ``path``'s format, with no label column unless ``labels`` (one per
    conversation, any value: it is never read). CSV: one row per message, positions with
    gaps, the conversations' rows interleaved (so grouping and ordering are exercised);
    ``repeat_position`` gives that conversation two messages at one position."""
    fmt = path.suffix.lstrip(".")
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(c if labels is None else {**c, "label": lab}) + "\n"
                                for c, lab in zip(convs, labels or convs, strict=True)),
                        encoding="utf-8")
    elif fmt == "parquet":
        columns: dict[str, Any] = {
            "conversation_id": pa.array([c["conversation_id"] for c in convs], pa.string()),
            "messages": pa.array([c["messages"] for c in convs], MESSAGE_TYPE)}
        if labels is not None:
            columns["label"] = pa.array(labels)
        pq.write_table(pa.table(columns), path)
    else:
        header = ["conversation_id", "position", "role", "timestamp", "text"]
        rows: list[tuple[int, int, list[object]]] = []
        for ci, c in enumerate(convs):
            for k, m in enumerate(c["messages"]):
                position = 0 if c["conversation_id"] == repeat_position and k == 1 else 5 * k
                row: list[object] = [c["conversation_id"], position, m["role"],
                                     m.get("timestamp") or "", m["text"]]
                if labels is not None:
                    row.append(labels[ci])
                rows.append((k, ci, row))
        rows.sort(key=lambda r: (r[0] != 0, -r[0], r[1]))  # first rows in order, rest reversed
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header + (["label"] if labels is not None else []))
            w.writerows(r[2] for r in rows)
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A signed conversation-risk release: a small order model with seeded weights (the
    scorer's behaviour is under test, not the model's quality, so nothing is trained), and
    the consortium's public key."""
    tmp = tmp_path_factory.mktemp("unlabelled")
    torch.manual_seed(0)
    model = get_task("conversation-risk", PARAMS).build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(np.random.default_rng(p.numel()).normal(
                scale=0.5, size=tuple(p.shape)).astype(np.float32)))
    generate_signing_key(tmp / "c.key", tmp / "c.pub")
    write_outputs(tmp / "run", RunSettings.from_flat(FLAT), model.state_dict(), RunLog(), 0.0)
    bundle = release_run(tmp / "run", signing_key=tmp / "c.key", out=tmp / "bundle")
    return {"bundle": bundle, "pub": tmp / "c.pub", "tmp": tmp}


def score(release: dict[str, Path], path: Path, capsys: pytest.CaptureFixture[str],
          out: Path | None = None) -> tuple[dict[str, dict[str, Any]], str, dict[str, Any]]:
    """``heroes agency score`` in process (the command's own entry point): the results by
    conversation id, what it printed, and its consultation log entry."""
    state = path.parent / "state"
    out = out or path.with_name(path.name + ".scores.jsonl")
    code = main(["agency", "score", "--model", str(release["bundle"]), "--input", str(path),
                 "--consortium-key", str(release["pub"]), "--purpose", "case 2026/7: review",
                 "--threshold", "0.5", "--dir", str(state), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    results = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    entry = json.loads((state / CONSULTATION_LOG).read_text().splitlines()[-1])
    assert CANARY not in out.read_text(encoding="utf-8") + printed.out + printed.err
    assert CANARY not in (state / CONSULTATION_LOG).read_text()
    return {r["conversation_id"]: r for r in results}, printed.out, entry


def _scores(results: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    """What must not depend on the file's format: score, probability and reasons."""
    return {k: (r["score"], r["probability"], r["above_threshold"],
                json.dumps(r["top_messages"], sort_keys=True)) for k, r in results.items()}


# --- the reader --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_read_unlabelled_reads_every_conversation_without_a_label(tmp_path: Path,
                                                                  fmt: str) -> None:
    convs = [conversation(i, n=1 + i % 5) for i in range(7)]
    table = read_unlabelled(write(tmp_path / f"c.{fmt}", convs), CONVERSATION_RECORDS)
    assert isinstance(table, UnlabelledTable) and len(table) == 7
    assert table.ids == tuple(c["conversation_id"] for c in convs) and not table.rejected
    assert table.labels.size == 0 and table.positive.size == 0  # none invented
    messages = table.column("messages")
    assert [[m.text for m in ms] for ms in messages] == [
        [m["text"] for m in c["messages"]] for c in convs]
    assert [[m.role for m in ms] for ms in messages] == [
        [m["role"] for m in c["messages"]] for c in convs]
    # The labelled reader still needs the label (training is unchanged).
    with pytest.raises(DataError) as caught:
        read_record_table(tmp_path / f"c.{fmt}", CONVERSATION_RECORDS,
                          CONVERSATION_LABEL_SCHEMES["binary"])
    assert "missing column(s) ['label']" in str(caught.value)


def test_a_label_column_is_never_read(tmp_path: Path) -> None:
    """Labels no scheme allows, of any type, refuse nothing and change nothing."""
    convs = [conversation(i) for i in range(4)]
    plain = {fmt: read_unlabelled(write(tmp_path / f"p.{fmt}", convs), CONVERSATION_RECORDS)
             for fmt in FORMATS}
    odd: dict[str, list[Any]] = {
        "csv": [CANARY, "", "7", "1.5"], "jsonl": [CANARY, None, [1, 2], {"stage": 9}],
        "parquet": [[1], [], None, [7, 8]]}  # list<int64>: a type the label column refuses
    for fmt in FORMATS:
        table = read_unlabelled(write(tmp_path / f"l.{fmt}", convs, labels=odd[fmt]),
                                CONVERSATION_RECORDS)
        assert (table.ids, table.column("messages")) == (
            plain[fmt].ids, plain[fmt].column("messages")) and not table.rejected
        assert table.column("messages") == plain["jsonl"].column("messages")


def test_rules_other_than_the_label_still_apply_without_quoting(tmp_path: Path) -> None:
    bad = {reason: broken(reason, 10 + k) for k, reason in enumerate(
        (ROLE_UNUSABLE, MESSAGE_TOO_LONG, TOO_MANY_MESSAGES))}
    convs = [conversation(0), *bad.values(), conversation(1)]
    for fmt in FORMATS:
        table = read_unlabelled(write(tmp_path / f"b.{fmt}", convs), CONVERSATION_RECORDS)
        assert table.ids == ("chat-0", "chat-1"), fmt
        assert dict(table.rejected) == dict.fromkeys(bad, 1), fmt
        assert [r.record for r in table.quarantine] == [2, 3, 4], fmt
        assert CANARY not in json.dumps([r.reason for r in table.quarantine])
    # A CSV header without the columns a message row needs names them, label not among them.
    (tmp_path / "h.csv").write_text(f"conversation_id,role,text,{CANARY}\nc,reported,hi,x\n")
    with pytest.raises(DataError) as caught:
        read_unlabelled(tmp_path / "h.csv", CONVERSATION_RECORDS)
    assert "missing column(s) ['position']" in str(caught.value)
    assert "['conversation_id', 'position', 'role', 'text']" in str(caught.value)
    assert CANARY not in str(caught.value) and "Fix:" in str(caught.value)
    # Nothing usable: refused, by reason counts only.
    with pytest.raises(DataError) as caught:
        read_unlabelled(write(tmp_path / "none.jsonl", list(bad.values())),
                        CONVERSATION_RECORDS)
    assert caught.value.rule is NO_USABLE_RECORDS and CANARY not in str(caught.value)


# --- the command -------------------------------------------------------------------------------

def test_agency_score_scores_every_unlabelled_conversation_alike_in_every_format(
        release: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    convs = [conversation(i, n=2 + i % 4) for i in range(9)]
    by_format: dict[str, dict[str, tuple[Any, ...]]] = {}
    for fmt in FORMATS:
        (tmp_path / fmt).mkdir()
        results, printed, entry = score(release, write(tmp_path / fmt / f"chats.{fmt}", convs),
                                        capsys)
        assert sorted(results) == sorted(c["conversation_id"] for c in convs), fmt
        assert "scored 9 conversations" in printed and "set aside" not in printed, fmt
        assert entry["conversations_scored"] == 9 and entry["conversations_set_aside"] == 0
        assert entry["task"] == "conversation-risk"
        by_format[fmt] = _scores(results)
    assert by_format["csv"] == by_format["jsonl"] == by_format["parquet"]
    assert len({s[0] for s in by_format["jsonl"].values()}) == 9  # the scores do differ
    # A label column (values no scheme allows: it is never read) gives the same scores.
    labels = [CANARY if i % 2 else 9 for i in range(len(convs))]
    for fmt in FORMATS:
        (tmp_path / f"{fmt}-labelled").mkdir()
        path = write(tmp_path / f"{fmt}-labelled" / f"chats.{fmt}", convs,
                     labels=[str(v) for v in labels] if fmt != "jsonl" else labels)
        assert _scores(score(release, path, capsys)[0]) == by_format["jsonl"], fmt


def test_agency_score_sets_aside_a_conversation_that_breaks_a_rule(
        release: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = [conversation(i) for i in range(5)]
    bad = [broken(ROLE_UNUSABLE, 20), broken(MESSAGE_TOO_LONG, 21),
           broken(TOO_MANY_MESSAGES, 22)]
    convs = [good[0], bad[0], good[1], good[2], bad[1], good[3], bad[2], good[4]]
    clean = _scores(score(release, write(tmp_path / "clean.jsonl", good), capsys)[0])
    expected = {ROLE_UNUSABLE: 1, MESSAGE_TOO_LONG: 1, TOO_MANY_MESSAGES: 1}
    for fmt in FORMATS:
        (tmp_path / fmt).mkdir()
        extra = [broken("", 23)] if fmt == "csv" else []  # CSV: two messages at one position
        path = write(tmp_path / fmt / f"mixed.{fmt}", convs + extra,
                     repeat_position=f"{CANARY}-23")
        results, printed, entry = score(release, path, capsys)
        assert sorted(results) == sorted(c["conversation_id"] for c in good), fmt
        assert _scores(results) == clean, fmt  # a set-aside neighbour changes no score
        counts = {**expected, **({POSITION_REPEATED: 1} if extra else {})}
        assert f"set aside {counts}" in printed, (fmt, printed)
        assert entry["conversations_set_aside"] == len(bad) + len(extra)
        assert entry["conversations_scored"] == len(good)


def test_the_installed_command_scores_an_unlabelled_file(release: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """The same through a fresh ``heroes`` process: exit 0, results for every conversation."""
    path = write(tmp_path / "chats.parquet", [conversation(i) for i in range(3)])
    proc = heroes(["agency", "score", "--model", str(release["bundle"]), "--input", str(path),
                   "--consortium-key", str(release["pub"]), "--purpose", "case 2026/7",
                   "--dir", str(tmp_path / "state"), "--out", str(tmp_path / "r.csv")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scored 3 conversations" in proc.stdout
    with (tmp_path / "r.csv").open(newline="", encoding="utf-8") as f:
        assert [r["conversation_id"] for r in csv.DictReader(f)] == [
            "chat-0", "chat-1", "chat-2"]
