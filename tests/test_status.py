"""Monitoring-ready status (issue 17 item 6): `heroes agency status` and `heroes consortium
status` exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the Nagios plugin convention), print
the plugin's one-line summary first, and give every finding with --json. Real folders made
by the CLI itself; the running case is in tests/test_deployment.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from cli._coldstart import make_state
from tests._heroes import HEROES
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]


def heroes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEROES, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=DEADLINE_S, check=False)


def _findings(out: str) -> dict[str, str]:
    report = json.loads(out)["monitoring"]
    return {c["check"]: c["level"] for c in report["checks"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real agency folder with a two-round ledger (never started)."""
    return make_state(ROOT, tmp_path_factory.mktemp("status"))


def _set_budget(state: Path, max_epsilon: float) -> None:
    policy = state / "policy.toml"
    text, n = re.subn(r"(?m)^max_epsilon = .*$", f"max_epsilon = {max_epsilon!r}",
                      policy.read_text(encoding="utf-8"))
    assert n == 1
    policy.write_text(text, encoding="utf-8")


def test_agency_status_follows_the_nagios_convention(trained: Path) -> None:
    r = heroes("agency", "status", "--dir", str(trained), "--json")
    assert r.returncode == 2, r.stderr  # never started: CRITICAL
    s = json.loads(r.stdout)
    assert s["monitoring"]["level"] == "critical" and s["monitoring"]["exit_code"] == 2
    found = _findings(r.stdout)
    assert found["processes"] == "critical" and found["health"] == "critical"
    budget = next(k for k in found if k.startswith("budget advert-risk/"))
    assert found[budget] == "ok" and found["ledger"] == "ok"
    spent = s["datasets"][0]["epsilon"]["rdp"]
    assert 0 < spent < 10
    # under a tenth of the budget left: WARNING on that dataset; none left: CRITICAL
    _set_budget(trained, spent / 0.95)
    assert _findings(heroes("agency", "status", "--dir", str(trained), "--json").stdout)[
        budget] == "warning"
    assert _findings(heroes("agency", "status", "--dir", str(trained), "--json",
                            "--budget-warning", "0.01").stdout)[budget] == "ok"
    _set_budget(trained, spent * 0.9)
    r = heroes("agency", "status", "--dir", str(trained))
    assert r.returncode == 2
    first = r.stdout.splitlines()[0]
    assert first.startswith("HEROES-AGENCY CRITICAL - ") and "budget advert-risk/" in first
    assert "refuses every further round" in first
    _set_budget(trained, 10.0)


def test_agency_status_is_unknown_where_it_cannot_tell(tmp_path: Path, trained: Path) -> None:
    r = heroes("agency", "status", "--dir", str(tmp_path))
    assert r.returncode == 3 and r.stderr.startswith("HEROES-AGENCY UNKNOWN - ")
    assert "not an agency node folder" in r.stderr
    r = heroes("agency", "status", "--dir", str(trained), "--budget-warning", "1.5")
    assert r.returncode == 3 and "--budget-warning" in r.stderr


def test_consortium_status_names_what_is_wrong(tmp_path: Path) -> None:
    cons = tmp_path / "cons"
    r = heroes("consortium", "init", "--dir", str(cons), "--public-address", "127.0.0.1:19092")
    assert r.returncode == 0, r.stderr
    r = heroes("consortium", "status", "--dir", str(cons), "--json")
    assert r.returncode == 2, r.stderr
    s = json.loads(r.stdout)
    found = _findings(r.stdout)
    assert s["processes"] == "never started" and found["processes"] == "critical"
    assert found["tls"] == "ok" and 360 < s["tls"]["days_left"] <= 365
    assert found["roster"] == "warning" and found["agencies"] == "warning"
    # a certificate within the warning window is a WARNING, the rest unchanged
    assert _findings(heroes("consortium", "status", "--dir", str(cons), "--json",
                            "--cert-warning-days", "400").stdout)["tls"] == "warning"
    # a serve that died: its pids are named as not running
    (cons / "aggregator.json").write_text(json.dumps(
        {"pid": 2**22 + 7, "superlink_pid": 2**22 + 8, "gateway_pid": 2**22 + 9}))
    r = heroes("consortium", "status", "--dir", str(cons))
    assert r.returncode == 2
    assert "not running: gateway, serve, superlink" in r.stdout.splitlines()[0]
    r = heroes("consortium", "status", "--dir", str(tmp_path / "none"))
    assert r.returncode == 3 and "not a consortium folder" in r.stderr
