"""Reading and validating an agency's export: strictly, within one set of limits.

Any task's record schema (federation.records.RecordSchema) is read here, by
``read_record_table`` and ``load_records``; the advert export (``read_table``,
``load_agency``) is one such schema, federation.schema.ADVERT_RECORDS, and the rules below
are written for it: another schema's columns get the same checks by their declared types.

An agency's data directory holds ``manifest.json`` (which files, which label scheme) and
the train and test exports as CSV, JSONL or Parquet. Everything is checked before any
training: structural problems stop with a DataError naming file, row, rule and fix; rows
that are merely unusable are set aside into the table's quarantine, one entry per row with
its number and reason, and counted by reason. Every record is either usable or set aside:
``len(table) + table.rejected_total`` is the number of records in the file.

The input is treated as hostile (see federation/limits.py for every limit and why):

- The manifest: keys must be unique; ``label_scheme`` one of the known names;
  ``train`` and ``test`` relative file names of at most 255 characters, inside the data
  folder once symbolic links are resolved, and two different files.
- A file is refused (DataError) when its structure is broken: not UTF-8; a CSV header
  that is missing, repeats a column or is separated by something other than commas; a CSV
  line the csv module cannot read; a JSONL line that is not one JSON object, nests deeper
  than MAX_JSON_DEPTH, holds a number beyond 64-bit integers or finite floats, or repeats
  a key; a Parquet file that cannot be read to its end, or a column of the wrong type; a
  label outside the label scheme.
- A row is set aside (counted by reason in the quarantine) when only its values are
  unusable: no text, a text that is not a string, too long (MAX_TEXT_CHARS, the same for
  every format) or not usable Unicode (a lone surrogate); no label; no advert_id, or one
  that is repeated, too long or not text; a category that is too long or not text.

Conversation exports (federation.schema.CONVERSATION_RECORDS, manifest ``schema_version``
"conversation-export/1", read by ``load_export``) are read by the same code: JSONL and
Parquet hold a conversation per record, CSV one message per row, grouped into conversations
by federation/conversations.py, whose docstring gives the layouts, the record numbering of a
CSV conversation and every reason a conversation is set aside.

Files without labels. A file to score (seized chats, a hotline's reports) has no labels:
``read_unlabelled`` reads it by every rule above except the label's. Its label column is
not required and, when present, is not read (not checked against a scheme, not kept), so
no record is set aside for its label and no label can refuse the file; the result is an
UnlabelledTable, which a task's ``records`` takes like any RecordTable.

Every text goes through federation.text.normalise_text (NFC, control characters to spaces)
once, here: what ``heroes agency check`` accepts is exactly what the node featurises.

Row numbers. Every record has a ``record`` number: its 1-based position among the data
records of its file, the same in every format (a CSV header and blank lines are not
records; record 1 is the first advert). CSV and JSONL records also have a ``line``: the
1-based line of the file where the record starts, the number a text editor shows (a CSV
header is line 1, so a one-line record's line is usually ``record + 1``; quoted
multi-line texts and blank lines shift it). Parquet has no lines, so a Parquet record's
line is None. Errors give the line for CSV and JSONL and the record for Parquet.

Types. CSV is all text and JSONL types vary per line, so a JSONL ``text`` that is not a
string is a per-row rejection ("text not a string"). A Parquet column has one type for
every row, so a wrong type there (a numeric ``text``, a float ``advert_id``) is a
DataError for the file: set aside, every row would go.

Messages and quarantine entries name files (relative to the data folder), rows, schema
columns and reasons, never a value read from a file (not advert content, not advert ids,
not a header cell, not a label): they may be logged, shared with the agency's IT or data
protection officer, and returned to the aggregator. federation.errors.DataError enforces
this by construction: every rule below is fixed text.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from federation.conversations import (
    MESSAGE_NOT_OBJECT,
    MESSAGES_TYPE,
    MessageRow,
    NotAMessage,
    clean_messages,
    csv_columns,
    group_rows,
    has_messages,
)
from federation.errors import DataError, Problem, Rule, problem
from federation.limits import (
    CSV_FIELD_LIMIT,
    INT64_MAX,
    INT64_MIN,
    MAX_AGENCY_CHARS,
    MAX_FIELD_CHARS,
    MAX_FILE_NAME_CHARS,
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_NUMBER_CHARS,
    MAX_TEXT_CHARS,
)
from federation.records import (
    FORMATS,
    Column,
    LabelScheme,
    RecordSchema,
    RecordTable,
    Rejection,
    UnlabelledTable,
)
from federation.schema import (
    ADVERT_RECORDS,
    CATEGORY_UNUSABLE,
    CONVERSATION_RECORDS,
    DUPLICATE_ID,
    EMPTY_TEXT,
    ID_UNUSABLE,
    KNOWN_COLUMNS,
    LABEL_SCHEMES,
    MANIFEST_REQUIRED,
    MISSING_ID,
    MISSING_LABEL,
    REQUIRED_COLUMNS,
    TEXT_NOT_STRING,
    TEXT_NOT_UNICODE,
    TEXT_TOO_LONG,
)
from federation.text import UnusableText, normalise_text

__all__ = [
    "CATEGORY_UNUSABLE", "DUPLICATE_ID", "EMPTY_TEXT", "FORMATS", "ID_UNUSABLE", "MANIFEST",
    "MISSING_ID", "MISSING_LABEL", "TEXT_NOT_STRING", "TEXT_NOT_UNICODE", "TEXT_TOO_LONG",
    "AdvertTable", "AgencyData", "AgencyRecords", "Record", "RecordTable", "Rejection",
    "UnlabelledTable", "clean_id", "clean_text", "load_agency", "load_export", "load_records",
    "read_manifest", "read_record_table", "read_records", "read_table", "read_unlabelled",
]

MANIFEST = "manifest.json"

_PARQUET_BATCH = 8192
_LABEL_TEXT = re.compile(r"(0|[1-9][0-9]{0,17})(\.0+)?")
_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")

# --- the rules: fixed text (federation.errors.Rule lists the placeholders) -------------------

# The fixed lists some rules show one item of (a "kind"); nothing else can fill {kind}.
_JSON_KINDS = ("object", "array", "string", "number", "true/false", "null")
_JSON_MESSAGES = (
    "Expecting value", "Extra data", "Expecting property name enclosed in double quotes",
    "Expecting ':' delimiter", "Expecting ',' delimiter", "Unterminated string starting at",
    "Invalid control character at", "Invalid \\escape", "Invalid \\uXXXX escape",
    "Illegal trailing comma before end of object", "Illegal trailing comma before end of array",
    "a syntax error")
_ARROW_KINDS = (
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "halffloat",
    "float", "double", "bool", "string", "large_string", "binary", "large_binary",
    "date32[day]", "date64[ms]", "decimal", "timestamp", "time", "duration", "list",
    "struct", "map", "dictionary", "another type")

_EXPORT_AGAIN = "export the file again"

DATA_DIR_MISSING = Rule(
    "data directory not found",
    "point data_dir (node configuration) or --data-dir at the agency's export folder")
MANIFEST_MISSING = Rule(
    "no manifest.json in the data directory",
    "add manifest.json with the keys agency, label_scheme, train and test")
MANIFEST_OUTSIDE = Rule(
    "manifest.json resolves outside the data folder (a symbolic link)",
    "put the manifest itself in the data folder")
MANIFEST_TOO_BIG = Rule(
    "the manifest is larger than {limit} bytes",
    "write one small object with the keys agency, label_scheme, train and test")
MANIFEST_NOT_JSON = Rule(
    "not valid JSON at line {line} ({kind})",
    "correct the manifest's syntax (one JSON object)", _JSON_MESSAGES)
MANIFEST_TOO_DEEP = Rule(
    "nests deeper than {limit} levels",
    "write one flat object with the keys agency, label_scheme, train and test")
MANIFEST_NUMBER = Rule(
    "holds a number beyond 64-bit integers or finite floats (or over {limit} characters)",
    "write the manifest's values as strings")
MANIFEST_DUPLICATE = Rule(
    "{key} appears more than once",
    "keep one of them: with a repeated key, one value silently replaces the other")
MANIFEST_NOT_OBJECT = Rule(
    "holds a JSON {kind}, not an object",
    "write one object with the keys agency, label_scheme, train and test", _JSON_KINDS)
MISSING_KEY = Rule("missing {key}", "add it (the keys are agency, label_scheme, train, test)")
KEY_NOT_STRING = Rule("{key} is a JSON {kind}, not a string", "write it as a JSON string",
                      _JSON_KINDS)
AGENCY_EMPTY = Rule("key 'agency' is empty", "give the agency's name")
AGENCY_TOO_LONG = Rule(
    "key 'agency' is {count} characters long, over the limit of {limit}",
    "give a shorter name")
AGENCY_UNPRINTABLE = Rule(
    "key 'agency' holds characters that cannot be printed (control characters or lone "
    "surrogates)", "give a name of printable characters")
SCHEME_UNKNOWN = Rule(
    "label_scheme is not one of {schemes}",
    "set label_scheme to the scheme the export's labels use")
NAME_EMPTY = Rule("{key} is an empty file name", "name the export file")
NAME_TOO_LONG = Rule(
    "{key} is a file name of {count} characters, over the limit of {limit}",
    "rename the export file")
NAME_UNPRINTABLE = Rule(
    "{key} holds characters a file name cannot have (control characters, NUL or lone "
    "surrogates)", "rename the export file")
NAME_ABSOLUTE = Rule(
    "{key} is an absolute path",
    "copy the export into the data folder and give its name relative to it")
NAME_OUTSIDE = Rule(
    "{key} leads outside the data folder",
    "copy the export into the data folder and give its name relative to it")
NAME_LINK_OUTSIDE = Rule(
    "{key} resolves outside the data folder (through a symbolic link)",
    "copy the export itself into the data folder instead of linking to it")
NAME_UNRESOLVABLE = Rule(
    "{key} cannot be resolved (a symbolic link loop, or a path the system refuses)",
    "name a plain file in the data folder")
NAME_SUFFIX = Rule(
    "{key} names an unsupported file type; supported: {suffixes}",
    "export as CSV, JSONL or Parquet")
SAME_FILE = Rule(
    "'train' and 'test' name the same file",
    "export the training and test splits as two files")

FILE_NOT_FOUND = Rule("file not found",
                      "check the data directory and the file names in manifest.json")
NOT_A_FILE = Rule("not a regular file (a folder, device or pipe)",
                  "name a plain file in manifest.json")
UNREADABLE = Rule("cannot be read ({kind})", "give the node's user permission to read it",
                  kinds=("PermissionError", "IsADirectoryError", "NotADirectoryError", "OSError"))
UNSUPPORTED = Rule("unsupported file type; supported: {suffixes}",
                   "export as CSV, JSONL or Parquet")
EMPTY_FILE = Rule("the file is empty",
                  "export the adverts again; a header and at least one row are needed")
NOT_UTF8 = Rule("byte {byte} (line {line}) is not valid UTF-8",
                "re-export the file as UTF-8 (for example with `iconv -f LATIN1 -t UTF-8`) "
                "and try again")
MISSING_COLUMNS = Rule(
    "missing column(s) {columns}; the header has {count} other column(s), not shown",
    "export the columns {required} (extra columns are ignored)")
NO_HEADER = Rule(
    "missing column(s) {columns}: the first line names none of the schema's columns, so the "
    "header row seems to be missing",
    "export with the header row (the column names {required})")
WRONG_DELIMITER = Rule(
    "the header row is one column: the file seems to be separated by {kind}, not commas",
    "export as comma-separated CSV", kinds=("semicolons", "tabs", "pipes"))
DUPLICATE_COLUMN = Rule(
    "{column} appears {count} times in the header",
    "export each column once: with a repeated column, one silently replaces the other")
CSV_UNREADABLE = Rule(
    "line {line} cannot be read as CSV ({kind})",
    "re-export the file as standard CSV (text fields quoted, no NUL bytes)",
    kinds=("a NUL byte", "a quote that does not close its field",
           "a line break in an unquoted field", "a quoted field that never ends",
           "a malformed line"))
CSV_EXTRA_FIELDS = Rule("line {line} has more fields than the header",
                        "quote text fields that contain commas")
JSON_INVALID = Rule("line {line} is not valid JSON ({kind})", "write one JSON object per line",
                    _JSON_MESSAGES)
JSON_NOT_OBJECT = Rule("line {line} is a JSON {kind}, not an object",
                       "write one JSON object per line", _JSON_KINDS)
JSON_TOO_DEEP = Rule("line {line} nests deeper than {limit} levels",
                     "write each advert as one object of flat values")
JSON_NUMBER = Rule(
    "line {line} holds a number beyond 64-bit integers or finite floats (or over {limit} "
    "characters)", "write such values as strings, or export them again")
JSON_DUPLICATE = Rule(
    "line {line}: {column} appears more than once in one object",
    "write each key once: with a repeated key, one value silently replaces the other")
JSON_LACKS = Rule("line {line} lacks field(s) {columns}", "every line needs the fields {required}")
PARQUET_EMPTY = Rule("the file is empty", "export the adverts again; at least one row is needed")
PARQUET_UNREADABLE = Rule("not a readable Parquet file",
                          "export the file again as Parquet, or as CSV or JSONL")
PARQUET_ROWS = Rule("the rows after record {record} cannot be read",
                    _EXPORT_AGAIN + "; it may be truncated or corrupted")
_TYPE_FIX = "write each column with the type the advert schema gives it and export again"
PARQUET_TYPES: dict[str, Rule] = {
    "advert_id": Rule("column 'advert_id' has Parquet type {kind}, expected text or integer "
                      "(with pandas: df['advert_id'] = df['advert_id'].astype(str))",
                      _TYPE_FIX, _ARROW_KINDS),
    "text": Rule("column 'text' has Parquet type {kind}, expected text (with pandas: "
                 "df['text'] = df['text'].astype(str))", _TYPE_FIX, _ARROW_KINDS),
    "category": Rule("column 'category' has Parquet type {kind}, expected text (with pandas: "
                     "df['category'] = df['category'].astype(str))", _TYPE_FIX, _ARROW_KINDS),
    "label": Rule("column 'label' has Parquet type {kind}, expected integer, integral float or "
                  "text (with pandas: df['label'] = df['label'].astype('Int64'))",
                  _TYPE_FIX, _ARROW_KINDS),
}
_GENERIC_TYPE_FIX = "write each column with the type its task's schema gives it and export again"
PARQUET_TYPE_RULES: dict[str, Rule] = {
    "id": Rule("{column} has Parquet type {kind}, expected text or integer",
               _GENERIC_TYPE_FIX, _ARROW_KINDS),
    "str": Rule("{column} has Parquet type {kind}, expected text", _GENERIC_TYPE_FIX,
                _ARROW_KINDS),
    "label": Rule("{column} has Parquet type {kind}, expected integer, integral float or "
                  "text", _GENERIC_TYPE_FIX, _ARROW_KINDS),
    "list[str]": Rule("{column} has Parquet type {kind}, expected a list of text",
                      _GENERIC_TYPE_FIX, _ARROW_KINDS),
}
LABEL_OUTSIDE = Rule(
    "label ({kind}, not shown) is outside the label scheme {scheme}",
    "correct the label, or set the right label_scheme in manifest.json",
    kinds=("a whole number", "a number with a fraction", "an infinite number",
           "a true/false value", "a non-numeric str value", "a non-numeric list value",
           "a non-numeric dict value", "a value of another type"))
NO_USABLE_ROWS = Rule("no usable rows (set aside: {counts})",
                      "export adverts that have text and a label")
NO_USABLE_RECORDS = Rule("no usable rows (set aside: {counts})",
                         "export records that have every value their task's schema needs")



# --- tables ------------------------------------------------------------------------------

class AdvertTable(RecordTable):
    """A table of the advert schema (federation.schema.ADVERT_RECORDS), by its columns."""

    @property
    def advert_ids(self) -> tuple[str, ...]:
        return self.ids

    @property
    def texts(self) -> tuple[str, ...]:  # normalised (federation.text.normalise_text)
        return tuple(self.values["text"])

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.values["category"])


@dataclass(frozen=True)
class AgencyRecords:
    """An agency's train and test files of any schema, read under its label scheme."""

    agency: str
    scheme: LabelScheme
    train: RecordTable
    test: RecordTable
    data_dir: Path | None = None

    def rejection_report(self) -> dict[str, dict[str, int]]:
        """Counts of set-aside rows per file and reason (no row content)."""
        return {
            "train": dict(self.train.rejected),
            "test": dict(self.test.rejected),
        }


@dataclass(frozen=True)
class AgencyData(AgencyRecords):
    """An agency's advert export (the advert schema's tables, by their column names)."""

    train: AdvertTable
    test: AdvertTable


# --- JSON within the limits -----------------------------------------------------------------

class _Refused(Exception):
    """JSON the limits refuse: ``what`` is depth, number or duplicate (``key`` for the last)."""

    def __init__(self, what: str, key: str = "") -> None:
        self.what = what
        self.key = key
        super().__init__(what)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Refused("duplicate", key)
        seen.add(key)
    return dict(pairs)


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:  # before int(): Python refuses 4,300+ digits anyway
        raise _Refused("number")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _Refused("number")
    return value


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused("number")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("number")
    return value


def _constant(text: str) -> float:
    if text == "NaN":  # what Python's json.dumps writes for a missing float: no value
        return math.nan
    raise _Refused("number")  # Infinity, -Infinity


_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def _too_deep(text: str) -> bool:
    """Whether brackets outside strings nest deeper than MAX_JSON_DEPTH (checked before
    json.loads, whose recursion a line of 100,000 brackets would exhaust)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for m in _BRACKETS.finditer(_STRINGS.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _load_json(text: str) -> Any:
    """JSON within the limits; raises json.JSONDecodeError or _Refused."""
    if _too_deep(text):
        raise _Refused("depth")
    try:
        return json.loads(text, object_pairs_hook=_unique, parse_int=_int,
                          parse_float=_float, parse_constant=_constant)
    except RecursionError:  # belt and braces: _too_deep should have stopped it
        raise _Refused("depth") from None


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    for kind, types in (("object", dict), ("array", list), ("string", str),
                        ("number", (int, float))):
        if isinstance(value, types):
            return kind
    return "a syntax error"  # not reached: json.loads returns only the types above


def _json_message(exc: json.JSONDecodeError) -> str:
    return exc.msg if exc.msg in _JSON_MESSAGES else "a syntax error"


# --- reading files --------------------------------------------------------------------------

def _read_bytes(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(UNREADABLE, file=name, kind=type(exc).__name__) from None


def _decode(path: Path, name: str) -> str:
    raw = _read_bytes(path, name)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(NOT_UTF8, file=name, byte=exc.start, line=line) from None


Record = tuple[int, int | None, Mapping[str, Any]]  # (record, line, fields)


@dataclass(frozen=True)
class _Header:
    """What a file's header is checked against: the required columns, the names an error
    may show by name, (another schema than adverts) the required list its fix names, and
    the columns never read even when present (a file read without labels: its label)."""

    required: tuple[str, ...]
    known: frozenset[str]
    fix_names: list[str]  # the {required} of a rule's fix
    unread: frozenset[str] = frozenset()


def _header_for(schema: RecordSchema | None, required: Sequence[str], fmt: str, *,
                labelled: bool = True) -> _Header:
    unread = frozenset() if labelled or schema is None else frozenset({schema.label.name})
    if schema is None or (schema is ADVERT_RECORDS and labelled):
        return _Header(tuple(schema.required if schema else required), KNOWN_COLUMNS,
                       list(REQUIRED_COLUMNS))
    names = frozenset(c.name for c in schema.columns)
    if fmt == "csv" and has_messages(schema):  # one row per message
        columns = csv_columns(schema, labelled=labelled)
        return _Header(columns, names | {*columns, "timestamp"}, list(columns), unread)
    columns = tuple(c for c in schema.required if c not in unread)
    known = KNOWN_COLUMNS if schema is ADVERT_RECORDS else names
    return _Header(columns, known, list(columns), unread)


def read_records(path: Path, *, name: str, required: Sequence[str] = REQUIRED_COLUMNS,
                 schema: RecordSchema | None = None, labelled: bool = True
                 ) -> Iterator[Record]:
    """Yield (record, line, fields) for every record of an export; the header (or first
    record's keys, or Parquet schema) must hold the ``required`` columns (``schema``'s
    when given, whose Parquet column types are checked too). With ``labelled=False`` the
    schema's label column is not required, and a Parquet file's is neither type-checked
    nor read.

    The structural checks happen here; values are left to the caller (read_record_table,
    read_unlabelled, and ``heroes agency score``). ``name`` is how errors show the file.
    """
    fmt = FORMATS.get(PurePath(name).suffix.lower())  # the name's: a link may differ
    if fmt is None:
        raise DataError(UNSUPPORTED, file=name)
    header = _header_for(schema, required, fmt, labelled=labelled)
    if fmt == "parquet":
        yield from _parquet_records(path, name, header, schema or ADVERT_RECORDS)
        return
    text = _decode(path, name)
    if not text.strip():
        raise DataError(EMPTY_FILE, file=name)
    if fmt == "csv":
        yield from _csv_records(text, name, header)
    else:
        yield from _jsonl_records(text, name, header)


def _jsonl_records(text: str, name: str, header: _Header) -> Iterator[Record]:
    first = True
    record = 0
    # Split on newlines only: str.splitlines() would also split inside a JSON string at
    # U+2028, U+0085 and other separators that JSON allows unescaped.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = _load_json(line)
        except json.JSONDecodeError as exc:
            raise DataError(JSON_INVALID, file=name, line=lineno,
                            kind=_json_message(exc)) from None
        except _Refused as exc:
            raise _json_refusal(exc, name, lineno) from None
        if not isinstance(rec, dict):
            raise DataError(JSON_NOT_OBJECT, file=name, line=lineno,
                            kind=_json_kind(rec))
        if first:
            _check_header(name, list(rec), header, csv_header=False)
            first = False
        else:
            missing = [c for c in header.required if c not in rec]
            if missing:
                raise DataError(JSON_LACKS, file=name, line=lineno, columns=missing,
                                required=header.fix_names)
        record += 1
        yield record, lineno, rec


def _json_refusal(exc: _Refused, name: str, lineno: int) -> DataError:
    if exc.what == "depth":
        return DataError(JSON_TOO_DEEP, file=name, line=lineno,
                         limit=MAX_JSON_DEPTH)
    if exc.what == "duplicate":
        return DataError(JSON_DUPLICATE, file=name, line=lineno, column=exc.key)
    return DataError(JSON_NUMBER, file=name, line=lineno, limit=MAX_NUMBER_CHARS)


@contextlib.contextmanager
def _csv_field_limit() -> Iterator[None]:
    """Lift the csv module's field limit (process-wide, restored afterwards) so a long
    field reaches the per-row length check like a long JSONL or Parquet value."""
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _csv_problem(exc: csv.Error) -> str:
    """The csv module's error as one of CSV_UNREADABLE's kinds (its own text is not shown)."""
    text = str(exc)
    for needle, kind in (("NUL", "a NUL byte"), ("expected after", CSV_UNREADABLE.kinds[1]),
                         ("new-line", CSV_UNREADABLE.kinds[2]),
                         ("unexpected end of data", CSV_UNREADABLE.kinds[3])):
        if needle in text:
            return kind
    return "a malformed line"


def _csv_records(text: str, name: str, header_rule: _Header) -> Iterator[Record]:
    with _csv_field_limit():
        reader = csv.reader(io.StringIO(text, newline=""))
        header: list[str] | None = None
        record = 0
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(CSV_UNREADABLE, file=name, line=start,
                                kind=_csv_problem(exc)) from None
            if not fields:  # a blank line
                continue
            if header is None:
                header = fields
                _check_header(name, header, header_rule, csv_header=True)
                continue
            if len(fields) > len(header):
                raise DataError(CSV_EXTRA_FIELDS, file=name, line=start)
            record += 1
            rec: dict[str, Any] = dict.fromkeys(header)
            rec.update(zip(header, fields, strict=False))
            yield record, start, rec


_DELIMITERS = ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes"))


def _check_header(name: str, columns: list[str], header: _Header, *,
                  csv_header: bool) -> None:
    """Every required column present, none twice; said without showing any other name.

    An empty CSV header cell is an unnamed column (spreadsheets pad rows with them); it
    can neither be read nor shadow a schema column, so it may repeat.
    """
    problems: list[Problem] = []
    known = header.known
    missing = [c for c in header.required if c not in columns]
    if missing:
        delimiter = None
        if csv_header and len(columns) == 1:
            delimiter = next((kind for sep, kind in _DELIMITERS
                              if any(part.strip().strip('"') in known
                                     for part in columns[0].split(sep))), None)
        if delimiter is not None:
            problems.append(problem(WRONG_DELIMITER, kind=delimiter))
        elif csv_header and len(columns) > 1 and not any(c in known for c in columns):
            problems.append(problem(NO_HEADER, columns=missing, required=header.fix_names))
        else:
            other = sum(1 for c in columns if c not in known)
            problems.append(problem(MISSING_COLUMNS, columns=missing, count=other,
                                    required=header.fix_names))
    counts = Counter(c for c in columns if c or not csv_header)
    problems += [problem(DUPLICATE_COLUMN, column=c, count=n)
                 for c, n in counts.items() if n > 1]
    if problems:
        raise DataError(problems, file=name)


def _is_text_type(pa: Any, t: Any) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    is_view = getattr(pa.types, "is_string_view", lambda _t: False)  # pyarrow >= 16
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or is_view(t))


def _messages_type_ok(pa: Any, t: Any) -> bool:
    """list<struct<role, text[, timestamp]>> with text fields (or an all-null column)."""
    if pa.types.is_null(t):
        return True
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return False
    item = t.value_type
    if pa.types.is_null(item):  # every list empty
        return True
    if not pa.types.is_struct(item):
        return False
    fields = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
    return {"role", "text"} <= set(fields) and all(
        _is_text_type(pa, ft) or pa.types.is_null(ft)
        for k, ft in fields.items() if k in ("role", "text", "timestamp"))


def _parquet_type_ok(pa: Any, column: Column, t: Any) -> bool:
    if column.type == "messages":
        return _messages_type_ok(pa, t)
    if column.type == "any" or pa.types.is_null(t) or _is_text_type(pa, t):
        return True
    if column.type == "id":
        return bool(pa.types.is_integer(t))
    if column.type == "label":
        return bool(pa.types.is_integer(t) or pa.types.is_floating(t))
    if column.type == "list[str]":
        is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
        return bool(is_list and (_is_text_type(pa, t.value_type)
                                 or pa.types.is_null(t.value_type)))
    return False


def _parquet_type_rule(schema: RecordSchema, column: Column) -> Rule:
    """The advert schema's own rule for its column, else the rule for the column's type."""
    if schema is ADVERT_RECORDS and column.name in PARQUET_TYPES:
        return PARQUET_TYPES[column.name]
    if column.type == "messages":
        return MESSAGES_TYPE
    return PARQUET_TYPE_RULES[column.type]


def _arrow_kind(pa: Any, t: Any) -> str:
    """A Parquet column type as one of a fixed list (a struct's type names its fields)."""
    if str(t) in _ARROW_KINDS:
        return str(t)
    for kind, test in (("decimal", pa.types.is_decimal), ("timestamp", pa.types.is_timestamp),
                       ("time", pa.types.is_time), ("duration", pa.types.is_duration),
                       ("struct", pa.types.is_struct), ("map", pa.types.is_map),
                       ("dictionary", pa.types.is_dictionary),
                       ("list", lambda x: pa.types.is_list(x) or pa.types.is_large_list(x)
                        or pa.types.is_fixed_size_list(x))):
        if test(t):
            return kind
    return "another type"


def _parquet_records(path: Path, name: str, header: _Header, schema: RecordSchema
                     ) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise DataError(PARQUET_EMPTY, file=name)
    # pyarrow reports a damaged file with many unrelated exception types (OSError,
    # ArrowInvalid, UnicodeDecodeError from a flipped bit in a string page, ...): any of
    # them means the file cannot be read, and none of their texts is shown.
    try:
        pf = pq.ParquetFile(path)
        arrow_schema = pf.schema_arrow
        names = [str(n) for n in arrow_schema.names]
    except Exception:
        raise DataError(PARQUET_UNREADABLE, file=name) from None
    _check_header(name, names, header, csv_header=False)
    problems = []
    declared = {c.name: c for c in schema.columns}
    wanted = [*header.required, *(c.name for c in schema.columns
                                  if c.name in names and c.name not in header.required
                                  and c.name not in header.unread)]
    for column in wanted:
        t = arrow_schema.field(column).type
        if column in declared and not _parquet_type_ok(pa, declared[column], t):
            problems.append(problem(_parquet_type_rule(schema, declared[column]),
                                    column=column, kind=_arrow_kind(pa, t)))
    if problems:
        raise DataError(problems, file=name)
    record = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=wanted):
            rows = batch.to_pylist()
            for rec in rows:
                record += 1
                yield record, None, rec
    except Exception:  # as above: the rest of the file cannot be read
        raise DataError(PARQUET_ROWS, file=name, row=record + 1, record=record) from None


# --- values -----------------------------------------------------------------------------

def _label_value(raw: object) -> int | None:
    """The integer a label cell holds, or None when it holds no integer."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return int(raw) if raw.is_integer() else None
    if isinstance(raw, str):
        m = _LABEL_TEXT.fullmatch(raw.strip())
        return int(m.group(1)) if m else None
    return None


def _label_kind(raw: object) -> str:
    """What a label outside the scheme is, as one of LABEL_OUTSIDE's kinds (not its value:
    a shifted column can put advert text, or a phone number, into the label cell)."""
    if isinstance(raw, bool):
        return "a true/false value"
    if isinstance(raw, int):
        return "a whole number"
    if isinstance(raw, float):
        if math.isinf(raw):
            return "an infinite number"
        return "a whole number" if raw.is_integer() else "a number with a fraction"
    if isinstance(raw, str):
        s = raw.strip()
        if len(s) <= MAX_NUMBER_CHARS and _NUMBER_TEXT.fullmatch(s):
            value = float(s)
            if math.isinf(value):
                return "an infinite number"
            return "a whole number" if value.is_integer() else "a number with a fraction"
        return "a non-numeric str value"
    if isinstance(raw, list):
        return "a non-numeric list value"
    if isinstance(raw, dict):
        return "a non-numeric dict value"
    return "a value of another type"


def _parse_label(raw: object, scheme: LabelScheme, name: str, where: int) -> int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, float) and math.isnan(raw):
        return None
    value = _label_value(raw)
    if value is None or value not in scheme.values:
        raise DataError(LABEL_OUTSIDE, file=name, row=where, kind=_label_kind(raw),
                        scheme=scheme)
    return value


def clean_text(raw: object) -> tuple[str, str | None]:
    """(normalised text, None), or ("", the reason the row's text is unusable)."""
    if raw is None:
        return "", EMPTY_TEXT
    if not isinstance(raw, str):
        return "", TEXT_NOT_STRING
    try:
        text = normalise_text(raw)
    except UnusableText as exc:
        return "", exc.reason
    return (text, None) if text.strip() else ("", EMPTY_TEXT)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _usable_field(value: str) -> bool:
    return len(value) <= MAX_FIELD_CHARS and (value.isascii() or not _SURROGATE.search(value))


def _clean_id(raw: object, column: str) -> tuple[str, str | None]:
    if raw is None or isinstance(raw, bool) or (isinstance(raw, float) and math.isnan(raw)):
        return "", f"missing {column}"
    if not isinstance(raw, str | int | float):
        return "", f"{column} unusable"
    value = str(raw).strip()
    if not value:
        return "", f"missing {column}"
    return (value, None) if _usable_field(value) else ("", f"{column} unusable")


def clean_id(raw: object) -> tuple[str, str | None]:
    """(advert id, None), or ("", why the row's advert_id is missing or unusable)."""
    return _clean_id(raw, "advert_id")


def _short_value(raw: object, column: str) -> tuple[str, str | None]:
    """An optional short value (a category): empty when absent, set aside when unusable."""
    if raw is None or isinstance(raw, bool) or (isinstance(raw, float) and math.isnan(raw)):
        return "", None
    if not isinstance(raw, str | int | float):
        return "", f"{column} unusable"
    value = str(raw)
    return (value, None) if _usable_field(value) else ("", f"{column} unusable")


def _text_list(raw: object, column: str) -> tuple[tuple[str, ...], str | None]:
    """A list of free texts, each normalised; their total is held to MAX_TEXT_CHARS, the
    limit of one text, so a record costs the same however its text is cut into items."""
    if not isinstance(raw, list):
        return (), f"{column} not a list"
    texts = []
    for item in raw:
        text, reason = clean_text(item)
        if reason is not None:
            return (), reason
        texts.append(text)
    if not texts:
        return (), EMPTY_TEXT
    if sum(len(t) for t in texts) > MAX_TEXT_CHARS:
        return (), TEXT_TOO_LONG
    return tuple(texts), None


def _clean(column: Column, raw: object, roles: Sequence[str]) -> tuple[object, str | None]:
    """One column's cleaned value, or the reason its row is set aside."""
    if column.type == "messages":
        return clean_messages(raw, column=column.name, roles=roles)
    if column.type == "id":
        return _clean_id(raw, column.name)
    if column.type == "list[str]":
        return _text_list(raw, column.name)
    if column.text:
        return clean_text(raw)
    return _short_value(raw, column.name)


def _require_file(path: Path, name: str) -> None:
    """A regular file (not a folder, device or pipe, which a reader could block on)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(FILE_NOT_FOUND, file=name) from None
    except OSError as exc:
        raise DataError(UNREADABLE, file=name, kind=type(exc).__name__) from None
    if not stat.S_ISREG(mode):
        raise DataError(NOT_A_FILE, file=name)


def _check_row(schema: RecordSchema, rec: Mapping[str, Any], label: int | None,
               seen: Mapping[str, int], *, labelled: bool = True
               ) -> tuple[dict[str, object], str | None, int | None]:
    """A row's cleaned values, or the first reason (schema.check_order) it is set aside
    for, and for a repeated id the record of its first use. Unlabelled, the label column
    is skipped."""
    cleaned: dict[str, object] = {}
    for column in schema.check_order():
        if column.type == "label":
            if labelled and label is None:
                return cleaned, f"missing {column.name}", None
            continue
        value, reason = _clean(column, rec.get(column.name), schema.roles)
        if reason is not None:
            return cleaned, reason, None
        if column.unique and isinstance(value, str) and value in seen:
            return cleaned, f"duplicate {column.name}", seen[value]
        cleaned[column.name] = value
    return cleaned, None, None


_Checked = tuple[int, int | None, Mapping[str, Any], int | None, str | None]


def _records(path: Path, name: str, schema: RecordSchema, scheme: LabelScheme | None
             ) -> Iterator[_Checked]:
    """(record, line, fields, label, a reason found before the row checks) per record.
    Without a ``scheme`` (unlabelled) no label is read: every label is None."""
    if has_messages(schema) and FORMATS.get(PurePath(name).suffix.lower()) == "csv":
        yield from _csv_conversations(path, name, schema, scheme)
        return
    for record, line, rec in read_records(path, name=name, schema=schema,
                                          labelled=scheme is not None):
        label = None if scheme is None else _parse_label(
            rec.get(schema.label.name), scheme, name, record if line is None else line)
        yield record, line, rec, label, None


def _csv_conversations(path: Path, name: str, schema: RecordSchema, scheme: LabelScheme | None
                       ) -> Iterator[_Checked]:
    """A conversation CSV's records: its message rows grouped by id (federation/
    conversations.py), numbered in the order of each conversation's first row. Without a
    ``scheme`` the label cells are not read (so no conversation's labels can differ)."""
    assert schema.id is not None
    id_name, label_name = schema.id.name, schema.label.name

    def rows() -> Iterator[MessageRow]:
        for _, line, rec in read_records(path, name=name, schema=schema,
                                         labelled=scheme is not None):
            assert line is not None
            conv_id, id_reason = _clean_id(rec.get(id_name), id_name)
            yield MessageRow(
                line=line, conversation_id="" if id_reason else conv_id,
                id_raw=rec.get(id_name), position=rec.get(schema.position),
                label=None if scheme is None else _parse_label(
                    rec.get(label_name), scheme, name, line),
                message={k: rec.get(k) for k in ("role", "timestamp", "text")})

    for record, conv in enumerate(group_rows(rows(), schema), start=1):
        yield record, conv.line, conv.fields, conv.label, conv.reason


def read_record_table(path: Path, schema: RecordSchema, scheme: LabelScheme, *,
                      name: str | None = None) -> RecordTable:
    """Read one file of ``schema``, validating it against the schema and label scheme.

    ``name`` is the file as errors and the quarantine report show it (relative to the data
    folder; its own name when not given). Every record is usable or set aside.
    """
    return _read_table(path, schema, scheme, path.name if name is None else name)


def read_unlabelled(path: Path, schema: RecordSchema, *, name: str | None = None
                    ) -> UnlabelledTable:
    """Read one file of ``schema`` that has no labels: a file to score (seized chats, a
    hotline's reports). Every rule of ``read_record_table`` applies (structure, limits,
    normalisation, quarantine, content-free errors) except the label's: the label column
    is not required, and when the file has one it is not read (neither checked against
    any scheme nor kept), so a labelled export reads to the same records as without it.
    """
    table = _read_table(path, schema, None, path.name if name is None else name)
    assert isinstance(table, UnlabelledTable)
    return table


def _read_table(path: Path, schema: RecordSchema, scheme: LabelScheme | None, name: str
                ) -> RecordTable:
    """read_record_table, or without a ``scheme`` read_unlabelled."""
    _require_file(path, name)
    id_column = schema.id
    read = [c.name for c in schema.check_order() if c.type not in ("label", "id")]
    ids: list[str] = []
    values: dict[str, list[object]] = {c: [] for c in read}
    labels: list[int] = []
    seen: dict[str, int] = {}
    quarantine: list[Rejection] = []
    labelled = scheme is not None
    for record, line, rec, label, reason in _records(path, name, schema, scheme):
        cleaned: dict[str, object] = {}
        first = None
        if reason is None:
            try:
                cleaned, reason, first = _check_row(schema, rec, label, seen,
                                                    labelled=labelled)
            except NotAMessage as exc:
                raise DataError(MESSAGE_NOT_OBJECT, file=name,
                                row=record if line is None else line, count=exc.index,
                                kind=exc.kind) from None
        if reason is not None or (labelled and label is None):
            quarantine.append(Rejection(record, line, reason or MISSING_LABEL, first))
            continue
        row_id = str(cleaned[id_column.name]) if id_column else str(record)
        seen[row_id] = record
        ids.append(row_id)
        for c in read:
            values[c].append(cleaned[c])
        if label is not None:
            labels.append(label)
    rejected = Counter(r.reason for r in quarantine)
    if not ids:
        rule = NO_USABLE_ROWS if schema is ADVERT_RECORDS else NO_USABLE_RECORDS
        raise DataError(rule, file=name, counts=dict(rejected))
    if scheme is None:
        return UnlabelledTable(
            path=path, schema=schema, ids=tuple(ids),
            values={c: tuple(v) for c, v in values.items()},
            labels=np.empty(0, dtype=np.int64), positive=np.empty(0, dtype=np.float32),
            rejected=dict(rejected), quarantine=tuple(quarantine), name=name,
        )
    lab = np.asarray(labels, dtype=np.int64)
    table = AdvertTable if schema is ADVERT_RECORDS else RecordTable
    return table(
        path=path, schema=schema, ids=tuple(ids),
        values={c: tuple(v) for c, v in values.items()},
        labels=lab, positive=(lab >= scheme.positive_from).astype(np.float32),
        rejected=dict(rejected), quarantine=tuple(quarantine), name=name,
    )


def read_table(path: Path, scheme: LabelScheme, *, name: str | None = None) -> AdvertTable:
    """Read one advert export file (federation.schema.ADVERT_RECORDS)."""
    table = read_record_table(path, ADVERT_RECORDS, scheme, name=name)
    assert isinstance(table, AdvertTable)
    return table


# --- the manifest ---------------------------------------------------------------------------

def _inside(root: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before 3.13)
        return False


def _export_name(root: Path, key: str, value: object) -> tuple[list[Problem], Path | None]:
    """The problems of one manifest file name, or its resolved path inside ``root``."""
    if not isinstance(value, str):
        return [problem(KEY_NOT_STRING, key=key, kind=_json_kind(value))], None
    if not value:
        return [problem(NAME_EMPTY, key=key)], None
    if len(value) > MAX_FILE_NAME_CHARS:
        return [problem(NAME_TOO_LONG, key=key, count=len(value),
                        limit=MAX_FILE_NAME_CHARS)], None
    if not value.isprintable():
        return [problem(NAME_UNPRINTABLE, key=key)], None
    rel = PurePath(value)
    if rel.is_absolute() or rel.drive:
        return [problem(NAME_ABSOLUTE, key=key)], None
    if PurePath(os.path.normpath(value)).parts[:1] == ("..",):
        return [problem(NAME_OUTSIDE, key=key)], None
    if rel.suffix.lower() not in FORMATS:
        return [problem(NAME_SUFFIX, key=key)], None
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError):
        return [problem(NAME_UNRESOLVABLE, key=key)], None
    if not target.is_relative_to(root):
        return [problem(NAME_LINK_OUTSIDE, key=key)], None
    return [], target


def _manifest(data_dir: Path, schemes: Mapping[str, LabelScheme] = LABEL_SCHEMES
              ) -> tuple[dict[str, Any], dict[str, Path]]:
    """The validated manifest and the resolved paths of its train and test files."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(DATA_DIR_MISSING)
    root = data_dir.resolve()
    path = data_dir / MANIFEST
    if not os.path.lexists(path):
        raise DataError(MANIFEST_MISSING)
    if not _inside(root, path):
        raise DataError(MANIFEST_OUTSIDE, file=MANIFEST)
    _require_file(path, MANIFEST)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DataError(MANIFEST_TOO_BIG, file=MANIFEST, limit=MAX_MANIFEST_BYTES)
    try:
        manifest = _load_json(_decode(path, MANIFEST))
    except json.JSONDecodeError as exc:
        raise DataError(MANIFEST_NOT_JSON, file=MANIFEST, line=exc.lineno,
                        kind=_json_message(exc)) from None
    except _Refused as exc:
        if exc.what == "depth":
            raise DataError(MANIFEST_TOO_DEEP, file=MANIFEST, limit=MAX_JSON_DEPTH) from None
        if exc.what == "duplicate":
            raise DataError(MANIFEST_DUPLICATE, file=MANIFEST, key=exc.key) from None
        raise DataError(MANIFEST_NUMBER, file=MANIFEST, limit=MAX_NUMBER_CHARS) from None
    if not isinstance(manifest, dict):
        raise DataError(MANIFEST_NOT_OBJECT, file=MANIFEST, kind=_json_kind(manifest))
    problems = [problem(MISSING_KEY, key=k) for k in MANIFEST_REQUIRED if k not in manifest]
    agency = manifest.get("agency", "")
    if not isinstance(agency, str):
        problems.append(problem(KEY_NOT_STRING, key="agency", kind=_json_kind(agency)))
    elif "agency" in manifest and not agency.strip():
        problems.append(problem(AGENCY_EMPTY))
    elif len(agency) > MAX_AGENCY_CHARS:
        problems.append(problem(AGENCY_TOO_LONG, count=len(agency), limit=MAX_AGENCY_CHARS))
    elif not agency.isprintable():
        problems.append(problem(AGENCY_UNPRINTABLE))
    if "label_scheme" in manifest:
        scheme = manifest["label_scheme"]
        if not isinstance(scheme, str):
            problems.append(problem(KEY_NOT_STRING, key="label_scheme",
                                    kind=_json_kind(scheme)))
        elif scheme not in schemes:
            problems.append(problem(SCHEME_UNKNOWN))
    paths: dict[str, Path] = {}
    for key in ("train", "test"):
        if key in manifest:
            found, target = _export_name(root, key, manifest[key])
            problems += found
            if target is not None:
                paths[key] = target
    if len(paths) == 2 and paths["train"] == paths["test"]:
        problems.append(problem(SAME_FILE))
    if problems:
        raise DataError(problems, file=MANIFEST)
    return dict(manifest), paths


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The agency's manifest, every rule checked (see the module docstring)."""
    return _manifest(data_dir)[0]


def load_records(data_dir: Path, schema: RecordSchema) -> AgencyRecords:
    """Read and validate an agency's manifest and its train and test files of ``schema``."""
    data_dir = Path(data_dir)
    manifest, paths = _manifest(data_dir, schema.label_schemes)
    scheme = schema.label_schemes[manifest["label_scheme"]]
    return AgencyRecords(
        agency=str(manifest["agency"]),
        scheme=scheme,
        train=read_record_table(paths["train"], schema, scheme, name=manifest["train"]),
        test=read_record_table(paths["test"], schema, scheme, name=manifest["test"]),
        data_dir=data_dir,
    )


def load_agency(data_dir: Path) -> AgencyData:
    """Read and validate an agency's manifest, train export and test export (adverts)."""
    data = load_records(data_dir, ADVERT_RECORDS)
    assert isinstance(data.train, AdvertTable) and isinstance(data.test, AdvertTable)
    return AgencyData(agency=data.agency, scheme=data.scheme, train=data.train,
                      test=data.test, data_dir=data.data_dir)


#: The schemas an export's manifest can name in ``schema_version`` (adverts when absent).
EXPORT_SCHEMAS: dict[str, RecordSchema] = {
    s.name: s for s in (ADVERT_RECORDS, CONVERSATION_RECORDS)}


def load_export(data_dir: Path) -> AgencyRecords:
    """Read an export of whichever schema its manifest's ``schema_version`` names: a
    conversation export for "conversation-export/1", otherwise (absent, or any other
    value, as before schemas were named) the advert export, exactly as load_agency."""
    schemes = {k: v for s in EXPORT_SCHEMAS.values() for k, v in s.label_schemes.items()}
    manifest = _manifest(Path(data_dir), schemes)[0]
    schema = EXPORT_SCHEMAS.get(str(manifest.get("schema_version")), ADVERT_RECORDS)
    return load_agency(data_dir) if schema is ADVERT_RECORDS else load_records(data_dir, schema)
