"""Reading and validating an agency's advert export.

An agency's data directory holds ``manifest.json`` (which files, which label scheme) and
the train and test exports as CSV or JSONL. Everything is checked before any training:
structural problems (missing file, missing columns, bad encoding, a label outside the
scheme) stop with a DataError naming file, line and fix; rows that are merely unusable
(no text, no label, a repeated advert id) are set aside, counted by reason and reported.

Messages name files, lines and columns, never advert content: they may be logged and
returned to the aggregator.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from federation.errors import DataError
from federation.schema import LABEL_SCHEMES, REQUIRED_COLUMNS, LabelScheme

MANIFEST = "manifest.json"
FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


@dataclass(frozen=True)
class AdvertTable:
    """The usable rows of one export file, plus what was set aside and why."""

    path: Path
    advert_ids: tuple[str, ...]
    texts: tuple[str, ...]
    categories: tuple[str, ...]
    labels: np.ndarray  # in the agency's own scheme
    positive: np.ndarray  # binary view used for training and metrics
    rejected: Mapping[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass(frozen=True)
class AgencyData:
    agency: str
    scheme: LabelScheme
    train: AdvertTable
    test: AdvertTable

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


def _records(path: Path, fmt: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Yield (line number, record) pairs; the header check happens here too."""
    text = _decode(path)
    if not text.strip():
        raise DataError(
            "the file is empty", path=path, fix="export the adverts again; a header and "
            "at least one row are needed"
        )
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = reader.fieldnames or []
        _check_columns(path, list(columns))
        for rec in reader:
            if None in rec:
                raise DataError(
                    f"line {reader.line_num} has more fields than the header",
                    path=path,
                    row=reader.line_num,
                    fix="quote text fields that contain commas",
                )
            yield reader.line_num, rec
        return
    first = True
    for lineno, line in enumerate(text.splitlines(), start=1):
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
        yield lineno, rec


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; found {columns}",
            path=path,
            fix=f"export the columns {list(REQUIRED_COLUMNS)} (extra columns are ignored)",
        )


def _parse_label(raw: object, scheme: LabelScheme, path: Path, line: int) -> int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = int(str(raw).strip())
        if str(raw).strip() not in (str(value), f"{value}.0"):
            raise ValueError
    except ValueError:
        value = -1
    if value not in scheme.values:
        raise DataError(
            f"label {str(raw)[:12]!r} is outside the label scheme {scheme.describe()}",
            path=path,
            row=line,
            fix="correct the label, or set the right label_scheme in manifest.json",
        )
    return value


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
            fix="export as CSV or JSONL",
        )
    ids: list[str] = []
    texts: list[str] = []
    cats: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    rejected: Counter[str] = Counter()
    for line, rec in _records(path, fmt):
        label = _parse_label(rec.get("label"), scheme, path, line)
        text = rec.get("text")
        advert_id = str(rec.get("advert_id") or "").strip()
        if not isinstance(text, str) or not text.strip():
            rejected["empty text"] += 1
            continue
        if label is None:
            rejected["missing label"] += 1
            continue
        if not advert_id:
            rejected["missing advert_id"] += 1
            continue
        if advert_id in seen:
            rejected["duplicate advert_id"] += 1
            continue
        seen.add(advert_id)
        ids.append(advert_id)
        texts.append(text)
        cats.append(str(rec.get("category") or ""))
        labels.append(label)
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
    problems = [
        f"missing key {k!r}" for k in ("agency", "label_scheme", "train", "test")
        if k not in manifest
    ]
    scheme = manifest.get("label_scheme")
    if scheme is not None and scheme not in LABEL_SCHEMES:
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
    )
