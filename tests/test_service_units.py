"""The service files `heroes agency service` and `heroes consortium service` write (issue
17 item 2), checked by systemd itself where it is installed: `systemd-analyze verify`
(the unit parses and its command exists) and `systemd-analyze security --offline` (the
exposure score of its sandboxing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from federation.units import KINDS, write_service_files
from tests._heroes import HEROES
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed "
                                   "(Debian: apt-get install systemd)")


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True,
                          timeout=DEADLINE_S, check=False)


@pytest.mark.parametrize("kind", KINDS)
def test_the_cli_writes_a_unit_and_a_logrotate_rule(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "srv" / kind
    state.mkdir(parents=True)
    r = subprocess.run([*HEROES, kind, "service", "--dir", str(state), "--user", "heroes-fl"],
                       cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S,
                       check=False)
    assert r.returncode == 0, r.stderr
    unit = (state / "service" / f"heroes-{kind}.service").read_text()
    for line in ("User=heroes-fl", "ProtectSystem=strict", f"ReadWritePaths={state.resolve()}",
                 "NoNewPrivileges=yes", "Restart=on-failure", "UMask=0077",
                 f" {kind} serve --dir {state.resolve()}"):
        assert line in unit, line
    rule = (state / "service" / f"heroes-{kind}.logrotate").read_text()
    assert f"{state.resolve()}/logs/*.log {{" in rule and "copytruncate" in rule
    r = subprocess.run([*HEROES, kind, "service", "--dir", str(state), "--user", "a b"],
                       cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S,
                       check=False)
    assert r.returncode == 2 and "--user must be a plain user name" in r.stderr


@needs_systemd
@pytest.mark.parametrize("kind", KINDS)
def test_systemd_verifies_the_unit_and_rates_its_sandbox(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    unit, _ = write_service_files(kind, state_dir=state, user="heroes", out=tmp_path / "out")
    r = _analyze("verify", str(unit))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _analyze("security", "--offline=yes", str(unit))
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert score is not None, r.stdout[-2000:] + r.stderr
    assert float(score.group(1)) < 3.0 and score.group(2) == "OK", score.group(0)
    # verify is not vacuous: the same unit with a command that does not exist fails
    broken = tmp_path / "out" / "broken" / unit.name
    broken.parent.mkdir()
    broken.write_text(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/nonexistent/heroes",
                             unit.read_text()))
    r = _analyze("verify", str(broken))
    assert r.returncode != 0 and "/nonexistent/heroes" in r.stdout + r.stderr
