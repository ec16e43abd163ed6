"""Deployment pieces without Flower processes: certificates, node keys, signed bundles, the
Fleet-only gateway in front of a real TLS HTTP server, and the agency's pre-flight errors."""

from __future__ import annotations

import datetime as dt
import http.server
import io
import json
import socket
import ssl
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from clients import agency
from federation.appsign import bundle_manifest, sign_bundle, verify_bundle
from federation.errors import DataError, DeploymentError, SignatureError
from federation.ledger import Policy
from federation.pki import (
    check_certificate,
    load_node_public_key,
    make_ca,
    make_node_key,
    make_server_cert,
)
from federation.signing import generate_signing_key, load_private_key, load_public_key
from server.fleet_gateway import FleetGateway, GatewayConfig, allowed

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


# --- the Fleet-only gateway ------------------------------------------------------------------

class _Echo(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        reply = json.dumps({"path": self.path, "len": len(body),
                            "sha": __import__("hashlib").sha256(body).hexdigest()}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway(pki: dict[str, Path]) -> Iterator[tuple[str, int, FleetGateway]]:
    up_port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", up_port), _Echo)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki["cert"]), str(pki["key"]))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    port = free_port()
    gw = FleetGateway(GatewayConfig(listen_host="127.0.0.1", listen_port=port,
                                    upstream_host="127.0.0.1", upstream_port=up_port,
                                    certfile=pki["cert"], keyfile=pki["key"],
                                    ca_certfile=pki["ca"]))
    gw.start()
    try:
        yield "127.0.0.1", port, gw
    finally:
        gw.stop()
        httpd.shutdown()
        httpd.server_close()


def _request(host: str, port: int, ca: Path, raw: bytes) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, port), timeout=10) as s, \
            ctx.wrap_socket(s, server_hostname=host) as tls:
        tls.sendall(raw)
        chunks = []
        while data := tls.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_gateway_passes_fleet_routes_only(gateway: tuple[str, int, FleetGateway],
                                          pki: dict[str, Path]) -> None:
    host, port, gw = gateway
    body = bytes(range(256)) * 4000
    reply = _request(host, port, pki["ca"],
                     b"POST /v1/fleet/push-messages HTTP/1.1\r\nhost: x\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\nconnection: keep-alive\r\n\r\n" + body)
    assert reply.startswith(b"HTTP/1.0 200") or reply.startswith(b"HTTP/1.1 200")
    echoed = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert echoed["path"] == "/v1/fleet/push-messages" and echoed["len"] == len(body)
    assert echoed["sha"] == __import__("hashlib").sha256(body).hexdigest()
    for line in (b"POST /v1/control/start-run", b"POST /v1/control/register-node",
                 b"POST /v1/fleet/register-node", b"GET /v1/fleet/pull-messages",
                 b"POST /v1/runtime/pull-messages", b"POST /docs",
                 b"POST /v1/fleet/../control/start-run"):
        reply = _request(host, port, pki["ca"],
                         line + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 403"), line
        assert b"Fleet API" in reply
    # a second request pipelined behind an allowed one never reaches the upstream
    two = (b"POST /v1/fleet/get-run HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
           b"POST /v1/control/start-run HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    reply = _request(host, port, pki["ca"], two)
    assert reply.count(b"HTTP/1.") == 1 and b"/v1/fleet/get-run" in reply
    assert gw.refused == 7 and gw.forwarded == 2
    assert allowed("POST", "/v1/fleet/pull-messages?x=1")
    assert not allowed("POST", "/v1/fleetx/pull-messages")


# --- the agency's pre-flight --------------------------------------------------------------

def _agency(tmp_path: Path, pki: dict[str, Path], consortium: str, data: Path) -> Path:
    generate_signing_key(tmp_path / "cons.key", tmp_path / "cons.pub")
    agency.init(tmp_path / "node", name="test-agency", data_dir=data, consortium=consortium,
                ca_cert=pki["ca"], consortium_key=tmp_path / "cons.pub",
                policy=Policy(max_epsilon=5, delta=1e-5), allowed_tasks=["advert-risk"],
                runtime_port=free_port(), health_port=free_port())
    return tmp_path / "node"


def test_agency_errors_say_what_is_wrong_and_what_to_do(
        tmp_path: Path, pki: dict[str, Path], gateway: tuple[str, int, FleetGateway]) -> None:
    host, port, _ = gateway
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
