"""The synthetic conversation generator: real files in temporary folders, read back with
plain pyarrow, json and csv, as a reader would."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from federation.data import load_records
from federation.errors import ConfigError, DataError
from federation.schema import (
    CONVERSATION_LABEL_SCHEMES,
    CONVERSATION_RECORDS,
    CONVERSATION_ROLES,
)
from simulation import _conversation_phrases as cp
from simulation.conversations import (
    DEFAULT_MOVE_WEIGHTS,
    MOVE_STAGE,
    ConversationPreset,
    generate_conversations,
    load_preset,
    preset_from_mapping,
)
from simulation.generator import FederationManifest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "federation"
# Written out here, not imported, so the test checks the generator independently.
EXPLICIT = re.compile(
    r"\b(sex\w*|nude\w*|naked|nudes?|desnud\w*|nua|nu|pelad\w*|porn\w*|er[oó]tic\w*|"
    r"xxx|lingerie|underwear|ropa interior|calcinha|bikini|biquíni|boobs?|tetas|peitos|"
    r"onlyfans|horny|cachond\w*|tesão|bed|cama)\b", re.IGNORECASE)
PHONEISH = re.compile(r"\d[\d .\-()]{5,}\d")
AGE_STATED = re.compile(r"\b\d{1,2}\s*(years?|yrs?|yo|años|anos)\b", re.IGNORECASE)


def _three() -> ConversationPreset:
    return load_preset(CONFIGS / "conversations_three.yaml")


def _read(root: Path, agency: str, fmt: str, split: str) -> list[dict[str, Any]]:
    """Conversations as {conversation_id, messages, label, synthetic} from any format."""
    path = root / "agencies" / agency / f"conversations_{split}.{fmt}"
    if fmt == "jsonl":
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    if fmt == "parquet":
        return list(pq.read_table(path).to_pylist())
    by_id: dict[str, dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            conv = by_id.setdefault(row["conversation_id"], {
                "conversation_id": row["conversation_id"], "messages": [],
                "label": int(row["label"]), "synthetic": row["synthetic"] == "true"})
            assert int(row["label"]) == conv["label"]
            conv["messages"].append((int(row["position"]), {
                "role": row["role"], "timestamp": row.get("timestamp"), "text": row["text"]}))
    for conv in by_id.values():
        conv["messages"] = [m for _, m in sorted(conv["messages"], key=lambda p: p[0])]
    return list(by_id.values())


def _truth(root: Path, agency: str) -> list[dict[str, Any]]:
    text = (root / "ground_truth" / f"{agency}.jsonl").read_text(encoding="utf-8")
    return [json.loads(x) for x in text.splitlines()]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> tuple[ConversationPreset, Path,
                                                           FederationManifest]:
    preset = _three()
    root = tmp_path_factory.mktemp("conv") / "out"
    return preset, root, generate_conversations(preset, root, seed=1)


def test_presets_load_and_hotlines_and_ngos_hold_more() -> None:
    six = load_preset(CONFIGS / "conversations_six.yaml")
    sizes = six.sizes()
    assert 5500 <= sum(sizes.values()) <= 6500
    police = [sizes[a.agency_id] for a in six.agencies if a.kind == "police"]
    others = [sizes[a.agency_id] for a in six.agencies if a.kind != "police"]
    assert police and others and max(police) < min(others)
    assert {a.language for a in six.agencies} == {"en", "es", "pt"}
    assert {a.label_scheme for a in six.agencies} == set(CONVERSATION_LABEL_SCHEMES)
    assert {a.export_format for a in six.agencies} == {"csv", "jsonl", "parquet"}
    adverts = (CONFIGS / "six_agency.yaml").read_text(encoding="utf-8")
    for a in six.agencies:
        if a.kind == "police":
            assert f"agency_id: {a.agency_id}\n" in adverts   # one agency, both kinds of data
    assert dataclasses.replace(six, scale=0.5).sizes()["uk-hotline"] == 850


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    preset = dataclasses.replace(_three(), scale=0.3)
    generate_conversations(preset, tmp_path / "a", seed=7)
    generate_conversations(preset, tmp_path / "b", seed=7)
    generate_conversations(preset, tmp_path / "c", seed=8)
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert a == b and a.keys() == c.keys()
    assert a["ground_truth/uk-hotline.jsonl"] != c["ground_truth/uk-hotline.jsonl"]


def test_files_follow_the_contract(fed: tuple[ConversationPreset, Path, FederationManifest]
                                   ) -> None:
    preset, root, _ = fed
    info = json.loads((root / "federation.json").read_text(encoding="utf-8"))
    assert info["task"] == "conversation-risk" and info["synthetic"] is True
    assert info["move_weights"] == dict(DEFAULT_MOVE_WEIGHTS)
    for prof in preset.agencies:
        ext = prof.export_format
        man = json.loads((root / "agencies" / prof.agency_id / "manifest.json").read_text())
        assert man == {"agency": prof.agency_id, "display_name": prof.display_name,
                       "label_scheme": prof.label_scheme, "format": ext,
                       "train": f"conversations_train.{ext}",
                       "test": f"conversations_test.{ext}",
                       "schema_version": "conversation-export/1", "synthetic": True}
        scheme = CONVERSATION_LABEL_SCHEMES[prof.label_scheme]
        counts = info["counts"][prof.agency_id]
        for split in ("train", "test"):
            convs = _read(root, prof.agency_id, ext, split)
            assert counts[split] == len(convs)
            assert counts[f"{split}_positive"] == sum(scheme.is_positive(c["label"])
                                                      for c in convs)
            assert 0 < counts[f"{split}_positive"] < counts[split]
            for conv in convs:
                assert conv["synthetic"] is True and conv["label"] in scheme.values
                assert 6 <= len(conv["messages"]) <= 40
                for m in conv["messages"]:
                    assert m["role"] in CONVERSATION_ROLES and m["text"]
                    if prof.timestamps:
                        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["timestamp"])
                    else:
                        assert not m.get("timestamp")


def test_every_language_is_present(fed: tuple[ConversationPreset, Path, FederationManifest]
                                   ) -> None:
    preset, root, _ = fed
    marks = {"es": ("¿", "qué", "jaja"), "en": ("you", "the"), "pt": ("você", "kkk")}
    for prof in preset.agencies:
        text = " ".join(m["text"] for c in _read(root, prof.agency_id, prof.export_format,
                                                  "train") for m in c["messages"])
        assert any(w in text for w in marks[prof.language]), prof.language
    assert {a.language for a in preset.agencies} == {"en", "es", "pt"}


def test_splits_are_actor_disjoint_and_actors_write_several(
        fed: tuple[ConversationPreset, Path, FederationManifest]) -> None:
    preset, root, _ = fed
    sides: dict[str, set[str]] = {}
    n_of: dict[str, int] = {}
    for prof in preset.agencies:
        for t in _truth(root, prof.agency_id):
            sides.setdefault(t["actor_id"], set()).add(t["split"])
            n_of[t["actor_id"]] = n_of.get(t["actor_id"], 0) + 1
    assert all(len(s) == 1 for s in sides.values())
    assert max(n_of.values()) >= 3


def test_rationales_point_at_the_signal(fed: tuple[ConversationPreset, Path,
                                                   FederationManifest]) -> None:
    preset, root, _ = fed
    patterns = {"grooming", "sextortion", "coercion"}
    seen_patterns: set[str] = set()
    for prof in preset.agencies:
        convs = {c["conversation_id"]: c for s in ("train", "test")
                 for c in _read(root, prof.agency_id, prof.export_format, s)}
        for t in _truth(root, prof.agency_id):
            seen_patterns.add(t["pattern"])
            msgs = convs[t["conversation_id"]]["messages"]
            lowest = 9
            for r in t["rationale_messages"]:
                m = msgs[r["index"]]
                assert m["role"] == "reported"
                variants = cp.MOVE_PHRASES[r["move"]][prof.language]
                stem = m["text"].lower().rstrip("?.!🙂😂👍🎮📚 ")
                stem = re.split(r"[£\d]", stem)[0][:12]   # the part before any {amount}
                assert any(stem in v.lower() for v in variants), (m["text"], r["move"])
                stage = MOVE_STAGE[r["move"]]
                assert stage <= 1 or lowest < stage     # counted only after a lower stage
                lowest = min(lowest, stage) if stage >= 1 else lowest
            if t["pattern"].startswith("benign-"):
                assert t["stage"] == 0
                assert all(MOVE_STAGE[r["move"]] <= 1 for r in t["rationale_messages"])
            else:
                assert t["pattern"] in patterns and 1 <= t["stage"] <= 4
    assert patterns <= seen_patterns and any(p.startswith("benign-") for p in seen_patterns)


def test_no_explicit_words_ages_or_phone_numbers(
        fed: tuple[ConversationPreset, Path, FederationManifest]) -> None:
    preset, root, _ = fed
    for bad in ("send nudes", "sin ropa interior", "fotos nua", "tengo 13 años"):
        assert EXPLICIT.search(bad) or AGE_STATED.search(bad), bad
    for prof in preset.agencies:
        for split in ("train", "test"):
            for conv in _read(root, prof.agency_id, prof.export_format, split):
                for m in conv["messages"]:
                    assert not EXPLICIT.search(m["text"]), m["text"]
                    assert not AGE_STATED.search(m["text"]), m["text"]
                    assert not PHONEISH.search(m["text"]), m["text"]


def test_the_oracle_beats_word_spotting_by_a_margin(
        fed: tuple[ConversationPreset, Path, FederationManifest]) -> None:
    _, root, man = fed
    info = json.loads((root / "federation.json").read_text(encoding="utf-8"))
    oracle, spotting = info["oracle"]["pooled_test_roc_auc"], info["word_spotting_roc_auc"]
    assert oracle == man.oracle_roc_auc and 0.85 < oracle < 1.0
    assert 0.5 < spotting <= oracle - 0.10, (oracle, spotting)


def test_preset_validation_collects_every_problem() -> None:
    data = {
        "name": "broken", "colour": "blue",
        "agencies": [
            {"agency_id": "a", "display_name": "A", "kind": "court", "language": "fr",
             "conversations": 100, "positive_rate": 0.1, "label_scheme": "3-level",
             "label_noise": 0.1, "export_format": "xlsx"},
            {"agency_id": "a", "display_name": "A2", "kind": "ngo", "language": "en",
             "conversations": 100, "positive_rate": 0.9, "label_scheme": "binary",
             "label_noise": 0.1, "export_format": "csv", "size": 3},
        ],
    }
    with pytest.raises(ConfigError) as err:
        preset_from_mapping(data)
    text = "\n".join(err.value.problems)
    for needle in ("'colour'", "'court'", "'fr'", "'3-level'", "'xlsx'", "0.9", "'size'",
                   "'a' appears more"):
        assert needle in text, needle
    assert len(err.value.problems) == 8, text
    assert all("Fix:" in p for p in err.value.problems)
    with pytest.raises(ConfigError, match="Fix"):
        generate_conversations(_three(), Path("unused"), seed=0, move_weights={"nope": 1.0})


def test_refuses_a_foreign_directory_and_keeps_its_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    preset = dataclasses.replace(_three(), scale=0.2)
    with pytest.raises(DataError) as err:
        generate_conversations(preset, tmp_path, seed=0)
    assert str(tmp_path) in str(err.value) and "Fix:" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    generate_conversations(preset, tmp_path / "out", seed=3)
    generate_conversations(preset, tmp_path / "out", seed=3)   # its own output: regenerated
    with pytest.raises(DataError):
        generate_conversations(preset, tmp_path / "out", seed=4)


def test_the_reader_reads_every_export_with_nothing_set_aside(
        fed: tuple[ConversationPreset, Path, FederationManifest]) -> None:
    preset, root, _ = fed
    info = json.loads((root / "federation.json").read_text(encoding="utf-8"))
    for prof in preset.agencies:
        data = load_records(root / "agencies" / prof.agency_id, CONVERSATION_RECORDS)
        assert data.rejection_report() == {"train": {}, "test": {}}, prof.agency_id
        for split, table in (("train", data.train), ("test", data.test)):
            assert len(table) == info["counts"][prof.agency_id][split]
            first = _read(root, prof.agency_id, prof.export_format, split)[0]
            assert int(table.positive.sum()) == info["counts"][prof.agency_id][
                f"{split}_positive"]
            idx = list(table.ids).index(first["conversation_id"])
            read = table.column("messages")[idx]
            assert [(m.role, m.text) for m in read] == [
                (m["role"], m["text"]) for m in first["messages"]]


def test_the_message_hit_rate_counts_every_rationale_conversation_and_its_chance(
        fed: tuple[ConversationPreset, Path, FederationManifest]) -> None:
    from federation.tasks import get_task
    from simulation.explain_eval import message_hit_rate

    preset, root, _ = fed
    expected: list[float] = []
    for a in preset.agencies:
        lengths = {c["conversation_id"]: len(c["messages"])
                   for c in _read(root, a.agency_id, a.export_format, "test")}
        for t in _truth(root, a.agency_id):
            targets = {m["index"] for m in t["rationale_messages"] if m["weight"] > 0}
            if t["split"] == "test" and targets:
                expected.append(len(targets) / lengths[t["conversation_id"]])
    task = get_task("conversation-risk", {"num_buckets": 64, "hidden": 4})
    torch.manual_seed(0)
    report = message_hit_rate(task, task.build_model(), root)
    assert report["conversations_evaluated"] == len(expected) > 0
    assert report["chance_hit_rate"] == pytest.approx(sum(expected) / len(expected))
    assert 0.0 <= report["top_message_hit_rate"] <= 1.0
