"""Egress receipts with a real EC P-256 node key (OpenSSH, as `heroes agency init` makes it):
every kind of tampering is found and the broken entry is named; the payload hash is
deterministic over real Flower records; a node without a key sends nothing."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from clients.receipts import (
    HEAD,
    RECEIPTS,
    Receipt,
    append,
    payload_digest,
    trusted_public_key,
    verify_log,
)
from federation.errors import DeploymentError
from federation.pki import make_node_key
from tests._heroes import HEROES
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
N = 5


def _receipt(i: int) -> Receipt:
    return Receipt(agency="uk-ngo", run_id="77", round=i // 2 + 1, task="advert-risk",
                   message="train" if i % 2 == 0 else "evaluate", status="ok",
                   payload_sha256=f"{i:064x}", payload_bytes=1000 + i,
                   epsilon=0.5 * (i + 1) if i % 2 == 0 else None, delta=1e-5,
                   dp={"noise_multiplier": 1.1, "sample_rate": 0.05, "steps": 40.0,
                       "max_grad_norm": 0.5, "accountant": "rdp"},
                   app_bundle_sha256="ab" * 32)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    make_node_key(tmp_path / "node.key", tmp_path / "node.key.pub", comment="test node")
    for i in range(N):
        append(tmp_path, _receipt(i))
    return tmp_path


def _lines(state: Path) -> list[str]:
    return (state / RECEIPTS).read_text().splitlines()


def _write(state: Path, lines: list[str]) -> None:
    (state / RECEIPTS).write_text("".join(line + "\n" for line in lines))


def _problems(state: Path) -> list[tuple[int, str]]:
    _, problems = verify_log(state, trusted_public_key(state))
    return [(p.entry, p.check) for p in problems]


def test_an_untouched_log_verifies(state: Path) -> None:
    assert verify_log(state, trusted_public_key(state)) == (N, [])
    entries = [json.loads(line) for line in _lines(state)]
    assert [e["seq"] for e in entries] == list(range(N))
    assert entries[0]["epsilon"] == 0.5 and entries[0]["delta"] == 1e-5


def test_appends_read_the_log_from_its_end_and_keep_the_chain(state: Path) -> None:
    """An append reads only the log's last line (a node appends for every message it
    sends), including one longer than the first block read from the end and a log ending in
    blank lines: the chain verifies and the numbering goes on."""
    long = Receipt(**{**_receipt(N).__dict__, "agency": "x" * 200_000})
    append(state, long)
    with open(state / RECEIPTS, "a", encoding="utf-8") as fh:
        fh.write("\n  \n")
    for i in range(N + 1, N + 4):
        append(state, _receipt(i))
    assert verify_log(state, trusted_public_key(state)) == (N + 4, [])
    seqs = [json.loads(line)["seq"] for line in _lines(state) if line.strip()]
    assert seqs == list(range(N + 4))


FIELDS = ["seq", "prev", "recorded_at", "agency", "run_id", "round", "task", "message",
          "status", "payload_sha256", "payload_bytes", "epsilon", "delta", "dp",
          "app_bundle_sha256", "key_fingerprint", "signature"]


def _changed(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, dict):
        return {**value, "noise_multiplier": 9.9}
    if value is None:
        return 0.0
    text = str(value)
    return text[:-2] + ("AA" if not text.endswith("AA") else "BB")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("index", [0, 2, N - 1])
def test_tampering_any_field_of_any_entry_is_found_there(state: Path, field: str,
                                                        index: int) -> None:
    lines = _lines(state)
    entry = json.loads(lines[index])
    entry[field] = _changed(entry[field])
    lines[index] = json.dumps(entry, sort_keys=True)
    _write(state, lines)
    found = _problems(state)
    assert found, field
    assert found[0][0] == index + 1, found  # the first problem names the tampered entry
    if field != "key_fingerprint":
        assert (index + 1, "signature") in found, found


@pytest.mark.parametrize("index", [0, 2, N - 1])
def test_deleting_an_entry_is_found_at_the_gap(state: Path, index: int) -> None:
    lines = _lines(state)
    del lines[index]
    _write(state, lines)
    found = _problems(state)
    if index == N - 1:  # the last one: only the signed head knows it existed
        assert found == [(N, "head")]
    else:
        assert found[0] == (index + 1, "sequence")
        assert (index + 1, "chain") in found


def test_reordering_entries_is_found(state: Path) -> None:
    lines = _lines(state)
    lines[1], lines[3] = lines[3], lines[1]
    _write(state, lines)
    found = _problems(state)
    assert found[0] == (2, "sequence") and (2, "chain") in found and (4, "sequence") in found


def test_a_forged_head_or_another_key_is_found(state: Path, tmp_path_factory:
                                               pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other")
    make_node_key(other / "node.key", other / "node.key.pub", comment="someone else")
    _, problems = verify_log(state, trusted_public_key(state, other / "node.key.pub"))
    assert {p.check for p in problems} == {"key", "signature", "head"}
    head = json.loads((state / HEAD).read_text())
    head["seq"] = N + 3
    (state / HEAD).write_text(json.dumps(head))
    assert _problems(state) == [(0, "head")]


def test_no_node_key_no_receipt(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match=r"no node key at .*node\.key.*refuses to send"):
        append(tmp_path, _receipt(0))
    assert not (tmp_path / RECEIPTS).exists()


def test_payload_digest_is_deterministic_and_content_sensitive() -> None:
    torch.manual_seed(0)
    state = {"w": torch.randn(3, 4), "b": torch.zeros(1)}
    a = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"x": 1.0, "y": 2.0}),
                    "agency": ConfigRecord({"agency": "a", "status": "ok"})})
    b = RecordDict({"agency": ConfigRecord({"status": "ok", "agency": "a"}),
                    "metrics": MetricRecord({"y": 2.0, "x": 1.0}),
                    "arrays": ArrayRecord({"b": state["b"], "w": state["w"]})})
    digest, size = payload_digest(a)
    assert payload_digest(b) == (digest, size)
    assert size >= 3 * 4 * 4 + 4
    changed = {"w": state["w"].clone(), "b": state["b"]}
    changed["w"][1, 2] += 1e-6
    c = RecordDict({"arrays": ArrayRecord(changed), "metrics": MetricRecord({"x": 1.0, "y": 2.0}),
                    "agency": ConfigRecord({"agency": "a", "status": "ok"})})
    assert payload_digest(c)[0] != digest


def test_cli_verify_names_the_break(state: Path) -> None:
    def audit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*HEROES, "agency", "audit", *args,
                               "--dir", str(state)], cwd=ROOT, capture_output=True,
                              text=True, timeout=DEADLINE_S, check=False,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})

    ok = audit("verify")
    assert ok.returncode == 0 and f"receipts OK: {N} entries" in ok.stdout
    shown = audit("show")
    assert shown.returncode == 0 and "0.500 (1e-05)" in shown.stdout
    lines = _lines(state)
    entry = json.loads(lines[2])
    entry["payload_bytes"] = 1
    lines[2] = json.dumps(entry)
    _write(state, lines)
    bad = audit("verify")
    assert bad.returncode == 1
    assert "entry 3: signature" in bad.stdout and "first breaks at entry 3" in bad.stdout


@pytest.mark.slow
def test_simulated_nodes_sign_a_receipt_for_every_message(quick_run: Path) -> None:
    run = quick_run  # the session's shared quick run (tests/conftest.py QUICK_RUN)
    summary = json.loads((run / "metrics.json").read_text())
    for agency in summary["agencies"]:
        state = run / "agency_state" / agency["agency"]
        assert verify_log(state, trusted_public_key(state)) [1] == []
        entries = [json.loads(x) for x in (state / RECEIPTS).read_text().splitlines()]
        sent = [(r["round"], o["status"]) for r in summary["rounds"] for o in r["train"]
                if o["agency"] == agency["agency"]]
        # three agencies: secure aggregation, so the update leaves in the masked stage, and
        # the key, share, consistency and unmask messages of every round get receipts too
        # (consistency and unmask twice: the training sum and the evaluation sum)
        trains = [e for e in entries if e["message"] in ("train", "secagg_masked_train")]
        assert [(e["round"], e["status"]) for e in trains] == sent
        rounds = [r for r, _ in sent]
        # set-up has its own message in round 1 only: later rounds' keys ride on the
        # previous round's last exchange (the evaluation's unmask)
        assert [e["round"] for e in entries if e["message"] == "secagg_setup"] == [1]
        assert [e["round"] for e in entries if e["message"] == "secagg_share"] == rounds
        for stage in ("secagg_consistency", "secagg_unmask"):
            assert sorted(e["round"] for e in entries if e["message"] == stage) == sorted(
                rounds * 2)
        evals = [e for e in entries if e["message"] == "secagg_masked_evaluate"]
        assert len(evals) == len(summary["rounds"])
        assert trains[-1]["epsilon"] == pytest.approx(agency["epsilon"])
        assert trains[-1]["delta"] == agency["delta"]
        # every receipt names the ledger head it left at, and the heads only move forward
        heads = [e["ledger_head"]["seq"] for e in entries if e["ledger_head"]]
        assert heads and heads == sorted(heads) and heads[-1] > 1


def test_an_error_reply_gets_a_receipt_too(tmp_path: Path) -> None:
    import hashlib
    import tomllib
    from typing import NoReturn

    from flwr.app import Context, Message, Metadata

    from clients.mods import with_node_mods
    from federation.data import FILE_NOT_FOUND
    from federation.errors import DataError

    with (ROOT / "pyproject.toml").open("rb") as fh:
        run_config = dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps(
        {"agency": "uk-ngo", "label_scheme": "binary", "train": "t.csv", "test": "e.csv"}))
    make_node_key(state / "node.key", state / "node.key.pub", comment="uk-ngo")
    context = Context(run_id=9, node_id=1, state=RecordDict(), run_config=run_config,
                      node_config={"data_dir": str(data), "state_dir": str(state)})

    # the handler fails before reading the message; only its config is read
    meta = Metadata(run_id=9, message_id="i1", src_node_id=0, dst_node_id=1,
                    reply_to_message_id="", group_id="3", created_at=0.0, ttl=600.0,
                    message_type="train")
    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 3})}),
                          metadata=meta)  # type: ignore[call-overload]  # flwr stubs

    @with_node_mods
    def train(msg: Message, context: Context) -> NoReturn:
        raise DataError(FILE_NOT_FOUND, file="t.csv")

    with pytest.raises(DataError) as err:
        train(instruction, context)
    (entry,) = [json.loads(x) for x in (state / RECEIPTS).read_text().splitlines()]
    assert (entry["message"], entry["status"], entry["round"], entry["run_id"]) == (
        "train", "failed", 3, "9")
    text = f"DataError: {err.value}".encode()
    assert entry["payload_sha256"] == hashlib.sha256(text).hexdigest()
    assert verify_log(state, trusted_public_key(state)) == (1, [])
