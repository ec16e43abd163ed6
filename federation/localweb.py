"""The consoles' web server: the standard library's threading HTTP server, hardened for
pages about privacy budgets and agencies.

- Binds 127.0.0.1 unless told otherwise; off loopback it needs a login (a token file).
- Answers only requests whose Host header is one it serves (its loopback names at its port,
  plus the public name given for a reverse proxy): a web page elsewhere cannot read it
  through DNS rebinding.
- With a token: every route but the login form needs ``Authorization: Bearer TOKEN`` or the
  session cookie the login form sets (HttpOnly, SameSite=Strict, Secure behind TLS); the
  comparison is constant-time; a wrong token is refused with 401 and nothing else.
- A Content-Security-Policy that allows no script, no frame and nothing from elsewhere;
  no caching; no request log (who looked at what stays unrecorded); GET, POST to the login
  form, and POST to the actions a console declares (only with a token: see make_server).

No framework: a few routes for a handful of local readers.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "img-src data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
COOKIE = "heroes_console"
MAX_LOGIN_BYTES = 4096
LOGIN_PAGE = """<!doctype html><html><head><meta charset='utf-8'><title>heroes-fl console:
login</title></head><body><h1>heroes-fl console</h1><form method='post' action='/login'>
<label>token <input type='password' name='token' autocomplete='off'></label>
<button type='submit'>log in</button></form></body></html>"""

#: A route: the content type and a function giving the body (str or bytes).
Route = tuple[str, Callable[[], str | bytes]]
#: An action (POST): a function of the request's fields and who asked, giving a JSON object;
#: a HeroesError it raises is the refusal (400, its message).
Action = Callable[[dict[str, str], str], dict[str, Any]]


@dataclass(frozen=True)
class Access:
    """Who may read: the hosts it answers to and, when set, the token a reader must show."""

    public_hosts: tuple[str, ...] = ()
    token: str | None = None
    secure_cookie: bool = False


def read_token(path: Path) -> str:
    """The login token from a file only the operator reads (at least 16 characters)."""
    from federation.errors import ConfigError

    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        raise ConfigError([f"--token-file {path} cannot be read. Fix: write a long random "
                           "token into it (e.g. `openssl rand -hex 32 > FILE; chmod 600 "
                           "FILE`)"], source="console") from None
    if len(token) < 16:
        raise ConfigError([f"--token-file {path} holds fewer than 16 characters. Fix: "
                           "`openssl rand -hex 32 > FILE`"], source="console")
    return token


def make_server(routes: dict[str, Route], *, bind: str = "127.0.0.1", port: int = 0,
                access: Access = Access(),
                actions: dict[str, Action] | None = None) -> ThreadingHTTPServer:
    """The server on ``bind:port`` (0: any free port), not started.

    ``actions`` (POST routes) are served only with a token: a request needs the bearer
    token, or the login's session cookie together with an ``Origin`` header naming this
    server (a form on another site cannot post to it; the cookie is SameSite=Strict too).
    A form post (``application/x-www-form-urlencoded``) is answered with a redirect to the
    page, an API call with the action's JSON."""
    posts: dict[str, Action] = actions or {}
    sessions: set[str] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "heroes-console"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, code: int, kind: str, body: bytes,
                  extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for k, v in {**HEADERS, **(extra or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _host_ok(self) -> bool:
            port = self.server.server_port  # type: ignore[attr-defined]  # an HTTPServer's
            own = {f"127.0.0.1:{port}", f"localhost:{port}", *access.public_hosts}
            return self.headers.get("Host", "") in own

        def _bearer(self) -> bool:
            given = self.headers.get("Authorization", "")
            return bool(access.token) and given.startswith("Bearer ") and hmac.compare_digest(
                given[7:].encode(), str(access.token).encode())

        def _same_origin(self) -> bool:
            origin = self.headers.get("Origin", "")
            _, _, host = origin.partition("://")
            return bool(host) and host == self.headers.get("Host", "")

        def _authorised(self) -> bool:
            if access.token is None:
                return True
            if self._bearer():
                return True
            for part in self.headers.get("Cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE:
                    with lock:
                        return any(hmac.compare_digest(value.encode(), s.encode())
                                   for s in sessions)
            return False

        def do_GET(self) -> None:
            if not self._host_ok():
                self._send(403, "text/plain", b"not served to this host name\n")
                return
            path = self.path.split("?", 1)[0]
            if path == "/login" and access.token is not None:
                self._send(200, "text/html; charset=utf-8", LOGIN_PAGE.encode())
                return
            if not self._authorised():
                if path == "/":
                    self._send(303, "text/plain", b"log in\n", {"Location": "/login"})
                else:
                    self._send(401, "text/plain", b"log in first (token)\n",
                               {"WWW-Authenticate": 'Bearer realm="heroes-fl console"'})
                return
            route = routes.get(path)
            if route is None:
                self._send(404, "text/plain", b"not found\n")
                return
            kind, fn = route
            from federation.errors import HeroesError

            try:
                body = fn()
            except HeroesError as exc:
                self._send(500, "text/plain; charset=utf-8", f"{exc}\n".encode())
                return
            self._send(200, kind, body.encode() if isinstance(body, str) else body)

        def _act(self, action: Action) -> None:
            if access.token is None:
                self._send(403, "text/plain", b"run actions need a login: start the console "
                           b"with --token-file FILE\n")
                return
            bearer = self._bearer()
            if not bearer and not (self._authorised() and self._same_origin()):
                self._send(401 if not self._authorised() else 403, "text/plain",
                           b"log in first (token); a form must come from this console\n")
                return
            length = int(self.headers.get("Content-Length", "0") or 0)
            if length > MAX_LOGIN_BYTES:
                self._send(413, "text/plain", b"too long\n")
                return
            raw = self.rfile.read(length).decode("utf-8", "replace")
            form = "application/x-www-form-urlencoded" in self.headers.get("Content-Type", "")
            try:
                fields = ({k: v[0] for k, v in parse_qs(raw).items()} if form
                          else json.loads(raw or "{}"))
                if not isinstance(fields, dict):
                    raise ValueError
            except ValueError:
                self._send(400, "text/plain", b"a JSON object or a form, please\n")
                return
            who = (f"{'token' if bearer else 'login session'} from "
                   f"{self.client_address[0]}")
            from federation.errors import HeroesError

            try:
                result = action({str(k): str(v) for k, v in fields.items()}, who)
            except HeroesError as exc:
                self._send(400, "text/plain; charset=utf-8", f"refused: {exc}\n".encode())
                return
            if form:
                self._send(303, "text/plain", b"done\n", {"Location": "/"})
            else:
                self._send(200, "application/json", as_json(result).encode())

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if self._host_ok() and path in posts:
                self._act(posts[path])
                return
            if not self._host_ok() or self.path != "/login" or access.token is None:
                self._send(404 if self._host_ok() else 403, "text/plain", b"not found\n")
                return
            length = int(self.headers.get("Content-Length", "0") or 0)
            if length > MAX_LOGIN_BYTES:
                self._send(413, "text/plain", b"too long\n")
                return
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            token = (form.get("token") or [""])[0]
            if not hmac.compare_digest(token.encode(), access.token.encode()):
                self._send(401, "text/plain", b"wrong token\n")
                return
            session = secrets.token_urlsafe(32)
            with lock:
                sessions.add(session)
            flags = "; Secure" if access.secure_cookie else ""
            self._send(303, "text/plain", b"logged in\n", {
                "Location": "/",
                "Set-Cookie": f"{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/{flags}"})

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    return server


def serve_forever(server: ThreadingHTTPServer, banner: str) -> int:
    """Serve until SIGTERM or Ctrl-C."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(banner, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def as_json(value: Any) -> str:
    """Strict JSON for an API route (an infinite epsilon is null, flagged beside it)."""
    from federation.ledger import json_safe

    return json.dumps(json_safe(value), indent=2, default=str, allow_nan=False)
