"""The roster: the consortium's signed list of member agencies and their node keys.

Under secure aggregation a node accepts as peers only node keys it can attribute to an
agency, and the aggregator (which relays every peer key) is not trusted to do that: a
malicious aggregator could relay keys of its own (Sybils) or substitute an agency's key.
So the consortium publishes a roster, signed with its Ed25519 signing key, and each agency
checks it (its own entry above all) and approves it with `heroes agency approve`; the node
then takes part only with agencies on the roster it approved (clients/approvals.py).

``roster.json`` (``ROSTER_FORMAT``)::

    {"format": "heroes-roster/1", "version": 3, "issued_at": "2026-05-01T10:00:00+00:00",
     "consortium": "sha256:<fingerprint of the consortium signing key>",
     "members": [{"agency": "eu-police-north", "public_key": "ecdsa-sha2-nistp256 AAAA...",
                  "fingerprint": "sha256:..."}, ...]}

and ``roster.json.sig``, a detached signature by the consortium key (federation/signing.py).
A roster's identity is ``Roster.digest``: SHA-256 of its canonical JSON, independent of how
the file is indented, so the value an agency approves is the value its node checks.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.errors import DeploymentError, SignatureError
from federation.files import write_atomic
from federation.signing import (
    PrivateKey,
    PublicKey,
    key_fingerprint,
    sign_file,
    signature_path_for,
    verify_file,
)

ROSTER_FORMAT = "heroes-roster/1"
ROSTER_FILE = "roster.json"
SIMULATION = "simulation"  # the ``consortium`` of a roster no consortium key signed
# Agency names, as the consortium enrolls them (server/deploy.py uses the same rule).
NAME_RULE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
NAME_HINT = ("use 2-63 lower-case letters, digits and dashes, starting with a letter or digit "
             "(e.g. eu-police-north)")
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
_FIX = ("Fix: use the roster.json (and roster.json.sig) the consortium made with "
        "`heroes consortium roster`, unmodified")


def openssh_line(key: ec.EllipticCurvePublicKey) -> str:
    """The key as one OpenSSH line without a comment (``ecdsa-sha2-nistp256 AAAA...``)."""
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode("ascii")


@functools.lru_cache(maxsize=8192)
def parse_node_key(line: str) -> ec.EllipticCurvePublicKey:
    """An agency node key from its OpenSSH line; only EC P-256, as `heroes agency init` makes.

    Raises ValueError saying why; callers add where the line came from. Kept per line (a
    pure function of it; keys are immutable): a node looks its neighbours' keys up in every
    secure-aggregation stage.
    """
    try:
        key = serialization.load_ssh_public_key(line.strip().encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ValueError("not an OpenSSH public key line") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(f"a {type(key).__name__} key; roster members hold EC P-256 node keys "
                         "only (`heroes agency init` makes them)")
    return key


@dataclass(frozen=True)
class Member:
    agency: str
    public_key: str  # the OpenSSH public key line of the node key (EC P-256, as node.key.pub)
    fingerprint: str  # federation.signing.key_fingerprint of that key

    @classmethod
    def from_key(cls, agency: str, key: ec.EllipticCurvePublicKey) -> Member:
        return cls(agency=agency, public_key=openssh_line(key), fingerprint=key_fingerprint(key))

    def key(self) -> ec.EllipticCurvePublicKey:
        return parse_node_key(self.public_key)


@dataclass(frozen=True)
class Roster:
    version: int
    issued_at: str
    consortium: str  # fingerprint of the consortium signing key, or "simulation"
    members: tuple[Member, ...]

    @property
    def digest(self) -> str:
        """SHA-256 hex of the canonical JSON (sorted keys, no spaces): what agencies approve."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def member(self, agency: str) -> Member | None:
        return next((m for m in self.members if m.agency == agency), None)

    def key_of(self, agency: str) -> PublicKey | None:
        """The node key rostered for ``agency``, or None when it is not a member."""
        member = self.member(agency)
        return None if member is None else member.key()

    def member_by_fingerprint(self, fingerprint: str) -> Member | None:
        return next((m for m in self.members if m.fingerprint == fingerprint), None)

    def to_json(self) -> dict[str, Any]:
        return {"format": ROSTER_FORMAT, "version": self.version, "issued_at": self.issued_at,
                "consortium": self.consortium,
                "members": [{"agency": m.agency, "public_key": m.public_key,
                             "fingerprint": m.fingerprint} for m in self.members]}

    @classmethod
    def from_json(cls, data: object, *, source: str) -> Roster:
        """Validate every field; raise naming every broken rule and the fix.

        Structural problems raise DeploymentError; a key that does not parse, is not EC
        P-256, or does not match its fingerprint (or two members sharing one) raises
        SignatureError, since that is what a substituted key looks like.
        """
        problems: list[str] = []
        key_problems: list[str] = []
        if not isinstance(data, dict):
            raise DeploymentError(f"roster {source} is not a JSON object. {_FIX}")
        if data.get("format") != ROSTER_FORMAT:
            problems.append(f"format is {data.get('format')!r}; this version reads "
                            f"{ROSTER_FORMAT!r} only")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            problems.append(f"version is {version!r}; it must be a whole number >= 1")
        issued_at = data.get("issued_at")
        try:
            if not isinstance(issued_at, str):
                raise ValueError
            dt.datetime.fromisoformat(issued_at)
        except ValueError:
            problems.append(f"issued_at is {issued_at!r}; it must be an ISO-8601 time")
        consortium = data.get("consortium")
        if not isinstance(consortium, str) or not (
                consortium == SIMULATION or _FINGERPRINT.match(consortium)):
            problems.append(f"consortium is {consortium!r}; it must be the signing key's "
                            f"fingerprint (sha256:<64 hex>) or {SIMULATION!r}")
        raw_members = data.get("members")
        members: list[Member] = []
        if not isinstance(raw_members, list) or not raw_members:
            problems.append("members must be a non-empty list")
            raw_members = []
        extra = sorted(set(data) - {"format", "version", "issued_at", "consortium", "members"})
        if extra:
            problems.append(f"unexpected field(s) {extra}")
        names: set[str] = set()
        fingerprints: dict[str, str] = {}
        for i, raw in enumerate(raw_members, start=1):
            where = f"member {i}"
            if not isinstance(raw, dict) or set(raw) != {"agency", "public_key", "fingerprint"} \
                    or not all(isinstance(v, str) for v in raw.values()):
                problems.append(f"{where} must hold exactly the strings agency, public_key and "
                                "fingerprint")
                continue
            agency, line, fingerprint = raw["agency"], raw["public_key"], raw["fingerprint"]
            where = f"member {i} ({agency})" if NAME_RULE.match(agency) else where
            if not NAME_RULE.match(agency):
                problems.append(f"{where}: the agency name is not allowed: {NAME_HINT}")
            elif agency in names:
                problems.append(f"{where}: the agency appears twice; each agency is listed "
                                "once, with its one node key")
            names.add(agency)
            try:
                actual = key_fingerprint(parse_node_key(line))
            except ValueError as exc:
                key_problems.append(f"{where}: public_key is {exc}")
                continue
            if fingerprint != actual:
                key_problems.append(f"{where}: fingerprint {fingerprint} is not that of its "
                                    f"public_key ({actual})")
            if actual in fingerprints:
                key_problems.append(f"{where}: the same node key is listed for "
                                    f"{fingerprints[actual]}; every agency has its own key")
            fingerprints.setdefault(actual, agency)
            members.append(Member(agency, line, fingerprint))
        if problems or key_problems:
            listed = "\n".join(f"  - {p}" for p in [*problems, *key_problems])
            error = SignatureError if key_problems else DeploymentError
            raise error(f"roster {source} is invalid ({len(problems) + len(key_problems)} "
                        f"problem(s)):\n{listed}\n{_FIX}")
        assert isinstance(version, int) and isinstance(issued_at, str)
        assert isinstance(consortium, str)
        return cls(version=version, issued_at=issued_at, consortium=consortium,
                   members=tuple(members))


# --- files -----------------------------------------------------------------------------------

def write_roster(path: Path, roster: Roster, signing_key: PrivateKey | None = None) -> Path:
    """Write ``roster.json`` atomically and, with ``signing_key``, its detached ``.sig``.

    Without a key an existing ``.sig`` is removed: it signed the previous content, and a
    stale signature next to a new file only confuses whoever checks it.
    """
    text = json.dumps(roster.to_json(), indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode("utf-8"))
    sig = signature_path_for(path)
    if signing_key is not None:
        sign_file(signing_key, path)
    elif sig.exists():
        sig.unlink()
    return path


def read_roster(path: Path, *, consortium_key: PublicKey | None = None) -> Roster:
    """Read and validate ``path``; with ``consortium_key``, first verify its ``.sig``.

    A roster checked against the consortium key must also name that key as its issuer, so a
    roster signed by one key cannot claim another consortium.
    """
    if not path.is_file():
        raise DeploymentError(f"roster {path} does not exist. Fix: pass the roster.json the "
                              "consortium sent (`heroes consortium roster` writes it)")
    if consortium_key is not None:
        if not signature_path_for(path).is_file():
            raise SignatureError(
                f"roster {path} is unsigned (no {signature_path_for(path).name} next to it); "
                "this node accepts only rosters signed by the consortium key "
                f"{key_fingerprint(consortium_key)}. Fix: ask the consortium for roster.json "
                "together with roster.json.sig (`heroes consortium roster` writes both)")
        verify_file(consortium_key, path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DeploymentError(f"roster {path} is not UTF-8 JSON. {_FIX}") from None
    roster = Roster.from_json(data, source=str(path))
    if consortium_key is not None and roster.consortium != key_fingerprint(consortium_key):
        raise SignatureError(
            f"roster {path} names consortium {roster.consortium} but is signed by "
            f"{key_fingerprint(consortium_key)}. {_FIX}")
    return roster


# --- what changed --------------------------------------------------------------------------

@dataclass(frozen=True)
class RosterDiff:
    added: tuple[Member, ...]
    removed: tuple[Member, ...]
    key_changed: tuple[tuple[Member, Member], ...]  # (old, new), same agency

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.key_changed)

    def lines(self) -> list[str]:
        """One line per change, for a person to read before approving."""
        out = [f"+ {m.agency} added, key {m.fingerprint}" for m in self.added]
        out += [f"- {m.agency} removed (was key {m.fingerprint})" for m in self.removed]
        out += [f"~ {old.agency} KEY CHANGED: {old.fingerprint} -> {new.fingerprint}"
                for old, new in self.key_changed]
        return out


def diff(old: Roster | None, new: Roster) -> RosterDiff:
    """Members added, removed and with another key in ``new`` compared with ``old``."""
    before = {m.agency: m for m in (old.members if old is not None else ())}
    after = {m.agency: m for m in new.members}
    return RosterDiff(
        added=tuple(after[a] for a in sorted(after.keys() - before.keys())),
        removed=tuple(before[a] for a in sorted(before.keys() - after.keys())),
        key_changed=tuple((before[a], after[a]) for a in sorted(before.keys() & after.keys())
                          if before[a].fingerprint != after[a].fingerprint))
