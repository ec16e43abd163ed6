"""The agency-facing address: a TLS front that passes Flower's Fleet routes and nothing else.

Open-source Flower 1.42 serves its Fleet, Control and Runtime APIs on one HTTP port, and
its Control API has no authentication: whoever reaches that port can submit a run (code
that every node executes) or register a node key. So the SuperLink itself listens on a
private interface only, and agencies reach this gateway instead. It

- terminates TLS with the SuperLink's own certificate (agencies verify it against the
  consortium CA, exactly as if they spoke to the SuperLink);
- reads one request head, and forwards it only when it is ``POST /v1/fleet/<route>`` with a
  route in ``FLEET_ROUTES`` (everything a SuperNode calls; ``register-node``, which would let
  a node enrol itself, is not among them); anything else gets ``403`` and a log line naming
  the method, path and peer (never a body);
- forwards the request over a fresh TLS connection to the private SuperLink with
  ``Connection: close``, relays the answer, and closes: one request per connection, so a
  second request can never ride on an approved first one.

Bodies are protobuf model updates and control messages; the gateway never parses or logs
them. Node authentication (signatures over each request) passes through untouched and is
checked by the SuperLink.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("heroes.gateway")

FLEET_PREFIX = "/v1/fleet/"
FLEET_ROUTES = frozenset({
    "activate-node", "deactivate-node", "unregister-node", "send-node-heartbeat",
    "pull-messages", "push-messages", "get-run", "get-fab", "push-object", "pull-object",
    "confirm-message-received",
})
MAX_HEAD = 64 * 1024
MAX_BODY = 512 * 1024 * 1024
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade",
              b"transfer-encoding"}


def allowed(method: str, path: str) -> bool:
    """Whether the agency-facing address may pass this request on."""
    if method != "POST" or not path.startswith(FLEET_PREFIX):
        return False
    return path[len(FLEET_PREFIX):].split("?", 1)[0] in FLEET_ROUTES


@dataclass(frozen=True)
class GatewayConfig:
    listen_host: str
    listen_port: int
    upstream_host: str
    upstream_port: int
    certfile: Path
    keyfile: Path
    ca_certfile: Path


def _response(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class FleetGateway:
    """Run with ``start()`` (a background thread) and ``stop()``; counts what it refused."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.refused = 0
        self.forwarded = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server_ssl.load_cert_chain(str(config.certfile), str(config.keyfile))
        self._client_ssl = ssl.create_default_context(cafile=str(config.ca_certfile))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head[:-4].split(b"\r\n")
            parts = lines[0].decode("latin-1").split(" ")
            if len(parts) != 3:
                writer.write(_response(400, "Bad Request", "malformed request line\n"))
                return
            method, path, _version = parts
            if not allowed(method, path):
                self.refused += 1
                log.warning("refused %s %s from %s: the agency-facing address serves the "
                            "Fleet API only", method, path[:200], peer)
                writer.write(_response(
                    403, "Forbidden",
                    "This is the consortium's agency-facing address: it serves the Fleet API "
                    "(SuperNode traffic) only. Submitting runs and registering node keys "
                    "happen on the consortium's private interface.\n"))
                return
            headers: list[bytes] = []
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                key = name.strip().lower()
                if key == b"transfer-encoding":
                    writer.write(_response(411, "Length Required",
                                           "chunked request bodies are not accepted\n"))
                    return
                if key == b"content-length":
                    length = int(value.strip())
                if key not in HOP_BY_HOP:
                    headers.append(line)
            if not 0 <= length <= MAX_BODY:
                writer.write(_response(413, "Payload Too Large", "request body too large\n"))
                return
            body = await reader.readexactly(length)
            up_reader, up_writer = await asyncio.open_connection(
                self.config.upstream_host, self.config.upstream_port, ssl=self._client_ssl,
                server_hostname=self.config.upstream_host)
            try:
                up_writer.write(lines[0] + b"\r\n" + b"\r\n".join(headers)
                                + b"\r\nconnection: close\r\n\r\n" + body)
                await up_writer.drain()
                while chunk := await up_reader.read(256 * 1024):
                    writer.write(chunk)
                    await writer.drain()
                self.forwarded += 1
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError) as exc:
            log.info("connection from %s ended: %s", peer, type(exc).__name__)
        finally:
            try:
                await writer.drain()
                writer.close()
            except (ConnectionError, ssl.SSLError, OSError):
                pass

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.config.listen_host, self.config.listen_port,
            ssl=self._server_ssl, limit=MAX_HEAD)
        self._ready.set()
        async with self._server:
            await self._server.serve_forever()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-gateway", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            for task in asyncio.all_tasks(self._loop):
                self._loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(timeout=10)
