"""What a task's records look like: a schema of typed columns, and the table read from it.

Every task declares a :class:`RecordSchema` (its columns, which of them hold free text, its
label column, its id column) and the data layer (federation/data.py) reads any declared
schema from CSV, JSONL or Parquet with the same limits, the same quarantine and the same
content-free errors. A new kind of record (a conversation, say) is a new schema in a new
task module, not a new reader.

Column types, and what a value that cannot be used sets aside (the reason, by rule):

- ``id``: text or a whole number, at most MAX_FIELD_CHARS; "missing <name>",
  "<name> unusable", and with ``unique`` "duplicate <name>".
- ``str`` with ``text=True``: free text, normalised (federation.text.normalise_text);
  "empty text", "text not a string", "text too long", "text not usable Unicode".
- ``str``: a short optional value (a category); "<name> unusable".
- ``list[str]`` (``text=True``): a list of free texts (JSONL or Parquet lists; a CSV cell
  is never a list), each normalised; "<name> not a list", or a text reason of an item.
- ``messages`` (``text=True``): a conversation's ordered messages, each a
  :class:`Message` (sender role, optional timestamp, normalised text). JSONL: a list of
  objects ``{"role", "timestamp", "text"}`` in order; Parquet: a list of structs with those
  fields; CSV: one row per message, grouped by the schema's id column and ordered by its
  ``position`` column (see federation/data.py). A conversation with no message, more than
  federation.limits.MAX_MESSAGES messages, a message over MAX_MESSAGE_CHARS characters, a
  role outside the schema's ``roles`` or an unusable timestamp or position is set aside
  whole, for the first of those reasons (``MESSAGE_REASONS``), or a text reason of a message.
- ``label``: the label in the agency's label scheme; "missing <name>"; a value outside the
  scheme stops the file (a DataError), as a shifted column would fill it with text. A file
  read without labels (a file to score, :class:`UnlabelledTable`) need not have the column,
  and when it has one, it is not read at all: neither checked nor used.
- ``any``: the header must have it; its values are not read.

A row's reason is the first failing check in this order: text columns, the label, the id
(then its uniqueness), every other column; so every record is either usable or set aside
for exactly one reason.

Names. A declared schema's column names and reasons are fixed text written in a task
module, never read from a file: declaring a schema adds them to the names an error may
show (:func:`declared_columns`, :func:`declared_reasons`); any other header cell still
shows only by its length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np

EMPTY_TEXT = "empty text"
TEXT_NOT_STRING = "text not a string"
TEXT_NOT_UNICODE = "text not usable Unicode"  # a lone surrogate, or a run of > 30 combining marks
TEXT_TOO_LONG = "text too long"  # over federation.limits.MAX_TEXT_CHARS
TEXT_REASONS: tuple[str, ...] = (EMPTY_TEXT, TEXT_NOT_STRING, TEXT_NOT_UNICODE, TEXT_TOO_LONG)

NO_MESSAGES = "no messages"
TOO_MANY_MESSAGES = "too many messages"  # over federation.limits.MAX_MESSAGES
MESSAGE_TOO_LONG = "message too long"  # over federation.limits.MAX_MESSAGE_CHARS
ROLE_UNUSABLE = "role unusable"  # not one of the schema's roles
TIMESTAMP_UNUSABLE = "timestamp unusable"  # present but not an ISO 8601 date-time
POSITION_UNUSABLE = "position unusable"  # CSV: not a whole number >= 0
POSITION_REPEATED = "position repeated"  # CSV: two messages at one position
LABEL_DIFFERS = "label differs within conversation"  # CSV: message rows disagree
MESSAGE_REASONS: tuple[str, ...] = (
    NO_MESSAGES, TOO_MANY_MESSAGES, MESSAGE_TOO_LONG, ROLE_UNUSABLE, TIMESTAMP_UNUSABLE,
    POSITION_UNUSABLE, POSITION_REPEATED, LABEL_DIFFERS)

COLUMN_TYPES: tuple[str, ...] = ("id", "str", "list[str]", "messages", "label", "any")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}

_COLUMNS: set[str] = set()
_REASONS: set[str] = set(TEXT_REASONS)


def declared_columns() -> frozenset[str]:
    """Every column name some declared schema has (the names errors may show)."""
    return frozenset(_COLUMNS)


def declared_reasons() -> frozenset[str]:
    """Every set-aside reason some declared schema can give."""
    return frozenset(_REASONS)


@dataclass(frozen=True)
class Message:
    """One message of a conversation record: who sent it (one of the schema's roles), when
    (ISO 8601 as the export gave it, or None) and its normalised text."""

    role: str
    text: str
    timestamp: str | None = None


@dataclass(frozen=True)
class LabelScheme:
    """A label scheme: the values it allows and which of them count as positive."""

    name: str
    values: tuple[int, ...]
    positive_from: int
    #: What each value means, where the scheme names them (the conversation stage scheme).
    names: tuple[str, ...] = ()

    def is_positive(self, value: int) -> bool:
        return value >= self.positive_from

    def from_expert(self, expert: int) -> int:
        """Map an expert 0-6 suspicion level into this scheme."""
        if not 0 <= expert <= 6:
            raise ValueError(f"expert level {expert} is outside 0-6")
        if self.name == "0-6":
            return expert
        if self.names:
            raise ValueError(f"scheme {self.name!r} names stages; it is not derived from "
                             "the expert 0-6 scale")
        if self.name == "3-level":
            return 0 if expert <= 1 else (1 if expert <= 3 else 2)
        return 1 if expert >= EXPERT_POSITIVE_FROM else 0

    def describe(self) -> str:
        vals = ", ".join(str(v) for v in self.values)
        return f"'{self.name}' (values {vals}; positive from {self.positive_from})"


#: On the expert 0-6 scale, levels 4-6 ("likely" and above) are binarised as positive.
EXPERT_POSITIVE_FROM = 4


@dataclass(frozen=True)
class Column:
    """One declared column: its name, type (COLUMN_TYPES), whether it holds free text,
    whether the header must have it, and (ids) whether a repeat is set aside."""

    name: str
    type: str
    text: bool = False
    required: bool = True
    unique: bool = False

    def __post_init__(self) -> None:
        if self.type not in COLUMN_TYPES:
            raise ValueError(f"column {self.name!r}: type {self.type!r} is not one of "
                             f"{list(COLUMN_TYPES)}")
        if self.type in ("list[str]", "messages") and not self.text:
            raise ValueError(f"column {self.name!r}: a {self.type} column holds free text")
        if self.unique and self.type != "id":
            raise ValueError(f"column {self.name!r}: only an id column can be unique")

    def reasons(self) -> tuple[str, ...]:
        """The set-aside reasons this column can give (see the module docstring)."""
        if self.type == "id":
            return (f"missing {self.name}", f"{self.name} unusable") + (
                (f"duplicate {self.name}",) if self.unique else ())
        if self.type == "label":
            return (f"missing {self.name}",)
        if self.type == "list[str]":
            return (f"{self.name} not a list", *TEXT_REASONS)
        if self.type == "messages":
            return (f"{self.name} not a list", *MESSAGE_REASONS, *TEXT_REASONS)
        if self.type == "str":
            return TEXT_REASONS if self.text else (f"{self.name} unusable",)
        return ()


@dataclass(frozen=True)
class RecordSchema:
    """A task's records: named, versioned, with one label column and at most one id column.

    ``label_schemes`` are the schemes an agency's manifest may name for this schema.
    ``roles`` are the sender roles a ``messages`` column allows; ``position`` names the CSV
    column that orders a conversation's message rows (CSV only: JSONL and Parquet keep the
    messages as a list)."""

    name: str
    columns: tuple[Column, ...]
    label_schemes: Mapping[str, LabelScheme]
    roles: tuple[str, ...] = ()
    position: str = ""

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"schema {self.name!r} repeats a column")
        if [c.type for c in self.columns].count("label") != 1:
            raise ValueError(f"schema {self.name!r} needs exactly one label column")
        if [c.type for c in self.columns].count("id") > 1:
            raise ValueError(f"schema {self.name!r} has more than one id column")
        if not self.label_schemes:
            raise ValueError(f"schema {self.name!r} needs at least one label scheme")
        if any(c.type == "messages" for c in self.columns) and not (
                self.roles and self.position and self.id is not None):
            raise ValueError(f"schema {self.name!r}: a messages column needs roles, a CSV "
                             "position column and an id column")
        _COLUMNS.update(names)
        if self.position:
            _COLUMNS.update((self.position, "role", "timestamp", "text"))
        for c in self.columns:
            _REASONS.update(c.reasons())

    @property
    def required(self) -> tuple[str, ...]:
        """The columns the header must have, in declared order (errors list them so)."""
        return tuple(c.name for c in self.columns if c.required)

    @property
    def label(self) -> Column:
        return next(c for c in self.columns if c.type == "label")

    @property
    def id(self) -> Column | None:
        return next((c for c in self.columns if c.type == "id"), None)

    @property
    def text_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.text)

    def check_order(self) -> tuple[Column, ...]:
        """The columns in the order a row is checked (see the module docstring)."""
        def rank(c: Column) -> int:
            return 0 if c.text else 1 if c.type == "label" else 2 if c.type == "id" else 3
        return tuple(sorted((c for c in self.columns if c.type != "any"), key=rank))

    def reasons(self) -> tuple[str, ...]:
        """Every reason a row of this schema can be set aside for, without repeats."""
        return tuple(dict.fromkeys(r for c in self.check_order() for r in c.reasons()))


@dataclass(frozen=True)
class Rejection:
    """One row set aside: where it is and why (never what it holds)."""

    record: int  # 1-based data record number in its file (see federation.data)
    line: int | None  # CSV/JSONL: line where the record starts; Parquet: None
    reason: str
    duplicate_of: int | None = None  # for a repeated id: record of its first use


@dataclass(frozen=True)
class RecordTable:
    """The usable rows of one file of a schema, plus what was set aside and why.

    ``values`` maps each read column (not the label, the id or ``any`` columns) to its
    cleaned values, one per usable row: a ``str`` (normalised when it is text), for
    ``list[str]`` a tuple of normalised texts, for ``messages`` a tuple of
    :class:`Message` in conversation order."""

    path: Path  # the file read (symbolic links resolved)
    schema: RecordSchema
    ids: tuple[str, ...]
    values: Mapping[str, tuple[Any, ...]]
    labels: np.ndarray  # in the agency's own scheme
    positive: np.ndarray  # binary view used for training and metrics
    rejected: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    quarantine: tuple[Rejection, ...] = ()  # one entry per rejected row, in file order
    name: str = ""  # the file's name relative to the data folder, as errors show it

    def __len__(self) -> int:
        return int(self.labels.size)

    def column(self, name: str) -> tuple[Any, ...]:
        """The cleaned values of one read column, one per usable row."""
        return tuple(self.values[name])

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def format(self) -> str:
        suffix = PurePath(self.name or self.path.name).suffix
        return FORMATS.get(suffix.lower(), suffix.lstrip("."))


@dataclass(frozen=True)
class UnlabelledTable(RecordTable):
    """The usable records of a file read without labels (a file to score: seized chats, a
    hotline's reports), from federation.data.read_unlabelled.

    A :class:`RecordTable` so that a task's ``records`` takes it, but it has no labels:
    ``labels`` and ``positive`` are empty, never invented, so code that needs them (training,
    metrics, calibration) fails on the length mismatch instead of learning from made-up
    values. ``len`` counts the usable records."""

    def __post_init__(self) -> None:
        if self.labels.size or self.positive.size:
            raise ValueError("an unlabelled table holds no labels")

    def __len__(self) -> int:
        return len(self.ids)
