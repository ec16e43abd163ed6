"""The in-process simulation backend (simulation/inprocess.py) on real Flower messages and
a real ClientApp: it shares nothing by reference, reports a ClientApp's failure as Flower's
Ray backend does, abandons a call that never ends once told to, keeps the nodes' lines off
the console, and puts Flower's Ray backend back after a run."""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.app.message import make_message
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException

from simulation import inprocess
from simulation.inprocess import InProcessBackend, abandon_calls, flower_uses
from tests._wait import wait_for


def _train_message(weights: np.ndarray) -> Message:
    meta = Metadata(run_id=7, message_id=uuid.uuid4().hex, src_node_id=1, dst_node_id=42,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=600.0,
                    message_type="train")
    return make_message(meta, RecordDict({"arrays": ArrayRecord({"w": Array(weights)})}))


def _context() -> Context:
    return Context(run_id=7, node_id=42, node_config={"partition-id": 0}, state=RecordDict(),
                   run_config={"train.lr": 0.1})


def _backend(app: ClientApp, cpus: float = 1.0) -> InProcessBackend:
    backend = InProcessBackend({"client_resources": {"num_cpus": cpus, "num_gpus": 0.0}})
    backend.build(lambda: app)
    return backend


def test_a_call_sees_copies_and_its_reply_and_context_come_back() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records["arrays"]
        weights = arrays["w"].numpy()
        weights += 1.0  # a ClientApp that trains "in place" on what it was sent
        context.state.config_records["seen"] = ConfigRecord({"rounds": 1})
        context.run_config["train.lr"] = 99.0
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(weights)})}),
                       reply_to=msg)

    sent = np.zeros(4, dtype=np.float32)
    message, context = _train_message(sent), _context()
    backend = _backend(app)
    reply, updated = backend.process_message(message, context)
    # the server's message and the node's stored context are untouched ...
    assert np.array_equal(message.content.array_records["arrays"]["w"].numpy(), sent)
    assert "seen" not in context.state.config_records and context.run_config["train.lr"] == 0.1
    # ... and what the ClientApp produced comes back, as over the wire
    assert np.array_equal(reply.content.array_records["arrays"]["w"].numpy(), sent + 1.0)
    assert reply.metadata.reply_to_message_id == message.metadata.message_id
    assert reply.metadata.dst_node_id == 1 and reply.metadata.src_node_id == 42
    assert updated.state.config_records["seen"]["rounds"] == 1
    backend.terminate()


def test_a_failing_clientapp_is_reported_as_flower_reports_it() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        raise ValueError("the export is broken")

    backend = _backend(app)
    with pytest.raises(ClientAppException, match="the export is broken"):
        backend.process_message(_train_message(np.zeros(2, dtype=np.float32)), _context())
    backend.terminate()


def test_workers_follow_the_cpus_each_node_is_given() -> None:
    app = ClientApp()
    have = inprocess._usable_cpus()
    assert _backend(app, cpus=1.0).num_workers == have
    assert _backend(app, cpus=have * 2.0).num_workers == 1  # never none
    if have >= 2:
        assert _backend(app, cpus=2.0).num_workers == have // 2


def test_a_call_that_never_ends_is_abandoned_when_the_run_stops() -> None:
    release, entered = threading.Event(), threading.Event()
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        entered.set()
        release.wait(600)  # a node that never answers (until the test lets it go)
        return Message(RecordDict(), reply_to=msg)

    backend = _backend(app)
    outcome: dict[str, BaseException] = {}

    def call() -> None:
        try:
            backend.process_message(_train_message(np.zeros(2, dtype=np.float32)), _context())
        except BaseException as exc:  # the test looks at it
            outcome["error"] = exc

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    try:
        wait_for(entered.is_set, "the ClientApp call to start")
        assert worker.is_alive()  # still waiting on the ClientApp
        assert abandon_calls() >= 1
        wait_for(lambda: not worker.is_alive(), "the abandoned call to fail")
        assert isinstance(outcome.get("error"), ClientAppException)
        assert "abandoned" in str(outcome["error"])
        with pytest.raises(ClientAppException, match="stopping"):  # and no later call runs
            backend.process_message(_train_message(np.zeros(2, dtype=np.float32)), _context())
    finally:
        release.set()
        backend.terminate()


def test_flower_builds_this_backend_inside_the_block_and_ray_s_after() -> None:
    from flwr.server.superlink.fleet.vce.backend import raybackend

    ray_class = raybackend.RayBackend
    with flower_uses("inprocess"):
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

        built: object = RayBackend
        assert built is InProcessBackend  # what start_vce imports and builds
    assert raybackend.RayBackend is ray_class
    with pytest.raises(RuntimeError), flower_uses("inprocess"):
        raise RuntimeError("the run failed")
    assert raybackend.RayBackend is ray_class  # put back after a failure too
    with pytest.raises(ValueError, match=r"simulation\.backend='dask' is not one of"), \
            flower_uses("dask"):
        pass


def test_node_lines_go_to_the_log_file_not_the_console(tmp_path: Path) -> None:
    root = logging.getLogger()
    console_text, file_path = io.StringIO(), tmp_path / "run.log"
    console, log_file = logging.StreamHandler(console_text), logging.FileHandler(file_path)
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(console)
    root.addHandler(log_file)
    node_log = logging.getLogger("heroes.client")

    def node() -> None:
        node_log.info("agency trained round 1")
        node_log.warning("agency refused round 2")
        warnings.warn("Secure RNG turned off", UserWarning, stacklevel=1)

    try:
        with flower_uses("ray"), warnings.catch_warnings():  # the filter, not the swap
            warnings.simplefilter("always")
            thread = threading.Thread(target=node, name=inprocess.NODE_THREAD)
            thread.start()
            thread.join()
            logging.getLogger("heroes.server").info("round 1/5: 6/6 agencies trained")
    finally:
        root.removeHandler(console)
        root.removeHandler(log_file)
        root.setLevel(level)
        log_file.close()
    shown, kept = console_text.getvalue(), file_path.read_text()
    assert "round 1/5" in shown and "refused round 2" in shown  # warnings still show
    assert "trained round 1" not in shown and "Secure RNG" not in shown
    assert "trained round 1" in kept and "Secure RNG turned off" in kept


def test_one_agency_s_audit_never_changes_another_agency_s_training() -> None:
    """The audit's training function is set per call (a context variable), so an audited
    agency's call and another agency's call running at once each get their own."""
    import clients.rounds as node_rounds
    from simulation import _audit_broken_client as audited

    audited._install_dispatch()
    assert node_rounds.train_local is audited._dispatch
    seen: dict[str, object] = {}
    a_set, b_done = threading.Event(), threading.Event()

    def audited_agency() -> None:
        token = audited._CALL_TRAIN.set(lambda *a, **k: "white-box side copy")
        a_set.set()
        b_done.wait(600)
        seen["a"] = node_rounds.train_local()
        audited._CALL_TRAIN.reset(token)

    def other_agency() -> None:
        a_set.wait(600)
        seen["b"] = audited._CALL_TRAIN.get()  # what its train_local dispatches to
        b_done.set()

    threads = [threading.Thread(target=audited_agency, name=inprocess.NODE_THREAD),
               threading.Thread(target=other_agency, name=inprocess.NODE_THREAD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert seen == {"a": "white-box side copy", "b": None}


def test_flower_s_engine_delivers_every_message_once_through_the_one_pass_poll() -> None:
    """A real Flower simulation (its engine, LinkState, Grid and ServerApp thread) on this
    backend and poll: 30 nodes, three exchanges; every node answers each exchange exactly
    once, with its own reply, and the poll hands out nothing twice."""
    from flwr.app import MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    nodes, exchanges = 30, 3
    seen: list[tuple[int, int]] = []  # (exchange, node) as the server got the replies
    calls: dict[int, int] = {}
    lock = threading.Lock()
    client = ClientApp()

    @client.query()
    def query(msg: Message, context: Context) -> Message:
        with lock:
            calls[context.node_id] = calls.get(context.node_id, 0) + 1
        ex = int(msg.content.config_records["q"]["exchange"])  # type: ignore[arg-type]
        return Message(RecordDict({"r": MetricRecord({"exchange": ex,
                                                      "node": context.node_id})}),
                       reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        wait_for(lambda: len(list(grid.get_node_ids())) == nodes, "the nodes to register")
        ids = list(grid.get_node_ids())
        for ex in range(exchanges):
            out = [Message(RecordDict({"q": ConfigRecord({"exchange": ex})}), dst_node_id=n,
                           message_type="query") for n in ids]
            for reply in grid.send_and_receive(out, timeout=600):
                r = reply.content.metric_records["r"]
                assert int(r["node"]) == reply.metadata.src_node_id  # type: ignore[arg-type]
                seen.append((int(r["exchange"]), reply.metadata.src_node_id))  # type: ignore[arg-type]

    with flower_uses("inprocess"):
        _run_simulation(num_supernodes=nodes,
                        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                        client_app=client, server_app=server, backend_name="ray",
                        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    assert len(seen) == len(set(seen)) == nodes * exchanges
    assert sorted(calls.values()) == [exchanges] * nodes
