"""The agency approves the code it runs and the peers it aggregates with.

Real keys (the consortium's Ed25519 signing key, agencies' EC P-256 node keys made as
`heroes agency init` makes them), real folders made by `server.deploy.init` and
`clients.agency.init`, a real app bundle built by Flower from this source tree, and the real
`heroes` command answering its prompt on stdin. No mocks: each check is the one the node or
the consortium runs."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import socket
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from clients import agency, approvals, signed_log
from clients.approve import approve_target
from clients.verified_clientapp import NotApproved, check_bundle
from federation.appsign import MANIFEST, manifest_digest, sign_bundle, verify_bundle
from federation.errors import DeploymentError, SignatureError
from federation.pki import load_node_public_key, make_node_key
from federation.policy import Policy
from federation.roster import (
    ROSTER_FORMAT,
    Member,
    Roster,
    diff,
    read_roster,
    write_roster,
)
from federation.signing import (
    generate_signing_key,
    key_fingerprint,
    load_private_key,
    load_public_key,
)
from server import deploy
from tests._heroes import HEROES
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = DEADLINE_S  # generous: the machine may be busy with other work
ME = "eu-police-north"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def heroes(*args: str, answer: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEROES, *args], input=answer if answer is not None else "",
                          capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0",
                               "PYTHONWARNINGS": "ignore"})


def node_key(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    make_node_key(directory / "node.key", directory / "node.key.pub", comment=f"node {name}")
    return directory / "node.key.pub"


def member(directory: Path, name: str) -> Member:
    pub = node_key(directory / name, name)
    return Member.from_key(name, load_node_public_key(pub))


def enroll_offline(cons: Path, name: str, pub: Path) -> None:
    """What `heroes consortium enroll` records in registry.json, minus the SuperLink call
    (which needs a running aggregator; tests/test_deployment.py covers that)."""
    home = deploy.ConsortiumHome(cons)
    registry = home.registry()
    registry["agencies"][name] = {
        "public_key": pub.read_text(encoding="utf-8").strip(),
        "fingerprint": key_fingerprint(load_node_public_key(pub)),
        "node_id": len(registry["agencies"]) + 1,
        "enrolled_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "revoked_at": None, "history": []}
    home.save_registry(registry)


def revoke_offline(cons: Path, name: str) -> None:
    home = deploy.ConsortiumHome(cons)
    registry = home.registry()
    registry["agencies"][name]["revoked_at"] = dt.datetime.now(dt.UTC).isoformat()
    home.save_registry(registry)


@pytest.fixture
def cons(tmp_path: Path) -> Path:
    root = tmp_path / "consortium"
    deploy.init(root, public_address="127.0.0.1:9", private_port=free_port(),
                health_port=free_port(), extra_hosts=[])
    return root


@pytest.fixture
def node(tmp_path: Path, cons: Path) -> Path:
    """An agency node folder, as `heroes agency init` makes it, enrolled with two peers."""
    state = tmp_path / "node"
    agency.init(state, name=ME, data_dir=tmp_path, consortium="127.0.0.1:9",
                ca_cert=cons / "tls" / "ca.crt", consortium_key=cons / "signing.pub",
                policy=Policy(max_epsilon=5, delta=1e-5), allowed_tasks=["advert-risk"],
                runtime_port=free_port(), health_port=free_port())
    enroll_offline(cons, ME, state / "node.key.pub")
    for peer in ("uk-ie-ngo", "es-police"):
        enroll_offline(cons, peer, node_key(tmp_path / "peers" / peer, peer))
    return state


@pytest.fixture(scope="module")
def fab() -> bytes:
    from flwr.cli.build import build_fab_from_disk

    return bytes(build_fab_from_disk(ROOT))


def rebuilt(fab: bytes, change: dict[str, bytes | None]) -> bytes:
    """Another valid bundle: ``fab`` with files changed, added or (None) removed, and a
    manifest that lists exactly the new contents, as a rebuild would."""
    src = zipfile.ZipFile(io.BytesIO(fab))
    files = {n: src.read(n) for n in src.namelist() if n != MANIFEST}
    for name, data in change.items():
        if data is None:
            files.pop(name, None)
        else:
            files[name] = data
    manifest = "".join(f"{n},{hashlib.sha256(d).hexdigest()},{len(d) * 8}\n"
                       for n, d in files.items())
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name, data in files.items():
            dst.writestr(name, data)
        dst.writestr(MANIFEST, manifest)
    return out.getvalue()


# --- the roster ------------------------------------------------------------------------------

def test_roster_roundtrip_digest_and_lookups(tmp_path: Path) -> None:
    members = tuple(member(tmp_path, n) for n in ("a-police", "b-ngo"))
    roster = Roster(version=3, issued_at="2026-05-01T10:00:00+00:00",
                    consortium="sha256:" + "ab" * 32, members=members)
    assert Roster.from_json(roster.to_json(), source="test") == roster
    assert roster.to_json()["format"] == ROSTER_FORMAT
    path = write_roster(tmp_path / "roster.json", roster)
    again = read_roster(path)
    assert again == roster and again.digest == roster.digest  # independent of indentation
    compact = json.dumps(roster.to_json(), sort_keys=True, separators=(",", ":"))
    assert roster.digest == hashlib.sha256(compact.encode()).hexdigest()
    key = roster.key_of("b-ngo")
    assert key is not None and key_fingerprint(key) == members[1].fingerprint
    assert roster.key_of("c-unknown") is None
    assert roster.member_by_fingerprint(members[0].fingerprint) == members[0]
    assert roster.member_by_fingerprint("sha256:" + "0" * 64) is None
    assert not (tmp_path / "roster.json.sig").exists()


def _ssh_line(key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode()


@pytest.mark.parametrize(("change", "error", "text"), [
    ({"format": "heroes-roster/0"}, DeploymentError, "format is 'heroes-roster/0'"),
    ({"version": 0}, DeploymentError, "version is 0; it must be a whole number >= 1"),
    ({"version": True}, DeploymentError, "version is True"),
    ({"version": "2"}, DeploymentError, "version is '2'"),
    ({"issued_at": "yesterday"}, DeploymentError, "issued_at is 'yesterday'"),
    ({"consortium": "me"}, DeploymentError, "consortium is 'me'"),
    ({"members": []}, DeploymentError, "members must be a non-empty list"),
    ({"extra": 1}, DeploymentError, r"unexpected field\(s\) \['extra'\]"),
    ({"members.0.agency": "Bad Name"}, DeploymentError, "agency name is not allowed"),
    ({"members.1.agency": "a-police"}, DeploymentError, "the agency appears twice"),
    ({"members.0.role": "x"}, DeploymentError, "must hold exactly the strings"),
    ({"members.0.fingerprint": "sha256:" + "0" * 64}, SignatureError,
     "is not that of its public_key"),
    ({"members.1.public_key": "copy of 0"}, SignatureError, "the same node key is listed for"),
    ({"members.0.public_key": "ssh-ed25519"}, SignatureError, "EC P-256 node keys only"),
    ({"members.0.public_key": "p384"}, SignatureError, "EC P-256 node keys only"),
    ({"members.0.public_key": "hello"}, SignatureError, "not an OpenSSH public key line"),
])
def test_every_roster_rule_is_checked_and_named(tmp_path: Path, change: dict[str, object],
                                                error: type[Exception], text: str) -> None:
    members = tuple(member(tmp_path, n) for n in ("a-police", "b-ngo"))
    data = Roster(version=1, issued_at="2026-05-01T10:00:00+00:00",
                  consortium="simulation", members=members).to_json()
    for field, value in change.items():
        if not field.startswith("members."):
            data[field] = value
            continue
        _, index, name = field.split(".")
        entry = data["members"][int(index)]
        if value == "copy of 0":
            entry.update(public_key=data["members"][0]["public_key"],
                         fingerprint=data["members"][0]["fingerprint"])
        elif value == "ssh-ed25519":
            entry["public_key"] = _ssh_line(ed25519.Ed25519PrivateKey.generate().public_key())
        elif value == "p384":
            entry["public_key"] = _ssh_line(ec.generate_private_key(ec.SECP384R1()).public_key())
        else:
            entry[name] = value
    with pytest.raises(error, match=text) as info:
        Roster.from_json(data, source="roster.json")
    assert "roster roster.json is invalid" in str(info.value)
    assert "Fix: use the roster.json" in str(info.value)


def test_a_roster_is_read_only_with_a_valid_consortium_signature(tmp_path: Path) -> None:
    generate_signing_key(tmp_path / "c.key", tmp_path / "c.pub")
    generate_signing_key(tmp_path / "o.key", tmp_path / "o.pub")
    key, pub = load_private_key(tmp_path / "c.key"), load_public_key(tmp_path / "c.pub")
    roster = Roster(version=1, issued_at="2026-05-01T10:00:00+00:00",
                    consortium=key_fingerprint(pub), members=(member(tmp_path, "a-police"),))
    path = write_roster(tmp_path / "roster.json", roster, key)
    assert read_roster(path, consortium_key=pub) == roster
    with pytest.raises(SignatureError, match=r"signed by key .* not by the trusted key"):
        read_roster(path, consortium_key=load_public_key(tmp_path / "o.pub"))
    text = path.read_text()
    path.write_text(text.replace('"version": 1', '"version": 9'))
    with pytest.raises(SignatureError, match="modified after signing"):
        read_roster(path, consortium_key=pub)
    write_roster(path, roster)  # rewritten without a key: the stale .sig goes
    assert not (tmp_path / "roster.json.sig").exists()
    with pytest.raises(SignatureError, match=r"unsigned .*heroes consortium roster"):
        read_roster(path, consortium_key=pub)
    other = Roster(version=1, issued_at=roster.issued_at, consortium="sha256:" + "1" * 64,
                   members=roster.members)
    write_roster(path, other, key)  # signed by this key, but names another consortium
    with pytest.raises(SignatureError, match="names consortium sha256:1111"):
        read_roster(path, consortium_key=pub)


def test_diff_lists_added_removed_and_changed_keys(tmp_path: Path) -> None:
    a, b, c = (member(tmp_path, n) for n in ("a-police", "b-ngo", "c-ngo"))
    b2 = member(tmp_path / "new", "b-ngo")
    old = Roster(1, "2026-05-01T10:00:00+00:00", "simulation", (a, b))
    new = Roster(2, "2026-05-02T10:00:00+00:00", "simulation", (b2, c))
    changes = diff(old, new)
    assert changes.added == (c,) and changes.removed == (a,)
    assert changes.key_changed == ((b, b2),)
    assert changes.lines() == [f"+ c-ngo added, key {c.fingerprint}",
                               f"- a-police removed (was key {a.fingerprint})",
                               f"~ b-ngo KEY CHANGED: {b.fingerprint} -> {b2.fingerprint}"]
    assert diff(None, old).added == (a, b) and diff(old, old).empty


# --- the consortium builds it ------------------------------------------------------------------

def test_the_consortium_rosters_enrolled_unrevoked_agencies(tmp_path: Path, cons: Path) -> None:
    with pytest.raises(DeploymentError, match=r"no enrolled agencies .*heroes consortium enroll"):
        deploy.make_roster(cons)
    for name in ("pt-ngo", "es-police", "uk-ie-ngo"):
        enroll_offline(cons, name, node_key(tmp_path / name, name))
    revoke_offline(cons, "uk-ie-ngo")
    roster, changes, written = deploy.make_roster(cons, tmp_path / "send" / "roster.json")
    pub = load_public_key(cons / "signing.pub")
    assert roster.version == 1 and roster.consortium == key_fingerprint(pub)
    assert [m.agency for m in roster.members] == ["es-police", "pt-ngo"]
    for m in roster.members:
        assert m.fingerprint == key_fingerprint(load_node_public_key(
            tmp_path / m.agency / "node.key.pub"))
    assert [m.agency for m in changes.added] == ["es-police", "pt-ngo"]
    assert written == [cons / "roster.json", cons / "roster.json.sig",
                       tmp_path / "send" / "roster.json", tmp_path / "send" / "roster.json.sig"]
    for path in (cons / "roster.json", tmp_path / "send" / "roster.json"):
        assert read_roster(path, consortium_key=pub) == roster
    enroll_offline(cons, "mx-co-ngo", node_key(tmp_path / "mx", "mx-co-ngo"))
    revoke_offline(cons, "pt-ngo")
    second, changes, _ = deploy.make_roster(cons)
    assert second.version == 2
    assert [m.agency for m in changes.added] == ["mx-co-ngo"]
    assert [m.agency for m in changes.removed] == ["pt-ngo"]
    registry = json.loads((cons / "registry.json").read_text())
    registry["agencies"]["es-police"]["fingerprint"] = "sha256:" + "0" * 64
    (cons / "registry.json").write_text(json.dumps(registry))
    with pytest.raises(DeploymentError, match=r"registry was edited.*Fix: restore"):
        deploy.make_roster(cons)


def test_the_roster_and_bundle_commands(tmp_path: Path, cons: Path) -> None:
    enroll_offline(cons, ME, node_key(tmp_path / ME, ME))
    r = heroes("consortium", "roster", "--dir", str(cons))
    assert r.returncode == 0, r.stderr
    fingerprint = key_fingerprint(load_node_public_key(tmp_path / ME / "node.key.pub"))
    assert f"{ME}  {fingerprint}" in r.stdout
    assert "roster version 1" in r.stdout and "heroes agency approve" in r.stdout
    assert read_roster(cons / "roster.json",
                       consortium_key=load_public_key(cons / "signing.pub")).version == 1
    out = tmp_path / "review" / "app.fab"
    r = heroes("consortium", "bundle", "--dir", str(cons), "--out", str(out))
    assert r.returncode == 0, r.stderr
    fab = out.read_bytes()
    digest = manifest_digest(fab)
    assert f"manifest digest {digest}" in r.stdout
    signature = r.stdout.split("signature (app.signature): ")[1].split()[0]
    assert verify_bundle(load_public_key(cons / "signing.pub"), fab, signature) == digest
    r = heroes("consortium", "bundle", "--dir", str(tmp_path / "nowhere"), "--out", str(out))
    assert r.returncode == 2 and "not a consortium folder" in r.stderr


# --- the agency's approvals log -------------------------------------------------------------------

def test_approvals_are_signed_chained_and_checked(tmp_path: Path) -> None:
    node_key(tmp_path, ME)
    assert approvals.approved_digests(tmp_path, "bundle") == []
    first = approvals.approve(tmp_path, "bundle", "a" * 64, {"files": 3})
    approvals.approve(tmp_path, "roster", "b" * 64, {"version": 1, "members": 2})
    approvals.approve(tmp_path, "bundle", "c" * 64, {"files": 4})
    assert set(first) == {"seq", "prev", "kind", "digest", "approved_at", "summary",
                          "key_fingerprint", "signature"}
    assert first["prev"] == signed_log.GENESIS
    assert approvals.approved_digests(tmp_path, "bundle") == ["a" * 64, "c" * 64]
    assert approvals.is_bundle_approved(tmp_path, "c" * 64)
    assert not approvals.is_bundle_approved(tmp_path, "b" * 64)  # a roster, not a bundle
    with pytest.raises(ValueError, match="not 64 lower-case hex"):
        approvals.approve(tmp_path, "bundle", "xyz", {})
    log = tmp_path / approvals.APPROVALS
    lines = log.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["digest"] = "d" * 64  # someone slips in another roster
    lines[1] = json.dumps(entry)
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(SignatureError, match=r"entry 2: signature.*entry 3: chain.*Fix: restore"):
        approvals.is_bundle_approved(tmp_path, "c" * 64)
    log.write_text("\n".join(lines[:1]) + "\n")  # cut off the end: the signed head knows
    with pytest.raises(SignatureError, match=r"entry 2: head: .*cut off"):
        approvals.approved_digests(tmp_path, "bundle")


def test_approved_roster_must_be_the_one_approved_last(tmp_path: Path) -> None:
    node_key(tmp_path, ME)
    with pytest.raises(DeploymentError, match=r"only with agencies on a roster its agency "
                       r"approved, and .* records none.*heroes agency approve roster.json"):
        approvals.approved_roster(tmp_path)
    roster = Roster(1, "2026-05-01T10:00:00+00:00", "simulation", (member(tmp_path, ME),))
    approvals.auto_approve_roster(tmp_path, roster)
    assert approvals.approved_roster(tmp_path) == roster
    (entry,) = approvals.verified_entries(tmp_path)
    assert entry["summary"]["note"] == "simulation: approved automatically"
    approvals.auto_approve_roster(tmp_path, roster)  # a resumed simulation: nothing new
    assert len(approvals.verified_entries(tmp_path)) == 1
    swapped = Roster(1, roster.issued_at, "simulation", (member(tmp_path / "x", ME),))
    write_roster(tmp_path / "roster.json", swapped)
    with pytest.raises(DeploymentError, match=r"is not the roster it approved last .*replaced"):
        approvals.approved_roster(tmp_path)
    (tmp_path / "roster.json").unlink()
    with pytest.raises(DeploymentError, match=r"roster.json is missing"):
        approvals.approved_roster(tmp_path)


# --- the node runs only approved bundles ---------------------------------------------------------

def test_a_signed_bundle_runs_only_once_this_agency_approved_it(tmp_path: Path,
                                                                fab: bytes) -> None:
    generate_signing_key(tmp_path / "c.key", tmp_path / "c.pub")
    generate_signing_key(tmp_path / "o.key", tmp_path / "o.pub")
    pub = load_public_key(tmp_path / "c.pub")
    state = tmp_path / "state"
    node_key(state, ME)
    signature = sign_bundle(load_private_key(tmp_path / "c.key"), fab)
    digest = manifest_digest(fab)
    with pytest.raises(SignatureError, match="does not verify"):  # as before: not kept
        check_bundle(state, pub, fab, sign_bundle(load_private_key(tmp_path / "o.key"), fab))
    with pytest.raises(SignatureError, match="unsigned"):
        check_bundle(state, pub, fab, "")
    assert approvals.pending_digests(state) == []
    with pytest.raises(NotApproved) as info:
        check_bundle(state, pub, fab, signature)
    text = str(info.value)
    assert isinstance(info.value, SignatureError)
    assert f"manifest {digest[:16]}" in text and digest not in text
    assert f"heroes agency approve {digest[:16]} --dir" in text and "not approved" in text
    assert info.value.pending == approvals.pending_path(state, digest)
    assert info.value.pending.read_bytes() == fab
    approvals.approve(state, "bundle", digest, {"files": 1})
    assert check_bundle(state, pub, fab, signature) == digest
    other = rebuilt(fab, {"clients/extra.py": b"x = 1\n"})
    with pytest.raises(NotApproved):  # another bundle, signed too, is still refused
        check_bundle(state, pub, other, sign_bundle(load_private_key(tmp_path / "c.key"), other))
    (state / approvals.HEAD).write_text("{}")
    with pytest.raises(SignatureError, match=r"approvals log .* fails verification"):
        check_bundle(state, pub, fab, signature)
    (state / "node.key.pub").unlink()
    (state / "node.key").unlink()
    with pytest.raises(SignatureError, match="cannot check its agency's approvals"):
        check_bundle(state, pub, fab, signature)


def test_the_node_passes_its_state_folder_to_the_verifying_clientapp(node: Path) -> None:
    env = agency.Node(node).env()
    assert env[approvals.STATE_ENV] == str(node.resolve())
    assert "no approved roster" in agency.status(node)["approvals"]
    (node / approvals.HEAD).write_text("{}")  # a head without a log: entries were removed
    assert agency.status(node)["approvals"].startswith("BROKEN: the approvals log")


# --- `heroes agency approve` through the real command -------------------------------------------

def _log(state: Path) -> list[dict[str, Any]]:
    return approvals.verified_entries(state)


def test_approve_a_roster_on_the_prompt(tmp_path: Path, cons: Path, node: Path) -> None:
    send = tmp_path / "send"
    deploy.make_roster(cons, send / "v1.json")
    declined = heroes("agency", "approve", str(send / "v1.json"), "--dir", str(node),
                      answer="n\n")
    assert declined.returncode == 1, declined.stderr
    mine = key_fingerprint(load_public_key(node / "node.key.pub"))
    assert f"{ME}  {mine}  <- this node" in declined.stdout
    assert "approve roster version 1" in declined.stdout and "[y/N]" in declined.stdout
    assert "every member above is new" in declined.stdout
    assert "declined: nothing recorded" in declined.stdout
    assert _log(node) == [] and not (node / "roster.json").exists()
    ok = heroes("agency", "approve", str(send / "v1.json"), "--dir", str(node), answer="y\n")
    assert ok.returncode == 0, ok.stderr
    assert "approved roster version 1" in ok.stdout
    assert (node / "roster.json").read_bytes() == (send / "v1.json").read_bytes()
    assert (node / "roster.json.sig").read_bytes() == (send / "v1.json.sig").read_bytes()
    (entry,) = _log(node)
    summary = entry["summary"]
    assert entry["kind"] == "roster" and isinstance(summary, dict)
    assert (summary["version"], summary["members"], summary["consortium"]) == (
        1, 3, key_fingerprint(load_public_key(cons / "signing.pub")))
    roster = approvals.approved_roster(node)
    assert entry["digest"] == roster.digest and roster.key_of("uk-ie-ngo") is not None
    # the consortium drops one agency and adds another: the prompt shows exactly that
    revoke_offline(cons, "es-police")
    enroll_offline(cons, "pt-ngo", node_key(tmp_path / "peers" / "pt-ngo", "pt-ngo"))
    deploy.make_roster(cons, send / "v2.json")
    ok = heroes("agency", "approve", str(send / "v2.json"), "--dir", str(node), answer="y\n")
    assert ok.returncode == 0, ok.stderr
    assert "changes since the roster approved last (version 1):" in ok.stdout
    assert "+ pt-ngo added" in ok.stdout and "- es-police removed" in ok.stdout
    assert approvals.approved_roster(node).version == 2
    # replaying the older signed roster is refused: it would bring es-police back
    with pytest.raises(DeploymentError, match=r"version 1, but this agency already approved "
                       "version 2"):
        approve_target(node, str(send / "v1.json"), yes=True, stdin=io.StringIO(),
                       out=io.StringIO())
    out = io.StringIO()
    assert approve_target(node, str(send / "v2.json"), yes=False, stdin=io.StringIO(),
                          out=out) == 0
    assert "already the roster this agency approved" in out.getvalue()
    assert len(_log(node)) == 2


def test_a_roster_with_another_key_for_this_agency_is_refused(tmp_path: Path, cons: Path,
                                                              node: Path) -> None:
    mine = key_fingerprint(load_public_key(node / "node.key.pub"))
    registry = json.loads((cons / "registry.json").read_text())
    impostor = node_key(tmp_path / "impostor", ME)
    registry["agencies"][ME].update(public_key=impostor.read_text().strip(),
                                    fingerprint=key_fingerprint(load_node_public_key(impostor)))
    (cons / "registry.json").write_text(json.dumps(registry))
    deploy.make_roster(cons)
    r = heroes("agency", "approve", str(cons / "roster.json"), "--dir", str(node), "--yes")
    assert r.returncode == 2
    assert "the consortium listed another key for you" in r.stderr and mine in r.stderr
    assert _log(node) == [] and not (node / "roster.json").exists()
    # not on the roster at all
    registry["agencies"][ME]["revoked_at"] = "2026-05-01T00:00:00+00:00"
    (cons / "registry.json").write_text(json.dumps(registry))
    deploy.make_roster(cons)
    with pytest.raises(DeploymentError, match=rf"this agency \({ME}\) is not on roster"):
        approve_target(node, str(cons / "roster.json"), yes=True, stdin=io.StringIO(),
                       out=io.StringIO())
    # unsigned, or signed by someone else than the consortium this node trusts
    (cons / "roster.json.sig").unlink()
    with pytest.raises(SignatureError, match="unsigned"):
        approve_target(node, str(cons / "roster.json"), yes=True, stdin=io.StringIO(),
                       out=io.StringIO())
    generate_signing_key(tmp_path / "evil.key", tmp_path / "evil.pub")
    forged = Roster(9, "2026-05-01T10:00:00+00:00",
                    key_fingerprint(load_public_key(tmp_path / "evil.pub")),
                    (Member.from_key(ME, load_node_public_key(node / "node.key.pub")),))
    write_roster(tmp_path / "forged.json", forged, load_private_key(tmp_path / "evil.key"))
    with pytest.raises(SignatureError, match="not by the trusted key"):
        approve_target(node, str(tmp_path / "forged.json"), yes=True, stdin=io.StringIO(),
                       out=io.StringIO())
    assert _log(node) == []


def test_approve_a_bundle_file_then_a_refused_one_by_digest(tmp_path: Path, node: Path,
                                                            fab: bytes) -> None:
    path = tmp_path / "app.fab"
    path.write_bytes(fab)
    digest = manifest_digest(fab)
    declined = heroes("agency", "approve", str(path), "--dir", str(node), answer="no\n")
    assert declined.returncode == 1, declined.stderr
    assert f"manifest digest: {digest}" in declined.stdout
    code = hashlib.sha256(zipfile.ZipFile(io.BytesIO(fab)).read("clients/client_app.py"))
    assert f"{code.hexdigest()}" in declined.stdout and "clients/client_app.py" in declined.stdout
    assert "review every file above" in declined.stdout
    assert not approvals.is_bundle_approved(node, digest)
    ok = heroes("agency", "approve", str(path), "--dir", str(node), answer="y\n")
    assert ok.returncode == 0, ok.stderr
    assert f"approved app bundle {digest}" in ok.stdout
    assert approvals.is_bundle_approved(node, digest)
    assert approvals.manifest_path(node, digest).is_file()
    # the node refused a new version; the agency reviews it by digest and sees the changes
    pub_dir = tmp_path / "keys"
    generate_signing_key(pub_dir / "c.key", pub_dir / "c.pub")
    code_text = zipfile.ZipFile(io.BytesIO(fab)).read("clients/client_app.py")
    second = rebuilt(fab, {"clients/client_app.py": code_text + b"\n# changed\n",
                           "clients/new_module.py": b"y = 2\n", "LICENSE": None})
    new = manifest_digest(second)
    with pytest.raises(NotApproved):
        check_bundle(node, load_public_key(pub_dir / "c.pub"), second,
                     sign_bundle(load_private_key(pub_dir / "c.key"), second))
    r = heroes("agency", "approve", "0" * 16, "--dir", str(node), "--yes")
    assert r.returncode == 2 and "no refused bundle with manifest digest" in r.stderr
    listed = heroes("agency", "approvals", "--dir", str(node))
    assert listed.returncode == 0, listed.stderr
    assert "approvals OK: 1 entries" in listed.stdout
    assert f"heroes agency approve {new[:16]}" in listed.stdout
    ok = heroes("agency", "approve", new[:16], "--dir", str(node), answer="y\n")
    assert ok.returncode == 0, ok.stderr
    assert f"changes since the bundle approved last ({digest[:16]})" in ok.stdout
    for line in ("+ clients/new_module.py", "- LICENSE", "~ clients/client_app.py"):
        assert line in ok.stdout
    assert "~ clients/agency.py" not in ok.stdout
    assert approvals.approved_digests(node, "bundle") == [digest, new]
    assert approvals.pending_digests(node) == []
    # a bundle whose files do not match its manifest is refused before any prompt
    tampered = tmp_path / "tampered.fab"
    src = zipfile.ZipFile(io.BytesIO(fab))
    with zipfile.ZipFile(tampered, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data + b"#" if name == "clients/client_app.py" else data)
    with pytest.raises(SignatureError, match="does not match its manifest entry"):
        approve_target(node, str(tampered), yes=True, stdin=io.StringIO(), out=io.StringIO())
    # the listing checks the log: an edited approval makes it fail, naming the entry
    log = node / approvals.APPROVALS
    lines = log.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["summary"] = {"files": 999}
    lines[0] = json.dumps(entry)
    log.write_text("\n".join(lines) + "\n")
    broken = heroes("agency", "approvals", "--dir", str(node), "--json")
    assert broken.returncode == 1
    report = json.loads(broken.stdout)
    assert report["ok"] is False and "entry 1: signature" in report["problems"][0]


def test_approve_refuses_what_it_cannot_identify(tmp_path: Path, node: Path) -> None:
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    with pytest.raises(DeploymentError, match=r"neither a roster .* nor an app bundle"):
        approve_target(node, str(tmp_path / "notes.json"), yes=True, stdin=io.StringIO(),
                       out=io.StringIO())
    with pytest.raises(DeploymentError, match="is not a file, nor a bundle digest"):
        approve_target(node, str(tmp_path / "absent.fab"), yes=True, stdin=io.StringIO(),
                       out=io.StringIO())
    with pytest.raises(DeploymentError, match="not an agency node folder"):
        approve_target(tmp_path / "elsewhere", str(tmp_path / "notes.json"), yes=True,
                       stdin=io.StringIO(), out=io.StringIO())


def test_the_verified_log_is_reused_only_while_its_files_are_unchanged(tmp_path: Path) -> None:
    """A node asks what its agency approved on every message; the log is verified once per
    process and reused while the log, its head and the node key files are unchanged. Any
    edit after that, even one that keeps the size, is verified again and refused."""
    state = tmp_path / "state"
    node_key(state, ME)
    approvals.approve(state, "bundle", "ab" * 32, {"files": 1})
    first = approvals.verified_entries(state)
    assert approvals.verified_entries(state) == first  # the cached answer
    log = state / approvals.APPROVALS
    text = log.read_text()
    forged = text.replace('"files": 1', '"files": 2')
    assert forged != text and len(forged) == len(text)
    log.write_text(forged)
    with pytest.raises(SignatureError, match=r"approvals log .* fails verification"):
        approvals.verified_entries(state)
    log.write_text(text)  # put back: verifies again
    assert approvals.verified_entries(state) == first
    approvals.approve(state, "bundle", "cd" * 32, {"files": 3})  # a new approval is seen
    assert [e["digest"] for e in approvals.verified_entries(state)] == ["ab" * 32, "cd" * 32]
