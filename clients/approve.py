"""``heroes agency approve`` and ``heroes agency approvals``: a person at the agency decides.

    heroes agency approve roster.json --dir STATE_DIR [--yes]    the peers (secure aggregation)
    heroes agency approve app.fab --dir STATE_DIR [--yes]        the code the node runs
    heroes agency approve DIGEST --dir STATE_DIR [--yes]         a bundle the node refused
    heroes agency approvals --dir STATE_DIR [--json]             list them; check the log

Approving shows what the decision is about (every member and its key fingerprint, to check
out of band; every file of a bundle with its SHA-256) and what changed since the last
approval, because a change is what a malicious consortium would slip in; then it asks.
Exit status: 0 approved (or already approved), 1 declined at the prompt, 2 refused with an
error (raised as a HeroesError, which ``heroes`` prints).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, TextIO

from clients import approvals, signed_log
from clients.agency import AgencyHome
from federation.appsign import bundle_manifest, manifest_files
from federation.errors import DeploymentError, SignatureError
from federation.files import write_atomic
from federation.roster import ROSTER_FORMAT, Roster, diff, read_roster
from federation.signing import (
    key_fingerprint,
    load_private_key,
    load_public_key,
    signature_path_for,
)

APPROVED, DECLINED = 0, 1
_HEX = re.compile(r"^[0-9a-f]{16,64}$")
_ZIP = b"PK\x03\x04"


def ask(question: str, *, yes: bool, stdin: TextIO, out: TextIO) -> bool:
    """``question [y/N]`` answered on ``stdin``; anything but y/yes (or end of input) is no."""
    if yes:
        print(f"{question} [y/N] yes (--yes)", file=out, flush=True)
        return True
    print(f"{question} [y/N] ", end="", file=out, flush=True)
    answer = stdin.readline()
    if not stdin.isatty():  # piped: echo the answer, so the transcript reads as a dialogue
        print(answer.strip() or "(no answer)", file=out)
    return answer.strip().lower() in ("y", "yes")


def approve_target(state_dir: Path, target: str, *, yes: bool, stdin: TextIO,
                   out: TextIO) -> int:
    """Approve a roster file, a .fab file, or a bundle kept in approvals/pending by digest."""
    home = AgencyHome(state_dir)
    home.node()  # a node folder, or an error saying how to make one
    path = Path(target)
    if not path.exists() and _HEX.match(target.lower()):
        return _approve_bundle(home, _pending_bundle(home, target.lower()), yes=yes,
                               stdin=stdin, out=out)
    if not path.is_file():
        raise DeploymentError(
            f"{target} is not a file, nor a bundle digest (16 to 64 hex digits). Fix: pass the "
            "roster.json or the .fab the consortium sent, or the digest a refused bundle is "
            f"kept under in {approvals.pending_dir(state_dir)}")
    with path.open("rb") as handle:
        start = handle.read(4)
    if start == _ZIP or path.suffix == ".fab":
        return _approve_bundle(home, path, yes=yes, stdin=stdin, out=out)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict) or data.get("format") != ROSTER_FORMAT:
        raise DeploymentError(
            f"{path} is neither a roster (JSON with format {ROSTER_FORMAT!r}) nor an app bundle "
            "(.fab, a zip). Fix: pass the roster.json from `heroes consortium roster` or the "
            ".fab from `heroes consortium bundle`")
    return _approve_roster(home, path, yes=yes, stdin=stdin, out=out)


# --- rosters ---------------------------------------------------------------------------------

def _approve_roster(home: AgencyHome, path: Path, *, yes: bool, stdin: TextIO,
                    out: TextIO) -> int:
    node = home.node()
    consortium_key = load_public_key(home.consortium_key)
    roster = read_roster(path, consortium_key=consortium_key)
    # the key the node authenticates and signs with, not node.key.pub, which is only a copy
    own = key_fingerprint(load_private_key(home.node_key).public_key())
    me = roster.member(node.name)
    if me is None:
        raise DeploymentError(
            f"this agency ({node.name}) is not on roster {path} (version {roster.version}; "
            f"members: {', '.join(m.agency for m in roster.members)}); this node approves only "
            "a roster it is on, with its own key. Fix: ask the consortium to enroll "
            f"{home.node_pub} (fingerprint {own}) and to issue a new roster")
    if me.fingerprint != own:
        raise SignatureError(
            f"roster {path} lists key {me.fingerprint} for this agency ({node.name}), but this "
            f"node's key is {own}: the consortium listed another key for you, which would let "
            f"whoever holds that key take part as {node.name}. Refused: do not approve it. "
            "Fix: report it to the consortium out of band; it must list this node's "
            f"node.key.pub (fingerprint {own}) in a new roster")
    approved = approvals.approved_digests(home.root, "roster")
    if approved and approved[-1] == roster.digest:
        _install_roster(home, path)
        print(f"roster version {roster.version} (digest {roster.digest[:16]}) is already the "
              "roster this agency approved; nothing recorded", file=out)
        return APPROVED
    highest = approvals.approved_roster_version(home.root)
    if roster.version <= highest:
        raise DeploymentError(
            f"roster {path} is version {roster.version}, but this agency already approved "
            f"version {highest}: an older or re-used roster version (a replay could bring back "
            "a member removed since). Fix: ask the consortium for its current roster (`heroes "
            "consortium roster` issues a higher version)")
    previous = _previous_roster(home, approved)
    print(_render_roster(roster, own, consortium_key_path=home.consortium_key), file=out)
    print(_render_roster_changes(previous, roster), file=out)
    if not ask(f"approve roster version {roster.version} (digest {roster.digest[:16]})?",
               yes=yes, stdin=stdin, out=out):
        print("declined: nothing recorded; the node keeps the roster approved before", file=out)
        return DECLINED
    _install_roster(home, path)
    approvals.approve(home.root, "roster", roster.digest, approvals.roster_summary(roster))
    print(f"approved roster version {roster.version} (digest {roster.digest}): recorded in "
          f"{home.root / approvals.APPROVALS}; under secure aggregation this node now works "
          f"only with these {len(roster.members)} agencies", file=out)
    return APPROVED


def _install_roster(home: AgencyHome, path: Path) -> None:
    """Copy the roster and its consortium signature into the state folder, byte for byte
    (the signature stays checkable there)."""
    target = approvals.roster_path(home.root)
    if path.resolve() == target.resolve():
        return
    write_atomic(signature_path_for(target),
                            signature_path_for(path).read_bytes())
    write_atomic(target, path.read_bytes())


def _previous_roster(home: AgencyHome, approved: list[str]) -> Roster | None:
    if not approved:
        return None
    try:
        return approvals.approved_roster(home.root)
    except DeploymentError:
        return None  # the change list then says it cannot compare


def _render_roster(roster: Roster, own: str, *, consortium_key_path: Path) -> str:
    width = max(len(m.agency) for m in roster.members)
    lines = [f"roster version {roster.version}, issued {roster.issued_at}, signed by the "
             f"consortium key {roster.consortium} ({consortium_key_path.name}: verified)",
             f"{len(roster.members)} member(s); check each fingerprint with that agency out of "
             "band (phone, in person):"]
    for m in roster.members:
        mark = "  <- this node (its key matches)" if m.fingerprint == own else ""
        lines.append(f"  {m.agency:<{width}}  {m.fingerprint}{mark}")
    return "\n".join(lines)


def _render_roster_changes(previous: Roster | None, roster: Roster) -> str:
    if previous is None:
        return ("changes: no approved roster to compare with (none approved yet, or the "
                "installed one is missing): every member above is new to this node")
    changes = diff(previous, roster).lines()
    if not changes:
        return (f"changes since the roster approved last (version {previous.version}): none in "
                "members or keys")
    return "\n".join([f"changes since the roster approved last (version {previous.version}):",
                      *(f"  {line}" for line in changes)])


# --- app bundles -----------------------------------------------------------------------------

def _pending_bundle(home: AgencyHome, prefix: str) -> Path:
    folder = approvals.pending_dir(home.root)
    matches = [d for d in approvals.pending_digests(home.root) if d.startswith(prefix)]
    if not matches:
        raise DeploymentError(
            f"no refused bundle with manifest digest {prefix} is kept in {folder}: the node "
            "keeps a bundle there when it refuses to run it. Fix: check the digest (the "
            f"refusal names it; `ls {folder}`), or approve the .fab the consortium sent "
            "(`heroes consortium bundle` makes it)")
    if len(matches) > 1:
        raise DeploymentError(
            f"{len(matches)} refused bundles in {folder} start with {prefix}. Fix: give more "
            "digits of the digest (up to all 64)")
    return approvals.pending_path(home.root, matches[0])


def _approve_bundle(home: AgencyHome, path: Path, *, yes: bool, stdin: TextIO,
                    out: TextIO) -> int:
    fab = path.read_bytes()
    manifest = bundle_manifest(fab)  # every file matches its manifest entry, or refused
    digest = hashlib.sha256(manifest).hexdigest()
    pending = approvals.pending_path(home.root, digest)
    if path.parent == pending.parent and path.name != pending.name:
        raise SignatureError(
            f"{path} is kept as a refused bundle, but its manifest digest is {digest}: the "
            "file was replaced after the node kept it. Fix: delete it and approve the .fab "
            "the consortium sent")
    files = manifest_files(manifest)
    approved = approvals.approved_digests(home.root, "bundle")
    if digest in approved:
        approvals.keep_manifest(home.root, manifest)
        pending.unlink(missing_ok=True)
        print(f"app bundle {digest[:16]} is already approved; nothing recorded", file=out)
        return APPROVED
    print(f"app bundle {path}\n  manifest digest: {digest}\n  (compare it with the digest "
          "the consortium sent; the consortium's signature travels with each run and the node "
          "checks it then)", file=out)
    print(f"{len(files)} file(s) (sha256, bytes, path):", file=out)
    for name, (sha, bits) in sorted(files.items()):
        print(f"  {sha}  {bits // 8:>9}  {name}", file=out)
    print(_render_bundle_changes(home, approved, files), file=out)
    if not ask(f"approve app bundle {digest[:16]}?", yes=yes, stdin=stdin, out=out):
        print("declined: nothing recorded; the node keeps refusing this bundle", file=out)
        return DECLINED
    approvals.keep_manifest(home.root, manifest)
    approvals.approve(home.root, "bundle", digest, {"files": len(files)})
    pending.unlink(missing_ok=True)
    print(f"approved app bundle {digest}: recorded in {home.root / approvals.APPROVALS}; the "
          "node runs it when a run signed by the consortium brings it", file=out)
    return APPROVED


def _render_bundle_changes(home: AgencyHome, approved: list[str],
                           files: dict[str, tuple[str, int]]) -> str:
    previous = next((d for d in reversed(approved)
                     if approvals.manifest_path(home.root, d).is_file()), None)
    if previous is None:
        return "changes: no approved bundle to compare with: review every file above"
    before = manifest_files(approvals.manifest_path(home.root, previous).read_bytes())
    lines = [f"+ {n}" for n in sorted(files.keys() - before.keys())]
    lines += [f"- {n}" for n in sorted(before.keys() - files.keys())]
    lines += [f"~ {n}" for n in sorted(files.keys() & before.keys()) if files[n] != before[n]]
    if not lines:
        return f"changes since the bundle approved last ({previous[:16]}): none"
    return "\n".join([f"changes since the bundle approved last ({previous[:16]}): + added, "
                      "- removed, ~ changed", *(f"  {line}" for line in lines)])


# --- listing ---------------------------------------------------------------------------------

def _summary_text(entry: dict[str, Any]) -> str:
    summary = entry.get("summary")
    if not isinstance(summary, dict):
        return str(summary)
    if entry.get("kind") == "roster":
        text = f"version {summary.get('version')}, {summary.get('members')} member(s)"
    else:
        text = f"{summary.get('files')} file(s)"
    return f"{text} ({summary['note']})" if summary.get("note") else text


def list_approvals(state_dir: Path, *, as_json: bool, out: TextIO) -> int:
    """List every approval and check the log: 0 when it verifies, 1 (with each problem) when
    not."""
    log = approvals.approvals_log(state_dir)
    rows = [(number, entry) for number, entry, _ in signed_log.entries(log)
            if entry is not None]
    problems: list[signed_log.Problem] = []
    if log.path.is_file() or log.head.is_file():
        _, problems = signed_log.verify_log(log, signed_log.node_public_key(state_dir))
    roster: dict[str, Any] | None = None
    roster_note = ""
    if not problems:
        try:
            r = approvals.approved_roster(state_dir)
            roster = {"version": r.version, "digest": r.digest, "members": len(r.members)}
        except DeploymentError as exc:
            roster_note = str(exc)
    pending = approvals.pending_digests(state_dir)
    if as_json:
        print(json.dumps({"state_dir": str(state_dir), "ok": not problems,
                          "entries": [entry for _, entry in rows],
                          "problems": [str(p) for p in problems], "roster": roster,
                          "pending": pending}, indent=2), file=out)
        return 0 if not problems else 1
    if rows:
        print(f"{'#':>3} {'approved':<21}{'kind':<8}{'digest':<18}summary", file=out)
    for number, entry in rows:
        print(f"{number:>3} {entry.get('approved_at', '?'):<21}"
              f"{entry.get('kind', '?'):<8}{str(entry.get('digest', ''))[:16]:<18}"
              f"{_summary_text(entry)}", file=out)
    if not rows:
        print(f"no approvals in {log.path}: this node runs no bundle and joins no secure "
              "aggregation yet (`heroes agency approve`)", file=out)
    if problems:
        print(f"approvals BROKEN: {len(problems)} problem(s) in {log.path}", file=out)
        for problem in problems:
            print(f"  {problem}", file=out)
        print("the node accepts no roster and no bundle until the log verifies; restore "
              f"{approvals.APPROVALS} and {approvals.HEAD} from a backup", file=out)
        return 1
    if rows:
        print(f"approvals OK: {len(rows)} entries in {log.path}, every signature valid, chain "
              "and signed head intact", file=out)
    if roster is not None:
        print(f"roster in effect: version {roster['version']} (digest {roster['digest'][:16]}),"
              f" {roster['members']} member(s)", file=out)
    else:
        print(f"roster in effect: none ({roster_note})", file=out)
    for digest in pending:
        print(f"refused, waiting for review: app bundle {digest[:16]} (`heroes agency approve "
              f"{digest[:16]} --dir {state_dir}`)", file=out)
    return 0
