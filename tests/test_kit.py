"""Startup kits (issue 17 item 1): `heroes consortium provision` writes one signed file with
no private key; `heroes agency init --kit` trusts it only with the signing key's fingerprint
received out of band, and refuses a changed, forged or foreign kit before writing anything.
Real consortium folders, keys and certificates made by the CLI; the running case is the
deployment test's first agency (tests/test_deployment.py)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from federation.kit import DOMAIN, _canonical
from federation.signing import generate_signing_key, key_fingerprint, load_private_key, sign
from tests._heroes import HEROES
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]


def heroes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEROES, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=DEADLINE_S, check=False)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(consortium folder, kit, the signing key's fingerprint as read from signing.pub)."""
    tmp = tmp_path_factory.mktemp("kit")
    cons = tmp / "cons"
    assert heroes("consortium", "init", "--dir", str(cons), "--public-address",
                  "fl.example.org:9092").returncode == 0
    r = heroes("consortium", "provision", "eu-police-north", "--dir", str(cons))
    assert r.returncode == 0, r.stderr
    path = cons / "kits" / "eu-police-north.heroes-kit"
    from federation.signing import load_public_key

    fingerprint = key_fingerprint(load_public_key(cons / "signing.pub"))
    assert fingerprint in r.stdout  # printed, to be read to the agency by another channel
    return cons, path, fingerprint


def _init(kit_path: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    data = state.parent / "data"
    data.mkdir(exist_ok=True)
    return heroes("agency", "init", "--kit", str(kit_path), "--dir", str(state),
                  "--data-dir", str(data), "--max-epsilon", "10", "--delta", "1e-5", *extra)


def test_a_kit_sets_up_a_node_and_holds_no_private_key(kit: tuple[Path, Path, str],
                                                        tmp_path: Path) -> None:
    cons, path, fingerprint = kit
    text = path.read_text()
    assert "PRIVATE KEY" not in text and "signing.key" not in text
    body = json.loads(text)
    assert body["agency"] == "eu-police-north" and body["consortium"] == "fl.example.org:9092"
    assert sorted(body["files"]) == ["ca.crt", "signing.pub"]  # no roster signed yet
    r = _init(path, tmp_path / "node", "--fingerprint", fingerprint)
    assert r.returncode == 0, r.stderr
    node = tmp_path / "node"
    assert (node / "consortium-ca.crt").read_bytes() == (cons / "tls" / "ca.crt").read_bytes()
    assert (node / "consortium-signing.pub").read_bytes() == (cons / "signing.pub").read_bytes()
    policy = (node / "policy.toml").read_text()
    assert 'name = "eu-police-north"' in policy and 'consortium = "fl.example.org:9092"' in policy
    assert "startup kit verified" in r.stdout and body["fingerprints"]["ca_certificate"] in r.stdout


def test_without_the_out_of_band_fingerprint_nothing_is_written(
        kit: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, path, fingerprint = kit
    r = _init(path, tmp_path / "a")
    assert r.returncode == 2 and fingerprint in r.stderr and "--fingerprint" in r.stderr
    r = _init(path, tmp_path / "b", "--fingerprint", "sha256:" + "0" * 64)
    assert r.returncode == 2 and "not the sha256:000" in r.stderr
    r = _init(path, tmp_path / "c", "--fingerprint", fingerprint, "--name", "another-agency")
    assert r.returncode == 2 and "the kit is for agency 'eu-police-north'" in r.stderr
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))


def test_a_changed_or_forged_kit_is_refused(kit: tuple[Path, Path, str],
                                            tmp_path: Path) -> None:
    _, path, fingerprint = kit
    body = json.loads(path.read_text())
    # the address changed after signing: the signature no longer verifies
    changed = tmp_path / "changed.heroes-kit"
    changed.write_text(json.dumps({**body, "consortium": "evil.example:9092"}))
    r = _init(changed, tmp_path / "a", "--fingerprint", fingerprint)
    assert r.returncode == 2 and "signature does not verify" in r.stderr
    # a file swapped, with its checksum left as it was
    swapped = tmp_path / "swapped.heroes-kit"
    files = {**body["files"], "ca.crt": base64.b64encode(b"not the CA").decode()}
    swapped.write_text(json.dumps({**body, "files": files}))
    r = _init(swapped, tmp_path / "b", "--fingerprint", fingerprint)
    assert r.returncode == 2 and "ca.crt does not match its SHA-256" in r.stderr
    # a whole kit forged by someone else: consistent and signed, with their own key inside
    generate_signing_key(tmp_path / "evil.key", tmp_path / "evil.pub")
    evil_pub = (tmp_path / "evil.pub").read_bytes()
    import hashlib

    forged_body = {k: v for k, v in body.items() if k != "signature"}
    forged_body["files"] = {**body["files"], "signing.pub": base64.b64encode(evil_pub).decode()}
    forged_body["sha256"] = {**body["sha256"],
                             "signing.pub": hashlib.sha256(evil_pub).hexdigest()}
    forged_body["consortium"] = "evil.example:9092"
    signature = sign(load_private_key(tmp_path / "evil.key"), DOMAIN + _canonical(forged_body))
    forged = tmp_path / "forged.heroes-kit"
    forged.write_text(json.dumps({**forged_body,
                                  "signature": base64.b64encode(signature).decode()}))
    r = _init(forged, tmp_path / "c", "--fingerprint", fingerprint)
    assert r.returncode == 2 and "a kit from someone else" in r.stderr
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))
