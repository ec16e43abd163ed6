"""The quarantine report: which rows of an agency's export were set aside, and why.

Written before a node trains (``heroes agency check``, ``heroes agency serve``) so the
agency's IT team or data protection officer can fix the export. It names files (as the
manifest names them, relative to the data folder), record and line numbers (see
``federation.data`` for the convention), reasons and counts, plus the label distribution
of the usable rows. It never holds row content: no advert text,
advert ids, categories, sites or phone numbers, so it can be shared as it is.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from federation.data import AgencyRecords, RecordTable
from federation.errors import DataError, Rule
from federation.files import write_atomic

REPORT_FORMAT = "heroes-quarantine-report/1"
REPORT_JSON = "quarantine-report.json"
REPORT_TXT = "quarantine-report.txt"
ROW_NUMBERS = (
    "record: 1-based position among the file's data records (a CSV header and blank "
    "lines are not records); line: 1-based line where the record starts in a CSV or "
    "JSONL file (null for Parquet)"
)
#: Added for a conversation CSV, where a record is a conversation, not a row.
CONVERSATION_ROW_NUMBERS = (
    "; in a conversation CSV (one row per message) a record is a conversation, numbered in "
    "the order of its first row, and its line is that row's line (a row without a usable "
    "conversation_id is a record of its own)")
#: Rows listed one by one in the text report and the command's output (the JSON has all).
TEXT_ROWS = 20

CANNOT_WRITE = Rule(
    "cannot write the quarantine report ({kind})",
    "give a report folder this user can create and write to",
    kinds=("PermissionError", "FileExistsError", "NotADirectoryError", "IsADirectoryError",
           "FileNotFoundError", "OSError"))


def _splits(data: AgencyRecords) -> list[tuple[str, RecordTable]]:
    return [("train", data.train), ("test", data.test)]


def _file_name(table: RecordTable) -> str:
    """The file as the manifest names it (relative to the data folder)."""
    return table.name or table.path.name


def label_counts(data: AgencyRecords, table: RecordTable) -> dict[str, int]:
    """Usable rows per value of the agency's label scheme (every value, zeros included)."""
    counts = Counter(int(v) for v in table.labels)
    return {str(v): counts.get(v, 0) for v in data.scheme.values}


def row_numbers(data: AgencyRecords) -> str:
    """How the report's record and line numbers are counted, for this export's schema."""
    if data.train.schema.position:
        return ROW_NUMBERS + CONVERSATION_ROW_NUMBERS
    return ROW_NUMBERS


def quarantine_report(data: AgencyRecords) -> dict[str, Any]:
    """The report as a JSON-ready dict: per file the rows set aside, totals per reason."""
    files = []
    by_reason: Counter[str] = Counter()
    for split, table in _splits(data):
        by_reason.update(table.rejected)
        rows = []
        for r in table.quarantine:
            entry: dict[str, Any] = {"record": r.record, "line": r.line, "reason": r.reason}
            if r.duplicate_of is not None:
                entry["duplicate_of_record"] = r.duplicate_of
            rows.append(entry)
        files.append({
            "split": split,
            "file": _file_name(table),
            "format": table.format,
            "records": len(table) + table.rejected_total,
            "usable": len(table),
            "set_aside": table.rejected_total,
            "set_aside_by_reason": dict(sorted(table.rejected.items())),
            "labels": label_counts(data, table),
            "positive": int(table.positive.sum()),
            "rows": rows,
        })
    return {
        "format": REPORT_FORMAT,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "agency": data.agency,
        "data_dir": None if data.data_dir is None else str(data.data_dir),
        "label_scheme": data.scheme.name,
        "row_numbers": row_numbers(data),
        "files": files,
        "totals": {
            "usable": sum(f["usable"] for f in files),
            "set_aside": sum(f["set_aside"] for f in files),
            "set_aside_by_reason": dict(sorted(by_reason.items())),
        },
    }


def render_summary(data: AgencyRecords, *, rows: int = TEXT_ROWS) -> str:
    """A short human-readable summary; lists at most ``rows`` set-aside rows per file."""
    report = quarantine_report(data)
    lines = [f"agency {data.agency}: label scheme {data.scheme.describe()}"]
    for f in report["files"]:
        lines.append(f"{f['split']}: {f['file']} ({f['format']}): {f['records']} record(s), "
                     f"{f['usable']} usable, {f['set_aside']} set aside")
        for reason, n in f["set_aside_by_reason"].items():
            lines.append(f"  set aside, {reason}: {n}")
        share = f["positive"] / f["usable"] if f["usable"] else 0.0
        labels = ", ".join(f"{v}: {n}" for v, n in f["labels"].items())
        lines.append(f"  labels of usable rows ({data.scheme.name}): {labels}; "
                     f"positive {f['positive']} ({share:.1%})")
        for entry in f["rows"][:rows]:
            where = f"record {entry['record']}"
            if entry["line"] is not None:
                where += f" (line {entry['line']})"
            extra = ""
            if "duplicate_of_record" in entry:
                extra = f", first used at record {entry['duplicate_of_record']}"
            lines.append(f"  - {where}: {entry['reason']}{extra}")
        if len(f["rows"]) > rows:
            lines.append(f"  ... and {len(f['rows']) - rows} more set-aside row(s): every one "
                         f"is listed in {REPORT_JSON}")
    t = report["totals"]
    lines.append(f"total: {t['usable']} usable, {t['set_aside']} set aside"
                 + "".join(f"; {r}: {n}" for r, n in t["set_aside_by_reason"].items()))
    if t["set_aside"]:
        lines.append(f"row numbers: {row_numbers(data)}")
    return "\n".join(lines)


def write_quarantine_report(data: AgencyRecords, out_dir: Path) -> Path:
    """Write ``quarantine-report.json`` and ``quarantine-report.txt``; return the JSON's path.

    Each file is replaced atomically (written beside it, then renamed), so a report
    being read while a new check runs is always a whole one.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        report = quarantine_report(data)
        write_atomic(out_dir / REPORT_TXT, (render_summary(data) + "\n").encode("utf-8"))
        path = out_dir / REPORT_JSON
        write_atomic(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        raise DataError(CANNOT_WRITE, file=out_dir, kind=type(exc).__name__) from None
    return path
