"""What a failing node sends back: heroes-fl errors as they are, anything else stripped."""

import re
from typing import cast

import pytest
from flwr.app import Context, Message, RecordDict

from clients.client_app import NodeFailure, contained
from federation.errors import DataError

CANARY = "CANARY-7f3a advert text that must never leave"


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_foreign_exception_content_stays_at_the_node(caplog: pytest.LogCaptureFixture) -> None:
    @contained
    def train(msg: Message, context: Context) -> Message:
        raise ValueError(f"could not parse {CANARY!r}")

    with pytest.raises(NodeFailure) as err:
        train(cast(Message, object()), _context())  # the handler never reads it
    assert CANARY not in str(err.value)
    assert "ValueError" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert CANARY in caplog.text  # kept in the node's own log, for its operators


def test_heroes_errors_pass_through() -> None:
    @contained
    def train(msg: Message, context: Context) -> Message:
        raise DataError("file not found", path="/srv/export/adverts_train.csv")

    with pytest.raises(DataError, match=re.escape("adverts_train.csv: file not found")):
        train(cast(Message, object()), _context())  # the handler never reads it
