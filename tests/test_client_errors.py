"""What a failing node sends back: DataError, FederationError and TaskError as they are (the
first content-free by construction), every other error as its type name and a fixed
sentence; the details go to the node's own log and nowhere else."""

import os
import pickle
import re
import stat
import traceback
from pathlib import Path
from typing import NoReturn

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from clients.mods import FORWARDED, NODE_ERROR_LOG, NodeFailure, with_node_mods
from federation.data import FILE_NOT_FOUND
from federation.errors import DataError, FederationError, LedgerError, PolicyError

CANARY = "CANARY-7f3a advert text that must never leave"


def _message() -> Message:
    """A real training instruction; the failing handlers never read it."""
    meta = Metadata(run_id=1, message_id="i1", src_node_id=0, dst_node_id=1,
                    reply_to_message_id="", group_id="1", created_at=0.0, ttl=600.0,
                    message_type="train")
    # flwr's Message takes its metadata as a keyword its stubs do not declare
    msg: Message = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                           metadata=meta)  # type: ignore[call-overload]
    return msg


def _context(node_config: dict[str, str] | None = None) -> Context:
    return Context(run_id=1, node_id=1, node_config=dict(node_config or {}),
                   state=RecordDict(), run_config={})


def test_foreign_exception_content_stays_at_the_node(caplog: pytest.LogCaptureFixture) -> None:
    @with_node_mods
    def train(msg: Message, context: Context) -> NoReturn:
        raise ValueError(f"could not parse {CANARY!r}")

    with pytest.raises(NodeFailure) as err:
        train(_message(), _context())  # the handler never reads it
    assert CANARY not in str(err.value)
    assert "ValueError" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    # no state folder known: the details are in the process's own log, at the agency
    assert CANARY in caplog.text


def test_details_go_to_the_node_error_log_in_its_state_folder(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"

    @with_node_mods
    def train(msg: Message, context: Context) -> NoReturn:
        raise KeyError(CANARY)

    with pytest.raises(NodeFailure) as err:
        train(_message(), _context({"state_dir": str(state)}))
    assert CANARY not in str(err.value)
    log = state / "logs" / NODE_ERROR_LOG
    text = log.read_text()
    assert CANARY in text and "Traceback" in text and "KeyError" in text
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    assert CANARY not in caplog.text  # the process log names the file, not the error
    assert str(log) in caplog.text


@pytest.mark.parametrize("error", [
    LedgerError(f"ledger at /srv/cases/{CANARY}/privacy-ledger.sqlite is corrupt"),
    PolicyError([f"accountant {CANARY!r} is not one of ['prv', 'rdp']"], source="policy.toml"),
])
def test_other_heroes_errors_leave_as_their_type_and_a_fixed_sentence(
        error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    @with_node_mods
    def train(msg: Message, context: Context) -> NoReturn:
        raise error

    with pytest.raises(NodeFailure) as err:
        train(_message(), _context())
    sent = str(err.value)
    assert CANARY not in sent and "/srv/cases" not in sent
    assert type(error).__name__ in sent
    assert "privacy ledger or policy is unusable" in sent
    assert CANARY in caplog.text


def test_heroes_errors_pass_through() -> None:
    @with_node_mods
    def train(msg: Message, context: Context) -> NoReturn:
        raise DataError(FILE_NOT_FOUND, file="adverts_train.csv")

    with pytest.raises(DataError, match=re.escape("adverts_train.csv: file not found")):
        train(_message(), _context())  # the handler never reads it


def test_a_forwarded_error_is_a_fresh_one_without_its_causes() -> None:
    """The error that leaves carries no chained exception and no frames below the wrapper
    (a traceback's locals and causes could hold content)."""

    @with_node_mods
    def train(msg: Message, context: Context) -> NoReturn:
        try:
            raise ValueError(CANARY)
        except ValueError as exc:
            raise FederationError("secure aggregation refused by this node: x") from exc

    with pytest.raises(FederationError) as err:
        train(_message(), _context())
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert CANARY not in "".join(traceback.format_exception(err.value))
    assert FederationError in FORWARDED


def test_data_errors_survive_pickling() -> None:
    """Ray carries a simulated node's error between processes."""
    error = DataError(FILE_NOT_FOUND, file="adverts_train.csv")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.rule == FILE_NOT_FOUND


def test_the_node_mods_contain_every_registered_handler_of_a_real_clientapp() -> None:
    """ClientApp(mods=NODE_MODS) wraps message-API handlers (train, train.<stage>) too: an
    error raised inside one leaves the app as what an error reply may carry."""
    from flwr.clientapp import ClientApp

    from clients.mods import NODE_MODS

    app = ClientApp(mods=NODE_MODS)

    @app.train("secagg_share")
    def share(msg: Message, context: Context) -> Message:
        raise ValueError(CANARY)

    meta = Metadata(run_id=1, message_id="i2", src_node_id=0, dst_node_id=1,
                    reply_to_message_id="", group_id="1", created_at=0.0, ttl=600.0,
                    message_type="train.secagg_share")
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), metadata=meta)  # type: ignore[call-overload]  # flwr stubs
    with pytest.raises(NodeFailure) as err:
        app(msg, _context())
    assert CANARY not in str(err.value)
    assert str(err.value).startswith("secagg_share failed at the node with ValueError")
