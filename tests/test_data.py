"""Reading agency exports: every bad-input rule names file, row, rule and fix."""

import csv
import json
import re
from pathlib import Path

import pytest

from federation.data import load_agency
from federation.errors import DataError

HEADER = ["advert_id", "posted_at", "site", "language", "category", "text", "phone", "label",
          "synthetic"]


def row(i: int, label: object = 0, text: str = "nice flat near the metro") -> list[object]:
    return [f"a-{i}", "2026-01-01", "example-classifieds.test", "en", "housing", text,
            "555-0101", label, "true"]


def write_agency(d: Path, *, train: list[list[object]] | None = None, scheme: str = "binary",
                 header: list[str] = HEADER) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rows = train if train is not None else [row(i, i % 2) for i in range(10)]
    for name, body in (("adverts_train.csv", rows), ("adverts_test.csv",
                                                    [row(100 + i, i % 2) for i in range(4)])):
        with (d / name).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(body)
    (d / "manifest.json").write_text(json.dumps({
        "agency": "test-agency", "label_scheme": scheme,
        "train": "adverts_train.csv", "test": "adverts_test.csv"}))
    return d


def test_good_export_loads(tmp_path: Path) -> None:
    data = load_agency(write_agency(tmp_path / "a"))
    assert len(data.train) == 10 and len(data.test) == 4
    assert data.train.positive.tolist() == [0, 1] * 5


def test_jsonl_export_loads(tmp_path: Path) -> None:
    d = write_agency(tmp_path / "a")
    lines = [json.dumps(dict(zip(HEADER, row(i, i % 2), strict=True))) for i in range(6)]
    (d / "adverts_train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    m = json.loads((d / "manifest.json").read_text())
    m["train"] = "adverts_train.jsonl"
    (d / "manifest.json").write_text(json.dumps(m))
    assert len(load_agency(d).train) == 6


def test_missing_data_file(tmp_path: Path) -> None:
    d = write_agency(tmp_path / "a")
    (d / "adverts_test.csv").unlink()
    with pytest.raises(DataError) as err:
        load_agency(d)
    assert "adverts_test.csv: file not found" in str(err.value)
    assert "Fix:" in str(err.value)


def test_missing_directory_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data directory not found"):
        load_agency(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=re.escape("no manifest.json")):
        load_agency(tmp_path / "empty")


def test_missing_columns_are_named(tmp_path: Path) -> None:
    header = [c for c in HEADER if c not in ("text", "label")]
    d = write_agency(tmp_path / "a", header=header, train=[r[:5] + r[6:7] + r[8:] for r in
                                                           [row(1)]])
    with pytest.raises(DataError) as err:
        load_agency(d)
    assert "missing column(s) ['text', 'label']" in str(err.value)
    assert "adverts_train.csv" in str(err.value)


def test_empty_file(tmp_path: Path) -> None:
    d = write_agency(tmp_path / "a")
    (d / "adverts_train.csv").write_text("")
    with pytest.raises(DataError, match=re.escape("adverts_train.csv: the file is empty")):
        load_agency(d)


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    d = write_agency(tmp_path / "a")
    p = d / "adverts_train.csv"
    lines = p.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"metro", b"m\xe9tro")  # Latin-1 e-acute
    p.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as err:
        load_agency(d)
    assert "(line 4) is not valid UTF-8" in str(err.value)
    assert "iconv" in str(err.value)


def test_label_outside_scheme_names_row_and_scheme(tmp_path: Path) -> None:
    rows = [row(i, 0) for i in range(5)] + [row(5, 7)]
    d = write_agency(tmp_path / "a", train=rows, scheme="0-6")
    with pytest.raises(DataError) as err:
        load_agency(d)
    msg = str(err.value)
    assert "adverts_train.csv, row 7" in msg
    # the value itself is never shown: a shifted column can put a phone number there
    assert "label (a whole number, not shown) is outside the label scheme '0-6'" in msg
    assert "nice flat" not in msg and "'7'" not in msg  # never quote a value from the file


def test_unusable_rows_are_counted_not_dropped_silently(tmp_path: Path) -> None:
    rows = [row(i, i % 2) for i in range(6)] + [row(6, 1, text=""), row(7, ""), row(0, 1)]
    data = load_agency(write_agency(tmp_path / "a", train=rows))
    assert len(data.train) == 6
    assert data.rejection_report()["train"] == {
        "empty text": 1, "missing label": 1, "duplicate advert_id": 1}
    assert data.train.rejected_total == 3
