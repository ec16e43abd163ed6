"""`heroes agency console` (issue 17 items 4 and 5, the agency's side): a real console
process on 127.0.0.1 over a real node folder; its JSON API against `agency status`, the
Host check against DNS rebinding, and the page in real headless Chromium (Debian's
package): the figures on the page are the API's, the epsilon plot is drawn, a release
written while it runs appears at the next load, and the screenshot is not blank."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cli._coldstart import make_state
from tests._heroes import HEROES
from tests._wait import DEADLINE_S, wait_for
from tests.test_research import _png_pixels

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, host: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
    try:
        conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{port}"})
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def _up(port: int) -> bool:
    try:
        return _get(port, "/api/status")[0] == 200
    except OSError:
        return False


def _chromium(url: str, png: Path, profile: Path) -> str:
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: `make browser` installs Debian's chromium package"
    common = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", f"--user-data-dir={profile}"]
    shot = subprocess.run([*common, f"--screenshot={png}", "--window-size=1100,1600", url],
                          capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    assert png.is_file(), shot.stderr[-2000:]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=DEADLINE_S, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


@pytest.fixture()
def console(tmp_path: Path) -> Any:
    (tmp_path / "node").mkdir()
    state = make_state(ROOT, tmp_path / "node")
    port = _free_port()
    out = tmp_path / "console.out"
    with out.open("w") as log:
        proc = subprocess.Popen([*HEROES, "agency", "console", "--dir", str(state), "--port",
                                 str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _up(port) or proc.poll() is not None, "the console to answer",
                 seen=out.read_text)
        assert proc.poll() is None, out.read_text()
        yield state, port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_api_and_the_page_agree_in_a_real_browser(console: Any, tmp_path: Path) -> None:
    state, port = console
    code, body, headers = _get(port, "/api/ledger")
    assert code == 200 and headers["cache-control"] == "no-store"
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
    stream = json.loads(body)["streams"][0]
    eps = stream["epsilon"]["rdp"]
    status = subprocess.run([*HEROES, "agency", "status", "--dir", str(state), "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S,
                            check=False)
    assert json.loads(status.stdout)["datasets"][0]["epsilon"]["rdp"] == pytest.approx(eps)
    api_status = json.loads(_get(port, "/api/status")[1])
    assert api_status["monitoring"]["level"] == "critical"  # the node itself never started
    receipts = json.loads(_get(port, "/api/receipts")[1])
    assert receipts == {"verified": True, "entries": 20, "problems": []}
    # a page elsewhere resolving its own name to 127.0.0.1 is refused
    assert _get(port, "/api/ledger", host="evil.example:80")[0] == 403
    assert _get(port, "/nothing")[0] == 404

    url = f"http://127.0.0.1:{port}/"
    dom = _chromium(url, tmp_path / "a.png", tmp_path / "profile")
    shown = re.search(r"<b class=\"epsilon\"[^>]*>([\d.]+)</b>", dom)
    assert shown is not None and shown.group(1) == f"{eps:.3f}"
    assert re.search(r"<span class=\"releases\">2</span>", dom)
    assert '<span id="receipts">20</span>' in dom and "the chain verifies" in dom
    assert re.search(r'<svg class="plot" data-kind="line"', dom)
    points = re.findall(r'<g id="series-0">\s*<path d="([^"]+)"', dom)
    assert points and len(re.findall(r"[ML] ", points[0])) == 2  # one vertex per release
    assert "CRITICAL" in dom and "es-police" in dom
    pixels = _png_pixels(tmp_path / "a.png")
    colours = {tuple(p) for p in pixels[::7, ::7, :3].reshape(-1, 3).tolist()}
    assert len(colours) > 30, len(colours)

    # live: a release recorded while the console runs shows at the next load
    from federation.ledger import Ledger, Release
    from federation.policy import load_policy

    policy = load_policy(state)
    release = Release(dataset="es-police/export", fingerprint="ab" * 32, run_id="live",
                      round=3, task="advert-risk", model="advert-risk:AdvertRiskModel",
                      noise_multiplier=1.0, sample_rate=0.05, steps=40, max_grad_norm=0.5,
                      delta=policy.delta, accountant=policy.accountant)
    with Ledger.open(state) as ledger:
        seq, _ = ledger.reserve(replace(release), policy)
        ledger.complete(seq)
    after = json.loads(_get(port, "/api/ledger")[1])["streams"][0]
    assert len(after["releases"]) == 3 and after["epsilon"]["rdp"] > eps
    dom = _chromium(url, tmp_path / "b.png", tmp_path / "profile")
    assert re.search(r"<span class=\"releases\">3</span>", dom)
    shown = re.search(r"<b class=\"epsilon\"[^>]*>([\d.]+)</b>", dom)
    assert shown is not None and shown.group(1) == f"{after['epsilon']['rdp']:.3f}"
    keep = ROOT / "outputs" / "report-screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "b.png", keep / "agency-console.png")


def test_the_console_listens_on_loopback_only(console: Any) -> None:
    _, port = console
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)
                 if a[0] == socket.AF_INET} - {"127.0.0.1"}
    for address in addresses:
        with socket.socket() as s:
            s.settimeout(5)
            assert s.connect_ex((address, port)) != 0, address
