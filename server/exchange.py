"""One exchange with the nodes: push messages, pull the replies until all are in or the
timeout passes.

Flower's own loop (``Grid.send_and_receive``) sleeps a fixed 0.1 s between pulls in a
simulation and 3 s in a deployment, so a round trip costs up to that much on top of the
nodes' work. A secure round makes several short exchanges (share, masked input,
consistency, unmask, for training and for evaluation), and a plain round two; the pulls here
back off from 2 ms to 50 ms instead, for both, so that comparing them compares the protocols
rather than the waiting.

Where the replies are stored in this process (Flower's simulation engine, whose reply thread
simulation/inprocess.py wraps), :data:`REPLY_STORED` is set as each reply lands, and the
exchange wakes at once rather than at its next pull; :data:`MESSAGES_PUSHED` tells the
simulated nodes' poll the same in the other direction. In a deployment nothing sets them and
an exchange simply polls the SuperLink with the backoff.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from typing import Any, cast

from flwr.app import Message
from flwr.serverapp import Grid

#: Set when a node's reply is stored in this process's LinkState (simulation only).
REPLY_STORED = threading.Event()
#: Set when an exchange has pushed messages for the nodes (read by the simulated nodes' poll).
MESSAGES_PUSHED = threading.Event()

_FIRST_WAIT_S, _MAX_WAIT_S = 0.002, 0.05


def exchange(grid: Grid, messages: Iterable[Message], timeout: float | None) -> list[Message]:
    """Push ``messages``, then pull their replies until all are in or ``timeout`` seconds
    pass (None: no limit, as Flower's). Returns the replies that came."""
    pending = set(grid.push_messages(messages))
    MESSAGES_PUSHED.set()
    end = time.monotonic() + (timeout if timeout is not None else math.inf)
    got: list[Message] = []
    wait = _FIRST_WAIT_S
    while pending and time.monotonic() < end:
        REPLY_STORED.clear()  # a reply stored after this is either pulled now or wakes us
        replies = list(grid.pull_messages(pending))
        got += replies
        pending -= {m.metadata.reply_to_message_id for m in replies}
        if pending:
            REPLY_STORED.wait(max(0.0, min(wait, end - time.monotonic())))
            wait = min(wait * 2, _MAX_WAIT_S)
    return got


class PromptGrid:
    """Flower's Grid with :func:`exchange` as its ``send_and_receive``; everything else
    passes through. The grid of a run whose rounds are not secure (server/secagg.py's
    ``SecAggGrid`` uses :func:`exchange` itself)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return exchange(self._grid, messages, timeout)


def prompt(grid: Grid) -> Grid:
    return cast(Grid, PromptGrid(grid))
