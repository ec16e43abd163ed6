"""Export connectors (CSV, JSONL, Parquet), the quarantine report and `heroes agency check`.

Real files written with the csv module, json and pyarrow; the command runs in-process
through `heroes`' own entry point and once as a real subprocess.
"""

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.data import (
    DUPLICATE_ID,
    EMPTY_TEXT,
    MISSING_ID,
    MISSING_LABEL,
    TEXT_NOT_STRING,
    AgencyData,
    Rejection,
    load_agency,
)
from federation.errors import DataError
from federation.quarantine import REPORT_JSON, REPORT_TXT, write_quarantine_report
from federation.text import normalise_text
from tests._heroes import HEROES
from tests._heroes import main as heroes
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["advert_id", "posted_at", "site", "language", "category", "text", "phone", "label",
           "synthetic"]
FORMATS = ["csv", "jsonl", "parquet"]
# Unique markers planted in rows that get set aside: none may reach a report or the output.
CANARY = "qzx-canary-5b7e1f93"
CANARY_ID = "qzx-canary-id-0c4a"
CANARY_CATEGORY = "qzx-canary-cat-88d2"


def advert(i: int, label: object = 0, text: object = "nice flat near the metro, call today",
           advert_id: object = None, category: str = "housing") -> dict[str, Any]:
    return {"advert_id": f"a-{i}" if advert_id is None else advert_id,
            "posted_at": "2026-01-01", "site": "example-classifieds.test", "language": "en",
            "category": category, "text": text, "phone": "555-0101", "label": label,
            "synthetic": "true"}


def write_export(path: Path, rows: list[dict[str, Any]], *, blank_after: int | None = None,
                 parquet_schema: pa.Schema | None = None) -> Path:
    """Write ``rows`` in the format the suffix names; None is an empty cell / null."""
    fmt = path.suffix.lstrip(".")
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            w.writerows([["" if r[c] is None else r[c] for c in COLUMNS] for r in rows])
    elif fmt == "jsonl":
        lines = [json.dumps(r, ensure_ascii=False) for r in rows]
        if blank_after is not None:
            lines.insert(blank_after, "")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        schema = parquet_schema or pa.schema(
            [(c, pa.int64() if c == "label" else pa.string()) for c in COLUMNS])
        table = pa.table({c: [r[c] for r in rows] for c in schema.names}, schema=schema)
        pq.write_table(table, path)
    return path


def write_dir(d: Path, train: list[dict[str, Any]], fmt: str, *, scheme: str = "binary",
              **kw: Any) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    write_export(d / f"train.{fmt}", train, **kw)
    write_export(d / f"test.{fmt}", [advert(100 + i, i % 2) for i in range(4)])
    (d / "manifest.json").write_text(json.dumps({
        "agency": "test-agency", "label_scheme": scheme,
        "train": f"train.{fmt}", "test": f"test.{fmt}"}))
    return d


def usable_rows(data: AgencyData) -> list[tuple[Any, ...]]:
    t = data.train
    return list(zip(t.advert_ids, t.texts, t.categories, t.labels.tolist(),
                    t.positive.tolist(), strict=True))


# --- the same rows in every format ---------------------------------------------------------

MIXED = [
    advert(1, 1, "fotos 100% reales, \"sin sorpresas\", llama ya"),
    advert(2, 0, "two lines\nof text, with a comma"),
    advert(3, 1, "   "),
    advert(4, 0, "piso cerca del metro 🚇\u2028segunda línea\x85"),
    advert(5, None),
    advert(6, 1, advert_id=""),
    advert(7, 1, "trabalho no exterior, passagem paga"),
    advert(1, 0, "a repost of the first advert"),
    advert(9, 1, "new girls every week"),
]
# Where each set-aside row is, in every format (record numbers do not depend on format).
EXPECTED = [(3, EMPTY_TEXT, None), (5, MISSING_LABEL, None), (6, MISSING_ID, None),
            (8, DUPLICATE_ID, 1)]


def test_parquet_reads_the_same_rows_as_csv_and_jsonl(tmp_path: Path) -> None:
    loaded = {fmt: load_agency(write_dir(tmp_path / fmt, MIXED, fmt)) for fmt in FORMATS}
    rows = {fmt: usable_rows(d) for fmt, d in loaded.items()}
    assert rows["parquet"] == rows["csv"] == rows["jsonl"]
    assert [r[0] for r in rows["csv"]] == ["a-1", "a-2", "a-4", "a-7", "a-9"]
    assert rows["csv"][1][1] == "two lines\nof text, with a comma"
    for data in loaded.values():
        assert [(r.record, r.reason, r.duplicate_of) for r in data.train.quarantine] == EXPECTED
        assert data.rejection_report()["train"] == {
            EMPTY_TEXT: 1, MISSING_LABEL: 1, MISSING_ID: 1, DUPLICATE_ID: 1}
        assert data.train.rejected_total == 4 and len(data.test) == 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_reason_is_quarantined_at_its_row(tmp_path: Path, fmt: str) -> None:
    # JSONL gets a blank line after record 4, so its lines and records part from there;
    # in the CSV, record 2's text spans two lines (header = line 1).
    d = write_dir(tmp_path / "a", MIXED, fmt, blank_after=4 if fmt == "jsonl" else None)
    got = load_agency(d).train.quarantine
    by_format: dict[str, list[int | None]] = {"csv": [5, 7, 8, 10], "jsonl": [3, 6, 7, 9],
                                              "parquet": [None] * 4}
    lines = by_format[fmt]
    assert list(got) == [Rejection(rec, line, reason, dup) for (rec, reason, dup), line
                         in zip(EXPECTED, lines, strict=True)]
    if fmt == "csv":
        text_lines = (d / "train.csv").read_text(encoding="utf-8").split("\n")
        assert text_lines[7 - 1].startswith("a-5,")  # line 7 holds record 5, as reported


def test_jsonl_text_of_the_wrong_type_is_set_aside(tmp_path: Path) -> None:
    rows = [advert(i, i % 2) for i in range(4)] + [advert(4, 1, text=42), advert(5, 0, text=None)]
    q = load_agency(write_dir(tmp_path / "a", rows, "jsonl")).train.quarantine
    assert [(r.record, r.line, r.reason) for r in q] == [(5, 5, TEXT_NOT_STRING),
                                                           (6, 6, EMPTY_TEXT)]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(st.characters(blacklist_categories=["Cs"],
                                            blacklist_characters="\x00"), max_size=40),
                      min_size=1, max_size=8))
def test_any_text_reads_the_same_in_every_format(tmp_path: Path, texts: list[str]) -> None:
    """Commas, quotes, CR/LF, U+2028 and friends: the three connectors agree row by row."""
    rows = [advert(i, i % 2, t) for i, t in enumerate(texts)] + [advert(99, 1)]
    results = []
    for fmt in FORMATS:
        data = load_agency(write_dir(tmp_path / f"{fmt}-{len(list(tmp_path.iterdir()))}",
                                     rows, fmt))
        results.append((usable_rows(data),
                        [(r.record, r.reason) for r in data.train.quarantine]))
    assert results[0] == results[1] == results[2]
    kept = {r[0] for r in results[0][0]}
    # control characters read as spaces (federation.text.normalise_text)
    assert kept == {f"a-{i}" for i, t in enumerate(texts) if normalise_text(t).strip()} | {"a-99"}


# --- Parquet column types ------------------------------------------------------------------

def parquet_schema(**types: pa.DataType) -> pa.Schema:
    base = {c: pa.int64() if c == "label" else pa.string() for c in COLUMNS}
    return pa.schema(list({**base, **types}.items()))


def test_parquet_accepts_the_usual_encodings(tmp_path: Path) -> None:
    rows = [advert(i, float(i % 2)) for i in range(5)] + [advert(5, float("nan"))]
    for r in rows:
        r["advert_id"] = int(r["advert_id"][2:])
    schema = parquet_schema(advert_id=pa.int64(), label=pa.float64(),
                            text=pa.dictionary(pa.int32(), pa.string()),
                            category=pa.large_string(), posted_at=pa.string())
    data = load_agency(write_dir(tmp_path / "a", rows, "parquet", parquet_schema=schema))
    assert data.train.advert_ids == ("0", "1", "2", "3", "4")
    assert data.train.labels.tolist() == [0, 1, 0, 1, 0]
    assert [(r.record, r.reason) for r in data.train.quarantine] == [(6, MISSING_LABEL)]
    rows = [advert(i, str(i % 2)) for i in range(3)]
    data = load_agency(write_dir(tmp_path / "b", rows, "parquet",
                                 parquet_schema=parquet_schema(label=pa.string())))
    assert data.train.labels.tolist() == [0, 1, 0]


def test_parquet_column_of_the_wrong_type_stops_with_its_name(tmp_path: Path) -> None:
    rows = [advert(i, i % 2, text=i) for i in range(3)]
    d = write_dir(tmp_path / "a", rows, "parquet", parquet_schema=parquet_schema(text=pa.int64()))
    with pytest.raises(DataError) as err:
        load_agency(d)
    msg = str(err.value)
    assert "train.parquet: column 'text' has Parquet type int64, expected text" in msg
    assert "astype(str)" in msg and "Fix:" in msg
    rows = [advert(i, i % 2) for i in range(3)]
    for r in rows:
        r["advert_id"] = 1.5
    d = write_dir(tmp_path / "b", rows, "parquet",
                  parquet_schema=parquet_schema(advert_id=pa.float64()))
    with pytest.raises(DataError, match="column 'advert_id' has Parquet type double"):
        load_agency(d)


def test_parquet_label_outside_the_scheme_names_the_record(tmp_path: Path) -> None:
    rows = [advert(i, 0.0) for i in range(4)] + [advert(4, 1.5)]
    d = write_dir(tmp_path / "a", rows, "parquet",
                  parquet_schema=parquet_schema(label=pa.float64()))
    with pytest.raises(DataError) as err:
        load_agency(d)
    assert "train.parquet, row 5: label (a number with a fraction, not shown) is outside the " \
        "label scheme 'binary'" in str(err.value)


def test_broken_parquet_files_say_what_is_wrong(tmp_path: Path) -> None:
    d = write_dir(tmp_path / "a", [advert(i, i % 2) for i in range(3)], "parquet")
    (d / "train.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"train\.parquet: the file is empty"):
        load_agency(d)
    (d / "train.parquet").write_bytes(b"advert_id,text\n1,hello\n")
    with pytest.raises(DataError, match=r"train\.parquet: not a readable Parquet file"):
        load_agency(d)
    pq.write_table(pa.table({"advert_id": ["a"], "text": ["t"]}), d / "train.parquet")
    with pytest.raises(DataError, match=r"missing column\(s\) \['posted_at', 'site'"):
        load_agency(d)


def test_csv_label_written_as_float_text_is_accepted(tmp_path: Path) -> None:
    rows = [advert(i, f"{i % 2}.0") for i in range(4)]
    assert load_agency(write_dir(tmp_path / "a", rows, "csv")).train.labels.tolist() == [
        0, 1, 0, 1]


# --- the quarantine report and `heroes agency check` ---------------------------------------

def canary_rows() -> list[dict[str, Any]]:
    """Usable rows plus set-aside rows that carry the canaries in text, id and category."""
    return [advert(i, i % 2) for i in range(6)] + [
        advert(6, None, f"{CANARY} available 24/7, text only"),  # missing label
        advert(7, 1, "", advert_id=CANARY_ID, category=CANARY_CATEGORY),  # empty text
        advert(0, 1, f"repost {CANARY}"),  # duplicate advert_id
        advert(9, 1, f"{CANARY} no id", advert_id=""),  # missing advert_id
    ]


def assert_no_canary(*texts: str) -> None:
    for t in texts:
        for marker in (CANARY, CANARY_ID, CANARY_CATEGORY, "available 24/7", "repost"):
            assert marker not in t


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_lists_every_row_and_never_its_content(tmp_path: Path, fmt: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    d = write_dir(tmp_path / "data", canary_rows(), fmt)
    assert heroes(["agency", "check", "--data-dir", str(d), "--report-dir",
                   str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    report_json = (tmp_path / "r" / REPORT_JSON).read_text(encoding="utf-8")
    report_txt = (tmp_path / "r" / REPORT_TXT).read_text(encoding="utf-8")
    assert_no_canary(out, err, report_json, report_txt)
    report = json.loads(report_json)
    train, test = report["files"]
    assert (train["split"], train["file"], train["format"]) == ("train", f"train.{fmt}", fmt)
    assert [(r["record"], r["reason"]) for r in train["rows"]] == [
        (7, MISSING_LABEL), (8, EMPTY_TEXT), (9, DUPLICATE_ID), (10, MISSING_ID)]
    assert train["rows"][2]["duplicate_of_record"] == 1
    assert train["set_aside_by_reason"] == {DUPLICATE_ID: 1, EMPTY_TEXT: 1, MISSING_ID: 1,
                                            MISSING_LABEL: 1}
    assert (train["records"], train["usable"], train["set_aside"]) == (10, 6, 4)
    assert train["labels"] == {"0": 3, "1": 3} and train["positive"] == 3
    assert (test["usable"], test["set_aside"], test["rows"]) == (4, 0, [])
    assert report["totals"] == {"usable": 10, "set_aside": 4, "set_aside_by_reason":
                                train["set_aside_by_reason"]}
    assert "train: train." in out and "6 usable, 4 set aside" in out
    assert "labels of usable rows (binary): 0: 3, 1: 3; positive 3 (50.0%)" in out
    assert "record 9" in report_txt and "missing label: 1" in report_txt
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [REPORT_JSON, REPORT_TXT]


@pytest.mark.parametrize("fmt", FORMATS)
def test_advert_text_in_the_label_cell_is_not_quoted(tmp_path: Path, fmt: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A shifted column puts text where the label goes: the error names the row, not it."""
    rows = [advert(i, str(i % 2)) for i in range(4)] + [advert(4, f"{CANARY} call")]
    schema = parquet_schema(label=pa.string())
    d = write_dir(tmp_path / "data", rows, fmt, parquet_schema=schema)
    assert heroes(["agency", "check", "--data-dir", str(d), "--report-dir",
                   str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert_no_canary(out, err)
    row = {"csv": 6, "jsonl": 5, "parquet": 5}[fmt]
    assert f"heroes agency check: train.{fmt}, row {row}: label (a non-numeric str " \
        "value, not shown) is outside the label scheme 'binary'" in err
    assert not (tmp_path / "r").exists()  # nothing is reported from an unusable export


def test_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert heroes(["agency", "check", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "data directory not found" in capsys.readouterr().err
    d = write_dir(tmp_path / "empty", [advert(1, None), advert(2, 0, "")], "csv")
    assert heroes(["agency", "check", "--data-dir", str(d)]) == 2
    assert "no usable rows (set aside: {'missing label': 1, 'empty text': 1})" in \
        capsys.readouterr().err
    d = write_dir(tmp_path / "ok", [advert(i, i % 2) for i in range(3)], "parquet")
    assert heroes(["agency", "check", "--data-dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert "3 usable, 0 set aside" in out and "quarantine report" not in out
    (tmp_path / "a-file").write_text("")
    assert heroes(["agency", "check", "--data-dir", str(d), "--report-dir",
                   str(tmp_path / "a-file")]) == 2
    assert "cannot write the quarantine report" in capsys.readouterr().err


def test_report_is_replaced_whole_on_a_new_check(tmp_path: Path) -> None:
    d = write_dir(tmp_path / "data", canary_rows(), "csv")
    path = write_quarantine_report(load_agency(d), tmp_path / "r")
    assert json.loads(path.read_text())["totals"]["set_aside"] == 4
    write_dir(tmp_path / "data", [advert(i, i % 2) for i in range(3)], "csv")
    again = write_quarantine_report(load_agency(d), tmp_path / "r")
    assert again == path and json.loads(path.read_text())["totals"]["set_aside"] == 0
    assert sorted(p.name for p in path.parent.iterdir()) == [REPORT_JSON, REPORT_TXT]


def test_check_as_a_real_command(tmp_path: Path) -> None:
    d = write_dir(tmp_path / "data", canary_rows(), "parquet")
    done = subprocess.run(
        [*HEROES, "agency", "check", "--data-dir", str(d),
         "--report-dir", str(tmp_path / "r")],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    assert done.returncode == 0, done.stderr
    assert_no_canary(done.stdout, done.stderr)
    assert "4 set aside" in done.stdout and (tmp_path / "r" / REPORT_JSON).is_file()
    (d / "manifest.json").unlink()
    done = subprocess.run(
        [*HEROES, "agency", "check", "--data-dir", str(d)],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    assert done.returncode == 2 and "no manifest.json in the data directory" in done.stderr
