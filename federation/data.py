"""Reading and validating an agency's advert export.

An agency's data directory holds ``manifest.json`` (which files, which label scheme) and
the train and test exports as CSV, JSONL or Parquet. Everything is checked before any
training: structural problems (missing file, missing columns, bad encoding, a Parquet
column of the wrong type, a label outside the scheme) stop with a DataError naming file,
row and fix; rows that are merely unusable (no text, no label, a repeated advert id) are
set aside into the table's quarantine, one entry per row with its number and reason,
and counted by reason.

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

Messages and quarantine entries name files, rows, columns and reasons, never advert
content (not even advert ids): they may be logged, shared with the agency's IT or data
protection officer, and returned to the aggregator.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from federation.errors import DataError
from federation.schema import LABEL_SCHEMES, REQUIRED_COLUMNS, LabelScheme

MANIFEST = "manifest.json"
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}

#: Why a row is set aside (the keys of ``AdvertTable.rejected``).
EMPTY_TEXT = "empty text"
TEXT_NOT_STRING = "text not a string"
MISSING_LABEL = "missing label"
MISSING_ID = "missing advert_id"
DUPLICATE_ID = "duplicate advert_id"

_PARQUET_BATCH = 8192
_LABEL_TEXT = re.compile(r"(0|[1-9][0-9]*)(\.0+)?")
_QUOTABLE_LABEL = re.compile(r"[+-]?[0-9]{1,6}(\.[0-9]{1,3})?")


@dataclass(frozen=True)
class Rejection:
    """One row set aside: where it is and why (never what it holds)."""

    record: int  # 1-based data record number in its file (see the module docstring)
    line: int | None  # CSV/JSONL: line where the record starts; Parquet: None
    reason: str
    duplicate_of: int | None = None  # for a repeated advert_id: record of its first use


@dataclass(frozen=True)
class AdvertTable:
    """The usable rows of one export file, plus what was set aside and why."""

    path: Path
    advert_ids: tuple[str, ...]
    texts: tuple[str, ...]
    categories: tuple[str, ...]
    labels: np.ndarray  # in the agency's own scheme
    positive: np.ndarray  # binary view used for training and metrics
    rejected: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    quarantine: tuple[Rejection, ...] = ()  # one entry per rejected row, in file order

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def format(self) -> str:
        return FORMATS.get(self.path.suffix.lower(), self.path.suffix.lstrip("."))


@dataclass(frozen=True)
class AgencyData:
    agency: str
    scheme: LabelScheme
    train: AdvertTable
    test: AdvertTable
    data_dir: Path | None = None

    def rejection_report(self) -> dict[str, dict[str, int]]:
        """Counts of set-aside rows per file and reason (no row content)."""
        return {
            "train": dict(self.train.rejected),
            "test": dict(self.test.rejected),
        }


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"byte {exc.start} (line {line}) is not valid UTF-8",
            path=path,
            fix="re-export the file as UTF-8 (for example with "
            "`iconv -f LATIN1 -t UTF-8`) and try again",
        ) from None


Record = tuple[int, int | None, Mapping[str, Any]]  # (record, line, fields)


def _records(path: Path, fmt: str) -> Iterator[Record]:
    """Yield (record, line, fields) triples; the header check happens here too."""
    if fmt == "parquet":
        yield from _parquet_records(path)
        return
    text = _decode(path)
    if not text.strip():
        raise DataError(
            "the file is empty", path=path, fix="export the adverts again; a header and "
            "at least one row are needed"
        )
    if fmt == "csv":
        yield from _csv_records(path, text)
        return
    first = True
    record = 0
    # Split on newlines only: str.splitlines() would also split inside a JSON string at
    # U+2028, U+0085 and other separators that JSON allows unescaped.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"line {lineno} is not valid JSON ({exc.msg})",
                path=path,
                row=lineno,
                fix="write one JSON object per line",
            ) from None
        if not isinstance(rec, dict):
            raise DataError(
                f"line {lineno} is a JSON {type(rec).__name__}, not an object",
                path=path,
                row=lineno,
                fix="write one JSON object per line",
            )
        if first:
            _check_columns(path, list(rec))
            first = False
        else:
            missing = [c for c in REQUIRED_COLUMNS if c not in rec]
            if missing:
                raise DataError(
                    f"line {lineno} lacks field(s) {missing}",
                    path=path,
                    row=lineno,
                    fix=f"every line needs the fields {list(REQUIRED_COLUMNS)}",
                )
        record += 1
        yield record, lineno, rec


def _csv_records(path: Path, text: str) -> Iterator[Record]:
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
            raise DataError(
                f"line {start} cannot be read as CSV ({exc})",
                path=path,
                row=start,
                fix="re-export the file as standard CSV (quoted text fields, no NUL bytes)",
            ) from None
        if not fields:  # a blank line
            continue
        if header is None:
            header = fields
            _check_columns(path, header)
            continue
        if len(fields) > len(header):
            raise DataError(
                f"line {start} has more fields than the header",
                path=path,
                row=start,
                fix="quote text fields that contain commas",
            )
        record += 1
        rec: dict[str, Any] = dict.fromkeys(header)
        rec.update(zip(header, fields, strict=False))
        yield record, start, rec


def _is_text_type(pa: Any, t: Any) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    is_view = getattr(pa.types, "is_string_view", lambda _t: False)  # pyarrow >= 16
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or is_view(t))


#: What each Parquet column read here may be; a column of type null (all empty) always passes.
_PARQUET_TYPES: dict[str, tuple[str, str]] = {
    "advert_id": ("text or integer", "astype(str)"),
    "text": ("text", "astype(str)"),
    "category": ("text", "astype(str)"),
    "label": ("integer, integral float or text", "astype('Int64')"),
}


def _parquet_type_ok(pa: Any, column: str, t: Any) -> bool:
    if pa.types.is_null(t) or _is_text_type(pa, t):
        return True
    if column == "advert_id":
        return bool(pa.types.is_integer(t))
    if column == "label":
        return bool(pa.types.is_integer(t) or pa.types.is_floating(t))
    return column not in _PARQUET_TYPES


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise DataError(
            "the file is empty", path=path,
            fix="export the adverts again; at least one row is needed",
        )
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"not a readable Parquet file ({type(exc).__name__}: {str(exc)[:160]})",
            path=path,
            fix="export the file again as Parquet, or as CSV or JSONL",
        ) from None
    names = list(schema.names)
    _check_columns(path, names)
    problems = []
    for column in REQUIRED_COLUMNS:
        if names.count(column) > 1:
            problems.append(f"column {column!r} appears {names.count(column)} times")
            continue
        t = schema.field(column).type
        if not _parquet_type_ok(pa, column, t):
            expected, cast = _PARQUET_TYPES[column]
            problems.append(f"column {column!r} has Parquet type {t}, expected {expected} "
                            f"(with pandas: df[{column!r}] = df[{column!r}].{cast})")
    if problems:
        raise DataError(
            "; ".join(problems), path=path,
            fix="write each column with the type the advert schema gives it and export again",
        )
    record = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=list(REQUIRED_COLUMNS)):
            for rec in batch.to_pylist():
                record += 1
                yield record, None, rec
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"the rows after record {record} cannot be read ({type(exc).__name__})",
            path=path, row=record + 1,
            fix="export the file again; it may be truncated or corrupted",
        ) from None


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; found {columns}",
            path=path,
            fix=f"export the columns {list(REQUIRED_COLUMNS)} (extra columns are ignored)",
        )


def _label_value(raw: object) -> int | None:
    """The integer a label cell holds, or None when it holds no integer."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return int(raw) if raw.is_integer() else None
    if isinstance(raw, str) and _LABEL_TEXT.fullmatch(raw.strip()):
        return int(float(raw.strip()))
    return None


def _parse_label(raw: object, scheme: LabelScheme, path: Path, where: int) -> int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, float) and math.isnan(raw):
        return None
    value = _label_value(raw)
    if value is None or value not in scheme.values:
        shown = str(raw).strip()
        # Quote the value only when it looks like a number: a shifted column can put
        # advert text into the label cell, and messages never quote advert text.
        what = (repr(shown) if _QUOTABLE_LABEL.fullmatch(shown)
                else f"(a non-numeric {type(raw).__name__} value, not shown)")
        raise DataError(
            f"label {what} is outside the label scheme {scheme.describe()}",
            path=path,
            row=where,
            fix="correct the label, or set the right label_scheme in manifest.json",
        )
    return value


def _advert_id(raw: object) -> str:
    if raw is None or isinstance(raw, bool):
        return ""
    if isinstance(raw, float) and math.isnan(raw):
        return ""
    return str(raw).strip()


def read_table(path: Path, scheme: LabelScheme) -> AdvertTable:
    """Read one export file, validating it against the schema and label scheme."""
    if not path.is_file():
        raise DataError(
            "file not found", path=path,
            fix="check the data directory and the file names in manifest.json",
        )
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"unsupported file type {path.suffix!r}; supported: {sorted(FORMATS)}",
            path=path,
            fix="export as CSV, JSONL or Parquet",
        )
    ids: list[str] = []
    texts: list[str] = []
    cats: list[str] = []
    labels: list[int] = []
    seen: dict[str, int] = {}
    quarantine: list[Rejection] = []
    for record, line, rec in _records(path, fmt):
        label = _parse_label(rec.get("label"), scheme, path, record if line is None else line)
        text = rec.get("text")
        advert_id = _advert_id(rec.get("advert_id"))
        reason = None
        if text is None or (isinstance(text, str) and not text.strip()):
            reason = EMPTY_TEXT
        elif not isinstance(text, str):
            reason = TEXT_NOT_STRING
        elif label is None:
            reason = MISSING_LABEL
        elif not advert_id:
            reason = MISSING_ID
        elif advert_id in seen:
            quarantine.append(Rejection(record, line, DUPLICATE_ID, seen[advert_id]))
            continue
        if reason is not None:
            quarantine.append(Rejection(record, line, reason))
            continue
        assert isinstance(text, str) and label is not None  # narrowed above
        seen[advert_id] = record
        ids.append(advert_id)
        texts.append(text)
        cats.append(str(rec.get("category") or ""))
        labels.append(label)
    rejected = Counter(r.reason for r in quarantine)
    if not texts:
        raise DataError(
            f"no usable rows (set aside: {dict(rejected) or 'none'})",
            path=path,
            fix="export adverts that have text and a label",
        )
    lab = np.asarray(labels, dtype=np.int64)
    return AdvertTable(
        path=path,
        advert_ids=tuple(ids),
        texts=tuple(texts),
        categories=tuple(cats),
        labels=lab,
        positive=(lab >= scheme.positive_from).astype(np.float32),
        rejected=dict(rejected),
        quarantine=tuple(quarantine),
    )


def read_manifest(data_dir: Path) -> dict[str, Any]:
    if not data_dir.is_dir():
        raise DataError(
            "data directory not found", path=data_dir,
            fix="point data_dir in the node configuration at the agency's export folder",
        )
    path = data_dir / MANIFEST
    if not path.is_file():
        raise DataError(
            f"no {MANIFEST} in the data directory", path=data_dir,
            fix=f"add {MANIFEST} with keys agency, label_scheme, train, test",
        )
    try:
        manifest = json.loads(_decode(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg})", path=path, row=exc.lineno) from None
    if not isinstance(manifest, dict):
        raise DataError(f"holds a JSON {type(manifest).__name__}, not an object", path=path,
                        fix="write one object with keys agency, label_scheme, train, test")
    problems = [
        f"missing key {k!r}" for k in ("agency", "label_scheme", "train", "test")
        if k not in manifest
    ]
    scheme = manifest.get("label_scheme")
    problems += [f"{k!r} must be a file name (a string)" for k in ("train", "test")
                 if k in manifest and not isinstance(manifest[k], str)]
    if scheme is not None and (not isinstance(scheme, str) or scheme not in LABEL_SCHEMES):
        problems.append(f"label_scheme {scheme!r} is not one of {sorted(LABEL_SCHEMES)}")
    if problems:
        raise DataError("; ".join(problems), path=path, fix="correct the manifest")
    return dict(manifest)


def load_agency(data_dir: Path) -> AgencyData:
    """Read and validate an agency's manifest, train export and test export."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    scheme = LABEL_SCHEMES[manifest["label_scheme"]]
    return AgencyData(
        agency=str(manifest["agency"]),
        scheme=scheme,
        train=read_table(data_dir / manifest["train"], scheme),
        test=read_table(data_dir / manifest["test"], scheme),
        data_dir=data_dir,
    )
