"""Signed app bundles: agencies run only code the consortium signed.

A Flower App Bundle (FAB) is a zip whose ``.info/CONTENT`` lists every file with its SHA-256
and size. The consortium signs that manifest (prefixed with a domain tag) with its Ed25519
key; the signature travels with the run as the run-config key ``app.signature``. Before a
node installs or imports anything from a bundle, it checks that

1. every file in the zip is listed in the manifest with the right hash and size, and the
   manifest lists nothing that is missing;
2. the signature over the manifest verifies against the consortium's public key, which the
   agency received out of band at ``heroes agency init``.

Signing the manifest rather than the zip bytes makes the check independent of zip metadata
(time stamps, compression), while still covering every byte of every file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import zipfile

from federation.errors import SignatureError
from federation.signing import PrivateKey, PublicKey, key_fingerprint, sign, verify

DOMAIN = b"heroes-fl app bundle v1\n"
MANIFEST = ".info/CONTENT"
RUN_CONFIG_KEY = "app.signature"


def manifest_files(manifest: bytes) -> dict[str, tuple[str, int]]:
    """The files a manifest lists: path -> (sha256 hex, size in bits, as Flower writes it)."""
    listed: dict[str, tuple[str, int]] = {}
    for line in manifest.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        parts = line.rsplit(",", 2)
        if len(parts) != 3 or not parts[2].isdigit():
            raise SignatureError("the app bundle's manifest has a malformed line")
        listed[parts[0]] = (parts[1], int(parts[2]))
    return listed


def bundle_manifest(fab: bytes) -> bytes:
    """The bundle's ``.info/CONTENT``, after checking that it matches every file."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(fab))
    except zipfile.BadZipFile:
        raise SignatureError("the app bundle is not a zip archive; refusing to run it") from None
    with archive:
        names = set(archive.namelist())
        if MANIFEST not in names:
            raise SignatureError("the app bundle has no .info/CONTENT manifest; refusing it")
        manifest = archive.read(MANIFEST)
        listed = manifest_files(manifest)
        files = names - {MANIFEST}
        if extra := sorted(files - listed.keys()):
            raise SignatureError(f"the app bundle holds {len(extra)} file(s) not in its "
                                 f"manifest (first: {extra[0]}); refusing it")
        if missing := sorted(listed.keys() - files):
            raise SignatureError(f"the app bundle lacks {len(missing)} file(s) its manifest "
                                 f"lists (first: {missing[0]}); refusing it")
        for name in sorted(files):
            data = archive.read(name)
            sha, bits = listed[name]
            if hashlib.sha256(data).hexdigest() != sha or len(data) * 8 != bits:
                raise SignatureError(f"file {name} in the app bundle does not match its "
                                     "manifest entry (changed after building); refusing it")
    return manifest


def manifest_digest(fab: bytes) -> str:
    """SHA-256 of the bundle's checked manifest: the bundle's identity in receipts."""
    return hashlib.sha256(bundle_manifest(fab)).hexdigest()


def sign_bundle(key: PrivateKey, fab: bytes) -> str:
    """The base64 signature to pass as run config ``app.signature``."""
    return base64.b64encode(sign(key, DOMAIN + bundle_manifest(fab))).decode("ascii")


def verify_bundle(public_key: PublicKey, fab: bytes, signature: object) -> str:
    """Raise SignatureError unless ``fab`` is signed by ``public_key``; return its digest."""
    manifest = bundle_manifest(fab)
    if not isinstance(signature, str) or not signature:
        raise SignatureError(
            "the run carries no app.signature: the app bundle is unsigned, and this node "
            "runs only bundles signed by the consortium key "
            f"{key_fingerprint(public_key)}. Fix (consortium): submit runs with "
            "`heroes consortium train`, which signs the bundle")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("app.signature is not valid base64; refusing the bundle") from None
    verify(public_key, raw, DOMAIN + manifest,
           what=f"app bundle (manifest sha256 {hashlib.sha256(manifest).hexdigest()[:16]}) "
                f"against the consortium key {key_fingerprint(public_key)}")
    return hashlib.sha256(manifest).hexdigest()
