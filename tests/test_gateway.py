"""The agency-facing gateway (nginx configured by server/fleet_gateway.py) against hostile
clients.

The tests here run the real nginx in front of a tiny local TLS upstream (no Flower): the
generated configuration, Fleet-only routing, the body limit while a body streams, malformed
requests and the connection caps. ``attack`` and its helpers are imported by
tests/test_deployment.py, which runs them against the real deployment while a three-agency
secure run completes. Everything binds to loopback; attackers use source addresses
127.0.0.2 and up (all of 127/8 is loopback on Linux), so that per-source caps throttle them
and not the nodes, which connect from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from federation.errors import DeploymentError
from federation.pki import make_ca, make_server_cert
from server.fleet_gateway import (
    FLEET_PREFIX,
    FLEET_ROUTES,
    REFUSAL,
    FleetGateway,
    GatewayConfig,
    GatewayLimits,
    Nginx,
    allowed,
    find_nginx,
    render_config,
    rss_bytes,
)
from tests._wait import DEADLINE_S, wait_for

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
SLOW_SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
BODY_SOURCES = ("127.0.0.6", "127.0.0.7", "127.0.0.8")
GARBAGE_SOURCE = "127.0.0.9"


# --- attack helpers (also used by tests/test_deployment.py) --------------------------------

def tls_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def connect(host: str, port: int, *, source: str, timeout: float = 30) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect((host, port))
    return sock


def client_hello(ca: Path, host: str) -> bytes:
    """The first flight of a real TLS handshake, for clients that never finish it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_context(ca).wrap_bio(incoming, outgoing, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def read_status(sock: socket.socket, data: bytes = b"") -> int | None:
    """The status of the answer on ``sock`` (``data``: its start, if already read), or None
    if it closed without one."""
    try:
        while b"\r\n" not in data and len(data) < 8192:
            chunk = sock.recv(8192)
            if not chunk:
                break
            data += chunk
    except (OSError, ssl.SSLError):
        pass
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return int(match.group(1)) if match else None


def read_reply(sock: socket.socket) -> bytes:
    """One whole HTTP answer (head and a Content-Length body)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if length is None or len(body) >= int(length.group(1)):
                return data


def ask(host: str, port: int, ca: Path, raw: bytes, *, source: str = "127.0.0.1") -> bytes:
    with connect(host, port, source=source) as sock, \
            tls_context(ca).wrap_socket(sock, server_hostname=host) as tls:
        tls.sendall(raw)
        return read_reply(tls)


@dataclass
class SlowClient:
    kind: str  # "silent" (no TLS at all), "half-hello", "trickle-head" (TLS, then a byte a tick)
    source: str
    sock: socket.socket
    head: bytes = b""
    closed: bool = False


TRICKLE_HEAD = (b"POST /v1/fleet/pull-messages HTTP/1.1\r\nhost: fl\r\ncontent-type: "
                b"application/protobuf\r\nx-pad: " + b"a" * 4000)  # never ends: no CRLFCRLF


class SlowClients:
    """``count`` connections that never complete a handshake or a request head."""

    def __init__(self, host: str, port: int, ca: Path, *, sources: tuple[str, ...],
                 count: int) -> None:
        self.host, self.port, self.ca = host, port, ca
        self.sources, self.count = sources, count
        self.clients: list[SlowClient] = []

    def open(self) -> None:
        kinds = ("silent", "half-hello", "trickle-head")
        # every TCP connection first, in one burst, so that the caps see them all at once
        for i in range(self.count):
            source = self.sources[i % len(self.sources)]
            sock = connect(self.host, self.port, source=source)
            self.clients.append(SlowClient(kinds[(i // len(self.sources)) % 3], source, sock))
        hello = client_hello(self.ca, self.host)
        ctx = tls_context(self.ca)
        for c in self.clients:
            try:
                if c.kind == "half-hello":
                    c.sock.sendall(hello[: len(hello) // 2])
                elif c.kind == "trickle-head":
                    c.sock = ctx.wrap_socket(c.sock, server_hostname=self.host)
                    c.head = TRICKLE_HEAD
            except (OSError, ssl.SSLError):
                self._close(c)  # refused at the door (a connection cap) or timed out
            if not c.closed:
                c.sock.setblocking(False)

    def _close(self, c: SlowClient) -> None:
        c.closed = True
        with contextlib.suppress(OSError):
            c.sock.close()

    def tick(self) -> None:
        """Trickle one more byte of each head, and notice connections the gateway closed."""
        for c in self.open_clients:
            try:
                if c.head:
                    c.sock.send(c.head[:1])
                    c.head = c.head[1:]
                readable, _, _ = select.select([c.sock], [], [], 0)
                if readable and not c.sock.recv(4096):
                    self._close(c)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                continue
            except (OSError, ssl.SSLError):
                self._close(c)

    @property
    def open_clients(self) -> list[SlowClient]:
        return [c for c in self.clients if not c.closed]

    def wait_closed(self, deadline: float) -> None:
        while self.open_clients and time.monotonic() < deadline:
            self.tick()
            time.sleep(1.0)

    def close_all(self) -> None:
        for c in self.open_clients:
            self._close(c)


def _early_answer(tls: ssl.SSLSocket) -> bytes:
    """Whatever the server already answered, without waiting (a readable socket alone
    proves nothing under TLS 1.3: session tickets arrive after the handshake)."""
    tls.setblocking(False)
    try:
        return tls.recv(8192) or b"closed"
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return b""
    finally:
        tls.settimeout(30)


@dataclass
class BodyResult:
    chunked: bool
    status: int | None
    sent: int


def big_body(host: str, port: int, ca: Path, *, source: str, size: int, chunked: bool,
             path: str = "/v1/fleet/push-object") -> BodyResult:
    """Stream a ``size``-byte body, announced by Content-Length or chunked, until the
    gateway answers or hangs up."""
    block = b"\0" * (64 * 1024)
    sent = 0
    head = (f"POST {path} HTTP/1.1\r\nhost: fl\r\ncontent-type: application/protobuf\r\n"
            + ("transfer-encoding: chunked\r\n" if chunked else f"content-length: {size}\r\n")
            + "\r\n").encode()
    try:
        with connect(host, port, source=source) as sock, \
                tls_context(ca).wrap_socket(sock, server_hostname=host) as tls:
            tls.sendall(head)
            early = b""
            try:
                while sent < size and not (early := _early_answer(tls)):
                    tls.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                    sent += len(block)
                if chunked and sent >= size:
                    tls.sendall(b"0\r\n\r\n")
            except (OSError, ssl.SSLError):
                pass
            return BodyResult(chunked, read_status(tls, early), sent)
    except (OSError, ssl.SSLError):
        return BodyResult(chunked, None, sent)


#: Requests no client should send, each answered 400 by nginx (sent inside TLS unless the
#: name starts with "raw").
GARBAGE = {
    "content-length-abc": b"POST /v1/fleet/push-messages HTTP/1.1\r\nhost: fl\r\n"
                          b"content-length: abc\r\n\r\n",
    "two-lengths": b"POST /v1/fleet/push-messages HTTP/1.1\r\nhost: fl\r\ncontent-length: 5"
                   b"\r\ncontent-length: 7\r\n\r\nhello",
    "binary-request-line": bytes(range(1, 256)) + b"\r\n\r\n",
    "no-version": b"POST /v1/fleet/pull-messages\x00\x01\x02 junk\r\n\r\n",
    "raw-binary": b"\0\xffGARBAGE" * 512,
    "raw-plain-http": b"POST /v1/fleet/pull-messages HTTP/1.1\r\nhost: fl\r\n"
                      b"content-length: 0\r\n\r\n",
}


#: What each GARBAGE case gets: 400, except a well-formed plaintext request on the TLS
#: port, which is closed unanswered (nginx's 497, turned into 444: a client on --insecure
#: must see that the address needs TLS) and logged as 444.
GARBAGE_ANSWERS: dict[str, int | None] = {**dict.fromkeys(GARBAGE, 400), "raw-plain-http": None}
GARBAGE_LOGGED = sorted(400 if answer else 444 for answer in GARBAGE_ANSWERS.values())


def garbage(host: str, port: int, ca: Path, *, source: str) -> dict[str, int | None]:
    """Send every GARBAGE case on its own connection; the status each got (None: none)."""
    out: dict[str, int | None] = {}
    for name, payload in GARBAGE.items():
        try:
            with connect(host, port, source=source) as sock:
                if name.startswith("raw"):
                    sock.sendall(payload)
                    out[name] = read_status(sock)
                    continue
                with tls_context(ca).wrap_socket(sock, server_hostname=host) as tls:
                    tls.sendall(payload)
                    out[name] = read_status(tls)
        except (OSError, ssl.SSLError):
            out[name] = None
    return out


class RssSampler:
    """The peak resident memory of a process tree, sampled in a thread."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.2) -> None:
        self.pids, self.interval = pids, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pids()))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE_S)


@dataclass
class AttackReport:
    rss_before: int
    rss_peak: int
    slow_opened: int
    slow_left_open: int  # not closed by the gateway before the deadline
    bodies: list[BodyResult] = field(default_factory=list)
    garbage: dict[str, int | None] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        statuses = sorted({str(b.status) for b in self.bodies})
        return (f"gateway RSS {self.rss_before / MIB:.1f} -> peak {self.rss_peak / MIB:.1f} "
                f"MiB; {self.slow_opened} slow clients, {self.slow_left_open} still open at "
                f"the deadline; bodies: statuses {statuses}, at most "
                f"{max((b.sent for b in self.bodies), default=0) / MIB:.1f} MiB sent; garbage: "
                f"{self.garbage}; {self.seconds:.0f} s")


def attack(host: str, port: int, ca: Path, *, gateway_pids: Callable[[], list[int]],
           slow: int = 200, bodies: int = 20, body_mib: int = 100,
           close_within: float = 120) -> AttackReport:
    """Slow clients, huge bodies and garbage at once, all bounded: returns when every slow
    client was closed by the gateway or ``close_within`` seconds passed."""
    started = time.monotonic()
    before = rss_bytes(gateway_pids())
    clients = SlowClients(host, port, ca, sources=SLOW_SOURCES, count=slow)
    try:
        with RssSampler(gateway_pids) as sampler, ThreadPoolExecutor(bodies) as pool:
            clients.open()
            futures = [pool.submit(big_body, host, port, ca,
                                   source=BODY_SOURCES[i % len(BODY_SOURCES)],
                                   size=body_mib * MIB, chunked=bool(i % 2))
                       for i in range(bodies)]
            junk = garbage(host, port, ca, source=GARBAGE_SOURCE)
            deadline = started + close_within
            while not all(f.done() for f in futures) and time.monotonic() < deadline:
                clients.tick()
                time.sleep(1.0)
            results = [f.result(timeout=max(1.0, deadline - time.monotonic()))
                       for f in futures]
            clients.wait_closed(deadline)
        return AttackReport(before, max(sampler.peak, before), len(clients.clients),
                            len(clients.open_clients), results, junk,
                            time.monotonic() - started)
    finally:
        clients.close_all()


def refusals(error_log: Path, zone: str) -> dict[str, int]:
    """Connections the gateway refused by connection cap ``zone``, per source address."""
    found: dict[str, int] = {}
    pattern = re.compile(rf'limiting connections by zone "{zone}".*?, client: ([0-9.]+)')
    for match in pattern.finditer(error_log.read_text(errors="replace")):
        found[match.group(1)] = found.get(match.group(1), 0) + 1
    return found


def statuses_from(access_log: Path, source: str) -> list[int]:
    """The statuses the gateway's access log records for requests from ``source``."""
    pattern = re.compile(rf'^{re.escape(source)} \[[^]]+\] ".*" (\d{{3}}) ', re.M)
    return [int(s) for s in pattern.findall(access_log.read_text(errors="replace"))]


# --- a tiny TLS upstream and a gateway in front of it ----------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d / "ca.crt", d / "ca.key")
    make_server_cert(d / "srv.crt", d / "srv.key", ca_cert=d / "ca.crt", ca_key=d / "ca.key",
                     hosts=["localhost", "127.0.0.1"])
    return {"ca": d / "ca.crt", "cert": d / "srv.crt", "key": d / "srv.key"}


class Upstream(http.server.ThreadingHTTPServer):
    """Records every request the gateway passed on: path, body length, sha256, whole."""

    daemon_threads = True
    seen: list[dict[str, object]]


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def _body(self) -> tuple[bytes, bool]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                line = self.rfile.readline()
                if not line.strip():
                    return out, False
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out, True
                chunk = self.rfile.read(size + 2)
                out += chunk[:size]
                if len(chunk) < size + 2:
                    return out, False
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        return body, len(body) == length

    def do_POST(self) -> None:
        body, whole = self._body()
        record = {"path": self.path, "len": len(body), "whole": whole,
                  "sha": hashlib.sha256(body).hexdigest()}
        self.server.seen.append(record)
        if not whole:
            self.close_connection = True
            return
        reply = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Front:
    host: str
    port: int
    ca: Path
    gateway: FleetGateway
    upstream: Upstream


@pytest.fixture
def front(pki: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest
          ) -> Iterator[Front]:
    assert shutil.which("nginx") or Path("/usr/sbin/nginx").exists(), \
        "nginx is missing: `make nginx` installs Debian's nginx and libnginx-mod-stream"
    limits = getattr(request, "param", GatewayLimits())
    up_port = free_port()
    upstream = Upstream(("127.0.0.1", up_port), _Echo)
    upstream.seen = []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki["cert"]), str(pki["key"]))
    upstream.socket = ctx.wrap_socket(upstream.socket, server_side=True)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    port = free_port()
    gateway = FleetGateway(GatewayConfig(
        listen_host="127.0.0.1", listen_port=port, upstream_port=up_port,
        certfile=pki["cert"], keyfile=pki["key"], ca_certfile=pki["ca"],
        state_dir=tmp_path / "gateway", log_dir=tmp_path / "logs", limits=limits))
    gateway.start()
    try:
        yield Front("127.0.0.1", port, pki["ca"], gateway, upstream)
    finally:
        gateway.stop()
        upstream.shutdown()
        upstream.server_close()


# --- the generated configuration -------------------------------------------------------------

def _config(tmp_path: Path, limits: GatewayLimits | None = None) -> str:
    cfg = GatewayConfig(listen_host="0.0.0.0", listen_port=9092, upstream_port=9093,
                        certfile=tmp_path / "c.crt", keyfile=tmp_path / "c.key",
                        ca_certfile=tmp_path / "ca.crt", state_dir=tmp_path / "gw",
                        log_dir=tmp_path / "logs", limits=limits or GatewayLimits())
    return render_config(cfg, Nginx(Path("/usr/sbin/nginx"), Path("/m/ngx_stream_module.so")),
                         socket_path=Path("/tmp/x/fleet.sock"), runtime_dir=Path("/tmp/x"),
                         user=None)


def test_generated_config_passes_exactly_the_fleet_routes_to_their_canonical_path(
        tmp_path: Path) -> None:
    text = _config(tmp_path, GatewayLimits(max_body_mib=3, max_connections=40,
                                           max_connections_per_source=7))
    blocks = re.findall(r"location = (\S+) \{\n(.*?)\n        \}", text, re.S)
    assert {path for path, _ in blocks} == {FLEET_PREFIX + r for r in FLEET_ROUTES}
    for path, body in blocks:
        assert allowed("POST", path) and not allowed("GET", path)
        assert "if ($request_method != POST) { return 403" in body
        assert f"proxy_pass https://127.0.0.1:9093{path};" in body  # never the client's URI
    assert re.search(r"location / \{\s+return 403 \"" + re.escape(REFUSAL), text)
    assert text.count("proxy_pass https://") == len(FLEET_ROUTES)
    for line in ("limit_conn fleet_per_source 7;", "limit_conn fleet_total 40;",
                 "client_max_body_size 3m;", "proxy_request_buffering off;",
                 "proxy_ssl_verify on;", f'proxy_ssl_trusted_certificate "{tmp_path}/ca.crt";',
                 "client_header_timeout 10s;", "keepalive_timeout 15s;", "daemon off;",
                 'load_module "/m/ngx_stream_module.so";', "listen 0.0.0.0:9092;"):
        assert line in text, line
    assert not allowed("POST", "/v1/fleet/register-node")
    assert not allowed("POST", "/v1/fleetx/pull-messages")
    assert allowed("POST", "/v1/fleet/pull-messages?x=1")
    with pytest.raises(DeploymentError, match="cannot quote"):
        _config(tmp_path / 'we"ird')


def test_missing_nginx_names_the_fix() -> None:
    with pytest.raises(DeploymentError, match=r"apt-get install -y nginx libnginx-mod-stream"):
        find_nginx(("/nonexistent/nginx",))


# --- a real nginx in front of a TLS upstream ---------------------------------------------------

def test_gateway_passes_fleet_routes_only(front: Front) -> None:
    body = bytes(range(256)) * 4000 + b"ZQXBODYMARKER"
    reply = ask(front.host, front.port, front.ca,
                    b"POST /v1/fleet/push-messages HTTP/1.1\r\nhost: x\r\ncontent-length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert reply.startswith(b"HTTP/1.1 200")
    echoed = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert echoed["path"] == "/v1/fleet/push-messages" and echoed["len"] == len(body)
    assert echoed["sha"] == hashlib.sha256(body).hexdigest()
    cases = [("POST", "/v1/control/start-run"), ("POST", "/v1/control/register-node"),
             ("POST", "/v1/fleet/register-node"), ("GET", "/v1/fleet/pull-messages"),
             ("PUT", "/v1/fleet/push-object"), ("POST", "/v1/runtime/pull-messages"),
             ("POST", "/docs"), ("POST", "/v1/fleet/../control/start-run"),
             ("POST", "/v1/fleet/%2e%2e/control/start-run"), ("POST", "/v1/fleetx/get-run"),
             ("POST", "/v1/fleet/pull-messages"), ("POST", "/v1/fleet/get-run?x=1"),
             ("POST", "/v1/control/../fleet/get-run"), ("POST", "//v1//fleet//get-fab")]
    for method, path in cases:
        reply = ask(front.host, front.port, front.ca,
                        f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
                        .encode())
        normalized = re.sub("/+", "/", path.replace("%2e", "."))
        while "/../" in normalized:
            normalized = re.sub(r"/[^/]+/\.\./", "/", normalized, count=1)
        status = int(reply[9:12])
        assert status == (200 if allowed(method, normalized) else 403), (method, path, status)
        if status == 403:
            assert b"Fleet API" in reply
    # a second request pipelined behind an allowed one is judged on its own
    two = (b"POST /v1/fleet/get-run HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
           b"POST /v1/control/start-run HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n"
           b"connection: close\r\n\r\n")
    with connect(front.host, front.port, source="127.0.0.1") as sock, \
            tls_context(front.ca).wrap_socket(sock, server_hostname=front.host) as tls:
        tls.sendall(two)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    assert re.findall(rb"HTTP/1\.1 (\d{3})", data) == [b"200", b"403"]
    # the upstream saw Fleet routes only, each at its canonical path
    assert {str(r["path"]) for r in front.upstream.seen} <= {FLEET_PREFIX + r
                                                              for r in FLEET_ROUTES} | {
        "/v1/fleet/get-run?x=1"}
    # nginx writes a request's line once the connection is done with it, a moment later
    wait_for(lambda: statuses_from(front.gateway.access_log, "127.0.0.1").count(403) == 11,
             "eleven refusals in the access log",
             seen=lambda: statuses_from(front.gateway.access_log, "127.0.0.1"))
    for log in (front.gateway.access_log, front.gateway.error_log):  # never a body
        assert b"ZQXBODYMARKER" not in log.read_bytes()


def test_body_limit_is_enforced_while_the_body_streams(front: Front) -> None:
    limit = front.gateway.config.limits.max_body_mib * MIB
    ok = big_body(front.host, front.port, front.ca, source="127.0.0.6", size=limit - MIB,
                  chunked=True)
    assert ok.status == 200 and front.upstream.seen[-1]["whole"]
    announced = big_body(front.host, front.port, front.ca, source="127.0.0.6", size=100 * MIB,
                         chunked=False)
    assert announced.status == 413 and announced.sent < 100 * MIB
    assert len(front.upstream.seen) == 1  # refused on its Content-Length: nothing passed on
    streamed = big_body(front.host, front.port, front.ca, source="127.0.0.7", size=100 * MIB,
                        chunked=True)
    assert streamed.status == 413 and streamed.sent < 100 * MIB
    wait_for(lambda: len(front.upstream.seen) == 2, "the upstream to see the cut body",
             seen=lambda: front.upstream.seen)
    cut = front.upstream.seen[-1]
    assert not cut["whole"] and int(str(cut["len"])) <= limit
    wait_for(lambda: statuses_from(front.gateway.access_log, "127.0.0.7") == [413],
             "the 413 in the access log",
             seen=lambda: statuses_from(front.gateway.access_log, "127.0.0.7"))


def test_malformed_requests_get_400_and_are_logged(front: Front) -> None:
    got = garbage(front.host, front.port, front.ca, source=GARBAGE_SOURCE)
    assert got == GARBAGE_ANSWERS
    wait_for(lambda: sorted(statuses_from(front.gateway.access_log, GARBAGE_SOURCE))
             == GARBAGE_LOGGED, "every malformed request in the access log",
             seen=lambda: statuses_from(front.gateway.access_log, GARBAGE_SOURCE))
    errors = front.gateway.error_log.read_text(errors="replace")
    assert 'client sent invalid "Content-Length" header' in errors
    assert "client sent plain HTTP request to HTTPS port" in errors
    assert not front.upstream.seen


@pytest.mark.parametrize("front", [GatewayLimits(max_connections=5,
                                                 max_connections_per_source=3)],
                         indirect=True)
def test_connections_are_capped_per_source_and_in_total(front: Front) -> None:
    held = [connect(front.host, front.port, source="127.0.0.2") for _ in range(4)]
    wait_for(lambda: refusals(front.gateway.error_log, "fleet_per_source") == {"127.0.0.2": 1},
             "the fourth connection from one source to be refused",
             seen=lambda: refusals(front.gateway.error_log, "fleet_per_source"))
    held += [connect(front.host, front.port, source="127.0.0.3") for _ in range(2)]
    held.append(connect(front.host, front.port, source="127.0.0.4"))
    wait_for(lambda: refusals(front.gateway.error_log, "fleet_total") == {"127.0.0.4": 1},
             "a connection above the total to be refused",
             seen=lambda: refusals(front.gateway.error_log, "fleet_total"))
    for sock in held:
        sock.close()
    # the refused ones were closed by the gateway; once the others go, a node gets through
    wait_for(lambda: _passes(front), "a request to pass once the idle connections closed")


def _passes(front: Front) -> bool:
    try:
        reply = ask(front.host, front.port, front.ca,
                        b"POST /v1/fleet/get-run HTTP/1.1\r\nhost: x\r\ncontent-length: 0"
                        b"\r\n\r\n")
    except (OSError, ssl.SSLError):
        return False
    return reply.startswith(b"HTTP/1.1 200")


def test_a_gateway_left_running_is_named_and_one_left_behind_is_cleared(front: Front) -> None:
    first = front.gateway
    second = FleetGateway(first.config, first.nginx)
    with pytest.raises(DeploymentError, match=r"earlier `heroes consortium serve` still runs"):
        second.start(previous_exit=0)
    assert first.proc is not None and first.runtime_dir is not None
    os.killpg(first.proc.pid, signal.SIGKILL)  # gone without cleaning up
    first.proc.wait()
    left = first.runtime_dir
    second.start()
    try:
        assert not left.exists()  # the runtime folder it left behind
        assert _passes(front)
    finally:
        second.stop()


def test_nginx_stops_when_the_process_that_started_it_dies(front: Front, tmp_path: Path
                                                          ) -> None:
    """`serve` killed by SIGKILL takes its nginx along (no orphan holds the public port)."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from server.fleet_gateway import FleetGateway, GatewayConfig\n"
        "c = GatewayConfig(**{k: (Path(v) if k.endswith(('file', 'dir')) else v)\n"
        "                     for k, v in eval(sys.argv[1]).items()})\n"
        "g = FleetGateway(c)\n"
        "g.start()\n"
        "print(g.proc.pid, flush=True)\n"
        "time.sleep(600)\n")
    cfg = front.gateway.config
    args = {"listen_host": "127.0.0.1", "listen_port": free_port(),
            "upstream_port": cfg.upstream_port, "certfile": str(cfg.certfile),
            "keyfile": str(cfg.keyfile), "ca_certfile": str(cfg.ca_certfile),
            "state_dir": str(tmp_path / "other"), "log_dir": str(tmp_path / "other-logs")}
    master = 0
    with subprocess.Popen([sys.executable, "-c", script, repr(args)], stdout=subprocess.PIPE,
                          text=True, cwd=ROOT) as parent:
        try:
            assert parent.stdout is not None
            master = int(parent.stdout.readline())
            assert Path(f"/proc/{master}").exists()
            parent.kill()
            parent.wait()
            wait_for(lambda: not Path(f"/proc/{master}").exists(), "nginx to exit")
        finally:
            parent.kill()
            if master:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(master, signal.SIGKILL)
            marker = tmp_path / "other" / "runtime-dir"  # what the next start would clear
            if marker.is_file():
                shutil.rmtree(marker.read_text().strip(), ignore_errors=True)
