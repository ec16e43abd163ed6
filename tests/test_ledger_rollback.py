"""An insider who would like a lower recorded spend, against the signed ledger and its head:
real SQLite files edited with sqlite3, real node keys, real copies. Every refusal names
what was done and leaves the ledger and its head byte for byte as they were."""

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from federation.ledger import (
    HEAD_FILE,
    LEDGER_FILE,
    REPORTED_FILE,
    Ledger,
    LedgerError,
    Release,
)
from federation.pki import make_node_key
from federation.policy import Policy
from server.ledger_heads import HeadBook
from tests._wait import DEADLINE_S

REL = Release(dataset="es-police/abc", fingerprint="ab" * 32, run_id="1", round=1,
              task="advert-risk", model="advert-risk:AdvertRiskModel", noise_multiplier=1.0,
              sample_rate=0.05, steps=40, max_grad_norm=0.5, delta=1e-5, accountant="rdp")
POLICY = Policy(max_epsilon=50.0, delta=1e-5)


def node(state: Path, name: str) -> Path:
    state.mkdir(parents=True)
    make_node_key(state / "node.key", state / "node.key.pub", comment=f"node {name}")
    return state


def train(state: Path, rounds: range, run: str = "1") -> None:
    with Ledger.open(state) as ledger:
        for rnd in rounds:
            seq, _ = ledger.reserve(replace(REL, run_id=run, round=rnd), POLICY)
            ledger.complete(seq)


def digest(state: Path) -> tuple[str, str]:
    """sha256 of the ledger and of its head ("-" when absent)."""
    def one(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "-"
    return one(state / LEDGER_FILE), one(state / HEAD_FILE)


def refused(state: Path, *, create: bool = True) -> str:
    before = digest(state)
    with pytest.raises(LedgerError) as err:
        Ledger.open(state, create=create)
    assert digest(state) == before, "a refused ledger or head was changed"
    message = str(err.value)
    assert "left as it is" in message and "Fix:" in message
    return message


def fingerprint(state: Path) -> str:
    from federation.signing import key_fingerprint, load_public_key

    return key_fingerprint(load_public_key(state / "node.key.pub"))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    s = node(tmp_path / "es-police", "es-police")
    train(s, range(1, 4))  # 1 genesis, 2 dataset, 3..8 three releases and completions
    return s


def test_another_agencys_ledger_is_refused_by_name(state: Path, tmp_path: Path) -> None:
    other = node(tmp_path / "pt-ngo", "pt-ngo")
    train(other, range(1, 2))
    # the insider copies a less-spent ledger in, with or without its head
    shutil.copyfile(other / LEDGER_FILE, state / LEDGER_FILE)
    for with_head in (False, True):
        if with_head:
            shutil.copyfile(other / HEAD_FILE, state / HEAD_FILE)
        message = refused(state)
        assert f"{state / LEDGER_FILE}: this privacy ledger belongs to node key " \
               f"{fingerprint(other)}, but this node's key is {fingerprint(state)}" in message
        assert "copied from another agency, or this node's key was replaced" in message
        assert "restore this agency's own ledger" in message
        assert "data-protection officer" in message
        refused(state, create=False)


def test_entries_cut_off_the_end_are_refused_and_named(state: Path) -> None:
    conn = sqlite3.connect(state / LEDGER_FILE)
    conn.execute("DROP TRIGGER entries_no_delete")
    conn.execute("DELETE FROM entries WHERE seq > 5")  # the last three entries
    conn.commit()
    conn.close()
    message = refused(state)
    assert "records 8 entries but the ledger holds 5: entries 6..8 were cut off the end" \
        in message
    assert str(state / LEDGER_FILE) in message
    refused(state, create=False)  # `heroes agency ledger` refuses it too


def test_an_emptied_ledger_is_refused(state: Path) -> None:
    conn = sqlite3.connect(state / LEDGER_FILE)
    conn.execute("DROP TRIGGER entries_no_delete")
    conn.execute("DELETE FROM entries")
    conn.commit()
    conn.close()
    assert "holds no entries" in refused(state) and "emptied" in refused(state)


def test_a_deleted_head_is_refused(state: Path) -> None:
    (state / HEAD_FILE).unlink()
    message = refused(state)
    assert f"its signed head {state / HEAD_FILE} is missing while the ledger holds 8 entries" \
        in message and "the head was deleted" in message


def test_a_deleted_ledger_is_not_silently_recreated(state: Path) -> None:
    (state / LEDGER_FILE).unlink()
    with pytest.raises(LedgerError) as err:
        Ledger.open(state)
    assert "is missing, but" in str(err.value) and "records a ledger of 8 entries" in \
        str(err.value) and "deleted or moved" in str(err.value)
    assert not (state / LEDGER_FILE).exists()


def test_an_edited_or_foreign_head_is_refused(state: Path, tmp_path: Path) -> None:
    head = json.loads((state / HEAD_FILE).read_text())
    original = (state / HEAD_FILE).read_text()
    (state / HEAD_FILE).write_text(json.dumps({**head, "seq": 4}))
    assert "signature does not verify" in refused(state)
    other = node(tmp_path / "other", "other")
    train(other, range(1, 2))
    (state / HEAD_FILE).write_text((other / HEAD_FILE).read_text())
    assert "head was signed by node key" in refused(state)
    (state / HEAD_FILE).write_text("{not json")
    assert "head is malformed" in refused(state)
    (state / HEAD_FILE).write_text(original)
    Ledger.open(state).close()


def test_a_crash_between_commit_and_head_write_is_repaired(state: Path,
                                                           tmp_path: Path) -> None:
    older = (state / HEAD_FILE).read_text()  # seq 8
    train(state, range(4, 6))  # seq 12
    (state / HEAD_FILE).write_text(older)  # as if the process died before moving the head
    auditor = tmp_path / "auditor"  # a copy with the public key only
    auditor.mkdir()
    for name in (LEDGER_FILE, HEAD_FILE, "node.key.pub"):
        shutil.copyfile(state / name, auditor / name)
    with Ledger.open(auditor, create=False) as ledger:  # accepted...
        assert ledger.head()[0] == 12
    assert (auditor / HEAD_FILE).read_text() == older  # ...but no key to sign a new head
    with Ledger.open(state) as ledger:  # the node's own open repairs it
        assert json.loads((state / HEAD_FILE).read_text())["seq"] == 12
        assert json.loads((state / HEAD_FILE).read_text())["hash"] == ledger.head()[1]
        assert len(ledger.rows()) == 5


def test_rolled_back_and_written_again_is_refused(state: Path, tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    shutil.copytree(state, backup)  # ledger and head at seq 8
    train(state, range(4, 6))  # seq 12
    newer = (state / HEAD_FILE).read_text()
    shutil.copyfile(backup / LEDGER_FILE, state / LEDGER_FILE)
    assert "entries 9..12 were cut off the end" in refused(state)  # the ledger alone: seen
    shutil.copyfile(backup / HEAD_FILE, state / HEAD_FILE)
    train(state, range(4, 6), run="2")  # restored with its head: writes on, to seq 12 again
    (state / HEAD_FILE).write_text(newer)
    assert "entry 12 is not the one" in refused(state)
    assert "rolled back and written again, or replaced" in refused(state)


def test_an_older_copy_with_its_head_is_caught_by_the_consortium(state: Path,
                                                                  tmp_path: Path) -> None:
    """Locally an older ledger restored together with its head and report log is
    indistinguishable from a genuine one; the consortium's head book is not fooled."""
    book = HeadBook(tmp_path / "consortium" / "ledger-heads.json")
    with Ledger.open(state) as ledger:
        first = ledger.attest()
    assert book.check("es-police", first) is None
    book.accept("es-police", first, run="run-1")
    backup = tmp_path / "backup"
    shutil.copytree(state, backup)
    train(state, range(4, 7), run="2")
    with Ledger.open(state) as ledger:
        second = ledger.attest()
    assert book.check("es-police", second) is None  # extends the head it saw
    book.accept("es-police", second, run="run-2")
    book.save()
    # The insider restores the whole older state folder (ledger, head, report log).
    for name in (LEDGER_FILE, HEAD_FILE, REPORTED_FILE):
        shutil.copyfile(backup / name, state / name)
    with Ledger.open(state) as ledger:  # opens fine locally
        rolled = ledger.attest()
    book = HeadBook(tmp_path / "consortium" / "ledger-heads.json")  # a later run
    reason = book.check("es-police", rolled)
    assert reason is not None and reason.startswith("agency es-police:")
    assert "went backwards, to seq 8 from the head this consortium last saw (seq 14, run " \
           "run-2)" in reason
    assert "its privacy ledger was rolled back or replaced; ask the agency's data-protection " \
           "officer; `heroes consortium ledger-heads --forget es-police` accepts a new " \
           "ledger" in reason
    # ... and after writing on past the old seq it still does not extend what was seen
    train(state, range(4, 9), run="3")
    with Ledger.open(state) as ledger:
        rewritten = ledger.attest()
    assert rewritten["seq"] > 14
    reason = book.check("es-police", rewritten)
    assert reason is not None and "does not extend the head this consortium last saw " \
        "(seq 14, run run-2)" in reason


def test_the_node_refuses_to_report_a_head_it_no_longer_has(state: Path,
                                                             tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    shutil.copytree(state, backup)
    train(state, range(4, 5))
    with Ledger.open(state) as ledger:
        ledger.attest()
    # ledger and head restored, but the log of reported heads kept
    for name in (LEDGER_FILE, HEAD_FILE):
        shutil.copyfile(backup / name, state / name)
    reported = (state / REPORTED_FILE).read_bytes()
    with Ledger.open(state) as ledger, pytest.raises(LedgerError) as err:
        ledger.attest()
    assert "no longer contains a head this node already reported to the consortium " \
           "(entry 10" in str(err.value) and "rolled back" in str(err.value)
    assert (state / REPORTED_FILE).read_bytes() == reported


def test_attestations_list_the_heads_reported_before(state: Path) -> None:
    from flwr.app import ConfigRecord

    heads = []
    for rnd in range(4, 15):
        train(state, range(rnd, rnd + 1))
        with Ledger.open(state) as ledger:
            heads.append(ledger.attest())
    with Ledger.open(state) as ledger:
        again = ledger.attest()  # nothing new: the same head, not listed twice
    last = heads[-1]
    assert (again["seq"], again["hash"]) == (last["seq"], last["hash"])
    assert last["previous_seqs"] == [h["seq"] for h in heads[-9:-1]]
    assert last["previous_hashes"] == [h["hash"] for h in heads[-9:-1]]
    assert again["previous_seqs"][-1] == last["seq"]
    assert heads[0]["previous_seqs"] == []
    record = ConfigRecord(last)  # flat values a Flower ConfigRecord takes
    assert dict(record)["previous_seqs"] == last["previous_seqs"]


def test_concurrent_writers_never_leave_a_stale_head(state: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    script = ("import sys; from dataclasses import replace; from pathlib import Path\n"
              "from federation.ledger import Ledger\n"
              "from tests.test_ledger_rollback import REL, POLICY\n"
              "with Ledger.open(Path(sys.argv[1])) as ledger:\n"
              "    for i in range(15):\n"
              "        seq, _ = ledger.reserve(replace(REL, run_id=sys.argv[2], round=i), "
              "POLICY)\n"
              "        ledger.complete(seq)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(state), run], cwd=root)
             for run in ("a", "b")]
    assert [p.wait(timeout=DEADLINE_S) for p in procs] == [0, 0]
    with Ledger.open(state, create=False) as ledger:
        head = json.loads((state / HEAD_FILE).read_text())
        assert (head["seq"], head["hash"]) == ledger.head() == (68, ledger.hash_at(68))
        assert len(ledger.rows()) == 33


def test_a_creation_cut_short_after_its_head_is_finished(tmp_path: Path) -> None:
    """A new ledger is built beside its final name and moved there after its head is
    written; a crash in between leaves the head and the new file, and the next open moves
    it into place (rather than calling the ledger deleted)."""
    fresh = node(tmp_path / "fresh", "fresh")
    Ledger.open(fresh).close()
    (fresh / LEDGER_FILE).rename(fresh / (LEDGER_FILE + ".new"))  # as if cut before rename
    with Ledger.open(fresh, create=False) as ledger:
        assert ledger.head()[0] == 1 and ledger.rows() == []
    assert (fresh / LEDGER_FILE).is_file() and not (fresh / (LEDGER_FILE + ".new")).exists()
