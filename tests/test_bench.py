"""`heroes bench` runs and writes comparable JSON (figures are not asserted: the machine is
shared and noisy; ratios are read by people and compared between commits)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests._heroes import HEROES
from tests._wait import RUN_DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [*HEROES, "bench", "--quick", "--skip", "scale",
         "--skip", "rounds", "--skip", "secagg", "--skip", "trust", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_DEADLINE_S, check=False,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["step"]["ratio_dp_over_non_private"] > 0
    assert report["local"]["dp_records_per_second"] > 0
    assert report["ledger"]["releases"] == 200
    assert report["ledger"]["epsilon_rdp"] > 0
    assert "DP/non-private" in proc.stdout
