"""The consortium's book of ledger heads, fed with real attestations from real, signed
ledgers: first contact, growth, lost replies, rollback, another key, malformed replies,
Flower's own types, a damaged book file, concurrent saves, and the operator command."""

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federation.ledger import Ledger, Release
from federation.pki import make_node_key
from federation.policy import Policy
from federation.signing import load_public_key
from server.ledger_heads import HEADS_FILE, HeadBook, HeadBookError
from tests._heroes import main as heroes

REL = Release(dataset="pt-ngo/x", fingerprint="cd" * 32, run_id="1", round=1,
              task="advert-risk", model="advert-risk:AdvertRiskModel", noise_multiplier=1.0,
              sample_rate=0.05, steps=10, max_grad_norm=0.5, delta=1e-5, accountant="rdp")
POLICY = Policy(max_epsilon=1e6, delta=1e-5)


class Node:
    """One agency's state folder, training a round at a time and attesting each."""

    def __init__(self, root: Path, name: str) -> None:
        self.state = root / name
        self.state.mkdir(parents=True)
        make_node_key(self.state / "node.key", self.state / "node.key.pub", comment=name)
        self.round = 0

    def train_and_attest(self) -> dict[str, Any]:
        self.round += 1
        with Ledger.open(self.state) as ledger:
            ledger.complete(ledger.reserve(replace(REL, round=self.round), POLICY)[0])
            return ledger.attest()

    def attestations(self, n: int) -> Iterator[dict[str, Any]]:
        for _ in range(n):
            yield self.train_and_attest()


@pytest.fixture
def ngo(tmp_path: Path) -> Node:
    return Node(tmp_path / "nodes", "pt-ngo")


@pytest.fixture
def book_path(tmp_path: Path) -> Path:
    return tmp_path / "consortium" / HEADS_FILE


def test_first_contact_growth_and_the_same_head(ngo: Node, book_path: Path) -> None:
    book = HeadBook(book_path)
    first = ngo.train_and_attest()
    assert book.check("pt-ngo", first) is None  # first contact
    book.accept("pt-ngo", first, run="run-1")
    assert book.check("pt-ngo", first) is None  # the same head again
    second = ngo.train_and_attest()
    assert book.check("pt-ngo", second) is None  # it extends
    book.accept("pt-ngo", second, run="run-1")
    book.save()
    entry = HeadBook(book_path).entries()["pt-ngo"]
    assert {k: entry[k] for k in ("seq", "hash", "key_fingerprint", "signature", "run")} == {
        "seq": second["seq"], "hash": second["hash"],
        "key_fingerprint": second["key_fingerprint"], "signature": second["signature"],
        "run": "run-1"}
    assert isinstance(entry["accepted_at"], str)
    assert json.loads(book_path.read_text())["format"] == "heroes-ledger-heads/1"


def test_lost_replies_up_to_the_list_length(ngo: Node, book_path: Path) -> None:
    book = HeadBook(book_path)
    book.accept("pt-ngo", ngo.train_and_attest(), run="r")
    *lost, arrived = ngo.attestations(8)  # seven replies never reached the consortium
    assert len(lost) == 7 and book.check("pt-ngo", arrived) is None
    *lost, arrived = ngo.attestations(9)  # eight lost: the seen head is off the list
    reason = book.check("pt-ngo", arrived)
    assert reason is not None and "does not extend the head this consortium last saw" in reason


def test_flower_types_arrive_and_are_accepted(ngo: Node, book_path: Path) -> None:
    from flwr.app import ConfigRecord, RecordDict

    book = HeadBook(book_path)
    book.accept("pt-ngo", ngo.train_and_attest(), run="r")
    attestation = ngo.train_and_attest()
    content = RecordDict({"ledger": ConfigRecord(attestation)})
    assert book.check("pt-ngo", content.config_records["ledger"]) is None
    numpy_ints = {**attestation, "seq": np.int64(attestation["seq"]),
                  "previous_seqs": tuple(np.int32(s) for s in attestation["previous_seqs"])}
    assert book.check("pt-ngo", numpy_ints) is None
    book.accept("pt-ngo", content.config_records["ledger"], run="r2")
    book.save()
    assert HeadBook(book_path).entries()["pt-ngo"]["seq"] == attestation["seq"]


def test_malformed_attestations_say_what_is_missing(ngo: Node, book_path: Path) -> None:
    book = HeadBook(book_path)
    good = ngo.train_and_attest()
    cases = {
        "seq must be a whole number >= 1 (got nothing)": {k: v for k, v in good.items()
                                                          if k != "seq"},
        "seq must be a whole number >= 1 (got bool)": {**good, "seq": True},
        "hash must be 64 lower-case hex digits (got int)": {**good, "hash": 7},
        "signature must be base64 (got str)": {**good, "signature": "not base64!"},
        "previous_seqs must be a list (got nothing)": {k: v for k, v in good.items()
                                                       if k != "previous_seqs"},
        "previous_seqs has 1 items, previous_hashes 0": {**good, "previous_seqs": [1],
                                                         "previous_hashes": []},
        "key_fingerprint must be 'sha256:...' (got str)": {**good, "key_fingerprint": "x"},
    }
    for expected, attestation in cases.items():
        reason = book.check("pt-ngo", attestation)
        assert reason is not None and reason.startswith("agency pt-ngo: ") and \
            "attestation is malformed" in reason and expected in reason, (expected, reason)
        with pytest.raises(HeadBookError, match="malformed"):
            book.accept("pt-ngo", attestation, run="r")
    assert "not base64!" not in str(book.check("pt-ngo", cases[
        "signature must be base64 (got str)"]))  # types are named, values are not
    assert book.entries() == {}


def test_the_enrolled_key_and_a_changed_key(ngo: Node, book_path: Path, tmp_path: Path) -> None:
    other = Node(tmp_path / "nodes", "es-police")
    book = HeadBook(book_path)
    enrolled = load_public_key(ngo.state / "node.key.pub")
    attestation = ngo.train_and_attest()
    assert book.check("pt-ngo", attestation, public_key=enrolled) is None
    reason = book.check("pt-ngo", other.train_and_attest(), public_key=enrolled)
    assert reason is not None and "not by its enrolled key" in reason
    forged = {**attestation, "seq": attestation["seq"] + 1}  # a head the node never signed
    reason = book.check("pt-ngo", forged, public_key=enrolled)
    assert reason is not None and "signature does not verify" in reason
    book.accept("pt-ngo", attestation, run="run-7")
    reason = book.check("pt-ngo", other.train_and_attest())  # someone else's ledger, no key
    assert reason is not None and "is now signed by node key" in reason
    assert "(seq 4, run run-7)" in reason and "--forget pt-ngo" in reason


def test_a_damaged_book_is_refused_and_left_alone(book_path: Path) -> None:
    book_path.parent.mkdir(parents=True)
    for text in ("{not json", json.dumps({"format": "other/1", "agencies": {}}),
                 json.dumps({"format": "heroes-ledger-heads/1",
                             "agencies": {"pt-ngo": {"seq": "3"}}})):
        book_path.write_text(text)
        with pytest.raises(HeadBookError) as err:
            HeadBook(book_path)
        assert str(book_path) in str(err.value) and "left as it is" in str(err.value)
        assert book_path.read_text() == text


def test_forget_and_concurrent_saves(ngo: Node, book_path: Path, tmp_path: Path) -> None:
    other = Node(tmp_path / "nodes", "es-police")
    a, b = HeadBook(book_path), HeadBook(book_path)  # two runs, each with its own book
    a.accept("pt-ngo", ngo.train_and_attest(), run="run-a")
    b.accept("es-police", other.train_and_attest(), run="run-b")
    a.save()
    b.save()  # merged with what run a saved, not written over it
    assert sorted(HeadBook(book_path).entries()) == ["es-police", "pt-ngo"]
    c = HeadBook(book_path)
    assert c.forget("pt-ngo") and not c.forget("nobody")
    c.save()
    assert sorted(HeadBook(book_path).entries()) == ["es-police"]
    # after forgetting, any ledger of that agency is a first contact again
    assert HeadBook(book_path).check("pt-ngo", Node(tmp_path / "new", "pt-ngo")
                                     .train_and_attest()) is None


def test_the_ledger_heads_command(ngo: Node, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "consortium"

    def run(*argv: str) -> tuple[int, str]:
        code = heroes(["consortium", "ledger-heads", "--dir", str(directory), *argv])
        return code, capsys.readouterr().out

    assert "no ledger heads recorded" in run()[1]
    book = HeadBook(directory / HEADS_FILE)
    attestation = ngo.train_and_attest()
    book.accept("pt-ngo", attestation, run="run-3")
    book.save()
    code, text = run()
    assert code == 0 and "pt-ngo" in text and attestation["hash"][:16] in text and "run-3" in text
    code, text = run("--json")
    assert json.loads(text)["agencies"]["pt-ngo"]["seq"] == attestation["seq"]
    code, text = run("--forget", "nobody")
    assert code == 2 and "holds no head for 'nobody'" in text and "pt-ngo" in text
    code, text = run("--forget", "pt-ngo")
    assert code == 0 and "forgot the ledger head of pt-ngo" in text
    assert HeadBook(directory / HEADS_FILE).entries() == {}
