"""``heroes consortium console``: the aggregator at a glance, in a browser, and a Prometheus
endpoint.

Shows what ``consortium status`` finds (agencies by name: enrolled, online, last seen,
revoked; processes, health, certificate, roster), the runs under ``runs/`` with their state
and, for the newest, its per-round progress lines as they are written (live: the page
refreshes every 10 s), each finished run's rounds (agencies in the sum, secure or not,
refusals and failures with the reasons the nodes gave, pooled ROC-AUC per round as a
plot), each agency's budget as it reported it (where its policy shares it), and the
releases. ``/api/status``, ``/api/runs`` and ``/metrics`` (Prometheus' text format, from
prometheus_client) give the same figures to programs. Nothing on it comes from an agency's
data; the figures an agency keeps to itself read "kept by the agency".

With a login (``--token-file``) it also acts: start a run from a saved configuration
(``DIR/run-configs/NAME.toml``), stop a running run, resume an interrupted one
(server/run_actions.py; forms on the page, ``POST /actions/start|stop|resume`` for programs
with the bearer token). Without one it is read-only.

Served by federation/localweb.py: 127.0.0.1 by default; behind the operator's reverse
proxy (``--bind``, ``--public-host``) only with a login (``--token-file``).
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

from federation.protocol import SUMMARY_FILE

REFRESH_S = 10
MAX_RUNS = 20
PROGRESS = re.compile(r"^heroes (\S+) run (\d+) (INFO|WARNING|ERROR) heroes\.\w+: (.*)$")
CSS = """body{font-family:system-ui,sans-serif;margin:20px auto;max-width:1150px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:26px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}form.action{display:inline;margin:0 4px}
.critical{color:#b00;font-weight:bold}.warning{color:#a60}
.ok{color:#060}.note{color:#555;font-size:13px}pre{font-size:12px;background:#f7f7f7;
padding:6px;white-space:pre-wrap}svg.plot{border:1px solid #ddd}"""


def _e(v: object) -> str:
    return html.escape(str(v))


def status_api(root: Path) -> dict[str, Any]:
    from federation import monitoring
    from server.consortium_status import assess, status

    s = status(root)
    return {**s, "monitoring": monitoring.report(assess(s))}


def _summary(run: Path) -> dict[str, Any] | None:
    for path in (run / SUMMARY_FILE, run / "server" / SUMMARY_FILE,
                 run / "server" / "partial" / SUMMARY_FILE):
        if path.is_file():
            try:
                data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
                return data
            except (OSError, ValueError):
                return None
    return None


def _rounds(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in summary.get("rounds", []):
        train = r.get("train", [])
        t, e = r.get("train_aggregate") or {}, r.get("evaluate_aggregate") or {}
        out.append({
            "round": r.get("round"),
            "trained": sum(o.get("status") == "ok" for o in train),
            "agencies": len(train),
            "secure": bool(t.get("secure_sum") or e.get("secure_sum")),
            "roc_auc": e.get("roc_auc"),
            "not_ok": [{"agency": o.get("agency"), "status": o.get("status"),
                        "reason": o.get("reason", "")} for o in train
                       if o.get("status") != "ok"],
            "budgets": {str(o.get("agency")): {
                "epsilon": (o.get("metrics") or {}).get("epsilon"),
                "budget_remaining": (o.get("metrics") or {}).get("budget_remaining")}
                for o in train if o.get("status") == "ok"},
        })
    return out


def runs_api(root: Path) -> dict[str, Any]:
    """The newest runs first: state, rounds, progress lines, refusals, budgets, release."""
    from server.run_actions import resumable, run_state

    runs_dir = root / "runs"
    folders = sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.name,
                     reverse=True)[:MAX_RUNS] if runs_dir.is_dir() else []
    runs = []
    for run in folders:
        summary = _summary(run)
        state = run_state(run)
        progress = []
        log = run / "run.log"
        if log.is_file():
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                m = PROGRESS.match(line)
                if m:
                    progress.append({"at": m.group(1), "run_id": m.group(2),
                                     "level": m.group(3), "text": m.group(4)})
        card = run / "release" / "model_card.json"
        release = None
        if card.is_file():
            try:
                c = json.loads(card.read_text(encoding="utf-8"))
                release = {"released_at": c.get("released_at"),
                           "metrics": c.get("metrics"), "folder": str(card.parent)}
            except (OSError, ValueError):
                release = {"released_at": None, "metrics": None, "folder": str(card.parent)}
        runs.append({"folder": run.name, "state": state, "resumable": resumable(run),
                     "run_id": ((run / "run-id").read_text(encoding="utf-8").strip()
                                if (run / "run-id").is_file() else None),
                     "rounds": _rounds(summary) if summary else [],
                     "progress": progress[-50:], "release": release})
    return {"runs": runs}


def configs_api(root: Path) -> dict[str, Any]:
    """The saved run configurations (server/run_actions.py) and the files that cannot be
    used."""
    from server.run_actions import saved_configs

    found, problems = saved_configs(root)
    return {"configs": [{"name": c.name, "task": c.task, "run_config": c.run_config,
                         "description": c.description} for c in found],
            "problems": problems}


def metrics(root: Path) -> bytes:
    """Prometheus' text exposition of the status (a fresh registry per scrape)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    s = status_api(root)
    reg = CollectorRegistry()
    Gauge("heroes_consortium_monitoring_level", "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
          registry=reg).set(s["monitoring"]["exit_code"])
    up = Gauge("heroes_consortium_process_up", "a process consortium serve started is up",
               ["process"], registry=reg)
    for name, alive in (s["processes"].items() if isinstance(s["processes"], dict) else []):
        up.labels(name).set(1 if alive else 0)
    Gauge("heroes_consortium_superlink_serving", "the SuperLink's health endpoint answers "
          "SERVING", registry=reg).set(1 if s["health"] == "SERVING" else 0)
    days = s["tls"]["days_left"]
    Gauge("heroes_consortium_tls_days_left", "days of validity left on the TLS certificate",
          registry=reg).set(days if isinstance(days, int | float) else math.nan)
    online = Gauge("heroes_consortium_agency_online", "an enrolled agency's node is online",
                   ["agency"], registry=reg)
    states = Gauge("heroes_consortium_agencies", "enrolled agencies by state", ["state"],
                   registry=reg)
    counts: dict[str, int] = {}
    for a in s["agencies"]:
        counts[a["state"]] = counts.get(a["state"], 0) + 1
        if a["state"] != "revoked":
            online.labels(a["agency"]).set(1 if a["state"] == "online" else 0)
    for state, n in counts.items():
        states.labels(state).set(n)
    Gauge("heroes_consortium_roster_current", "the signed roster matches the registry",
          registry=reg).set(1 if s["roster"]["current"] else 0)
    last = s["last_run"]
    Gauge("heroes_consortium_last_run_rounds_completed", "rounds of the newest run",
          registry=reg).set(float(last.get("rounds_completed") or 0) if last else 0)
    return bytes(generate_latest(reg))


def _budget(b: dict[str, Any]) -> str:
    """What an agency reported of its budget: epsilon spent and what is left, each only
    where its policy shares it."""
    eps, left = b.get("epsilon"), b.get("budget_remaining")
    if not isinstance(eps, int | float):
        return "kept by the agency"
    spent = "epsilon inf (non-private)" if math.isinf(eps) else f"epsilon {eps:.3f}"
    return spent + (f", {left:.3f} left" if isinstance(left, int | float) else "")


def _button(path: str, field: str, value: str, label: str) -> str:
    return (f"<form method='post' action='{path}' class='action'>"
            f"<input type='hidden' name='{field}' value='{_e(value)}'>"
            f"<button type='submit'>{_e(label)}</button></form>")


def _actions_part(root: Path, actions: bool) -> str:
    saved = configs_api(root)
    if not actions:
        return ("<h2>Start a run</h2><p class='note'>Run actions (start from a saved "
                "configuration, stop, resume) need a login: start the console with "
                "--token-file FILE.</p>")
    rows = "".join(
        f"<tr><td>{_e(c['name'])}</td><td>{_e(c['task'])}</td><td><code>"
        f"{_e(c['run_config'])}</code></td><td>{_e(c['description'])}</td><td>"
        f"{_button('/actions/start', 'config', c['name'], 'start')}</td></tr>"
        for c in saved["configs"])
    problems = "".join(f"<li class='warning'>{_e(p)}</li>" for p in saved["problems"])
    return ("<h2>Start a run</h2>" + (
        "<table id='configs'><tr><th>saved configuration</th><th>task</th><th>run config"
        "</th><th>about</th><th></th></tr>" + rows + "</table>" if rows else
        f"<p>No saved configurations: write {_e(root / 'run-configs')}/NAME.toml "
        "(task, run_config).</p>") + (f"<ul>{problems}</ul>" if problems else ""))


def page(root: Path, *, actions: bool = False) -> str:
    from federation.plots import line_chart

    s, runs = status_api(root), runs_api(root)["runs"]
    mon = s["monitoring"]
    parts = [f"<h1>heroes-fl consortium console</h1><p class='note'>{_e(s['consortium'])}: "
             f"agencies connect to {_e(s['public_address'])}; refreshes every {REFRESH_S} s."
             "</p>",
             f"<h2>Aggregator: <span id='level' class='{mon['level']}'>"
             f"{_e(mon['level'].upper())}</span></h2><table><tr><th>check</th><th>level</th>"
             "<th>finding</th></tr>"]
    for c in mon["checks"]:
        if not c["check"].startswith("agency "):
            parts.append(f"<tr><td>{_e(c['check'])}</td><td class='{c['level']}'>"
                         f"{_e(c['level'])}</td><td>{_e(c['text'])}</td></tr>")
    parts.append("</table><h2>Agencies</h2><table id='agencies'><tr><th>agency</th>"
                 "<th>state</th><th>last online</th><th>enrolled</th><th>revoked</th>"
                 "<th>key</th></tr>")
    for a in s["agencies"]:
        level = "ok" if a["state"] in ("online", "revoked") else "warning"
        parts.append(f"<tr><td>{_e(a['agency'])}</td><td class='{level} state'>"
                     f"{_e(a['state'])}</td><td>{_e(a['online_at'] or '-')}</td>"
                     f"<td>{_e(a['enrolled_at'])}</td><td>{_e(a['revoked_at'] or '-')}</td>"
                     f"<td>{_e(str(a['fingerprint'])[:23])}</td></tr>")
    parts.append("</table>" + _actions_part(root, actions) + "<h2>Runs</h2>")
    if not runs:
        parts.append("<p>No runs yet (`heroes consortium train`).</p>")
    for i, run in enumerate(runs):
        parts.append(f"<h3>{_e(run['folder'])}: <span class='run-state'>{_e(run['state'])}"
                     f"</span> (run {_e(run['run_id'] or '-')}, "
                     f"<span class='rounds'>{len(run['rounds'])}</span> rounds recorded)</h3>")
        if actions and run["state"] == "running":
            parts.append(_button("/actions/stop", "folder", run["folder"], "stop this run"))
        elif actions and run["resumable"]:
            parts.append(_button("/actions/resume", "folder", run["folder"],
                                 "resume from its last checkpoint"))
        if i == 0 and run["progress"]:
            parts.append("<pre class='progress'>" + "\n".join(
                f"{_e(p['at'])} {_e(p['level'])} {_e(p['text'])}" for p in run["progress"])
                + "</pre>")
        if run["rounds"]:
            parts.append("<table><tr><th>round</th><th>trained</th><th>secure sum</th>"
                         "<th>pooled ROC-AUC</th><th>refused or failed</th></tr>")
            for r in run["rounds"]:
                auc = r["roc_auc"]
                parts.append(
                    f"<tr><td>{r['round']}</td><td>{r['trained']}/{r['agencies']}</td>"
                    f"<td>{'yes' if r['secure'] else 'no'}</td><td>"
                    f"{f'{auc:.3f}' if isinstance(auc, int | float) else 'n/a'}</td><td>"
                    + "; ".join(f"{_e(o['agency'])} ({_e(o['status'])}: {_e(o['reason'])})"
                                for o in r["not_ok"]) + "</td></tr>")
            parts.append("</table>")
            last = run["rounds"][-1]["budgets"]
            if last:
                parts.append("<p>Budgets as reported in the last round: " + "; ".join(
                    f"{_e(a)}: {_budget(b)}" for a, b in sorted(last.items())) + "</p>")
            if i == 0:
                pts = [(r["round"], r["roc_auc"], None, None) for r in run["rounds"]
                       if isinstance(r["roc_auc"], int | float)]
                parts.append(line_chart("Pooled ROC-AUC per round",
                                        [{"name": run["folder"], "points": pts}],
                                        x_label="round", y_label="ROC-AUC"))
        if run["release"]:
            parts.append(f"<p>Released: {_e(run['release']['folder'])} at "
                         f"{_e(run['release']['released_at'])}</p>")
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta http-equiv='refresh' content='{REFRESH_S}'>"
            f"<title>heroes-fl consortium console</title><style>{CSS}</style></head><body>"
            + "".join(parts) + "</body></html>")


def serve(root: Path, *, port: int, bind: str, public_hosts: tuple[str, ...],
          token_file: Path | None) -> int:
    from federation.errors import ConfigError
    from federation.localweb import Access, as_json, make_server, read_token, serve_forever
    from server.deploy import ConsortiumHome

    ConsortiumHome(root).settings()  # not a consortium folder: refused before listening
    if bind not in ("127.0.0.1", "localhost") and token_file is None:
        raise ConfigError([f"--bind {bind} exposes the console beyond this machine, and it "
                           "shows every agency's state. Fix: --token-file FILE (a login), "
                           "behind the operator's TLS reverse proxy, or keep 127.0.0.1"],
                          source="consortium console")
    access = Access(public_hosts=public_hosts,
                    token=read_token(token_file) if token_file is not None else None,
                    secure_cookie=bool(public_hosts))
    from server import run_actions

    actions = access.token is not None
    server = make_server({
        "/": ("text/html; charset=utf-8", lambda: page(root, actions=actions)),
        "/api/status": ("application/json", lambda: as_json(status_api(root))),
        "/api/runs": ("application/json", lambda: as_json(runs_api(root))),
        "/api/configs": ("application/json", lambda: as_json(configs_api(root))),
        "/metrics": ("text/plain; version=0.0.4; charset=utf-8", lambda: metrics(root)),
    }, bind=bind, port=port, access=access, actions={
        "/actions/start": lambda f, who: run_actions.start(root, f.get("config", ""), who=who),
        "/actions/stop": lambda f, who: run_actions.stop(root, f.get("folder", ""), who=who),
        "/actions/resume": lambda f, who: run_actions.resume(root, f.get("folder", ""),
                                                             who=who),
    })
    login = "; login with the token" if access.token else ""
    return serve_forever(server, f"consortium console: http://{bind}:{server.server_port}/ "
                         f"(JSON under /api/status and /api/runs, Prometheus at /metrics"
                         f"{login}); Ctrl-C stops it")
