"""`heroes bench` runs and writes comparable JSON (figures are not asserted: the machine is
shared and noisy; ratios are read by people and compared between commits)."""

import json
import math
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
         "--skip", "rounds", "--skip", "secagg", "--skip", "trust", "--skip", "conversation",
         "--out", str(out)],
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
    local = report["local"]
    for key in ("ratio_non_private_over_dp", "ratio_dp_over_sparse_floor",
                "ratio_stock_opacus_dense_over_dp"):
        assert math.isfinite(local[key]) and local[key] > 0, key
    node = report["node"]
    assert node["agencies"] == 6 and node["ratio_every_message_over_once"] > 0
    features = report["features"]
    assert features["features_version"] >= 3 and features["adverts"] > 0
    if "skipped" not in features:  # a checkout without the baseline commit skips it
        assert features["baseline_features_version"] < features["features_version"]
        assert math.isfinite(features["ratio_now_over_baseline_throughput"])
    # the whole default simulation on both backends (Ray's kept working) and its floor
    backend = report["backend"]
    for arm in ("inprocess", "ray"):
        assert backend[arm]["wall_seconds"] > 0 and 0.5 < backend[arm]["global_roc_auc"] <= 1
    assert backend["ray_startup"]["actors"] >= 1 and backend["ray_startup"]["start_seconds"] > 0
    assert backend["one_process"]["agencies"] == 6 and backend["one_process"]["rounds"] == 2
    for key in ("ratio_inprocess_over_floor", "ratio_ray_over_floor", "ratio_ray_over_inprocess"):
        assert math.isfinite(backend[key]) and backend[key] > 0, key
    assert "the floor" in proc.stdout


@pytest.mark.slow
def test_bench_conversation_section_writes_its_ratios(tmp_path: Path) -> None:
    """The conversation section alone, --quick: featurisation throughput and, for the
    default model and the linear baseline, the three step arms and their ratios (their
    sizes are for people to read; a shared machine makes any bound here a coin flip)."""
    out = tmp_path / "bench.json"
    skips = [a for s in ("step", "local", "rounds", "scale", "backend", "secagg", "trust",
                         "ledger", "score") for a in ("--skip", s)]
    proc = subprocess.run(
        [*HEROES, "bench", "--quick", *skips, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_DEADLINE_S, check=False,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = json.loads(out.read_text())["conversation"]
    fz = section["featurize"]
    assert fz["conversations"] > 0 and fz["messages"] >= fz["conversations"]
    for key in ("conversations_per_second", "messages_per_second"):
        assert math.isfinite(fz[key]) and fz[key] > 0, key
    models = section["models"]
    names = [m["model"] for m in models]  # the task's default model first, whatever it is
    assert names and len(set(names)) == len(names) and names[-1] == "linear", names
    for m in models:
        assert m["parameters"] > 0 and m["batch_size"] > 0
        for key in ("non_private_step_ms", "dp_layers_step_ms", "dp_hooks_step_ms",
                    "ratio_layers_over_non_private", "ratio_hooks_over_layers",
                    "ratio_hooks_over_non_private"):
            assert math.isfinite(m[key]) and m[key] > 0, (m["model"], key)
    assert "layers DP/non-private" in proc.stdout and "hooks/layers" in proc.stdout
