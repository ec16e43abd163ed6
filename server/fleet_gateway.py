"""The agency-facing address: Debian's nginx in front of the private SuperLink, Fleet only.

Open-source Flower 1.42 serves its Fleet, Control and Runtime APIs on one HTTP port, and its
Control API has no authentication: whoever reaches that port can submit a run (code that
every node executes) or register a node key. So the SuperLink listens on 127.0.0.1 only, and
agencies reach this gateway instead. It is nginx rather than our own proxy because the
public address meets hostile clients: slow handshakes, endless headers, huge bodies and
garbage are what nginx is built and maintained against, and the hand-written asyncio proxy
this replaces held idle connections forever and buffered whole bodies in memory (measured
in tests/test_gateway.py). ``heroes consortium serve`` writes ``DIR/gateway/nginx.conf`` from
the settings below at every start, runs nginx in the foreground (``daemon off``) as its own
child, and stops it with the SuperLink. Two layers, one nginx process tree:

    public HOST:PORT   stream layer: counts every connection from accept on and refuses
                       (closes) those above the total cap or the per-source-address cap,
                       then relays the bytes, with the PROXY protocol, over a unix socket
                       in a private runtime folder
    unix socket        http layer: TLS with the SuperLink's own certificate (agencies
                       verify it against the consortium CA, as if they spoke to the
                       SuperLink), a deadline on the handshake plus request head, on each
                       body read and on idle keep-alive, a body limit checked while the body
                       streams, ``POST /v1/fleet/<route>`` for the routes in ``FLEET_ROUTES``
                       and ``403`` for anything else, ``400`` for malformed requests (plain
                       HTTP, not TLS, is closed unanswered: status 444 in the log); what
                       passes goes to the SuperLink over TLS verified against the consortium
                       CA, always to the canonical route path

Only the stream layer counts connections before the request head is read (nginx's http
``limit_conn`` does not), which is why the caps live there. Logs, never a body:
``logs/gateway.log`` (one line per request: source address, time, request line, status,
sizes) and ``logs/gateway-error.log`` (refused connections, timeouts, malformed requests, TLS
failures). Node authentication (signatures over each request) passes through untouched and
is checked by the SuperLink.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from federation.errors import DeploymentError
from federation.files import open_private, private_dir, write_atomic

FLEET_PREFIX = "/v1/fleet/"
#: Everything a SuperNode calls; ``register-node``, which would let a node enrol itself, is
#: not among them. The one source of truth for the generated nginx locations.
FLEET_ROUTES = frozenset({
    "activate-node", "deactivate-node", "unregister-node", "send-node-heartbeat",
    "pull-messages", "push-messages", "get-run", "get-fab", "push-object", "pull-object",
    "confirm-message-received",
})

#: Seconds. TLS handshake plus the whole request head (nginx's client_header_timeout is one
#: deadline for both, not a per-read one, so trickling a byte at a time does not extend it).
HEAD_TIMEOUT_S = 10
#: Seconds between two reads of a request body, and between two writes of a response.
BODY_TIMEOUT_S = 10
SEND_TIMEOUT_S = 30
#: Seconds an idle keep-alive connection is kept between requests.
IDLE_TIMEOUT_S = 15
#: Seconds to connect to, and to wait on, the SuperLink.
UPSTREAM_CONNECT_TIMEOUT_S = 5
UPSTREAM_TIMEOUT_S = 60

#: Request bodies are limited to this many MiB, checked while they stream (never buffered).
#: Flower sends every array in chunks of at most 5 MiB (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE),
#: one chunk per push-object request, so no real Fleet request grows with the model; the
#: largest measured with the default model is far smaller (README, "The consortium"). Raise
#: it with ``[gateway] max_body_mib`` if you raise Flower's chunk size.
DEFAULT_MAX_BODY_MIB = 8
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 32

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx")
NGINX_FIX = ("Fix: install Debian's nginx and its stream module, as root: `apt-get install -y "
             "nginx libnginx-mod-stream` (`make nginx` does this), or name another nginx "
             "binary with `[gateway] nginx = \"PATH\"` in consortium.toml")
REFUSAL = ("This is the consortium's agency-facing address: it serves the Fleet API "
           "(SuperNode traffic) only. Submitting runs and registering node keys happen on "
           "the consortium's private interface.")
ACCESS_LOG = "gateway.log"
ERROR_LOG = "gateway-error.log"
RUNTIME_PREFIX = "heroes-gateway-"


def allowed(method: str, path: str) -> bool:
    """Whether the agency-facing address passes this request on (the rule the generated
    configuration implements; tests check one against the other)."""
    if method != "POST" or not path.startswith(FLEET_PREFIX):
        return False
    return path[len(FLEET_PREFIX):].split("?", 1)[0] in FLEET_ROUTES


@dataclass(frozen=True)
class GatewayLimits:
    """What one consortium may tune (``[gateway]`` in consortium.toml)."""

    max_body_mib: int = DEFAULT_MAX_BODY_MIB
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE


@dataclass(frozen=True)
class GatewayConfig:
    listen_host: str
    listen_port: int
    upstream_port: int
    certfile: Path
    keyfile: Path
    ca_certfile: Path
    state_dir: Path  # nginx.conf and nginx.pid
    log_dir: Path
    limits: GatewayLimits = field(default_factory=GatewayLimits)


@dataclass(frozen=True)
class Nginx:
    binary: Path
    stream_module: Path | None  # None: the stream module is built in


def find_nginx(candidates: tuple[str, ...] = NGINX_CANDIDATES) -> Nginx:
    """The nginx binary and its stream module, or a DeploymentError with the fix."""
    binary = next((Path(found) for c in candidates if (found := shutil.which(c))), None)
    if binary is None:
        raise DeploymentError(f"the agency-facing gateway needs nginx, and none was found "
                              f"(looked for {', '.join(candidates)}). {NGINX_FIX}")
    proc = subprocess.run([str(binary), "-V"], capture_output=True, text=True, timeout=30,
                          check=False)
    build = proc.stdout + proc.stderr
    if proc.returncode != 0 or "nginx version" not in build:
        raise DeploymentError(f"{binary} -V did not describe an nginx build. {NGINX_FIX}")
    flags = build.split()
    if "--with-stream" in flags:
        return Nginx(binary, None)
    modules = re.search(r"--modules-path=(\S+)", build)
    module = Path(modules.group(1) if modules else "/usr/lib/nginx/modules") / \
        "ngx_stream_module.so"
    if "--with-stream=dynamic" not in flags or not module.is_file():
        raise DeploymentError(
            f"{binary} has no stream module ({module} is missing): the gateway caps "
            f"connections per source address with it. {NGINX_FIX}")
    return Nginx(binary, module)


def _q(value: object) -> str:
    """A quoted nginx configuration string; refuses what nginx would read as syntax."""
    text = str(value)
    if any(c in text for c in '"\\$\n\r\0{};'):
        raise DeploymentError(
            f"{text!r} holds a character nginx configuration cannot quote (one of \" \\ $ ; "
            "{ } or a line break). Fix: move the consortium folder to a plain path")
    return f'"{text}"'


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_user() -> tuple[str, str] | None:
    """Whom nginx's workers (which parse what clients send) run as: when started as root,
    an unprivileged account (www-data, else nobody); otherwise our own (no directive)."""
    if os.geteuid() != 0:
        return None
    for name in ("www-data", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return name, grp.getgrgid(entry.pw_gid).gr_name
    raise DeploymentError("running as root, and there is neither a www-data nor a nobody "
                          "account for nginx's workers. Fix: run `heroes consortium serve` "
                          "as an unprivileged account (recommended), or create www-data")


def render_config(config: GatewayConfig, nginx: Nginx, *, socket_path: Path,
                  runtime_dir: Path, user: tuple[str, str] | None) -> str:
    """nginx.conf for this gateway; the Fleet locations come from ``FLEET_ROUTES``."""
    lim = config.limits
    if len(str(socket_path)) > 100:
        raise DeploymentError(f"{socket_path} is too long for a unix socket. Fix: set TMPDIR "
                              "to a shorter folder")
    # per public connection: client, stream->socket, socket->http, http->SuperLink
    connections = 4 * lim.max_connections + 64
    refusal = f'"{REFUSAL}\\n"'  # nginx reads \n in a quoted string as a newline
    upstream = f"https://127.0.0.1:{config.upstream_port}"
    routes = "\n".join(
        f"        location = {FLEET_PREFIX}{route} {{\n"
        f"            if ($request_method != POST) {{ return 403 {refusal}; }}\n"
        f"            proxy_pass {upstream}{FLEET_PREFIX}{route};\n"
        f"        }}" for route in sorted(FLEET_ROUTES))
    head = ""
    if nginx.stream_module is not None:
        head += f"load_module {_q(nginx.stream_module)};\n"
    if user is not None:
        head += f"user {user[0]} {user[1]};\n"
    temp = "\n".join(f"    {kind}_temp_path {_q(runtime_dir / kind)};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""\
# Written by `heroes consortium serve` (server/fleet_gateway.py) at every start: edits here
# are overwritten. Change limits in consortium.toml, section [gateway].
{head}worker_processes 1;
worker_rlimit_nofile {2 * connections};
daemon off;
pid {_q(config.state_dir / "nginx.pid")};
error_log {_q(config.log_dir / ERROR_LOG)} info;

events {{
    worker_connections {connections};
}}

stream {{
    # Counted from accept on, before any TLS or HTTP: slow handshakes count too. Refusals
    # are logged (warn); every relayed connection would be three info lines.
    error_log {_q(config.log_dir / ERROR_LOG)} notice;
    limit_conn_zone $binary_remote_addr zone=fleet_per_source:1m;
    limit_conn_zone $server_port zone=fleet_total:1m;
    limit_conn_log_level warn;
    server {{
        listen {_listen(config.listen_host, config.listen_port)};
        limit_conn fleet_per_source {lim.max_connections_per_source};
        limit_conn fleet_total {lim.max_connections};
        proxy_pass {_q("unix:" + str(socket_path))};
        proxy_protocol on;
        proxy_connect_timeout {UPSTREAM_CONNECT_TIMEOUT_S}s;
        proxy_timeout {2 * UPSTREAM_TIMEOUT_S}s;
    }}
}}

http {{
    server_tokens off;
    default_type text/plain;
    # $proxy_protocol_addr: the client's address as the stream layer saw it, known even
    # for a request too malformed to be parsed
    log_format fleet '$proxy_protocol_addr [$time_iso8601] "$request" $status '
                     'request_bytes=$request_length response_bytes=$bytes_sent '
                     'seconds=$request_time';
    access_log {_q(config.log_dir / ACCESS_LOG)} fleet;
{temp}

    client_header_timeout {HEAD_TIMEOUT_S}s;
    client_body_timeout {BODY_TIMEOUT_S}s;
    send_timeout {SEND_TIMEOUT_S}s;
    keepalive_timeout {IDLE_TIMEOUT_S}s;
    client_header_buffer_size 1k;
    large_client_header_buffers 4 8k;
    client_max_body_size {lim.max_body_mib}m;
    client_body_buffer_size 64k;

    # Bodies stream to the SuperLink as they arrive, never to memory or disk beyond the
    # buffers above; answers stream back the same way.
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_max_temp_file_size 0;
    proxy_http_version 1.1;
    proxy_connect_timeout {UPSTREAM_CONNECT_TIMEOUT_S}s;
    proxy_send_timeout {UPSTREAM_TIMEOUT_S}s;
    proxy_read_timeout {UPSTREAM_TIMEOUT_S}s;
    proxy_ssl_verify on;
    proxy_ssl_verify_depth 2;
    proxy_ssl_trusted_certificate {_q(config.ca_certfile)};
    proxy_ssl_name localhost;
    proxy_ssl_protocols TLSv1.2 TLSv1.3;

    server {{
        listen {_q("unix:" + str(socket_path))} ssl proxy_protocol;
        set_real_ip_from unix:;
        real_ip_header proxy_protocol;
        ssl_certificate {_q(config.certfile)};
        ssl_certificate_key {_q(config.keyfile)};
        ssl_protocols TLSv1.2 TLSv1.3;

        # Plain HTTP on this TLS port is closed unanswered (logged as 444), as a TLS-only
        # port should be: a client left on --insecure then learns the address needs TLS.
        error_page 497 = @plaintext;
        location @plaintext {{
            return 444;
        }}
        location / {{
            return 403 {refusal};
        }}
{routes}
    }}
}}
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when `serve` dies, even by SIGKILL, so no nginx is
    left holding the public port (Linux prctl PR_SET_PDEATHSIG)."""
    _LIBC.prctl(1, signal.SIGTERM)


_LIBC = ctypes.CDLL(None, use_errno=True)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (nginx's master and workers), read from /proc."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            pids.append(int(stat.parent.name))
    return pids


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of these processes together (VmRSS from /proc)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(match.group(1)) * 1024 if match else 0
    return total


class FleetGateway:
    """nginx for one consortium: ``start()``, ``poll()``, ``stop()``."""

    def __init__(self, config: GatewayConfig, nginx: Nginx | None = None) -> None:
        self.config = config
        self.nginx = nginx or find_nginx()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runtime_dir: Path | None = None

    @property
    def conf_path(self) -> Path:
        return self.config.state_dir / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.config.log_dir / ERROR_LOG

    @property
    def access_log(self) -> Path:
        return self.config.log_dir / ACCESS_LOG

    @property
    def pid_file(self) -> Path:
        return self.config.state_dir / "nginx.pid"

    def _clear_previous(self, wait: float) -> None:
        """Refuse to start beside a gateway an earlier `serve` left running; remove the
        runtime folder of one that ended without cleaning up (its `serve` was killed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        deadline = time.monotonic() + wait  # one whose `serve` just died may be exiting
        while (running := pid > 0 and self._is_ours(pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if running:
            raise DeploymentError(
                f"the gateway of an earlier `heroes consortium serve` still runs (nginx pid "
                f"{pid}, {self.conf_path}). Fix: stop it (`kill {pid}`), then start serve "
                "again")
        marker = self.config.state_dir / "runtime-dir"
        if marker.is_file():
            old = Path(marker.read_text().strip())
            if old.name.startswith(RUNTIME_PREFIX) and old.parent == Path(tempfile.gettempdir()):
                shutil.rmtree(old, ignore_errors=True)
            marker.unlink()

    def _is_ours(self, pid: int) -> bool:
        try:
            return str(self.conf_path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    def start(self, *, timeout: float = 60, previous_exit: float = 10) -> None:
        """Start nginx; ``previous_exit``: seconds to let a gateway an earlier `serve` left
        running exit by itself before refusing to start beside it."""
        user = worker_user()
        private_dir(self.config.state_dir)
        private_dir(self.config.log_dir)
        self._clear_previous(previous_exit)
        # The socket between the two layers lives outside the consortium folder, whose 0700
        # would keep out workers running as another account; its own folder is 0700 too.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX))
        write_atomic(self.config.state_dir / "runtime-dir", str(self.runtime_dir).encode())
        if user is not None:
            entry = pwd.getpwnam(user[0])
            os.chown(self.runtime_dir, entry.pw_uid, entry.pw_gid)
        write_atomic(self.conf_path, render_config(
            self.config, self.nginx, socket_path=self.runtime_dir / "fleet.sock",
            runtime_dir=self.runtime_dir, user=user).encode())
        pid_file = self.pid_file
        pid_file.unlink(missing_ok=True)
        for log in (self.access_log, self.error_log):  # 0600 from birth, whoever opens them
            os.close(open_private(log, os.O_WRONLY | os.O_APPEND))
        out = open_private(self.error_log, os.O_WRONLY | os.O_APPEND)
        try:
            self.proc = subprocess.Popen(
                [str(self.nginx.binary), "-p", str(self.config.state_dir), "-c",
                 str(self.conf_path), "-e", str(self.error_log)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                umask=0o077, preexec_fn=_die_with_parent)
        finally:
            os.close(out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._cleanup()
                raise DeploymentError(
                    f"the agency-facing gateway (nginx) exited with status "
                    f"{self.proc.returncode} while starting: {self._emerg()}. Fix: if the "
                    f"address is in use, stop the other process on "
                    f"{_listen(self.config.listen_host, self.config.listen_port)}; the whole "
                    f"message is in {self.error_log}")
            if pid_file.is_file() and pid_file.read_text().strip() == str(self.proc.pid) \
                    and len(process_tree(self.proc.pid)) > 1:
                return
            time.sleep(0.2)
        self.stop()
        raise DeploymentError(f"the agency-facing gateway (nginx) did not come up within "
                              f"{timeout:.0f} s; see {self.error_log}")

    def _emerg(self) -> str:
        lines = self.error_log.read_text(errors="replace").splitlines()
        found = [ln.split("[emerg]", 1)[1].strip() for ln in lines if "[emerg]" in ln]
        return found[-1][:300] if found else "no [emerg] line"

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # nginx's fast shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            (self.config.state_dir / "runtime-dir").unlink(missing_ok=True)
            self.runtime_dir = None
