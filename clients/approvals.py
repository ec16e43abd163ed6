"""What this agency itself approved: the roster of peers and the app bundles its node runs.

The consortium signs rosters and bundles, but the threat model includes a malicious
consortium: its signature says only that the consortium sent something. So the agency
approves, with its own node key, exactly which roster (who its peers are, by node key) and
which bundles (which code, by manifest digest) its node accepts, and the node checks those
approvals, not the consortium's word, before it aggregates or runs anything.

    STATE_DIR/
      approvals.jsonl          one signed, hash-chained entry per approval
      approvals.head           the signed head of that log (clients/signed_log.py)
      roster.json (.sig)       the roster approved last, as the consortium signed it
      approvals/bundles/<digest>.manifest   every approved bundle's .info/CONTENT, for diffs
      approvals/pending/<digest>.fab        bundles the node refused, kept for review

An entry::

    {"seq": 0, "prev": "<sha256 of the previous entry, or 64 zeros>", "kind": "roster",
     "digest": "<Roster.digest or the bundle's manifest sha256>",
     "approved_at": "2026-05-01T10:00:00Z", "summary": {"version": 3, "members": 4, ...},
     "key_fingerprint": "sha256:...", "signature": "<ECDSA by node.key, base64>"}

Every read verifies the whole log first and refuses when it is broken: an approval that
cannot be shown to be this agency's own is no approval. People approve with
`heroes agency approve` (clients/approve.py); simulations with ``auto_approve_roster``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from clients import signed_log
from federation.errors import DeploymentError, SignatureError
from federation.files import StatCache, stat_signature, write_atomic
from federation.roster import ROSTER_FILE, Roster, read_roster, write_roster
from federation.signing import PrivateKey, load_private_key

APPROVALS = "approvals.jsonl"
HEAD = "approvals.head"
KINDS = ("roster", "bundle")
STATE_ENV = "HEROES_STATE_DIR"  # set by clients/agency.py for the verifying ClientApp
AUTO_NOTE = "simulation: approved automatically"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def approvals_log(state_dir: Path) -> signed_log.SignedLog:
    return signed_log.SignedLog.in_dir(state_dir, APPROVALS, HEAD, "approval")


def roster_path(state_dir: Path) -> Path:
    return state_dir / ROSTER_FILE


def manifest_path(state_dir: Path, digest: str) -> Path:
    return state_dir / "approvals" / "bundles" / f"{digest}.manifest"


def pending_dir(state_dir: Path) -> Path:
    return state_dir / "approvals" / "pending"


def pending_path(state_dir: Path, digest: str) -> Path:
    return pending_dir(state_dir) / f"{digest}.fab"


def _signing_key(state_dir: Path) -> PrivateKey:
    path = state_dir / signed_log.NODE_KEY
    if not path.is_file():
        raise DeploymentError(
            f"no node key at {path}: an agency's approvals are signed with its node key, so "
            "that the node can tell them from anything else written into its folder. Fix: "
            "run `heroes agency init` for a deployed node (a simulation makes one per agency)")
    return load_private_key(path)


# --- recording -------------------------------------------------------------------------------

def approve(state_dir: Path, kind: str, digest: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Record, signed by the node key, that this agency approved ``digest`` of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"approval kind {kind!r} is not one of {KINDS}")
    if not _DIGEST.match(digest):
        raise ValueError(f"approval digest {digest!r} is not 64 lower-case hex digits")
    return signed_log.append(approvals_log(state_dir), _signing_key(state_dir),
                             {"kind": kind, "digest": digest, "summary": summary},
                             time_field="approved_at")


def keep_manifest(state_dir: Path, manifest: bytes) -> Path:
    """Keep an approved bundle's manifest, so the next approval can show what changed."""
    path = manifest_path(state_dir, hashlib.sha256(manifest).hexdigest())
    write_atomic(path, manifest)
    return path


def keep_pending(state_dir: Path, digest: str, fab: bytes) -> Path:
    """Keep a refused bundle where `heroes agency approve DIGEST` finds it for review."""
    path = pending_path(state_dir, digest)
    if not path.is_file():
        write_atomic(path, fab)
    return path


def roster_summary(roster: Roster) -> dict[str, Any]:
    return {"version": roster.version, "members": len(roster.members),
            "issued_at": roster.issued_at, "consortium": roster.consortium}


def auto_approve_roster(state_dir: Path, roster: Roster) -> None:
    """For simulations: install ``roster`` and record its approval, noted as automatic.

    Nothing is recorded again when it is already the roster approved last (a resumed
    simulation calls this again).
    """
    approved = approved_digests(state_dir, "roster")
    if approved and approved[-1] == roster.digest and roster_path(state_dir).is_file():
        try:
            if read_roster(roster_path(state_dir)).digest == roster.digest:
                return
        except DeploymentError:
            pass
    write_roster(roster_path(state_dir), roster)
    approve(state_dir, "roster", roster.digest, {**roster_summary(roster), "note": AUTO_NOTE})


# --- checking --------------------------------------------------------------------------------

#: Verified approval logs of this process, by state folder. A node answers several
#: messages per round and each asks what its agency approved; the log is verified again
#: whenever the log, its head or the node's key files change.
_VERIFIED: StatCache[list[dict[str, Any]]] = StatCache(1024)
#: Rosters read and validated by this process, by file. The digest check against the
#: approvals runs on every call, cached or not.
_ROSTERS: StatCache[Roster] = StatCache(1024)


def verified_entries(state_dir: Path) -> list[dict[str, Any]]:
    """Every approval, after checking the whole log with the node's public key (once per
    process while the log, its head and the public key file are unchanged).

    Raises SignatureError naming each broken entry and check: the node then accepts
    nothing, since it cannot tell what its agency approved.
    """
    log = approvals_log(state_dir)
    if not log.path.is_file() and not log.head.is_file():
        return []
    key_of = str(Path(state_dir).resolve())
    signature = stat_signature([log.path, log.head, state_dir / signed_log.NODE_PUB,
                                state_dir / signed_log.NODE_KEY])
    hit = _VERIFIED.get(key_of, signature)
    if hit is not None:
        return [dict(e) for e in hit]
    entries = _verify_entries(state_dir, log)
    _VERIFIED.put(key_of, signature, [dict(e) for e in entries])
    return entries


def _verify_entries(state_dir: Path, log: signed_log.SignedLog) -> list[dict[str, Any]]:
    key = signed_log.node_public_key(state_dir)
    count, problems = signed_log.verify_log(log, key)
    if problems:
        listed = "; ".join(str(p) for p in problems)
        raise SignatureError(
            f"the approvals log {log.path} fails verification ({len(problems)} problem(s) in "
            f"{count} entries: {listed}); this node accepts only rosters and bundles its "
            "agency approved, and it cannot tell which those are. Fix: restore "
            f"{APPROVALS} and {HEAD} from a backup; if none is good, move both aside (keep "
            "them for the audit) and approve the roster and bundles again with "
            "`heroes agency approve`")
    return [entry for _, entry, _ in signed_log.entries(log) if entry is not None]


def approved_digests(state_dir: Path, kind: str) -> list[str]:
    """The digests approved for ``kind``, oldest first (the log is verified first)."""
    if kind not in KINDS:
        raise ValueError(f"approval kind {kind!r} is not one of {KINDS}")
    return [str(e.get("digest")) for e in verified_entries(state_dir) if e.get("kind") == kind]


def approved_roster_version(state_dir: Path) -> int:
    """The highest roster version this agency ever approved (0: none)."""
    versions = [e.get("summary", {}).get("version", 0) for e in verified_entries(state_dir)
                if e.get("kind") == "roster" and isinstance(e.get("summary"), dict)]
    return max((v for v in versions if isinstance(v, int)), default=0)


def approved_roster(state_dir: Path) -> Roster:
    """The roster this node takes part under: ``STATE_DIR/roster.json``, which must be the
    roster approved last (by digest)."""
    rule = ("this node takes part in secure aggregation only with agencies on a roster its "
            "agency approved")
    fix = ("Fix: get roster.json and roster.json.sig from the consortium (`heroes consortium "
           "roster` makes them), check the fingerprints, and approve it with `heroes agency "
           f"approve roster.json --dir {state_dir}`")
    approved = approved_digests(state_dir, "roster")
    if not approved:
        raise DeploymentError(f"{rule}, and {state_dir / APPROVALS} records none. {fix}")
    path = roster_path(state_dir)
    if not path.is_file():
        raise DeploymentError(f"{rule}; it approved roster {approved[-1][:16]}, but {path} "
                              f"is missing. {fix}")
    signature = stat_signature([path])
    roster = _ROSTERS.get(str(path), signature)  # read by this process, the file unchanged
    if roster is None:
        roster = read_roster(path)
        _ROSTERS.put(str(path), signature, roster)
    if roster.digest != approved[-1]:
        raise DeploymentError(
            f"{rule}: {path} (digest {roster.digest[:16]}) is not the roster it approved last "
            f"(digest {approved[-1][:16]}); it was replaced or edited after approval. {fix}")
    return roster


def is_bundle_approved(state_dir: Path, digest: str) -> bool:
    """Whether this agency approved the app bundle with manifest digest ``digest``."""
    return digest in approved_digests(state_dir, "bundle")


def pending_digests(state_dir: Path) -> list[str]:
    folder = pending_dir(state_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".fab") for p in folder.glob("*.fab")
                  if _DIGEST.match(p.name.removesuffix(".fab")))


def describe(state_dir: Path) -> str:
    """One line for `heroes agency serve`: what the node will accept. Raises when the log
    is broken, so a node that would refuse everything says so before it starts."""
    bundles = approved_digests(state_dir, "bundle")
    try:
        roster = approved_roster(state_dir)
        roster_text = f"roster version {roster.version} ({len(roster.members)} members)"
    except DeploymentError:
        roster_text = ("no approved roster (secure aggregation refused until `heroes agency "
                       "approve roster.json`)")
    bundle_text = (f"{len(bundles)} app bundle(s) approved" if bundles else
                   "no app bundle approved (every run refused until `heroes agency approve`)")
    pending = pending_digests(state_dir)
    waiting = f"; {len(pending)} refused bundle(s) waiting for review" if pending else ""
    return f"approvals: {roster_text}; {bundle_text}{waiting}"
