"""The consortium's certificates and the agencies' node keys, made with ``cryptography``.

    consortium CA (EC P-384, self-signed, 5 years)
    └── SuperLink TLS certificate (EC P-256, 1 year, SANs: the public host, localhost,
        127.0.0.1), presented on the agency-facing address and the private one

    agency node key (EC P-256; OpenSSH format, as Flower's node authentication wants):
    the private half never leaves the agency; the public half is sent to the consortium,
    which enrolls it.

Flower 1.42 does server-side TLS only (no client certificates): a node proves who it is
with its enrolled key, and checks the SuperLink against the consortium CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.errors import DeploymentError
from federation.files import write_atomic

CA_YEARS = 5
SERVER_DAYS = 365


def parse_address(text: str, *, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts may be bracketed) as (host, port), or a DeploymentError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise DeploymentError(f"{what} {text!r} is not HOST:PORT (e.g. fl.consortium.example:"
                              "9092 or 127.0.0.1:9092)")
    return host.strip("[]"), int(port)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only; never over an existing file."""
    if path.exists():
        raise DeploymentError(
            f"{path} already exists; refusing to overwrite a key. Move it away first if you "
            "really mean to replace it (everything signed or enrolled with it stops working)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "heroes-fl consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(cert_path: Path, key_path: Path, *, name: str = "heroes-fl consortium CA") -> None:
    """A self-signed certificate authority for the consortium's TLS."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA384())
    )
    write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_server_cert(cert_path: Path, key_path: Path, *, ca_cert: Path, ca_key: Path,
                     hosts: list[str], days: int = SERVER_DAYS,
                     not_before: dt.datetime | None = None) -> None:
    """The SuperLink's TLS certificate, signed by the consortium CA, valid for ``hosts``."""
    ca = load_certificate(ca_cert)
    ca_private = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(ca_private, ec.EllipticCurvePrivateKey):
        raise DeploymentError(f"{ca_key} is not the consortium CA's EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - dt.timedelta(minutes=5))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0])).issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_private.public_key()),
                       critical=False)
        .sign(ca_private, hashes.SHA256())
    )
    write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_certificate(path: Path) -> x509.Certificate:
    if not path.is_file():
        raise DeploymentError(f"certificate {path} not found; check the path (the consortium "
                              "gives agencies its ca.crt; `heroes consortium init` makes it)")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise DeploymentError(f"{path} is not a PEM certificate ({exc}); use the ca.crt file "
                              "the consortium sent, unmodified") from None


@dataclass(frozen=True)
class CertificateStatus:
    subject: str
    not_after: dt.datetime
    days_left: float
    hosts: tuple[str, ...]


def check_certificate(path: Path, *, what: str, host: str | None = None,
                      ca: Path | None = None) -> CertificateStatus:
    """Refuse an expired, not-yet-valid, wrong-host or foreign certificate, saying which."""
    cert = load_certificate(path)
    now = _now()
    if cert.not_valid_after_utc <= now:
        raise DeploymentError(
            f"the {what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC. "
            "Fix: the consortium renews it (`heroes consortium init --renew-server-cert`) "
            "and restarts the aggregator")
    if cert.not_valid_before_utc > now:
        raise DeploymentError(
            f"the {what} {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
            " UTC; check this machine's clock")
    hosts: tuple[str, ...] = ()
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = tuple([*ext.get_values_for_type(x509.DNSName),
                       *(str(a) for a in ext.get_values_for_type(x509.IPAddress))])
    except x509.ExtensionNotFound:
        pass
    if host is not None and hosts and host not in hosts:
        raise DeploymentError(
            f"the {what} {path} is valid for {', '.join(hosts)}, not for {host!r}. Fix: use "
            "one of those names in the address, or have the consortium re-issue the "
            "certificate with `heroes consortium init --dir DIR --renew-server-cert "
            f"--extra-host {host}`")
    if ca is not None:
        issuer = load_certificate(ca)
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise DeploymentError(
                f"the {what} {path} was not issued by the CA in {ca}; use the consortium's "
                "own ca.crt") from None
    return CertificateStatus(cert.subject.rfc4514_string(), cert.not_valid_after_utc,
                             (cert.not_valid_after_utc - now).total_seconds() / 86400, hosts)


def make_node_key(private_path: Path, public_path: Path, *, comment: str) -> str:
    """An agency node's EC P-256 key pair in OpenSSH format; returns the public line."""
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(private_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    # 0600 like every file of the node (public, but nobody else should be able to swap it)
    write_atomic(public_path, f"{line} {comment}\n".encode())
    return line


def load_node_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """An agency's public node key as sent to the consortium (one OpenSSH line)."""
    if not path.is_file():
        raise DeploymentError(f"public key file {path} not found; the agency makes it with "
                              "`heroes agency init` (node.key.pub in its state folder)")
    text = path.read_bytes().strip()
    try:
        key = serialization.load_ssh_public_key(text)
    except (ValueError, TypeError) as exc:
        raise DeploymentError(
            f"{path} is not an OpenSSH public key ({exc}); send the node.key.pub file that "
            "`heroes agency init` wrote, unmodified") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
            "secp256r1", "secp384r1", "secp521r1"):
        raise DeploymentError(
            f"{path} holds a {type(key).__name__}; Flower's node authentication needs an "
            "EC key on a NIST curve (P-256): make one with `heroes agency init`")
    return key
