"""Startup kits: everything an agency's node needs from the consortium, in one signed file.

``heroes consortium provision AGENCY`` writes ``AGENCY.heroes-kit``: the consortium's CA
certificate, its signing public key, its public address, the current signed roster (when
there is one), a node configuration template, each file's SHA-256, and the two fingerprints
to check out of band, all signed with the consortium's signing key. It holds no private key:
the node makes its own at ``heroes agency init --kit``.

Where trust comes from. The signature binds the kit's parts together and to the signing key
inside it; it cannot say that key is the consortium's (whoever forged a kit would sign it
with their own). So ``agency init --kit`` needs the signing key's fingerprint as the agency
received it by another channel (read over the phone, printed on a letter): without it, or
with another, nothing is written and the error names the fingerprint the kit carries for
the agency to check. That is the same out-of-band check as with separate files, once, for
one short string.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from federation.errors import DeploymentError, SignatureError
from federation.signing import PrivateKey, PublicKey, key_fingerprint, sign, verify

KIT_FORMAT = "heroes-kit/1"
KIT_SUFFIX = ".heroes-kit"
MAX_KIT_BYTES = 4 * 2**20
#: The kit's files: the CA certificate and signing key always, the roster when signed.
REQUIRED = ("ca.crt", "signing.pub")
OPTIONAL = ("roster.json", "roster.json.sig")
DOMAIN = b"heroes-fl startup kit v1\n"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def certificate_fingerprint(pem: bytes) -> str:
    """``sha256:`` + hex of the certificate's DER (what `openssl x509 -fingerprint -sha256`
    shows, without the colons)."""
    cert = x509.load_pem_x509_certificate(pem)
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _public_key(pem: bytes) -> PublicKey:
    key = serialization.load_pem_public_key(pem)
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("not an Ed25519 or EC key")
    return key


def make_kit(*, agency: str, public_address: str, files: dict[str, bytes],
             node_template: dict[str, Any], signing_key: PrivateKey) -> bytes:
    """The signed kit's bytes."""
    missing = [n for n in REQUIRED if n not in files]
    if missing or set(files) - set(REQUIRED) - set(OPTIONAL):
        raise ValueError(f"a kit holds {REQUIRED} and optionally {OPTIONAL}")
    body = {
        "format": KIT_FORMAT, "agency": agency, "consortium": public_address,
        "issued_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": {n: base64.b64encode(b).decode("ascii") for n, b in sorted(files.items())},
        "sha256": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())},
        "fingerprints": {"ca_certificate": certificate_fingerprint(files["ca.crt"]),
                         "signing_key": key_fingerprint(_public_key(files["signing.pub"]))},
        "node_template": node_template,
    }
    signature = base64.b64encode(sign(signing_key, DOMAIN + _canonical(body))).decode("ascii")
    return json.dumps({**body, "signature": signature}, indent=2, sort_keys=True).encode()


@dataclass(frozen=True)
class Kit:
    agency: str
    consortium: str
    issued_at: str
    files: dict[str, bytes]
    fingerprints: dict[str, str]
    node_template: dict[str, Any]


def _refuse(path: Path, why: str, fix: str) -> DeploymentError:
    return DeploymentError(f"startup kit {path} refused: {why}. Fix: {fix}")


def read_kit(path: Path, *, signing_key_fingerprint: str | None) -> Kit:
    """The kit at ``path``, checked whole: its format, every file against its SHA-256, the
    CA certificate and signing key parse, the signature verifies with that key, and that
    key is the one whose fingerprint the agency received out of band. Nothing is written."""
    refetch = "ask the consortium for a new kit (`heroes consortium provision`)"
    try:
        size = path.stat().st_size
    except OSError:
        raise _refuse(path, "it cannot be read", "check the path") from None
    if size > MAX_KIT_BYTES:
        raise _refuse(path, f"it is over {MAX_KIT_BYTES // 2**20} MiB", refetch)
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raise _refuse(path, "it is not a kit file (JSON)", refetch) from None
    if not isinstance(data, dict) or data.get("format") != KIT_FORMAT:
        raise _refuse(path, f"it is not a {KIT_FORMAT} file", refetch)
    try:
        signature = base64.b64decode(str(data.pop("signature")), validate=True)
        files = {str(n): base64.b64decode(str(b), validate=True)
                 for n, b in dict(data["files"]).items()}
        sums = {str(n): str(h) for n, h in dict(data["sha256"]).items()}
        agency, consortium = str(data["agency"]), str(data["consortium"])
        template = dict(data["node_template"])
    except (KeyError, TypeError, ValueError):
        raise _refuse(path, "a part is missing or malformed", refetch) from None
    if (set(REQUIRED) - set(files) or set(files) - set(REQUIRED) - set(OPTIONAL)
            or set(files) != set(sums)):
        raise _refuse(path, "its list of files is not a kit's", refetch)
    for name, blob in files.items():
        if hashlib.sha256(blob).hexdigest() != sums[name]:
            raise _refuse(path, f"{name} does not match its SHA-256", refetch)
    try:
        key = _public_key(files["signing.pub"])
        ca = certificate_fingerprint(files["ca.crt"])
    except ValueError:
        raise _refuse(path, "its CA certificate or signing key does not parse", refetch) \
            from None
    try:
        verify(key, signature, DOMAIN + _canonical(data), what=f"startup kit {path}")
    except SignatureError:
        raise _refuse(path, "its signature does not verify with the signing key it carries "
                      "(changed after signing)", refetch) from None
    carried = key_fingerprint(key)
    if signing_key_fingerprint is None:
        raise _refuse(path, f"its signing key is {carried}, and nothing says that is the "
                      "consortium's", "confirm that fingerprint with the consortium by "
                      "another channel (phone, letter), then pass it as --fingerprint")
    if signing_key_fingerprint.strip().lower() != carried:
        raise _refuse(path, f"its signing key is {carried}, not the {signing_key_fingerprint}"
                      " you were given: a kit from someone else, or a stale one",
                      "do not use this kit; ask the consortium by another channel")
    return Kit(agency=agency, consortium=consortium, issued_at=str(data.get("issued_at", "")),
               files=files, fingerprints={"ca_certificate": ca, "signing_key": carried},
               node_template=template)
