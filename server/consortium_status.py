"""``heroes consortium status``: the aggregator's state as an operator and a monitoring
system read it, agencies by name.

What it reads: ``aggregator.json`` (the processes `consortium serve` started), the
SuperLink's gRPC health endpoint, the TLS certificate, ``registry.json`` (who is enrolled or
revoked), the signed roster, the SuperLink's own node list (``flwr supernode ls`` over the
private Control API: online or offline, since when), mapped to agency names through the
registry's node ids, and the latest run folder under ``runs/``. Nothing it prints comes
from an agency's data. Findings and exit code follow federation/monitoring.py (Nagios).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from federation.errors import HeroesError
from federation.monitoring import CRITICAL, OK, WARNING, Finding, grpc_health
from federation.protocol import SUMMARY_FILE

#: Days of validity left on the TLS certificate below which status warns.
CERT_WARNING_DAYS = 30


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _nodes(home: Any) -> tuple[list[dict[str, Any]] | None, str]:
    """The SuperLink's node list (node id, status, times), or None and why not."""
    from server.deploy import CONNECTION, _flwr, _json_tail

    try:
        proc = _flwr(home, "supernode", "ls", CONNECTION, "--format", "json", timeout=60)
    except (OSError, subprocess.SubprocessError, HeroesError) as exc:
        return None, f"cannot ask the SuperLink ({type(exc).__name__})"
    reply = _json_tail(proc.stdout)
    if proc.returncode != 0 or not reply.get("success"):
        return None, "the SuperLink did not list its nodes (`flwr supernode ls` failed)"
    nodes = reply.get("nodes")
    return (nodes if isinstance(nodes, list) else []), "ok"


def _last_run(root: Path) -> dict[str, Any] | None:
    runs = root / "runs"
    folders = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.name) \
        if runs.is_dir() else []
    if not folders:
        return None
    run = folders[-1]
    out: dict[str, Any] = {"folder": str(run), "run_id": None, "state": "submitted"}
    if (run / "run-id").is_file():
        out["run_id"] = (run / "run-id").read_text(encoding="utf-8").strip()
    summary = run / "server" / SUMMARY_FILE
    partial = run / "server" / "partial" / SUMMARY_FILE
    if (run / "model.pt").is_file() and (run / SUMMARY_FILE).is_file():
        out["state"] = "finished"
        summary = run / SUMMARY_FILE
    elif out["run_id"] is not None:
        out["state"] = "ended without a model"
    for path in (summary, partial):
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                out["rounds_completed"] = len(data.get("rounds", []))
            except (OSError, ValueError):
                out["rounds_completed"] = None
            break
    return out


def status(root: Path, *, ask_link: bool = True) -> dict[str, Any]:
    """Everything ``consortium status`` shows, JSON-ready."""
    from federation.pki import check_certificate
    from server.deploy import ConsortiumHome, loose_modes

    home = ConsortiumHome(root)
    settings = home.settings()
    out: dict[str, Any] = {"consortium": str(home.root),
                           "public_address": f"{settings.public_host}:{settings.public_port}"}
    saved_path = home.root / "aggregator.json"
    saved = json.loads(saved_path.read_text(encoding="utf-8")) if saved_path.is_file() else {}
    procs = {name: _alive(int(saved[key])) for name, key in
             (("serve", "pid"), ("superlink", "superlink_pid"), ("gateway", "gateway_pid"))
             if isinstance(saved.get(key), int)}
    out["processes"] = procs or "never started"
    out["health"] = (grpc_health(f"127.0.0.1:{settings.health_port}")
                     if procs and any(procs.values()) else "not running")
    try:
        cert = check_certificate(home.server_cert, what="SuperLink certificate",
                                 host=settings.public_host, ca=home.ca_cert)
        out["tls"] = {"hosts": list(cert.hosts), "days_left": cert.days_left, "problem": None}
    except HeroesError as exc:
        out["tls"] = {"hosts": [], "days_left": None, "problem": str(exc)}
    registry = home.registry()
    listed, why = _nodes(home) if ask_link and out["health"] == "SERVING" else (
        None, "the SuperLink is not running")
    by_id = {str(n.get("node-id")): n for n in (listed or [])}
    agencies = []
    for name, entry in sorted(registry.get("agencies", {}).items()):
        node = by_id.get(str(entry.get("node_id")))
        agencies.append({
            "agency": name, "node_id": entry.get("node_id"),
            "fingerprint": entry.get("fingerprint"), "enrolled_at": entry.get("enrolled_at"),
            "revoked_at": entry.get("revoked_at"),
            "state": ("revoked" if entry.get("revoked_at") else
                      "unknown" if listed is None else
                      str(node.get("status")) if node is not None else "not registered"),
            "online_at": None if node is None else node.get("online-at"),
            "offline_at": None if node is None else node.get("offline-at")})
    out["agencies"] = agencies
    out["node_list"] = why
    known = {str(e.get("node_id")) for e in registry.get("agencies", {}).values()}
    out["unknown_nodes"] = sorted(i for i in by_id if i not in known)
    out["roster"] = _roster_state(home, registry)
    out["last_run"] = _last_run(home.root)
    out["permissions"] = loose_modes(home)
    return out


def _roster_state(home: Any, registry: dict[str, Any]) -> dict[str, Any]:
    """Whether the signed roster lists exactly the agencies enrolled now."""
    path = home.roster_path
    if not path.is_file():
        return {"version": None, "current": False, "problem": "no signed roster yet"}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        members = {m["agency"]: m["fingerprint"] for m in data["members"]}
        version = data.get("version")
    except (OSError, ValueError, KeyError, TypeError):
        return {"version": None, "current": False, "problem": "roster.json is not readable"}
    enrolled = {name: e["fingerprint"] for name, e in registry.get("agencies", {}).items()
                if not e.get("revoked_at")}
    if members == enrolled:
        return {"version": version, "current": True, "problem": None}
    added = sorted(set(enrolled) - set(members))
    gone = sorted(set(members) - set(enrolled))
    changed = sorted(a for a in set(members) & set(enrolled) if members[a] != enrolled[a])
    parts = [f"{label}: {', '.join(names)}" for label, names in
             (("enrolled since", added), ("revoked since", gone), ("new key", changed))
             if names]
    return {"version": version, "current": False,
            "problem": "the signed roster is behind the registry (" + "; ".join(parts) + ")"}


def assess(s: dict[str, Any], *, cert_warning_days: int = CERT_WARNING_DAYS) -> list[Finding]:
    """The monitoring findings of ``status``: CRITICAL where no round can run (a process
    down, the SuperLink not serving, the certificate invalid or expired), WARNING where
    rounds may go worse than planned (an agency offline, the roster behind the registry, a
    certificate near its end, unknown nodes on the SuperLink, the last run without a model,
    files others can read)."""
    out: list[Finding] = []
    procs = s["processes"]
    if not isinstance(procs, dict):
        out.append(Finding(CRITICAL, "processes", "the aggregator was never started. Fix: "
                           "`heroes consortium serve` (or its systemd unit)"))
    else:
        down = sorted(k for k, up in procs.items() if not up)
        out.append(Finding(CRITICAL, "processes", f"not running: {', '.join(down)}. Fix: "
                           "restart `heroes consortium serve`; see logs/") if down else
                   Finding(OK, "processes", f"running: {', '.join(sorted(procs))}"))
    health = str(s["health"])
    out.append(Finding(OK if health == "SERVING" else CRITICAL, "health", health))
    tls = s["tls"]
    if tls["problem"]:
        out.append(Finding(CRITICAL, "tls", tls["problem"]))
    elif tls["days_left"] is not None and tls["days_left"] < cert_warning_days:
        out.append(Finding(WARNING, "tls", f"{tls['days_left']:.0f} days left. Fix: `heroes "
                           "consortium init --renew-server-cert` before it expires"))
    else:
        out.append(Finding(OK, "tls", f"{tls['days_left']:.0f} days left"))
    for a in s["agencies"]:
        state = a["state"]
        if state in ("online", "revoked"):
            out.append(Finding(OK, f"agency {a['agency']}", state))
        else:
            out.append(Finding(WARNING, f"agency {a['agency']}", f"{state}" + (
                f" (last online {a['online_at']})" if a.get("online_at") else "")))
    if not s["agencies"]:
        out.append(Finding(WARNING, "agencies", "none enrolled. Fix: `heroes consortium "
                           "enroll NAME KEY.pub`"))
    if s["unknown_nodes"]:
        out.append(Finding(WARNING, "nodes", f"{len(s['unknown_nodes'])} node(s) on the "
                           "SuperLink that the registry does not name"))
    roster = s["roster"]
    out.append(Finding(OK, "roster", f"version {roster['version']}, current")
               if roster["current"] else
               Finding(WARNING, "roster", f"{roster['problem']}. Fix: `heroes consortium "
                       "roster`, then every agency approves it"))
    run = s["last_run"]
    if run is not None and run["state"] == "ended without a model":
        out.append(Finding(WARNING, "last run", f"run {run['run_id']} ended without a model "
                           f"({run['folder']}). Fix: `heroes consortium train --resume "
                           f"{run['folder']}`"))
    elif run is not None:
        out.append(Finding(OK, "last run", f"{run['state']} ({run['folder']})"))
    for line in s["permissions"]:
        out.append(Finding(WARNING, "permissions", line))
    return out
