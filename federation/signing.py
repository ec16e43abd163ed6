"""Keys, signatures and detached ``.sig`` files for app bundles, model releases and receipts.

Two key kinds, both from ``cryptography``:

- Ed25519: the consortium's signing key (releases, app bundles).
- EC P-256 (ECDSA with SHA-256): an agency node's key. Flower's node authentication needs
  it in OpenSSH format, and the same key signs the agency's egress receipts, so loading
  accepts PEM and OpenSSH for both kinds.

A detached signature ``<file>.sig`` is a small JSON document. The signature does not cover
the raw file but a canonical header (format version, algorithm, signer fingerprint) plus the
file's SHA-256, so a ``.sig`` cannot be moved to another key's name or another algorithm
without failing verification.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from federation.errors import DeploymentError, SignatureError
from federation.files import StatCache, stat_signature

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey

SIG_FORMAT = "heroes-sig/1"
SIG_SUFFIX = ".sig"
_CHUNK = 1 << 20


# --- keys ------------------------------------------------------------------------------------

def generate_signing_key(private_path: Path, public_path: Path) -> None:
    """Write a new Ed25519 key pair: private PEM (PKCS8, mode 0600) and public PEM.

    Never overwrites: replacing a signing key silently would orphan every signature made
    with the old one.
    """
    for path in (private_path, public_path):
        if path.exists():
            raise DeploymentError(
                f"{path} already exists; refusing to overwrite a signing key. Fix: keep the "
                "existing key, or move it away first if you really mean to replace it "
                "(everything signed with the old key will then need re-signing)."
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: a key that appeared between the check and now is still not overwritten.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    os.chmod(private_path, 0o600)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(public_pem)


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DeploymentError(
            f"{what} {path} does not exist. Fix: pass the path of an existing key file."
        ) from None
    except IsADirectoryError:
        raise DeploymentError(f"{what} {path} is a directory, not a key file.") from None
    except PermissionError:
        raise DeploymentError(
            f"{what} {path} cannot be read (permission denied). Fix: run as the key's owner."
        ) from None


_PRIVATE_KEYS: StatCache[PrivateKey] = StatCache(4096)


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted Ed25519 or EC private key in PEM or OpenSSH format. A process
    keeps what it loaded while the file's stat signature is unchanged: a node signs two or
    three times per message with the same key (receipts, the signed log head, its
    secure-aggregation keys), and a replaced or rewritten key file is read again."""
    signature = stat_signature([Path(path)])
    held = _PRIVATE_KEYS.get(str(path), signature)
    if held is not None:
        return held
    key = _load_private_key(path)
    _PRIVATE_KEYS.put(str(path), signature, key)
    return key


def _load_private_key(path: Path) -> PrivateKey:
    data = _read_key_file(path, "private key")
    key: object
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DeploymentError(
            f"private key {path} is encrypted with a passphrase; heroes-fl reads unencrypted "
            "keys only (protect them with file permissions). Fix: export it without a passphrase."
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DeploymentError(
            f"private key {path} is not a PEM (PKCS8/traditional) or OpenSSH private key. "
            "Fix: pass the private key file (not the public key, not a certificate)."
        ) from None
    if isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        return key
    raise DeploymentError(
        f"private key {path} is a {type(key).__name__}; allowed are Ed25519 and EC (P-256) keys. "
        "Fix: generate one with `heroes consortium init` or `heroes agency init`."
    )


def load_public_key(path: Path) -> PublicKey:
    """Load an Ed25519 or EC public key in PEM (SubjectPublicKeyInfo) or OpenSSH format."""
    data = _read_key_file(path, "public key")
    key: object
    try:
        if data.lstrip().startswith((b"ssh-", b"ecdsa-")):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise DeploymentError(
            f"public key {path} is not a PEM (SubjectPublicKeyInfo) or OpenSSH public key. "
            "Fix: pass the public key file (e.g. signing.pub), not the private key."
        ) from None
    if isinstance(key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        return key
    raise DeploymentError(
        f"public key {path} is a {type(key).__name__}; allowed are Ed25519 and EC (P-256) keys."
    )


def key_fingerprint(public_key: PublicKey) -> str:
    """``sha256:`` + hex digest of the DER SubjectPublicKeyInfo (stable across file formats)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    """The algorithm name written into signatures: ``ed25519`` or ``ecdsa-sha256-<curve>``."""
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return "ed25519"
    return f"ecdsa-sha256-{key.curve.name}"


# --- raw signatures ----------------------------------------------------------------------

def sign(key: PrivateKey, data: bytes) -> bytes:
    """Sign ``data``: Ed25519, or ECDSA over SHA-256 (DER-encoded signature) for EC keys."""
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify(public_key: PublicKey, signature: bytes, data: bytes, *, what: str) -> None:
    """Check a signature over ``data``; raise SignatureError naming ``what`` if it fails."""
    try:
        if isinstance(public_key, Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError(
            f"{what}: the signature does not verify with key {key_fingerprint(public_key)}. "
            "The content was changed after signing, or it was signed by another key."
        ) from None


# --- detached signature files -----------------------------------------------------------------

def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _signed_message(algorithm: str, fingerprint: str, sha256: str) -> bytes:
    header = {"format": SIG_FORMAT, "algorithm": algorithm, "key_fingerprint": fingerprint,
              "sha256": sha256}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def signature_path_for(path: Path) -> Path:
    return path.with_name(path.name + SIG_SUFFIX)


def sign_file(key: PrivateKey, path: Path) -> Path:
    """Write ``<path>.sig`` next to ``path`` and return its path."""
    fingerprint = key_fingerprint(key.public_key())
    algorithm = algorithm_of(key)
    sha256 = file_sha256(path)
    signature = sign(key, _signed_message(algorithm, fingerprint, sha256))
    document = {
        "format": SIG_FORMAT,
        "algorithm": algorithm,
        "key_fingerprint": fingerprint,
        "file": path.name,
        "sha256": sha256,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    sig_path = signature_path_for(path)
    tmp = sig_path.with_name(sig_path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, sig_path)
    return sig_path


def _read_signature(sig_path: Path, path: Path) -> dict[str, Any]:
    if not sig_path.exists():
        raise SignatureError(
            f"{path} is unsigned: no signature file {sig_path}. Fix: use a bundle released "
            "with `heroes consortium release`, which writes the .sig next to it."
        )
    try:
        document = json.loads(sig_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SignatureError(
            f"signature file {sig_path} is malformed: not UTF-8 JSON. Fix: fetch the .sig "
            "again from the release."
        ) from None
    if not isinstance(document, dict):
        raise SignatureError(f"signature file {sig_path} is malformed: expected a JSON object.")
    problems = [
        f"'{field}' missing or not a string"
        for field in ("format", "algorithm", "key_fingerprint", "sha256", "signature")
        if not isinstance(document.get(field), str)
    ]
    if problems:
        raise SignatureError(f"signature file {sig_path} is malformed: {'; '.join(problems)}.")
    if document["format"] != SIG_FORMAT:
        raise SignatureError(
            f"signature file {sig_path} has format {document['format']!r}; this version reads "
            f"{SIG_FORMAT!r} only."
        )
    return document


def verify_file(
    public_key: PublicKey, path: Path, *, signature_path: Path | None = None
) -> dict[str, Any]:
    """Verify ``path`` against its detached signature; return the signature document.

    Checks, in order: the signature file exists and parses, it names this key, the file's
    SHA-256 matches the one signed, and the signature over header+digest verifies.
    """
    sig_path = signature_path if signature_path is not None else signature_path_for(path)
    if not path.exists():
        raise SignatureError(f"{path} does not exist; nothing to verify.")
    document = _read_signature(sig_path, path)
    expected = key_fingerprint(public_key)
    if document["key_fingerprint"] != expected:
        raise SignatureError(
            f"{path} was signed by key {document['key_fingerprint']}, not by the trusted key "
            f"{expected}. Fix: obtain the bundle from your consortium, or check that you passed "
            "the consortium's public key."
        )
    if document["algorithm"] != algorithm_of(public_key):
        raise SignatureError(
            f"signature file {sig_path} says algorithm {document['algorithm']!r} but the "
            f"trusted key is {algorithm_of(public_key)!r}."
        )
    actual_sha = file_sha256(path)
    if actual_sha != document["sha256"]:
        raise SignatureError(
            f"{path} was modified after signing: its sha256 is {actual_sha}, the signature "
            f"covers {document['sha256']}. Fix: do not use it; fetch the released file again."
        )
    try:
        signature = base64.b64decode(document["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(
            f"signature file {sig_path} is malformed: 'signature' is not base64."
        ) from None
    verify(
        public_key,
        signature,
        _signed_message(document["algorithm"], document["key_fingerprint"], document["sha256"]),
        what=f"signature file {sig_path} for {path}",
    )
    return document
