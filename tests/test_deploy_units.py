"""Deployment pieces without Flower processes: certificates, node keys, signed bundles, the
consortium folder's modes and its strict consortium.toml, and the agency's pre-flight errors.
The Fleet gateway (nginx) has its own tests in tests/test_gateway.py."""

from __future__ import annotations

import datetime as dt
import http.server
import io
import os
import socket
import ssl
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from clients import agency
from federation.appsign import bundle_manifest, sign_bundle, verify_bundle
from federation.errors import ConfigError, DataError, DeploymentError, SignatureError
from federation.ledger import Policy
from federation.pki import (
    check_certificate,
    load_node_public_key,
    make_ca,
    make_node_key,
    make_server_cert,
)
from federation.signing import generate_signing_key, load_private_key, load_public_key
from server.fleet_gateway import GatewayLimits

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    make_ca(tmp_path / "ca.crt", tmp_path / "ca.key")
    make_server_cert(tmp_path / "srv.crt", tmp_path / "srv.key", ca_cert=tmp_path / "ca.crt",
                     ca_key=tmp_path / "ca.key", hosts=["fl.example", "127.0.0.1"])
    return {"ca": tmp_path / "ca.crt", "ca_key": tmp_path / "ca.key",
            "cert": tmp_path / "srv.crt", "key": tmp_path / "srv.key"}


# --- certificates and keys ---------------------------------------------------------------

def test_server_certificate_checks(pki: dict[str, Path], tmp_path: Path) -> None:
    status = check_certificate(pki["cert"], what="SuperLink certificate", host="fl.example",
                               ca=pki["ca"])
    assert set(status.hosts) == {"fl.example", "127.0.0.1"} and status.days_left > 360
    with pytest.raises(DeploymentError, match=r"valid for fl.example, 127.0.0.1, not for"):
        check_certificate(pki["cert"], what="SuperLink certificate", host="other.example")
    make_ca(tmp_path / "other.crt", tmp_path / "other.key")
    with pytest.raises(DeploymentError, match="was not issued by the CA"):
        check_certificate(pki["cert"], what="SuperLink certificate", ca=tmp_path / "other.crt")
    make_server_cert(tmp_path / "old.crt", tmp_path / "old.key", ca_cert=pki["ca"],
                     ca_key=pki["ca_key"], hosts=["fl.example"], days=1,
                     not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    with pytest.raises(DeploymentError, match=r"expired on .* Fix: the consortium renews it"):
        check_certificate(tmp_path / "old.crt", what="SuperLink certificate")
    with pytest.raises(DeploymentError, match="not found"):
        check_certificate(tmp_path / "missing.crt", what="consortium CA certificate")
    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(DeploymentError, match="not a PEM certificate"):
        check_certificate(tmp_path / "junk.crt", what="consortium CA certificate")


def test_keys_are_never_overwritten_and_private_files_are_owner_only(tmp_path: Path) -> None:
    line = make_node_key(tmp_path / "node.key", tmp_path / "node.key.pub", comment="x")
    assert line.startswith("ecdsa-sha2-nistp256 ")
    assert (tmp_path / "node.key").stat().st_mode & 0o077 == 0
    load_node_public_key(tmp_path / "node.key.pub")
    with pytest.raises(DeploymentError, match="refusing to overwrite"):
        make_node_key(tmp_path / "node.key", tmp_path / "other.pub", comment="x")


def test_enrollment_accepts_only_nist_ec_openssh_keys(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    (tmp_path / "ed.pub").write_bytes(ed.public_bytes(serialization.Encoding.OpenSSH,
                                                      serialization.PublicFormat.OpenSSH))
    with pytest.raises(DeploymentError, match="EC key on a NIST curve"):
        load_node_public_key(tmp_path / "ed.pub")
    (tmp_path / "garbage.pub").write_text("hello")
    with pytest.raises(DeploymentError, match="not an OpenSSH public key"):
        load_node_public_key(tmp_path / "garbage.pub")


# --- signed app bundles --------------------------------------------------------------------

@pytest.fixture(scope="module")
def fab() -> bytes:
    from flwr.cli.build import build_fab_from_disk

    return bytes(build_fab_from_disk(ROOT))


def _rezip(fab: bytes, change: dict[str, bytes | None], *, keep_manifest: bool = True) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(fab))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name in change:
                data = change[name]
                if data is not None:
                    dst.writestr(name, data)
            else:
                dst.writestr(name, src.read(name))
        for name, data in change.items():
            if name not in src.namelist() and data is not None:
                dst.writestr(name, data)
    return out.getvalue()


def test_bundle_signature_roundtrip_and_every_tamper_is_refused(fab: bytes, tmp_path: Path
                                                                ) -> None:
    generate_signing_key(tmp_path / "c.key", tmp_path / "c.pub")
    generate_signing_key(tmp_path / "o.key", tmp_path / "o.pub")
    key, pub = load_private_key(tmp_path / "c.key"), load_public_key(tmp_path / "c.pub")
    sig = sign_bundle(key, fab)
    digest = verify_bundle(pub, fab, sig)
    assert len(digest) == 64
    # re-zipping with other metadata keeps the signature valid: it covers the contents
    assert verify_bundle(pub, _rezip(fab, {}), sig) == digest
    code = zipfile.ZipFile(io.BytesIO(fab)).read("clients/client_app.py")
    cases = {
        "changed file": _rezip(fab, {"clients/client_app.py": code + b"\nimport os\n"}),
        "extra file": _rezip(fab, {"clients/evil.py": b"print(1)\n"}),
        "missing file": _rezip(fab, {"clients/client_app.py": None}),
    }
    for tampered in cases.values():
        with pytest.raises(SignatureError, match="refusing"):
            verify_bundle(pub, tampered, sig)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_bundle(load_public_key(tmp_path / "o.pub"), fab, sig)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_bundle(pub, fab, sign_bundle(load_private_key(tmp_path / "o.key"), fab))
    with pytest.raises(SignatureError, match="unsigned"):
        verify_bundle(pub, fab, "")
    with pytest.raises(SignatureError, match="not valid base64"):
        verify_bundle(pub, fab, "!!!")
    with pytest.raises(SignatureError, match="not a zip"):
        bundle_manifest(b"PK-but-not-really")


# --- a TLS server with the consortium's certificate ----------------------------------------

class _Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(pki: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """What an agency's pre-flight reaches: any TLS server presenting the SuperLink's
    certificate (the real gateway is nginx, tested in tests/test_gateway.py)."""
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Ok)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki["cert"]), str(pki["key"]))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield "127.0.0.1", port
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- the agency's pre-flight --------------------------------------------------------------

def _agency(tmp_path: Path, pki: dict[str, Path], consortium: str, data: Path) -> Path:
    generate_signing_key(tmp_path / "cons.key", tmp_path / "cons.pub")
    agency.init(tmp_path / "node", name="test-agency", data_dir=data, consortium=consortium,
                ca_cert=pki["ca"], consortium_key=tmp_path / "cons.pub",
                policy=Policy(max_epsilon=5, delta=1e-5), allowed_tasks=["advert-risk"],
                runtime_port=free_port(), health_port=free_port())
    return tmp_path / "node"


def test_agency_errors_say_what_is_wrong_and_what_to_do(
        tmp_path: Path, pki: dict[str, Path], tls_server: tuple[str, int]) -> None:
    host, port = tls_server
    home = agency.AgencyHome(_agency(tmp_path, pki, f"{host}:{port}", tmp_path / "no-data"))
    node = home.node()
    assert (home.node_key.stat().st_mode & 0o077) == 0
    with pytest.raises(DataError, match=r"data folder does not exist.*Fix"):
        agency.validate_data(home, node)
    assert "reachable over TLS" in agency.preflight(home, node, insecure=False)
    closed = free_port()
    bad = agency.NodeSettings(**{**node.__dict__, "consortium": f"127.0.0.1:{closed}"})
    with pytest.raises(DeploymentError, match=r"cannot reach the consortium.*Fix: check"):
        agency.preflight(home, bad, insecure=False)
    # a server whose certificate comes from another CA
    make_ca(tmp_path / "evil-ca.crt", tmp_path / "evil-ca.key")
    home.ca_cert.write_bytes((tmp_path / "evil-ca.crt").read_bytes())
    with pytest.raises(DeploymentError, match="did not present a valid certificate"):
        agency.preflight(home, node, insecure=False)
    with pytest.raises(DeploymentError, match=r"requires TLS.*drop --insecure"):
        agency.preflight(home, node, insecure=True)
    with pytest.raises(DeploymentError, match="already holds a node"):
        agency.init(
            home.root, name="x", data_dir=tmp_path, consortium="h:1", ca_cert=pki["ca"],
            consortium_key=tmp_path / "cons.pub", policy=Policy(max_epsilon=1, delta=1e-5),
            allowed_tasks=[], runtime_port=1, health_port=2)
    with pytest.raises(DeploymentError, match="not HOST:PORT"):
        agency.init(tmp_path / "n2", name="x", data_dir=tmp_path, consortium="nowhere",
                    ca_cert=pki["ca"], consortium_key=tmp_path / "cons.pub",
                    policy=Policy(max_epsilon=1, delta=1e-5), allowed_tasks=[],
                    runtime_port=1, health_port=2)


def test_status_without_a_running_node(tmp_path: Path, pki: dict[str, Path]) -> None:
    home = _agency(tmp_path, pki, "127.0.0.1:1", tmp_path)
    s = agency.status(home)
    assert s["processes"] == "never started" and s["connection"] == "not running"
    assert s["health"].startswith("unreachable")
    assert s["datasets"] == [] and s["budget"]["max_epsilon"] == 5


def test_consortium_commands_refuse_with_a_fix(tmp_path: Path) -> None:
    from server import deploy

    cons = tmp_path / "cons"
    deploy.init(cons, public_address="127.0.0.1:9", private_port=free_port(),
                health_port=free_port(), extra_hosts=[])
    assert (cons / "tls" / "ca.key").stat().st_mode & 0o077 == 0
    assert (cons / "signing.key").stat().st_mode & 0o077 == 0
    assert "days left" in deploy.check_tls(deploy.ConsortiumHome(cons))
    with pytest.raises(DeploymentError, match="already holds a consortium"):
        deploy.init(cons, public_address="127.0.0.1:9", private_port=1, health_port=2,
                    extra_hosts=[])
    with pytest.raises(DeploymentError, match="not HOST:PORT"):
        deploy.init(tmp_path / "c2", public_address="nowhere", private_port=1, health_port=2,
                    extra_hosts=[])
    make_node_key(tmp_path / "n.key", tmp_path / "n.pub", comment="n")
    with pytest.raises(DeploymentError, match="not allowed: use 2-63 lower-case"):
        deploy.enroll(cons, "Bad Name!", tmp_path / "n.pub")
    with pytest.raises(DeploymentError, match=r"aggregator is not running.*heroes consortium"):
        deploy.enroll(cons, "eu-police-north", tmp_path / "n.pub")
    with pytest.raises(DeploymentError, match="not in the registry"):
        deploy.revoke(cons, "eu-police-north")
    with pytest.raises(DeploymentError, match="not a consortium folder"):
        deploy.serve(tmp_path / "nothing")
    old = (cons / "tls" / "superlink.crt").read_bytes()
    deploy.renew_server_cert(cons, extra_hosts=["fl.example"])
    assert (cons / "tls" / "superlink.crt").read_bytes() != old
    assert "fl.example" in check_certificate(cons / "tls" / "superlink.crt", what="c").hosts


# --- the consortium folder: owner only from birth, a strict consortium.toml -----------------

def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)) or ".": stat.S_IMODE(p.stat().st_mode)
            for p in [root, *root.rglob("*")]}


def test_consortium_folder_is_owner_only_from_birth(tmp_path: Path) -> None:
    from server import deploy

    made = tmp_path / "made-by-the-admin"
    made.mkdir(mode=0o755)
    os.chmod(made, 0o755)
    previous = os.umask(0o022)  # a usual umask: modes must not depend on it
    try:
        deploy.init(made, public_address="127.0.0.1:9", private_port=free_port(),
                    health_port=free_port(), extra_hosts=[])
        assert os.umask(0o022) == 0o022  # init gave the umask back
    finally:
        os.umask(previous)
    modes = _modes(made)
    assert {"tls", "logs", "runs", "flwr-home", "consortium.toml", "registry.json",
            "signing.key", "tls/ca.key", "tls/superlink.key"} <= set(modes)
    loose = {name: f"{mode:04o}" for name, mode in modes.items()
             if mode != (0o700 if (made / name).is_dir() else 0o600)}
    assert not loose, loose
    home = deploy.ConsortiumHome(made)
    assert deploy.loose_modes(home) == []
    os.chmod(home.signing_key, 0o644)
    (made / "state.db").write_bytes(b"")
    os.chmod(made / "state.db", 0o644)
    os.chmod(made / "logs", 0o755)
    found = deploy.loose_modes(home)
    assert len(found) == 3
    assert any(f.startswith(f"{home.signing_key} is mode 0644, open to other users") and
               f.endswith(f"Fix: chmod 600 {home.signing_key}") for f in found)
    assert any(f"Fix: chmod 600 {made / 'state.db'}" in f for f in found)
    assert any(f"Fix: chmod 700 {made / 'logs'}" in f for f in found)


@pytest.fixture
def cons(tmp_path: Path) -> Path:
    from server import deploy

    root = tmp_path / "cons"
    deploy.init(root, public_address="127.0.0.1:9092", private_port=9093, health_port=9097,
                extra_hosts=[])
    return root


def _with_toml(root: Path, text: str) -> None:
    (root / "consortium.toml").write_text(text)


def test_consortium_toml_is_strict_and_lists_every_problem(cons: Path) -> None:
    from server import deploy

    home = deploy.ConsortiumHome(cons)
    settings = home.settings()
    assert (settings.public_host, settings.public_port, settings.private_port,
            settings.health_port, settings.bind_host) == ("127.0.0.1", 9092, 9093, 9097,
                                                          "127.0.0.1")
    assert settings.limits == GatewayLimits() and settings.nginx is None
    original = (cons / "consortium.toml").read_text()
    _with_toml(cons, original + "bind_host = \"0.0.0.0\"\n\n[gateway]\nmax_body_mib = 16\n"
               "max_connections = 100\nmax_connections_per_source = 10\n")
    settings = home.settings()
    assert settings.bind_host == "0.0.0.0"
    assert settings.limits == GatewayLimits(max_body_mib=16, max_connections=100,
                                                   max_connections_per_source=10)
    _with_toml(cons, '[consortium]\npublic_address = "127.0.0.1:9092"\nprivate_port = "9093"\n'
               "health_port = true\nprivat_port = 1\n\n[gatway]\nx = 1\n\n[gateway]\n"
               "max_body_mib = 0\nmax_connections = 4\nmax_connections_per_source = 5\n"
               "timeout = 3\n")
    with pytest.raises(ConfigError) as err:
        home.settings()
    text = str(err.value)
    assert f"{cons / 'consortium.toml'} has 7 problem(s)" in text
    for part in ("unknown table [gatway]; allowed: [consortium], [gateway]",
                 "[consortium] unknown key 'privat_port'; allowed: bind_host, created, "
                 "health_port, private_port, public_address. Fix:",
                 "[gateway] unknown key 'timeout'; allowed: max_body_mib, max_connections, "
                 "max_connections_per_source, nginx",
                 "[consortium] private_port is a string; it must be an integer. Fix: write it "
                 "as a whole number without quotes",
                 "[consortium] health_port is a boolean; it must be an integer",
                 "[gateway] max_body_mib = 0 is outside 1-4096",
                 "max_connections_per_source (5) is above max_connections (4)"):
        assert part in text, part
    _with_toml(cons, '[consortium]\npublic_address = "nowhere"\nprivate_port = 70000\n'
               "health_port = 9092\n")
    with pytest.raises(ConfigError) as err:
        home.settings()
    assert "public_address 'nowhere' is not HOST:PORT" in str(err.value)
    assert "private_port = 70000 is not a port (1-65535)" in str(err.value)
    _with_toml(cons, '[consortium]\npublic_address = "h:9092"\nprivate_port = 9092\n'
               "health_port = 9097\n")
    with pytest.raises(ConfigError, match="must all differ"):
        home.settings()
    _with_toml(cons, "[consortium\npublic_address = 1\n")
    with pytest.raises(ConfigError, match=r"not valid TOML \(.*line 1"):
        home.settings()
    with pytest.raises(ConfigError, match="health_port = 0 is not a port"):
        deploy.init(cons.parent / "other", public_address="127.0.0.1:9092", private_port=9093,
                    health_port=0, extra_hosts=[])
    assert not (cons.parent / "other").exists()  # refused before anything was made


def test_serve_exits_2_with_the_fix_for_a_bad_toml_and_for_a_missing_nginx(
        cons: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests._heroes import main

    original = (cons / "consortium.toml").read_text()
    _with_toml(cons, original + "private_prot = 9\n")
    assert main(["consortium", "serve", "--dir", str(cons)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'private_prot'" in err and "Traceback" not in err
    _with_toml(cons, original + '\n[gateway]\nnginx = "/nonexistent/sbin/nginx"\n')
    assert main(["consortium", "serve", "--dir", str(cons)]) == 2
    err = capsys.readouterr().err
    assert "needs nginx, and none was found" in err
    assert "apt-get install -y nginx libnginx-mod-stream" in err
    assert not (cons / "aggregator.json").exists()  # nothing was started


def test_train_console_shows_progress_warnings_and_whole_errors() -> None:
    """`consortium train`'s console (server/deploy.py): heroes' own lines, the run's start,
    Flower's warnings, and an error with its traceback down to the reason; none of
    Flower's INFO lines. The lines are a real run's (ANSI colours already stripped)."""
    from server.deploy import ConsoleFilter

    lines = [
        "Using SuperLink: consortium (127.0.0.1:52477)",
        "Successfully started run 1108",
        "INFO :      Starting logstream for run_id `1108`",
        "INFO :      [ROUND 1/2]",
        "INFO :      configure_train: Sampled 3 nodes (out of 3)",
        "heroes 2026-12-04T05:16:07Z run 1108 INFO heroes.server: round 1/2: 3/3 agencies "
        "trained (secure sum)",
        "heroes 2026-12-04T05:16:12Z run 1108 WARNING heroes.server: round 2: es-police "
        "failed in training: it failed",
        "WARNING :   a Flower warning",
        "ERROR :     ServerApp raised an exception",
        "Traceback (most recent call last):",
        '  File "server/strategy.py", line 231, in aggregate_train',
        "federation.errors.RoundFailed: round 2: 1 agencies trained successfully, below the "
        "quorum of 2",
        "ERROR :     Exit Code: 201",
        "INFO :      Strategy execution finished in 56.79s",
    ]
    f = ConsoleFilter()
    shown = [line for line in lines if f(line)]
    assert shown == lines[:2] + lines[5:13]
