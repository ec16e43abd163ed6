"""Hostile agency files: every case issue 13 found, each refused with a rule and a fix or set
aside by reason, never a traceback and never a value from the file in a message.

Real files (csv, json, pyarrow), the real readers, and `heroes agency check` through its own
entry point. The last tests read the code base itself: every DataError is built from a
fixed Rule, so no message can carry a value read from a file.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients.score import read_adverts
from federation import data as fd
from federation.data import load_agency, read_manifest
from federation.errors import DataError, Rule
from federation.limits import MAX_FILE_NAME_CHARS, MAX_JSON_DEPTH, MAX_TEXT_CHARS
from federation.quarantine import quarantine_report
from federation.schema import (
    DUPLICATE_ID,
    ID_UNUSABLE,
    LABEL_SCHEMES,
    MISSING_LABEL,
    TEXT_NOT_UNICODE,
    TEXT_TOO_LONG,
)
from federation.tasks import get_task
from federation.text import normalise_text
from tests._heroes import main as heroes

ROOT = Path(__file__).resolve().parents[1]
CANARY = "QQCANARY-h13-7d1e"
COLUMNS = ["advert_id", "posted_at", "site", "language", "category", "text", "phone", "label"]


def advert(i: int, label: object = None, text: object = None, **extra: Any) -> dict[str, Any]:
    """A row whose every field carries the canary."""
    return {"advert_id": f"{CANARY}-{i}", "posted_at": f"2026-01-01 {CANARY}",
            "site": f"{CANARY}.example", "language": "en", "category": f"job {CANARY}",
            "text": f"{CANARY} call 555-0101, advert {i}" if text is None else text,
            "phone": f"+34 {CANARY}", "label": i % 2 if label is None else label, **extra}


def write_csv(path: Path, rows: list[dict[str, Any]], header: list[str] | None = None,
              write_header: bool = True, delimiter: str = ",") -> None:
    header = header or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        if write_header:
            w.writerow(header)
        w.writerows([[r.get(c, "") for c in header] for r in rows])


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")


def agency_dir(d: Path, train: str = "train.csv", test: str = "test.csv",
               manifest: dict[str, Any] | None = None) -> Path:
    """A good agency (CSV train and test); tests then break one thing."""
    d.mkdir(parents=True, exist_ok=True)
    write_csv(d / "train.csv", [advert(i) for i in range(6)])
    write_csv(d / "test.csv", [advert(100 + i) for i in range(4)])
    (d / "manifest.json").write_text(json.dumps(manifest or {
        "agency": "test-agency", "label_scheme": "binary", "train": train, "test": test}))
    return d


def refused(d: Path) -> str:
    """The export is refused with a DataError that quotes nothing from the files."""
    with pytest.raises(DataError) as err:
        load_agency(d)
    message = str(err.value)
    assert CANARY not in message and "Fix:" in message, message
    return message


def check(d: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = heroes(["agency", "check", "--data-dir", str(d)])
    out, err = capsys.readouterr()
    assert CANARY not in out + err
    return code, out + err


# --- the cases the issue found ---------------------------------------------------------------

def test_headerless_csv_is_refused_without_quoting_its_first_row(tmp_path: Path) -> None:
    d = agency_dir(tmp_path / "a")
    write_csv(d / "train.csv", [advert(i) for i in range(6)], write_header=False)
    message = refused(d)
    assert message.startswith("train.csv: missing column(s) ['advert_id'")
    assert "the header row seems to be missing" in message


def test_wrong_delimiter_is_named(tmp_path: Path) -> None:
    d = agency_dir(tmp_path / "a")
    write_csv(d / "train.csv", [advert(i) for i in range(6)], delimiter=";")
    assert "separated by semicolons, not commas" in refused(d)


def test_unexpected_header_cells_show_only_their_length(tmp_path: Path) -> None:
    d = agency_dir(tmp_path / "a")
    header = [c for c in COLUMNS if c != "label"] + [CANARY, CANARY]
    write_csv(d / "train.csv", [advert(i) for i in range(3)], header=header)
    message = refused(d)
    assert "missing column(s) ['label']; the header has 2 other column(s)" in message
    assert f"an unexpected column ({len(CANARY)} characters) appears 2 times" in message


def test_symlinked_train_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere.csv"
    secret.write_text(f"root:x:0:0:{CANARY}:/root:/bin/bash\n")
    d = agency_dir(tmp_path / "a")
    (d / "train.csv").unlink()
    (d / "train.csv").symlink_to(secret)
    assert "'train' resolves outside the data folder (through a symbolic link)" in refused(d)
    # a link that stays inside the folder is fine, and so is a linked data folder
    (d / "train.csv").unlink()
    (d / "exports").mkdir()
    write_csv(d / "exports" / "real.csv", [advert(i) for i in range(6)])
    (d / "train.csv").symlink_to(d / "exports" / "real.csv")
    (tmp_path / "linked").symlink_to(d)
    assert len(load_agency(tmp_path / "linked").train) == 6


def test_a_second_label_column_or_key_is_refused(tmp_path: Path) -> None:
    d = agency_dir(tmp_path / "csv")
    write_csv(d / "train.csv", [advert(i) for i in range(6)], header=[*COLUMNS, "label"])
    assert "column 'label' appears 2 times in the header" in refused(d)
    d = agency_dir(tmp_path / "jsonl", train="train.jsonl")
    lines = [json.dumps(advert(i))[:-1] + ', "label": 1}' for i in range(6)]
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert "line 1: column 'label' appears more than once in one object" in refused(d)
    d = agency_dir(tmp_path / "parquet", train="train.parquet")
    rows = [advert(i) for i in range(6)]
    arrays = [pa.array([r[c] for r in rows]) for c in COLUMNS] + [pa.array([1] * 6)]
    pq.write_table(pa.Table.from_arrays(arrays, names=[*COLUMNS, "label"]),
                   d / "train.parquet")
    assert "column 'label' appears 2 times" in refused(d)


@pytest.mark.parametrize(("manifest", "needle"), [
    ({"train": "/etc/passwd"}, "'train' is an absolute path"),
    ({"train": "../outside.csv"}, "'train' leads outside the data folder"),
    ({"test": "train.csv"}, "'train' and 'test' name the same file"),
    ({"test": "./train.csv"}, "'train' and 'test' name the same file"),
    ({"test": "sub/../train.csv"}, "'train' and 'test' name the same file"),
    ({"label_scheme": None}, "key 'label_scheme' is a JSON null, not a string"),
    ({"label_scheme": CANARY}, "label_scheme is not one of ['0-6', '3-level', 'binary']"),
    ({"train": "x" * 5000 + ".csv"}, "'train' is a file name of 5004 characters, over the "
                                     f"limit of {MAX_FILE_NAME_CHARS}"),
    ({"train": f"{CANARY}.xlsx"}, "'train' names an unsupported file type"),
    ({"train": "a\x00.csv"}, "'train' holds characters a file name cannot have"),
    ({"agency": ["x"]}, "key 'agency' is a JSON array, not a string"),
    ({"agency": f"{CANARY}\x1b[2J"}, "key 'agency' holds characters that cannot be printed"),
    ({"train": 7}, "key 'train' is a JSON number, not a string"),
])
def test_manifest_rules(tmp_path: Path, manifest: dict[str, Any], needle: str,
                        capsys: pytest.CaptureFixture[str]) -> None:
    d = agency_dir(tmp_path / "a")
    base = {"agency": "test-agency", "label_scheme": "binary", "train": "train.csv",
            "test": "test.csv"}
    (d / "manifest.json").write_text(json.dumps({**base, **manifest}))
    message = refused(d)
    assert message.startswith("manifest.json: ") and needle in message
    assert "/etc/passwd" not in message and "outside.csv" not in message
    code, output = check(d, capsys)
    assert code == 2 and needle in output  # the command says the same, and exits 2


def test_a_repeated_manifest_key_is_refused(tmp_path: Path) -> None:
    d = agency_dir(tmp_path / "a")
    (d / "manifest.json").write_text(
        '{"agency": "a", "label_scheme": "binary", "train": "train.csv", '
        '"train": "test.csv", "test": "test.csv"}')
    assert "key 'train' appears more than once" in refused(d)
    (d / "manifest.json").write_text(
        '{"agency": "a", "label_scheme": "binary", "train": "train.csv", "test": "test.csv", '
        f'"{CANARY}": 1, "{CANARY}": 2}}')
    assert f"an unexpected key ({len(CANARY)} characters) appears more than once" in refused(d)


def test_several_manifest_problems_are_listed_at_once(tmp_path: Path) -> None:
    d = agency_dir(tmp_path / "a")
    (d / "manifest.json").write_text(json.dumps({"label_scheme": None, "train": "/abs.csv"}))
    message = refused(d)
    for needle in ("4 problems", "missing key 'agency'", "missing key 'test'",
                   "label_scheme' is a JSON null", "'train' is an absolute path"):
        assert needle in message


def test_manifest_itself_linked_from_outside_is_refused(tmp_path: Path) -> None:
    d = agency_dir(tmp_path / "a")
    outside = tmp_path / "m.json"
    outside.write_text((d / "manifest.json").read_text())
    (d / "manifest.json").unlink()
    (d / "manifest.json").symlink_to(outside)
    assert "manifest.json resolves outside the data folder" in refused(d)


def test_a_pipe_named_as_an_export_is_refused_not_read(tmp_path: Path) -> None:
    d = agency_dir(tmp_path / "a")
    (d / "train.csv").unlink()
    os.mkfifo(d / "train.csv")  # reading it would block forever
    assert "train.csv: not a regular file" in refused(d)


def jsonl_agency(d: Path, line: str) -> Path:
    agency_dir(d, train="train.jsonl")
    good = [json.dumps(advert(i)) for i in range(4)]
    (d / "train.jsonl").write_text("\n".join([*good, line]) + "\n")
    return d


@pytest.mark.parametrize(("line", "needle"), [
    (json.dumps(advert(9))[:-1] + ', "x": ' + "9" * 5000 + "}",
     "line 5 holds a number beyond 64-bit integers"),
    (json.dumps(advert(9))[:-1] + ', "x": 1e999}', "line 5 holds a number beyond"),
    (json.dumps(advert(9))[:-1] + ', "x": -Infinity}', "line 5 holds a number beyond"),
    (json.dumps(advert(9))[:-1] + ', "x": 9223372036854775808}', "line 5 holds a number"),
    (json.dumps(advert(9))[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
     f"line 5 nests deeper than {MAX_JSON_DEPTH} levels"),
    (json.dumps(advert(9))[:-1] + ', "x": {"y": [' + CANARY, "line 5 is not valid JSON"),
    (f'["{CANARY}"]', "line 5 is a JSON array, not an object"),
])
def test_hostile_json_lines_are_refused(tmp_path: Path, line: str, needle: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    d = jsonl_agency(tmp_path / "a", line)
    assert needle in refused(d)
    code, output = check(d, capsys)
    assert code == 2 and needle in output


def test_deep_nesting_within_the_limit_and_nan_are_accepted(tmp_path: Path) -> None:
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    line = json.dumps(advert(9))[:-1] + f', "x": {nested}, "y": "[[[[[[[[[[[[[[[[[[[[["}}'
    nan = json.dumps(advert(10, label=float("nan")))  # Python writes NaN for a missing float
    d = jsonl_agency(tmp_path / "a", line + "\n" + nan)
    data = load_agency(d)
    assert len(data.train) == 5 and dict(data.train.rejected) == {MISSING_LABEL: 1}


def test_bit_flipped_parquet_is_refused_or_read_never_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = agency_dir(tmp_path / "a", train="train.parquet")
    rows = [advert(i) for i in range(200)]
    buf = io.BytesIO()
    pq.write_table(pa.table({c: [r[c] for r in rows] for c in COLUMNS}), buf)
    good = buf.getvalue()
    rnd = random.Random(13)
    outcomes = {"read": 0, "refused": 0}
    for _ in range(40):
        flipped = bytearray(good)
        for _ in range(rnd.choice([1, 3])):
            i = rnd.randrange(len(flipped))
            flipped[i] ^= 1 << rnd.randrange(8)
        (d / "train.parquet").write_bytes(bytes(flipped))
        try:
            data = load_agency(d)
            assert len(data.train) + data.train.rejected_total == 200
            outcomes["read"] += 1
        except DataError as exc:
            assert CANARY not in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 10  # most flips break the file
    code, output = check(d, capsys)  # the last one through the command
    assert code in (0, 2) and "Traceback" not in output


def test_csv_nul_bytes_and_terminal_escapes_become_spaces(tmp_path: Path) -> None:
    d = agency_dir(tmp_path / "a")
    p = d / "train.csv"
    p.write_text(p.read_text().replace("call", "ca\x00ll\x1b[2J", 1))
    data = load_agency(d)
    assert len(data.train) == 6 and data.train.texts[0].startswith(f"{CANARY} ca ll [2J")


# --- one limit, one normalisation, for every format and for scoring -----------------------------

def write_any(path: Path, rows: list[dict[str, Any]]) -> None:
    if path.suffix == ".csv":
        write_csv(path, rows)
    elif path.suffix == ".jsonl":
        write_jsonl(path, rows)
    else:
        pq.write_table(pa.table({c: [r[c] for r in rows] for c in rows[0]}), path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_one_text_limit_for_every_format_and_for_scoring(tmp_path: Path, fmt: str) -> None:
    rows = [advert(i) for i in range(4)]
    rows.append(advert(4, text="y" * MAX_TEXT_CHARS))  # at the limit: usable
    rows.append(advert(5, text="z" * (MAX_TEXT_CHARS + 1)))  # over it: set aside
    rows.append(advert(6, text="w" * 1_000_000))  # a 1 MB field: set aside, not refused
    d = agency_dir(tmp_path / "a", train=f"train.{fmt}")
    write_any(d / f"train.{fmt}", rows)
    data = load_agency(d)
    assert len(data.train) == 5
    assert [(r.record, r.reason) for r in data.train.quarantine] == [
        (6, TEXT_TOO_LONG), (7, TEXT_TOO_LONG)]
    scored = read_adverts(d / f"train.{fmt}")
    assert len(scored.ids) == 5 and scored.set_aside == {TEXT_TOO_LONG: 2}
    assert scored.texts == list(data.train.texts)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_lone_surrogates_are_set_aside_and_what_check_accepts_featurises(
        tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [advert(i) for i in range(4)]
    rows.append(advert(4, text=f"{CANARY} bad \ud800 half"))
    rows.append(advert(5, text="zalgo a" + "\u0316" * 40))
    rows.append(advert(6, text=f"{CANARY}\x00 NUL\x1b[31m and e\u0301 decomposed"))
    rows.append({**advert(7), "advert_id": "id \udfff"})
    d = agency_dir(tmp_path / "a", train=f"train.{fmt}")
    if fmt == "jsonl":  # JSON can spell a lone surrogate as an escape
        (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:  # Parquet (Arrow) checks its strings on write: a surrogate cannot get in
        rows = rows[:4] + rows[5:7]
        write_any(d / "train.parquet", rows)
    data = load_agency(d)
    reasons = sorted(r.reason for r in data.train.quarantine)
    assert reasons == ([ID_UNUSABLE, TEXT_NOT_UNICODE, TEXT_NOT_UNICODE] if fmt == "jsonl"
                       else [TEXT_NOT_UNICODE])
    cleaned = data.train.texts[-1]
    assert "\x00" not in cleaned and "\x1b" not in cleaned and "\u00e9" in cleaned
    assert all(normalise_text(t) == t for t in data.train.texts)
    task = get_task("advert-risk", {"num_buckets": 256})
    assert len(task.featurize(list(data.train.texts))) == len(data.train)
    code, output = check(d, capsys)
    assert code == 0 and TEXT_NOT_UNICODE in output
    scored = read_adverts(d / f"train.{fmt}")
    assert scored.texts == list(data.train.texts)


@pytest.mark.parametrize(("name", "content", "outcome"), [
    ("deep.jsonl", '{"advert_id": "1", "text": "x", "z": ' + "[" * 100_000 + "]" * 100_000
     + "}\n", "nests deeper"),
    ("big.jsonl", '{"advert_id": "1", "text": "x", "z": ' + "9" * 5000 + "}\n",
     "holds a number beyond"),
    ("sur.jsonl", '{"advert_id": "1", "text": "bad \\ud800"}\n{"advert_id": "2", '
     '"text": "ok"}\n', {TEXT_NOT_UNICODE: 1}),
    ("mb.csv", "advert_id,text\n1," + "y" * 1_000_000 + "\n2,ok\n", {TEXT_TOO_LONG: 1}),
    ("dup.csv", "advert_id,text,text\n1,a,b\n", "column 'text' appears 2 times"),
])
def test_scoring_reads_hostile_inputs_without_crashing(tmp_path: Path, name: str,
                                                       content: str, outcome: object) -> None:
    (tmp_path / name).write_text(content)
    if isinstance(outcome, str):
        with pytest.raises(DataError, match=outcome):
            read_adverts(tmp_path / name)
    else:
        got = read_adverts(tmp_path / name)
        assert got.ids == ["2"] and dict(got.set_aside) == outcome


def test_report_names_files_relative_to_the_data_folder(tmp_path: Path) -> None:
    d = agency_dir(tmp_path / "a", train="exports/train.csv")
    (d / "exports").mkdir()
    write_csv(d / "exports" / "train.csv", [advert(i) for i in range(4)] + [advert(0)])
    data = load_agency(d)
    report = quarantine_report(data)
    assert [f["file"] for f in report["files"]] == ["exports/train.csv", "test.csv"]
    assert report["files"][0]["rows"] == [
        {"record": 5, "line": 6, "reason": DUPLICATE_ID, "duplicate_of_record": 1}]
    assert CANARY not in json.dumps(report)


def test_read_manifest_is_strict_for_every_reader(tmp_path: Path) -> None:
    """The node's other manifest readers (its name, its state folder) get the same rules."""
    d = agency_dir(tmp_path / "a")
    assert read_manifest(d)["agency"] == "test-agency"
    (d / "manifest.json").write_text('{"agency": "a", "agency": "b", "label_scheme": '
                                     '"binary", "train": "train.csv", "test": "test.csv"}')
    with pytest.raises(DataError, match="key 'agency' appears more than once"):
        read_manifest(d)


# --- messages built from rules only, by construction ---------------------------------------------

def test_data_error_takes_no_free_text() -> None:
    with pytest.raises(TypeError):
        DataError(f"missing column(s); found {CANARY}")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        DataError(fd.FILE_NOT_FOUND, file="a.csv", detail=CANARY)
    with pytest.raises(TypeError):  # a count is a number, not text
        DataError(fd.NO_USABLE_ROWS, counts={CANARY: 1})
    error = DataError(fd.DUPLICATE_COLUMN, file="a.csv", column=CANARY, count=2)
    assert CANARY not in str(error) and f"({len(CANARY)} characters)" in str(error)
    error = DataError(fd.CSV_UNREADABLE, file="a.csv", line=3, kind=CANARY)
    assert CANARY not in str(error) and "(another kind)" in str(error)
    long_name = "n" * 5000
    assert long_name not in str(DataError(fd.FILE_NOT_FOUND, file=long_name))


def _code_files() -> list[Path]:
    return sorted(p for folder in ("clients", "federation", "server", "simulation")
                  for p in (ROOT / folder).rglob("*.py"))


def _constants(tree: ast.Module) -> dict[str, Any]:
    """Module-level names bound to literals (strings, tuples of strings)."""
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                value = _literal(node.value, out)
            except ValueError:
                continue
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = value
    return out


def _literal(node: ast.expr, names: dict[str, Any]) -> Any:
    """A literal, allowing names of module literals and + of literals; else ValueError."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal(node.left, names) + _literal(node.right, names)
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e, names) for e in node.elts)
    raise ValueError(ast.dump(node))


def _called(node: ast.Call, name: str) -> bool:
    f = node.func
    return (isinstance(f, ast.Name) and f.id == name) or (
        isinstance(f, ast.Attribute) and f.attr == name)


def _imports_problem(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "federation.errors"
               and any(a.name == "Problem" for a in n.names) for n in ast.walk(tree))


def test_every_rule_is_fixed_text_and_every_data_error_is_built_from_one() -> None:
    """Enumerates every ``Rule(...)`` and ``DataError(...)`` in the code: a Rule's text,
    fix and kinds are literals (no f-string, no variable text); a DataError's first
    argument is a Rule or a list of problems, and its only keywords are typed fields;
    a Problem is only ever made by problem(), which checks them."""
    allowed = {"file", "row", "line", "byte", "count", "limit", "record", "column", "key",
               "columns", "kind", "counts", "scheme", "required"}
    rules = errors = 0
    for path in _code_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _constants(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if _called(node, "Rule"):
                rules += 1
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    try:
                        value = _literal(arg, names)
                    except ValueError:
                        pytest.fail(f"{where}: a Rule with text that is not a literal")
                    assert isinstance(value, str | tuple), where
            elif _called(node, "DataError") and path.name != "errors.py":
                errors += 1
                assert node.args, where
                first = node.args[0]
                assert not isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp), (
                    f"{where}: DataError built from text")
                assert {k.arg for k in node.keywords} <= allowed, where
            elif _called(node, "problem") and path.name != "errors.py":
                assert {k.arg for k in node.keywords} <= allowed, where
            elif _called(node, "Problem") and _imports_problem(tree):
                # only problem() builds one, checking its fields
                pytest.fail(f"{where}: a DataError Problem built directly")
    assert rules > 60 and errors > 40  # the enumeration found the code base's sites


def test_every_rule_in_the_readers_renders_without_a_value(tmp_path: Path) -> None:
    """Each rule of federation.data filled with the canary wherever text could go: the
    canary shows nowhere (names are shown by length, kinds from their fixed list)."""
    rules = [v for v in vars(fd).values() if isinstance(v, Rule)]
    rules += list(fd.PARQUET_TYPES.values()) + list(fd.PARQUET_TYPE_RULES.values())
    assert len(rules) > 40
    for rule in rules:
        fields: dict[str, Any] = {}
        text = rule.text + rule.fix
        for name in ("line", "byte", "count", "limit", "record"):
            if "{" + name + "}" in text:
                fields[name] = 7
        for name in ("column", "key", "kind"):
            if "{" + name + "}" in text:
                fields[name] = CANARY
        if "{columns}" in text:
            fields["columns"] = ["text", CANARY]
        if "{counts}" in text:
            fields["counts"] = {MISSING_LABEL: 2}
        if "{scheme}" in text:
            fields["scheme"] = LABEL_SCHEMES["binary"]
        message = str(DataError(rule, file="train.csv", **fields))
        assert CANARY not in message and not re.search(r"\{[a-z_]+\}", message), message
