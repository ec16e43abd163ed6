"""``heroes agency console``: the node's own page, on this machine only.

What the agency's IT team and data-protection officer look at: the node's health as
monitoring sees it (the findings of ``agency status``), the privacy ledger with the
cumulative epsilon after every release as a plot (with its delta and unit), the egress
receipts and whether their chain verifies, the approvals (roster members, bundles), and the
consultations of ``agency score``. The page refreshes itself every 10 s (no scripts), and
every figure on it comes from the JSON API beside it (``/api/status``, ``/api/ledger``,
``/api/receipts``), which reads the state folder on each request.

Local only, by construction: it binds 127.0.0.1 and nothing else, answers only requests
whose Host header names 127.0.0.1 or localhost at its own port (a web page elsewhere
cannot reach it through DNS rebinding), sends a Content-Security-Policy that allows no
script, no frame and nothing from elsewhere, and never caches. It reads; it writes nothing.
federation/localweb.py serves it (the standard library's threading HTTP server, hardened;
shared with the consortium console).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from federation.errors import HeroesError

REFRESH_S = 10
CSS = """body{font-family:system-ui,sans-serif;margin:20px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:26px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}.critical{color:#b00;font-weight:bold}.warning{color:#a60}
.ok{color:#060}.note{color:#555;font-size:13px}svg.plot{border:1px solid #ddd}"""


def status_api(root: Path) -> dict[str, Any]:
    from clients import agency
    from federation import monitoring

    s = agency.status(root)
    return {**s, "monitoring": monitoring.report(agency.assess(s))}


def ledger_api(root: Path) -> dict[str, Any]:
    from federation.ledger import Ledger, LedgerError, load_policy

    try:
        policy = load_policy(root)
    except LedgerError:
        policy = None
    try:
        with Ledger.open(root, create=False) as ledger:
            report = ledger.report(policy)
    except LedgerError as exc:
        return {"ledger": f"REFUSED: {exc}", "streams": []}
    return {"ledger": "ok", "accountant": policy.accountant if policy else "rdp",
            "streams": report}


def receipts_api(root: Path) -> dict[str, Any]:
    from clients.receipts import trusted_public_key, verify_log

    try:
        count, problems = verify_log(root, trusted_public_key(root))
    except HeroesError as exc:
        return {"verified": False, "entries": 0, "problems": [str(exc)]}
    return {"verified": not problems, "entries": count,
            "problems": [str(p) for p in problems]}


def _e(v: object) -> str:
    return html.escape(str(v))


def _eps(v: object) -> str:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return "n/a"
    return "inf" if math.isinf(v) else f"{v:.3f}"


def page(root: Path) -> str:
    """The console page: every figure from the same functions as the JSON API."""
    from federation.plots import line_chart

    s, ledger, receipts = status_api(root), ledger_api(root), receipts_api(root)
    mon = s["monitoring"]
    parts = [f"<h1>heroes-fl agency console: {_e(s['agency'])}</h1>",
             f"<p class='note'>consortium {_e(s['consortium'])}; this page refreshes every "
             f"{REFRESH_S} s and reads the node's state folder {_e(root)}; it is served to "
             "this machine only.</p>",
             f"<h2>Health: <span class='{mon['level']}' id='level'>{_e(mon['level'].upper())}"
             "</span></h2><table><tr><th>check</th><th>level</th><th>finding</th></tr>"]
    for c in mon["checks"]:
        parts.append(f"<tr><td>{_e(c['check'])}</td><td class='{c['level']}'>"
                     f"{_e(c['level'])}</td><td>{_e(c['text'])}</td></tr>")
    parts.append("</table><h2>Privacy ledger</h2>")
    if ledger["ledger"] != "ok":
        parts.append(f"<p class='critical'>{_e(ledger['ledger'])}</p>")
    series = []
    acc = ledger.get("accountant", "rdp")
    for st in ledger["streams"]:
        eps = st["epsilon"].get(acc)
        parts.append(
            f"<p>task <b>{_e(st['task'])}</b>, dataset <b>{_e(st['dataset'])}</b>: epsilon "
            f"<b class='epsilon' data-dataset='{_e(st['dataset'])}'>{_eps(eps)}</b> ({acc}) at "
            f"delta={st['delta']:g} per {_e(st['unit'])}, over every round of every run; "
            f"budget {_eps(st.get('budget'))}, remaining {_eps(st.get('remaining'))}; "
            f"<span class='releases'>{len(st['releases'])}</span> releases</p>")
        pts = [(i + 1, float(r["cumulative_epsilon"][acc]), None, None)
               for i, r in enumerate(st["releases"])
               if math.isfinite(float(r["cumulative_epsilon"][acc]))]
        series.append({"name": f"{st['dataset']} (delta {st['delta']:g})", "points": pts})
    if series:
        parts.append(line_chart(f"Cumulative epsilon ({acc}) after each release",
                                series, x_label="release", y_label="epsilon", y_floor=0.0))
        parts.append("<table><tr><th>release</th><th>run</th><th>round</th><th>task</th>"
                     "<th>noise multiplier</th><th>status</th><th>cumulative epsilon</th>"
                     "</tr>")
        for st in ledger["streams"]:
            for i, r in enumerate(st["releases"]):
                parts.append(f"<tr><td>{i + 1}</td><td>{_e(r['run_id'])}</td>"
                             f"<td>{_e(r['round'])}</td><td>{_e(r['task'])}</td>"
                             f"<td>{_eps(r['noise_multiplier'])}</td><td>{_e(r['status'])}"
                             f"</td><td>{_eps(r['cumulative_epsilon'][acc])}</td></tr>")
        parts.append("</table>")
    elif ledger["ledger"] == "ok":
        parts.append("<p>No rounds trained yet: no privacy spent.</p>")
    verdict = ("<span class='ok'>the chain verifies</span>" if receipts["verified"] else
               "<span class='critical'>BROKEN</span>")
    parts.append(f"<h2>Egress receipts</h2><p><span id='receipts'>{receipts['entries']}</span>"
                 f" signed receipts of what left this node: {verdict}</p>")
    for p in receipts["problems"][:20]:
        parts.append(f"<p class='critical'>{_e(p)}</p>")
    parts.append(f"<h2>Approvals</h2><p>{_e(s['approvals'])}</p>")
    parts.append(f"<h2>Consultations</h2><p>{_e(_consultations(root))}</p>")
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta http-equiv='refresh' content='{REFRESH_S}'>"
            f"<title>heroes-fl console: {_e(s['agency'])}</title><style>{CSS}</style></head>"
            "<body>" + "".join(parts) + "</body></html>")


#: clients/score.py's CONSULTATION_LOG (that module imports torch; this page does not).
CONSULTATION_LOG = "consultations.jsonl"


def _consultations(root: Path) -> str:
    path = root / CONSULTATION_LOG
    if not path.is_file():
        return "none recorded (`heroes agency score` logs each consultation here)"
    count = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return f"{count} consultations recorded by `heroes agency score` in {path}"


def serve(root: Path, port: int) -> int:
    """Serve the console on 127.0.0.1:``port`` until SIGTERM or Ctrl-C."""
    from clients.agency import AgencyHome
    from federation.localweb import as_json, make_server, serve_forever

    AgencyHome(root).node()  # not a node folder: refused before anything listens
    server = make_server({
        "/": ("text/html; charset=utf-8", lambda: page(root)),
        "/api/status": ("application/json", lambda: as_json(status_api(root))),
        "/api/ledger": ("application/json", lambda: as_json(ledger_api(root))),
        "/api/receipts": ("application/json", lambda: as_json(receipts_api(root))),
    }, port=port)
    return serve_forever(server, f"agency console: http://127.0.0.1:{server.server_port}/ "
                         "(this machine only; JSON under /api/status, /api/ledger, "
                         "/api/receipts); Ctrl-C stops it")
