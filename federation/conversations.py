"""Conversation exports (federation.schema.CONVERSATION_RECORDS): messages and CSV grouping.

federation/data.py reads the files (structure, limits, labels, ids, quarantine); this module
turns a record's ``messages`` into a tuple of :class:`federation.records.Message` in order,
and groups a CSV export's message rows into conversations. Nothing here reads a file.

The three layouts (the manifest's ``schema_version`` is ``conversation-export/1``):

- JSONL: one conversation per line, ``{"conversation_id": str, "messages": [{"role": str,
  "timestamp": ISO 8601 str or null (the key is optional), "text": str}, ...],
  "label": int, "synthetic": true}``. Messages are in conversation order.
- Parquet: the same columns; ``messages`` is ``list<struct<role: string, timestamp:
  string, text: string>>`` (``timestamp`` may be left out of the struct; other struct
  fields are ignored). Any other Arrow type for ``messages`` refuses the file.
- CSV: one row per message with the columns ``conversation_id``, ``position``, ``role``,
  ``text``, ``label`` and optional ``timestamp`` and ``synthetic`` (a file to score,
  read without labels, needs no ``label``: see step 3 below). ``position`` (a whole
  number >= 0) orders a conversation's messages; gaps are allowed. A conversation's rows
  need not be contiguous, and each repeats the conversation's label.

Record numbers. In JSONL and Parquet a record is a line or row, as for adverts. In CSV a
record is a conversation: conversations are numbered 1, 2, ... in the order in which their
first row appears in the file, and a conversation's line is the line of that first row. A
row without a usable ``conversation_id`` cannot be grouped: it is a record of its own (at
its place in that order) and is set aside for its id. ``usable + set aside`` is the number
of conversations (plus id-less rows) in every format.

Why a whole conversation is set aside, for the first reason that applies:

1. CSV only, its rows as a group: more than MAX_MESSAGES rows ("too many messages"); a
   position that is not a whole number >= 0 ("position unusable"); two rows at one
   position ("position repeated"); rows whose labels differ, one of them empty
   included ("label differs within conversation").
2. Its messages: not a list ("messages not a list", JSONL and Parquet); an empty list
   ("no messages"); more than MAX_MESSAGES messages ("too many messages", counted before a
   message is read, so the work stays bounded); then message by message, in order: a text
   reason of any text column (empty text, text not a string, text not usable Unicode;
   the text normalised by federation.text.normalise_text), a text over
   MAX_MESSAGE_CHARS characters after normalising ("message too long"), a role outside
   the schema's roles ("role unusable"), a timestamp present but not ISO 8601 as
   ``datetime.fromisoformat`` reads it ("timestamp unusable"; null, an absent key, an
   empty CSV cell or an empty string is no timestamp).
3. Its label: none ("missing label"); a label outside the label scheme refuses the file.
   A file read without labels (federation.data.read_unlabelled: a file to score) skips
   this step and the label rule of step 1: its label column is optional and never read.
4. Its id: missing, unusable, and in JSONL and Parquet repeated ("duplicate
   conversation_id"; in CSV many rows share an id by design, so the rule cannot apply).

A message that is not a JSON object (or a null Parquet struct) is a structural problem:
the file is refused with MESSAGE_NOT_OBJECT. Unknown keys of a message object are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from federation.errors import Rule
from federation.limits import MAX_MESSAGE_CHARS, MAX_MESSAGES
from federation.records import (
    EMPTY_TEXT,
    LABEL_DIFFERS,
    MESSAGE_TOO_LONG,
    NO_MESSAGES,
    POSITION_REPEATED,
    POSITION_UNUSABLE,
    ROLE_UNUSABLE,
    TEXT_NOT_STRING,
    TEXT_TOO_LONG,
    TIMESTAMP_UNUSABLE,
    TOO_MANY_MESSAGES,
    Message,
    RecordSchema,
)
from federation.text import UnusableText, normalise_text

__all__ = [
    "MESSAGES_TYPE", "MESSAGE_NOT_OBJECT", "Conversation", "MessageRow", "NotAMessage",
    "clean_messages", "csv_columns", "group_rows", "has_messages", "messages_column",
]

#: ISO 8601 date-times are at most ~35 characters; a longer "timestamp" is not one, and
#: is refused before datetime parses it.
_MAX_TIMESTAMP_CHARS = 64
_POSITION = re.compile(r"[0-9]{1,18}")

MESSAGE_NOT_OBJECT = Rule(
    "message {count} of the conversation is a JSON {kind}, not an object",
    "write each message as an object with the keys role, timestamp and text",
    ("array", "string", "number", "true/false", "null", "a value of another type"))
MESSAGES_TYPE = Rule(
    "{column} has Parquet type {kind}, expected a list of structs with text fields role "
    "and text (and optionally timestamp)",
    "write each column with the type its task's schema gives it and export again",
    ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "halffloat",
     "float", "double", "bool", "string", "large_string", "binary", "large_binary",
     "date32[day]", "date64[ms]", "decimal", "timestamp", "time", "duration", "list",
     "struct", "map", "dictionary", "another type"))


class NotAMessage(Exception):
    """A message that is not an object: the file's structure is broken (data.py turns
    this into a DataError with the file and the record's line)."""

    def __init__(self, index: int, kind: str) -> None:
        self.index = index  # 1-based
        self.kind = kind
        super().__init__(kind)


def has_messages(schema: RecordSchema) -> bool:
    """Whether ``schema`` has a messages column (so its CSV holds one row per message)."""
    return any(c.type == "messages" for c in schema.columns)


def messages_column(schema: RecordSchema) -> str:
    return next(c.name for c in schema.columns if c.type == "messages")


def csv_columns(schema: RecordSchema, *, labelled: bool = True) -> tuple[str, ...]:
    """The columns a CSV export of ``schema`` must have: one row per message (a file read
    without labels needs no label column)."""
    assert schema.id is not None
    columns = (schema.id.name, schema.position, "role", "text")
    return (*columns, schema.label.name) if labelled else columns


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    for kind, types in (("array", list), ("string", str), ("number", (int, float))):
        if isinstance(value, types):
            return kind
    return "a value of another type"


def _timestamp(raw: object) -> tuple[str | None, bool]:
    """(timestamp or None, usable)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None, True
    if not isinstance(raw, str) or len(raw) > _MAX_TIMESTAMP_CHARS:
        return None, False
    try:
        datetime.fromisoformat(raw.strip())
    except ValueError:
        return None, False
    return raw.strip(), True


def _text(raw: object) -> tuple[str, str | None]:
    """A message's normalised text, by the rules of every text column (data.clean_text),
    then held to MAX_MESSAGE_CHARS."""
    if raw is None:
        return "", EMPTY_TEXT
    if not isinstance(raw, str):
        return "", TEXT_NOT_STRING
    try:
        text = normalise_text(raw)
    except UnusableText as exc:
        return "", MESSAGE_TOO_LONG if exc.reason == TEXT_TOO_LONG else exc.reason
    if not text.strip():
        return "", EMPTY_TEXT
    return (text, None) if len(text) <= MAX_MESSAGE_CHARS else ("", MESSAGE_TOO_LONG)


def _message(raw: dict[str, Any], roles: Sequence[str]) -> tuple[Message | None, str | None]:
    text, reason = _text(raw.get("text"))
    if reason is not None:
        return None, reason
    role = raw.get("role")
    if not isinstance(role, str) or role not in roles:
        return None, ROLE_UNUSABLE
    timestamp, usable = _timestamp(raw.get("timestamp"))
    if not usable:
        return None, TIMESTAMP_UNUSABLE
    return Message(role=role, text=text, timestamp=timestamp), None


def clean_messages(raw: object, *, column: str, roles: Sequence[str]
                   ) -> tuple[tuple[Message, ...], str | None]:
    """A conversation's messages in order, or the first reason it is set aside (see the
    module docstring); raises NotAMessage for a message that is not an object."""
    if not isinstance(raw, list):
        return (), f"{column} not a list"
    if not raw:
        return (), NO_MESSAGES
    if len(raw) > MAX_MESSAGES:  # before any message is read
        return (), TOO_MANY_MESSAGES
    messages = []
    for index, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise NotAMessage(index, _kind(item))
        message, reason = _message(item, roles)
        if reason is not None:
            return (), reason
        assert message is not None
        messages.append(message)
    return tuple(messages), None


# --- CSV: one row per message ----------------------------------------------------------------

@dataclass(frozen=True)
class MessageRow:
    """One CSV row, its id and label already read by data.py."""

    line: int
    conversation_id: str  # "" when the row has no usable id
    id_raw: object  # the cell as read (for an id-less row's own record)
    position: object
    label: int | None
    message: dict[str, Any]  # role, timestamp, text as read


@dataclass
class Conversation:
    """One CSV record: a conversation's rows grouped (or one id-less row), with the first
    reason of its group checks (step 1 of the module docstring) or None."""

    line: int
    fields: dict[str, Any]
    label: int | None
    reason: str | None = None
    rows: list[MessageRow] = field(default_factory=list)
    count: int = 0


def _position(raw: object) -> int | None:
    if isinstance(raw, str) and _POSITION.fullmatch(raw.strip()):
        return int(raw.strip())
    return None


def _close(conv: Conversation, id_name: str, messages_name: str, label_name: str) -> None:
    """Check a conversation's rows as a group and order its messages by position."""
    conv.fields = {id_name: conv.rows[0].conversation_id, label_name: conv.label,
                   messages_name: []}
    if conv.count > MAX_MESSAGES:
        conv.reason = TOO_MANY_MESSAGES
        conv.rows = []
        return
    positions = [_position(r.position) for r in conv.rows]
    if any(p is None for p in positions):
        conv.reason = POSITION_UNUSABLE
    elif len(set(positions)) != len(positions):
        conv.reason = POSITION_REPEATED
    elif len({r.label for r in conv.rows}) > 1:
        conv.reason = LABEL_DIFFERS
    order = sorted(range(len(conv.rows)), key=lambda i: positions[i] or 0)
    conv.fields[messages_name] = [conv.rows[i].message for i in order]
    conv.rows = []


def group_rows(rows: Iterable[MessageRow], schema: RecordSchema) -> list[Conversation]:
    """Group a CSV export's message rows into conversations, in the order of each one's
    first row (the CSV record numbering). A conversation keeps at most MAX_MESSAGES + 1
    rows: one more sets it aside, however many follow."""
    assert schema.id is not None
    id_name, messages_name = schema.id.name, messages_column(schema)
    label_name = schema.label.name
    out: list[Conversation] = []
    open_: dict[str, Conversation] = {}
    for row in rows:
        if not row.conversation_id:
            out.append(Conversation(row.line, {id_name: row.id_raw, label_name: row.label,
                                               messages_name: [row.message]}, row.label))
            continue
        conv = open_.get(row.conversation_id)
        if conv is None:
            conv = open_[row.conversation_id] = Conversation(row.line, {}, row.label)
            out.append(conv)
        conv.count += 1
        if conv.count <= MAX_MESSAGES:
            conv.rows.append(row)
    for conv in open_.values():
        _close(conv, id_name, messages_name, label_name)
    return out
