"""An in-process backend for Flower's simulation engine: the ClientApps run on threads of
the driver process instead of Ray actors.

Why: on a small federation Ray's fixed costs dominate a run. Starting Ray (its GCS, raylet
and worker processes, each importing torch and this project again) takes 10-40 s on a
2-core machine, while a whole default run's DP training is a few CPU-seconds. Flower 1.42
defines a ``Backend`` interface for its simulation engine
(``flwr.server.superlink.fleet.vce.backend.Backend``) but ships only the Ray one and
no longer keeps a registry of backends: ``start_vce`` imports ``RayBackend`` from its module
at the moment it builds the backend. :func:`flower_uses` therefore puts this class under that
name for the duration of one run and puts Ray's back afterwards. Everything else is Flower's
own engine: the in-memory LinkState, the message queues, the worker threads, the ServerApp
thread and the Grid.

What it keeps from the Ray backend, and how:

- **Nothing is shared by reference.** Every message and context crosses the boundary as
  Flower's protobuf encoding (what Ray's pickling or the Fleet API's gRPC would do), so a
  ClientApp can never modify the server's arrays in place, nor the server a node's state.
- **Concurrency.** As many worker threads as Ray would start actors: the CPUs this process
  may use divided by ``client_resources.num_cpus``. Torch releases the GIL in its kernels,
  so two nodes train at once on two cores.
- **A node that never answers cannot hang the run.** Each ClientApp call runs on its own
  daemon thread; :func:`abandon_calls` (the straggler watch in simulation/federation_run.py,
  once the ServerApp has ended and a grace period has passed) makes every call still in
  flight fail at once, so Flower's engine stops. The stuck thread is left behind; being a
  daemon it ends with the process. Ray could kill its worker process; a thread cannot be
  killed, which is why a run that must survive many stuck nodes should use Ray.

Flower's engine also polls its LinkState for each node's next message every 0.1 s, one
``get_message_ins`` call per node, each of which scans every stored message: O(nodes x
messages) ten times a second, which at 100 agencies took a seventh of the run and at 1,000
would take all of it. :func:`flower_uses` swaps that loop (``vce_api.add_messages_to_queue``,
looked up by name when the engine starts its thread) for :func:`poll_messages`: one pass over
the stored messages per poll, the same checks (Flower's own ``_check_stored_messages``, at
most one message per node per pass, marked delivered under the state's lock), and a poll
interval that backs off from 2 ms to 20 ms while nothing arrives (Flower: 100 ms), cut short
when the server's exchange pushes messages (``server.exchange.MESSAGES_PUSHED``). It keeps
Flower's loop where the LinkState is not the in-memory one it knows. The engine's reply
thread (``vce_api.put_message_into_state``) is swapped the same way for
:func:`store_replies`, which wakes the server's exchange as each reply is stored
(``server.exchange.REPLY_STORED``) instead of leaving it to its next pull.

What it does not give: process isolation between nodes. In a simulation all the synthetic
agencies live on one machine and in one trust domain anyway; a deployment runs real
SuperNodes (one process per agency) and never this backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from queue import Empty
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
)
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig

from server.exchange import MESSAGES_PUSHED, REPLY_STORED
from simulation.preflight import BACKENDS

__all__ = ["BACKENDS", "InProcessBackend", "abandon_calls", "flower_uses"]

#: The name of the threads ClientApp calls run on (their log lines are told apart by it).
NODE_THREAD = "heroes-clientapp"

#: The message poll's interval: from this while messages arrive, doubling to the most.
_POLL_MIN_S, _POLL_MAX_S = 0.002, 0.02

#: Seconds between looks at whether a call was abandoned, while it runs.
_POLL_S = 0.5

_live: weakref.WeakSet[InProcessBackend] = weakref.WeakSet()
_live_lock = threading.Lock()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _copy_message(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))


def _copy_context(context: Context) -> Context:
    return context_from_proto(context_to_proto(context))


class InProcessBackend(Backend):
    """Flower simulation backend running each ClientApp call on a thread of this process."""

    def __init__(self, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        resources = backend_config.get("client_resources") or {}
        per_node = float(resources.get("num_cpus", 1) or 1)  # type: ignore[arg-type]
        self._workers = max(1, int(_usable_cpus() // per_node))
        self._app_fn: Callable[[], ClientApp] | None = None
        self._abandoned = threading.Event()
        self._busy = 0
        self._busy_lock = threading.Lock()
        with _live_lock:
            _live.add(self)

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self._app_fn = app_fn

    @property
    def num_workers(self) -> int:
        return self._workers

    def is_worker_idle(self) -> bool:
        with self._busy_lock:
            return self._busy < self._workers

    def abandon(self) -> None:
        """Make every call in flight, and every later one, fail at once."""
        self._abandoned.set()

    def terminate(self) -> None:
        self._abandoned.set()
        with _live_lock:
            _live.discard(self)

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self._app_fn is None:
            raise ValueError("InProcessBackend.build() was not called before a message came")
        if self._abandoned.is_set():
            raise ClientAppException("the simulation is stopping; this call was not run")
        app_fn = self._app_fn
        msg, ctx = _copy_message(message), _copy_context(context)
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                app = app_fn()
                outcome["reply"] = app(message=msg, context=ctx)
            except BaseException as exc:  # reported to the worker below, as Ray would
                outcome["error"] = exc

        with self._busy_lock:
            self._busy += 1
        try:
            runner = threading.Thread(target=call, name=NODE_THREAD, daemon=True)
            runner.start()
            while runner.is_alive():
                runner.join(_POLL_S)
                if runner.is_alive() and self._abandoned.is_set():
                    raise ClientAppException("the ClientApp call did not end before the "
                                             "simulation stopped; it was abandoned")
        finally:
            with self._busy_lock:
                self._busy -= 1
        if "error" in outcome:
            exc = outcome["error"]
            if isinstance(exc, LoadClientAppError):
                raise exc
            raise ClientAppException(str(exc)) from exc
        return _copy_message(outcome["reply"]), _copy_context(ctx)


def abandon_calls() -> int:
    """Abandon the ClientApp calls in flight in every live in-process backend; how many
    backends were told."""
    with _live_lock:
        backends = list(_live)
    for backend in backends:
        backend.abandon()
    return len(backends)


@contextlib.contextmanager
def flower_uses(backend: str, *, verbose: bool = False) -> Iterator[None]:
    """Run Flower's simulation engine on ``backend`` ("inprocess" or "ray") inside the
    block. For "inprocess", this class stands in Flower's module under the name
    ``RayBackend`` (the one name ``start_vce`` builds), and Ray's class is put back after.

    Unless ``verbose``, the nodes' own lines below WARNING (and their Python warnings) go to
    the run's log file only, not the console: with Ray they stayed in its worker processes;
    the console keeps the driver's one line per round."""
    if backend not in BACKENDS:
        raise ValueError(f"simulation.backend={backend!r} is not one of {', '.join(BACKENDS)}")
    with contextlib.ExitStack() as stack:
        if not verbose:
            stack.enter_context(_node_lines_off_console())
        if backend == "inprocess":
            stack.enter_context(_in_place_of_ray())
        stack.enter_context(_one_pass_poll())
        yield


def _pollable(state: Any) -> bool:
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    return (isinstance(state, InMemoryLinkState) and hasattr(state, "message_ins_store")
            and hasattr(state, "_check_stored_messages") and hasattr(state, "lock"))


def take_undelivered(state: Any, nodes: set[int]) -> list[Message]:
    """The undelivered messages for ``nodes`` in Flower's in-memory LinkState, at most one
    per node, marked delivered: what Flower's ``get_message_ins(node_id, limit=1)`` does for
    one node, for all of them in one pass."""
    from flwr.supercore.date import now

    found: dict[int, Message] = {}
    with state.lock:
        for msg_id in list(state.message_ins_store.keys()):
            state._check_stored_messages({msg_id})
            msg = state.message_ins_store.get(msg_id)
            if msg is None or msg.metadata.delivered_at != "":
                continue
            dst = msg.metadata.dst_node_id
            if dst in nodes and dst not in found:
                found[dst] = msg
        stamp = now().isoformat()
        for msg in found.values():
            msg.metadata.delivered_at = stamp
    return list(found.values())


def poll_messages(state: Any, queue: Any, nodes_mapping: Any, f_stop: threading.Event) -> None:
    """Flower's ``add_messages_to_queue`` (vce_api.py), in one pass per poll."""
    if not _pollable(state):
        _flower_poll(state, queue, nodes_mapping, f_stop)
        return
    nodes = set(nodes_mapping.keys())
    wait = _POLL_MIN_S
    while not f_stop.is_set():
        MESSAGES_PUSHED.clear()  # a push after this is either taken now or wakes the wait
        found = take_undelivered(state, nodes)
        for msg in found:
            queue.put(msg)
        wait = _POLL_MIN_S if found else min(2 * wait, _POLL_MAX_S)
        MESSAGES_PUSHED.wait(wait)


def store_replies(state: Any, queue: Any, f_stop: threading.Event) -> None:
    """Flower's ``put_message_into_state`` (vce_api.py), telling the server's exchange
    (server/exchange.py) as each reply is stored, so that it need not wait for its next
    pull."""
    while not f_stop.is_set():
        try:
            reply = queue.get(timeout=1.0)
        except Empty:
            continue
        state.store_message_res(reply)
        REPLY_STORED.set()


_flower_poll: Callable[..., None]


@contextlib.contextmanager
def _one_pass_poll() -> Iterator[None]:
    global _flower_poll
    from flwr.server.superlink.fleet.vce import vce_api

    with _swap_lock:
        original, original_store = vce_api.add_messages_to_queue, vce_api.put_message_into_state
        _flower_poll = original
        vce_api.add_messages_to_queue = poll_messages
        vce_api.put_message_into_state = store_replies
        try:
            yield
        finally:
            vce_api.add_messages_to_queue = original
            vce_api.put_message_into_state = original_store


@contextlib.contextmanager
def _in_place_of_ray() -> Iterator[None]:
    from flwr.server.superlink.fleet.vce.backend import raybackend

    with _swap_lock:
        original = raybackend.RayBackend
        raybackend.RayBackend = InProcessBackend  # type: ignore[misc,assignment]
        try:
            yield
        finally:
            raybackend.RayBackend = original  # type: ignore[misc]


class _NodeBelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName == NODE_THREAD and record.levelno < logging.WARNING)


@contextlib.contextmanager
def _node_lines_off_console() -> Iterator[None]:
    consoles = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    quiet = _NodeBelowWarning()
    for handler in consoles:
        handler.addFilter(quiet)
    shown = warnings.showwarning
    node_log = logging.getLogger("heroes.node")

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if threading.current_thread().name == NODE_THREAD:
            node_log.info("%s: %s", category.__name__, message)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
        for handler in consoles:
            handler.removeFilter(quiet)


#: One run at a time swaps Flower's backend class (runs in one process are sequential).
_swap_lock = threading.RLock()
