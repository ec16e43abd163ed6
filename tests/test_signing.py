"""Signing keys and detached signatures with real `cryptography` keys and real files."""

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.errors import DeploymentError, SignatureError
from federation.signing import (
    file_sha256,
    generate_signing_key,
    key_fingerprint,
    load_private_key,
    load_public_key,
    sign,
    sign_file,
    verify,
    verify_file,
)


def _keypair(directory: Path, name: str = "signing") -> tuple[Path, Path]:
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    generate_signing_key(private, public)
    return private, public


def _openssh_ec_key(directory: Path) -> tuple[Path, Path]:
    """An EC P-256 key pair in OpenSSH format, as an agency node key is stored."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "node.key", directory / "node.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


def test_generated_key_is_private_and_never_overwritten(tmp_path: Path) -> None:
    private, public = _keypair(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    before = private.read_bytes()
    with pytest.raises(DeploymentError, match="already exists"):
        generate_signing_key(private, tmp_path / "other.pub")
    assert private.read_bytes() == before
    assert not (tmp_path / "other.pub").exists()


def test_file_roundtrip(tmp_path: Path) -> None:
    private, public = _keypair(tmp_path)
    bundle = tmp_path / "model.bin"
    bundle.write_bytes(b"weights" * 1000)
    sig = sign_file(load_private_key(private), bundle)
    assert sig == tmp_path / "model.bin.sig"
    document = verify_file(load_public_key(public), bundle)
    assert document["key_fingerprint"] == key_fingerprint(load_public_key(public))
    assert document["algorithm"] == "ed25519"


def test_one_flipped_byte_is_refused(tmp_path: Path) -> None:
    private, public = _keypair(tmp_path)
    bundle = tmp_path / "model.bin"
    bundle.write_bytes(bytes(range(256)) * 10)
    sign_file(load_private_key(private), bundle)
    data = bytearray(bundle.read_bytes())
    data[1234] ^= 0x01
    bundle.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="modified after signing"):
        verify_file(load_public_key(public), bundle)


def test_forged_digest_in_sig_is_refused(tmp_path: Path) -> None:
    """Tamper with the file AND update the digest in .sig: the signature itself must fail."""
    private, public = _keypair(tmp_path)
    bundle = tmp_path / "model.bin"
    bundle.write_bytes(b"original")
    sig = sign_file(load_private_key(private), bundle)
    bundle.write_bytes(b"replaced")
    document = json.loads(sig.read_text())
    document["sha256"] = file_sha256(bundle)
    sig.write_text(json.dumps(document))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_file(load_public_key(public), bundle)


def test_other_key_is_refused_naming_both_fingerprints(tmp_path: Path) -> None:
    mine, _ = _keypair(tmp_path, "mine")
    _, theirs_pub = _keypair(tmp_path, "theirs")
    bundle = tmp_path / "model.bin"
    bundle.write_bytes(b"x")
    sign_file(load_private_key(mine), bundle)
    signer = key_fingerprint(load_private_key(mine).public_key())
    trusted = key_fingerprint(load_public_key(theirs_pub))
    with pytest.raises(SignatureError) as info:
        verify_file(load_public_key(theirs_pub), bundle)
    assert signer in str(info.value) and trusted in str(info.value)


def test_unsigned_and_malformed(tmp_path: Path) -> None:
    _, public = _keypair(tmp_path)
    bundle = tmp_path / "model.bin"
    bundle.write_bytes(b"x")
    with pytest.raises(SignatureError, match="unsigned"):
        verify_file(load_public_key(public), bundle)
    (tmp_path / "model.bin.sig").write_text("{not json")
    with pytest.raises(SignatureError, match="malformed"):
        verify_file(load_public_key(public), bundle)
    (tmp_path / "model.bin.sig").write_text(json.dumps({"format": "heroes-sig/1"}))
    with pytest.raises(SignatureError, match="missing"):
        verify_file(load_public_key(public), bundle)


def test_openssh_ec_node_key_signs_and_verifies(tmp_path: Path) -> None:
    private, public = _openssh_ec_key(tmp_path)
    key = load_private_key(private)
    pub = load_public_key(public)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key_fingerprint(pub) == key_fingerprint(key.public_key())
    signature = sign(key, b"receipt")
    verify(pub, signature, b"receipt", what="receipt 1")
    with pytest.raises(SignatureError, match="receipt 1"):
        verify(pub, signature, b"receipt!", what="receipt 1")
    bundle = tmp_path / "f"
    bundle.write_bytes(b"abc")
    sign_file(key, bundle)
    assert verify_file(pub, bundle)["algorithm"] == "ecdsa-sha256-secp256r1"


def test_key_loading_errors_name_the_path(tmp_path: Path) -> None:
    private, public = _keypair(tmp_path)
    with pytest.raises(DeploymentError, match="does not exist"):
        load_private_key(tmp_path / "absent.key")
    with pytest.raises(DeploymentError, match=r"signing\.pub.*not a PEM"):
        load_private_key(public)
    with pytest.raises(DeploymentError, match=r"signing\.key.*not a PEM"):
        load_public_key(private)
    rsa_like = tmp_path / "junk.pem"
    rsa_like.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DeploymentError, match=r"junk\.pem"):
        load_private_key(rsa_like)


def test_wrong_key_type_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "rsa.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    with pytest.raises(DeploymentError, match="allowed are Ed25519 and EC"):
        load_private_key(path)


_KEY_DIR: dict[str, tuple[Path, Path]] = {}


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(max_size=4096))
def test_sign_then_verify_is_identity_and_any_change_fails(
    tmp_path_factory: pytest.TempPathFactory, payload: bytes
) -> None:
    if "k" not in _KEY_DIR:
        _KEY_DIR["k"] = _keypair(tmp_path_factory.mktemp("keys"))
    private, public = _KEY_DIR["k"]
    key, pub = load_private_key(private), load_public_key(public)
    signature = sign(key, payload)
    verify(pub, signature, payload, what="payload")
    with pytest.raises(SignatureError):
        verify(pub, signature, payload + b"\x00", what="payload")
