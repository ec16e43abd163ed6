"""`heroes consortium console` (issue 17 items 3 and 5, read-only part): a real console
process over a real consortium folder (made by `consortium init`) holding a run folder the
ServerApp's own writer made; its JSON API, its Prometheus endpoint (parsed with
prometheus_client's own parser), the login when a token is set, the refusal to listen
beyond loopback without one, and the page in real headless Chromium, live: a progress line
written while it runs shows at the next load."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import stat
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests._heroes import HEROES
from tests._wait import DEADLINE_S, wait_for
from tests.test_agency_console import _chromium, _free_port
from tests.test_release import _server_output

ROOT = Path(__file__).resolve().parents[1]


def _get(port: int, path: str, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
    try:
        conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def _start(cons: Path, tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = _free_port()
    out = tmp / f"console-{port}.out"
    with out.open("w") as log:
        proc = subprocess.Popen([*HEROES, "consortium", "console", "--dir", str(cons),
                                 "--port", str(port), *extra], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            return _get(port, "/login")[0] in (200, 401, 404) or proc.poll() is not None
        except OSError:
            return proc.poll() is not None

    wait_for(up, "the console to answer", seen=out.read_text)
    assert proc.poll() is None, out.read_text()
    return proc, port, out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture()
def cons(tmp_path: Path) -> Path:
    cons = tmp_path / "cons"
    r = subprocess.run([*HEROES, "consortium", "init", "--dir", str(cons), "--public-address",
                        "127.0.0.1:19392"], cwd=ROOT, capture_output=True, text=True,
                       timeout=DEADLINE_S, check=False)
    assert r.returncode == 0, r.stderr
    run = _server_output(cons / "runs" / "20261204T050000Z")
    (run / "run-id").write_text("1108")
    (run / "run.log").write_text(
        "2026-12-04T05:00:00Z run - Using SuperLink: consortium (127.0.0.1:1)\n"
        "heroes 2026-12-04T05:00:05Z run 1108 INFO heroes.server: round 1/2: 2/2 agencies "
        "trained (secure sum)\n")
    return cons


def test_api_metrics_and_page_agree_and_update_live(cons: Path, tmp_path: Path) -> None:
    proc, port, _ = _start(cons, tmp_path)
    try:
        runs = json.loads(_get(port, "/api/runs")[1])["runs"]
        assert [r["folder"] for r in runs] == ["20261204T050000Z"]
        run = runs[0]
        assert run["state"] == "finished" and run["run_id"] == "1108"
        assert [r["round"] for r in run["rounds"]] == [1, 2]
        assert run["rounds"][1]["trained"] == 2 and run["rounds"][1]["roc_auc"] == 0.65
        assert [p["text"] for p in run["progress"]] == ["round 1/2: 2/2 agencies trained "
                                                        "(secure sum)"]
        status = json.loads(_get(port, "/api/status")[1])
        assert status["monitoring"]["level"] == "critical"  # never served
        code, body, headers = _get(port, "/metrics")
        assert code == 200 and headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        level = families["heroes_consortium_monitoring_level"].samples[0].value
        assert level == status["monitoring"]["exit_code"] == 2
        assert families["heroes_consortium_superlink_serving"].samples[0].value == 0
        days = families["heroes_consortium_tls_days_left"].samples[0].value
        assert days == pytest.approx(status["tls"]["days_left"], abs=0.01)
        assert _get(port, "/api/runs", {"Host": "evil.example"})[0] == 403

        url = f"http://127.0.0.1:{port}/"
        dom = _chromium(url, tmp_path / "a.png", tmp_path / "profile")
        assert '<span class="run-state">finished</span>' in dom
        assert '<span class="rounds">2</span>' in dom and "CRITICAL" in dom
        assert re.search(r'<svg class="plot" data-kind="line"', dom)
        assert "round 1/2: 2/2 agencies trained" in dom
        # live: the run log grows while the console runs
        with (cons / "runs" / "20261204T050000Z" / "run.log").open("a") as log:
            log.write("heroes 2026-12-04T05:00:09Z run 1108 INFO heroes.server: round 2/2: "
                      "2/2 agencies trained (secure sum)\n")
        dom = _chromium(url, tmp_path / "b.png", tmp_path / "profile")
        assert "round 2/2: 2/2 agencies trained" in dom
        keep = ROOT / "outputs" / "report-screenshots"
        keep.mkdir(parents=True, exist_ok=True)
        (keep / "consortium-console.png").write_bytes((tmp_path / "b.png").read_bytes())
    finally:
        _stop(proc)


def test_a_token_guards_every_route_and_loopback_is_the_default(cons: Path,
                                                                 tmp_path: Path) -> None:
    r = subprocess.run([*HEROES, "consortium", "console", "--dir", str(cons), "--bind",
                        "0.0.0.0", "--port", "0"], cwd=ROOT, capture_output=True, text=True,
                       timeout=DEADLINE_S, check=False)
    assert r.returncode == 2 and "--token-file" in r.stderr
    token = "t0ken-" + "x" * 26
    (tmp_path / "token").write_text(token + "\n")
    proc, port, _ = _start(cons, tmp_path, "--token-file", str(tmp_path / "token"))
    try:
        for path in ("/api/status", "/api/runs", "/metrics"):
            assert _get(port, path)[0] == 401, path
            assert _get(port, path, {"Authorization": "Bearer wrong"})[0] == 401, path
            assert _get(port, path, {"Authorization": f"Bearer {token}"})[0] == 200, path
        assert _get(port, "/")[0] == 303  # to the login form
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
        try:
            def login(value: str) -> Any:
                conn.request("POST", "/login", body=urllib.parse.urlencode({"token": value}),
                             headers={"Host": f"127.0.0.1:{port}",
                                      "Content-Type": "application/x-www-form-urlencoded"})
                response = conn.getresponse()
                response.read()
                return response

            assert login("wrong").status == 401
            ok = login(token)
            assert ok.status == 303
            cookie = ok.getheader("Set-Cookie")
            assert cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        finally:
            conn.close()
        session = cookie.split(";", 1)[0]
        assert _get(port, "/api/runs", {"Cookie": session})[0] == 200
        assert _get(port, "/api/runs", {"Cookie": "heroes_console=forged"})[0] == 401
    finally:
        _stop(proc)


def _post(port: int, path: str, body: str, headers: dict[str, str]) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
    try:
        conn.request("POST", path, body=body, headers={"Host": f"127.0.0.1:{port}", **headers})
        r = conn.getresponse()
        return r.status, r.read().decode(), r.getheader("Location") or ""
    finally:
        conn.close()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_run_actions_need_the_login_and_a_form_from_the_console(cons: Path,
                                                                 tmp_path: Path) -> None:
    """Start, stop and resume (issue 17 item 3): refused without a login, refused to a form
    posted from another origin (or none), refused with the reason for what cannot be done,
    and a start from a saved configuration really runs `consortium train` (which, with no
    aggregator up, stops with its own error) and is logged."""
    configs = cons / "run-configs"
    configs.mkdir(mode=0o700)
    (configs / "quick.toml").write_text('task = "advert-risk"\nrun_config = '
                                        '"strategy.num_rounds=1"\ndescription = "one round"\n')
    (configs / "broken.toml").write_text("run_config = 3\n")
    proc, port, _ = _start(cons, tmp_path)  # no token: read-only
    try:
        code, text, _ = _post(port, "/actions/start", "config=quick", FORM)
        assert code == 403 and "--token-file" in text
        assert "need a login" in _get(port, "/")[1].decode()
    finally:
        _stop(proc)
    token = "t0ken-" + "y" * 26
    (tmp_path / "token").write_text(token)
    proc, port, _ = _start(cons, tmp_path, "--token-file", str(tmp_path / "token"))
    bearer = {"Authorization": f"Bearer {token}"}
    try:
        saved = json.loads(_get(port, "/api/configs", bearer)[1])
        assert [c["name"] for c in saved["configs"]] == ["quick"]
        assert len(saved["problems"]) == 1 and saved["problems"][0].startswith("broken.toml")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
        conn.request("POST", "/login", body=urllib.parse.urlencode({"token": token}),
                     headers={"Host": f"127.0.0.1:{port}", **FORM})
        session = (conn.getresponse().getheader("Set-Cookie") or "").split(";", 1)[0]
        conn.close()
        assert session.startswith("heroes_console=")
        cookie = {"Cookie": session, **FORM}
        here = {"Origin": f"http://127.0.0.1:{port}"}
        assert _post(port, "/actions/start", "config=quick", FORM)[0] == 401
        assert _post(port, "/actions/start", "config=quick", cookie)[0] == 403  # no Origin
        assert _post(port, "/actions/start", "config=quick",
                     {**cookie, "Origin": "http://evil.example"})[0] == 403
        code, text, _ = _post(port, "/actions/start", json.dumps({"config": "nope"}), bearer)
        assert code == 400 and "no saved configuration named 'nope'" in text and "quick" in text
        finished = "20261204T050000Z"
        code, text, _ = _post(port, "/actions/stop", json.dumps({"folder": finished}), bearer)
        assert code == 400 and "not running (finished)" in text
        code, text, _ = _post(port, "/actions/resume", json.dumps({"folder": finished}), bearer)
        assert code == 400 and "cannot be resumed (finished" in text
        code, text, _ = _post(port, "/actions/stop", json.dumps({"folder": "../etc"}), bearer)
        assert code == 400 and "no run folder" in text
        page = _get(port, "/", {"Cookie": session})[1].decode()
        assert "action='/actions/start'" in page and "one round" in page

        code, _, location = _post(port, "/actions/start", "config=quick", {**cookie, **here})
        assert code == 303 and location == "/"
        runs = sorted(p for p in (cons / "runs").iterdir() if p.name != finished)
        assert len(runs) == 1
        started = runs[0]
        wait_for(lambda: json.loads(_get(port, "/api/runs", bearer)[1])["runs"][0]["state"]
                 == "interrupted", "the started train to end (no aggregator is up)",
                 seen=lambda: (started / "train.out").read_text())
        out = (started / "train.out").read_text()
        assert "consortium serve" in out  # train's own refusal: the aggregator is not up
        logged = (cons / "logs" / "console-actions.log").read_text()
        assert f"login session from 127.0.0.1 start {started.name} config=quick" in logged
        assert stat.S_IMODE((cons / "logs" / "console-actions.log").stat().st_mode) == 0o600
        assert stat.S_IMODE((started / "train.out").stat().st_mode) == 0o600
    finally:
        _stop(proc)
