"""Research tooling: sweeps, baselines, the black-box privacy audit and the HTML report
(the white-box audit: tests/test_audit.py).

Fast tests pin the statistics (t-intervals, Clopper-Pearson, the audit bound) to reference
values and check the skew knob and the canaries. The slow tests run the real command:
a sweep of two epsilons and two seeds with the audit on, the deliberately broken run, the four
baseline arms, and the report opened in a real headless Chromium.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from federation.errors import ConfigError
from federation.tasks import get_task
from simulation.audit import craft_canaries, epsilon_lower_bound
from simulation.generator import apply_skew, generate_federation, preset_from_mapping
from simulation.sweep import t_interval
from tests._heroes import heroes
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
TASK = {"num_buckets": 4096, "hidden": 0, "word_ngrams": 2, "char_min": 3, "char_max": 5,
        "exclude_special_categories": True}


def _preset(**changes: object) -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load(
        (ROOT / "configs/federation/three_agency.yaml").read_text())
    data.update(changes)
    return data


# --------------------------------------------------------------------------- statistics

def test_t_interval_matches_reference_values() -> None:
    # mean 2.5, sd sqrt(5/3); t(0.975, 3) = 3.182446305284263 (standard tables)
    mean, sd, lo, hi = t_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert sd == pytest.approx(math.sqrt(5 / 3))
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert lo == pytest.approx(2.5 - half) and hi == pytest.approx(2.5 + half)
    assert t_interval([0.7]) == (0.7, None, None, None)  # one seed: no interval


def test_audit_bound_with_perfect_separation_is_the_clopper_pearson_value() -> None:
    members, non_members = np.arange(100.0) + 1000, np.arange(100.0)
    out = epsilon_lower_bound(members, non_members, delta=1e-5, confidence=0.95)
    # 200 distinct cut points: alpha split over 201 thresholds and the two bounds. With
    # all 100 members above the cut and none of the others, the one-sided Clopper-Pearson
    # bounds are alpha^(1/n) and 1 - alpha^(1/n).
    alpha = 0.05 / (2 * 201)
    tpr_low, fpr_high = alpha ** (1 / 100), 1 - alpha ** (1 / 100)
    assert out["epsilon_lower_bound"] == pytest.approx(math.log((tpr_low - 1e-5) / fpr_high))
    assert 2.0 < out["epsilon_lower_bound"] < 2.5  # the ceiling of 100 + 100 canaries
    assert (out["tpr"], out["fpr"]) == (1.0, 0.0)


def test_audit_bound_stays_at_zero_when_membership_changes_nothing() -> None:
    # Same distribution for members and non-members (what a perfectly private model
    # gives): the bound exceeds 0 in at most about 5% of seeds by construction.
    bounds = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        bounds.append(epsilon_lower_bound(rng.normal(size=100), rng.normal(size=100),
                                          delta=1e-5, confidence=0.95)["epsilon_lower_bound"])
    assert sum(b > 0 for b in bounds) <= 2, bounds
    assert max(bounds) < 1.0


# --------------------------------------------------------------------------- data knobs

def test_skew_one_leaves_the_generated_data_unchanged(tmp_path: Path) -> None:
    plain = generate_federation(preset_from_mapping(_preset()), tmp_path / "a", seed=3)
    skew1 = generate_federation(preset_from_mapping(_preset(skew=1.0)), tmp_path / "b", seed=3)
    for agency in plain.agencies:
        for name in sorted(p.name for p in (plain.root / "agencies" / agency).iterdir()):
            assert (plain.root / "agencies" / agency / name).read_bytes() == \
                (skew1.root / "agencies" / agency / name).read_bytes(), (agency, name)


def test_skew_moves_label_prevalence_around_the_mean() -> None:
    rates = [a.positive_rate for a in preset_from_mapping(_preset()).agencies]
    mean = sum(rates) / len(rates)
    flat = apply_skew(preset_from_mapping(_preset(skew=0.0)))
    assert [a.positive_rate for a in flat.agencies] == pytest.approx([mean] * len(rates))
    wide = apply_skew(preset_from_mapping(_preset(skew=2.0)))
    assert [a.positive_rate for a in wide.agencies] == pytest.approx(
        [min(0.5, max(0.005, mean + 2 * (r - mean))) for r in rates])
    with pytest.raises(ConfigError, match="skew: got -1"):
        preset_from_mapping(_preset(skew=-1))


def test_canaries_are_unseen_and_never_share_a_bucket(tmp_path: Path) -> None:
    man = generate_federation(preset_from_mapping(_preset()), tmp_path / "d", seed=0)
    from federation.data import load_agency

    texts = [t for a in man.agencies
             for t in load_agency(man.root / "agencies" / a).train.texts]
    task = get_task("advert-risk", TASK)
    canaries = craft_canaries(task, texts, 60, seed=0)
    assert len(set(canaries)) == 60
    assert not set("".join(canaries)) & set("".join(texts))
    feats = task.featurize(canaries)
    buckets = [set(feats.indices[feats.indptr[i]:feats.indptr[i + 1]].tolist())
               for i in range(60)]
    assert all(buckets)
    assert sum(len(b) for b in buckets) == len(set().union(*buckets))
    with pytest.raises(ConfigError, match=r"audit\.canaries=5000"):
        craft_canaries(task, texts, 5000, seed=0)


# --------------------------------------------------------------------------- end to end

TINY = ["federation=three_agency", "federation.scale=0.1", "strategy.num_rounds=2",
        "baseline=false"]


def test_broken_noise_needs_the_audit() -> None:
    proc = heroes(["simulate", *TINY, "audit.break_noise_for_testing=true",
                   "hydra.run.dir=/tmp/heroes-never-used"])
    assert proc.returncode == 2
    assert "audit.break_noise_for_testing=true needs audit.enabled=true" in proc.stderr


def test_baselines_need_dp_and_a_policy_that_allows_the_non_private_arm(tmp_path: Path
                                                                        ) -> None:
    proc = heroes(["simulate", *TINY, "mode=baselines", "privacy=off",
                   "agency_policy.allow_non_private=false", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 2
    # refused before any data: the agencies' own policies forbid the non-private run
    assert "allow_non_private is false" in proc.stderr
    assert "privacy.enabled=false" in proc.stderr
    assert "agency_policy.allow_non_private=true" in proc.stderr
    assert not (tmp_path / "arms").exists()  # stopped before anything trained


def test_sweep_table_names_what_is_missing(tmp_path: Path) -> None:
    proc = heroes(["sweep-table", str(tmp_path)])
    assert proc.returncode == 2
    assert "no run under" in proc.stderr and "metrics.json and config.yaml" in proc.stderr
    proc = heroes(["report", str(tmp_path / "nowhere")])
    assert proc.returncode == 2 and "is not a folder" in proc.stderr


def _png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) without an imaging library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, ch = 8, [], 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            ch = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    raw = zlib.decompress(b"".join(idat))
    stride = width * ch
    prev = bytearray(stride)
    rows = []
    for r in range(height):
        start = r * (stride + 1)
        f = raw[start]
        line = bytearray(raw[start + 1:start + 1 + stride])
        if f == 1:  # Sub
            for i in range(ch, stride):
                line[i] = (line[i] + line[i - ch]) & 0xFF
        elif f == 2:  # Up
            line = bytearray((np.frombuffer(line, np.uint8)
                              + np.frombuffer(prev, np.uint8)).tobytes())
        elif f == 3:  # Average
            for i in range(stride):
                a = line[i - ch] if i >= ch else 0
                line[i] = (line[i] + ((a + prev[i]) >> 1)) & 0xFF
        elif f == 4:  # Paeth
            for i in range(stride):
                a = line[i - ch] if i >= ch else 0
                b = prev[i]
                c = prev[i - ch] if i >= ch else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(rows), np.uint8).reshape(height, width, ch)


def _chromium(html: Path, png: Path, profile: Path) -> str:
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: `make browser` installs Debian's chromium package"
    common = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]
    shot = subprocess.run([*common, f"--screenshot={png}", "--window-size=1200,2000",
                           html.as_uri()], capture_output=True, text=True, timeout=DEADLINE_S,
                          check=False)
    assert png.is_file(), shot.stderr[-2000:]
    dom = subprocess.run([*common, "--dump-dom", html.as_uri()], capture_output=True,
                         text=True, timeout=DEADLINE_S, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def _path_points(d: str) -> list[tuple[float, float]]:
    """The vertices of an SVG path as matplotlib writes it ("M x y L x y ... z")."""
    return [(float(x), float(y)) for x, y in re.findall(r"[ML] (-?[\d.]+) (-?[\d.]+)", d)]


def _check_rendered(dom: str, png: Path) -> None:
    svgs = re.findall(r"<svg[^>]*class=\"plot\"", dom)
    assert len(svgs) >= 6, len(svgs)
    # Lines (federation/plots.py: matplotlib's group "series-I"): every path has at least
    # two points spread over more than 50 units.
    paths = re.findall(r'<g id="series-\d+">\s*<path d="([^"]+)"', dom)
    assert paths
    for d in paths:
        pts = _path_points(d)
        assert len(pts) >= 2
        assert max(x for x, _ in pts) - min(x for x, _ in pts) > 50, d
    # Bars (group "bar-I-J"): rectangles as four-vertex paths
    bars = []
    for d in re.findall(r'<g id="bar-\d+-\d+">\s*<path d="([^"]+)"', dom):
        pts = _path_points(d)
        xs, ys = [x for x, _ in pts], [y for _, y in pts]
        bars.append((max(xs) - min(xs), max(ys) - min(ys)))
    assert len(bars) >= 6 and all(w > 2 for w, _ in bars)
    assert sum(h > 5 for _, h in bars) >= 4
    assert "Privacy-utility" in dom and "Privacy audit" in dom
    pixels = _png_pixels(png)
    assert pixels.shape[:2] == (2000, 1200)
    colours = {tuple(p) for p in pixels[::7, ::7, :3].reshape(-1, 3).tolist()}
    assert len(colours) > 50, len(colours)  # text, axes and coloured series, not a blank page
    white = (pixels[..., :3] > 245).all(axis=-1).mean()
    assert white < 0.97, white


@pytest.mark.slow
def test_sweep_table_audit_and_report(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    # Two points of two seeds: the grouping, the t-intervals and the audit per run. Whether
    # secure aggregation ran where it was on is checked on every run of test_simulation.py;
    # an axis of its own here doubled the slowest test of the suite.
    proc = heroes(["simulate", "-m", *TINY, "privacy.target_epsilon=1,8",
                   "secagg.mode=on", "federation.skew=0.5", "seed=0,1",
                   "audit.enabled=true", "audit.mode=blackbox",
                   f"hydra.sweep.dir={sweep_dir}"], timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    table = heroes(["sweep-table", str(sweep_dir)])
    assert table.returncode == 0, table.stderr[-3000:]
    assert "left out" not in table.stdout  # every run finished
    with (sweep_dir / "sweep.csv").open() as fh:
        points = list(csv.DictReader(fh))
    assert len(points) == 2
    assert {(float(p["target_epsilon"]), p["secagg"]) for p in points} == {
        (1.0, "on"), (8.0, "on")}
    assert {float(p["skew"]) for p in points} == {0.5}
    with (sweep_dir / "runs.csv").open() as fh:
        for run in csv.DictReader(fh):  # secure aggregation really ran where it was on
            assert int(run["secagg_rounds"]) == (2 if run["secagg"] == "on" else 0), run
    import pyarrow.parquet as pq

    parquet = pq.read_table(sweep_dir / "sweep.parquet").to_pylist()
    assert len(parquet) == 2
    for p in parquet:
        assert p["n_runs"] == 2 and p["seeds"] == "0 1"
        lo, mean, hi = (p["global_roc_auc_ci95_low"], p["global_roc_auc_mean"],
                        p["global_roc_auc_ci95_high"])
        assert lo <= mean <= hi and p["global_roc_auc_sd"] >= 0
        assert p["audit_epsilon_lower_bound_n"] == 2
    # The audit never contradicts an honest run's claim.
    runs = sorted(sweep_dir.glob("[0-9]*/metrics.json"))
    assert len(runs) == 4
    for path in runs:
        audit = json.loads(path.read_text())["audit"]
        assert audit["planted"] == 100 and audit["held_out"] == 100
        assert audit["epsilon_lower_bound"] <= audit["claimed_epsilon"], (path, audit)
        assert not audit["caught"] and not audit["break_noise_for_testing"]
        assert audit["claimed_epsilon"] <= json.loads(path.read_text())["privacy"][
            "target_epsilon"] + 1e-6

    # The deliberately broken run (no noise, claiming epsilon 1) is caught.
    broken_dir = tmp_path / "broken"
    broken = heroes(["simulate", *TINY, "privacy.target_epsilon=1", "audit.enabled=true",
                     "audit.mode=blackbox", "audit.break_noise_for_testing=true",
                     f"hydra.run.dir={broken_dir}"])
    assert broken.returncode == 0, broken.stderr[-4000:]
    assert "WARNING: audit.break_noise_for_testing=true" in broken.stderr
    assert "AUDIT FAILED" in broken.stdout
    audit = json.loads((broken_dir / "metrics.json").read_text())["audit"]
    assert audit["break_noise_for_testing"] and audit["caught"]
    assert audit["claimed_epsilon"] == pytest.approx(1.0, abs=0.01)
    assert audit["epsilon_lower_bound"] > audit["claimed_epsilon"]
    assert audit["membership_roc_auc"] > 0.95

    # The report, opened in a real headless Chromium.
    report = heroes(["report", str(sweep_dir)])
    assert report.returncode == 0, report.stderr[-3000:]
    html = sweep_dir / "report.html"
    text = re.sub(r'xmlns(:\w+)?="http://www\.w3\.org/[\w/.]+"', "", html.read_text())
    assert "<script" not in text and "http" not in text  # self-contained: nothing fetched
    # (XML namespace names are identifiers, never fetched)
    png = tmp_path / "report.png"
    dom = _chromium(html, png, tmp_path / "chromium-profile")
    _check_rendered(dom, png)
    keep = ROOT / "outputs" / "report-screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, keep / "sweep-report.png")
    shutil.copyfile(html, keep / "sweep-report.html")


@pytest.mark.slow
def test_baselines_four_arms_on_identical_splits(tmp_path: Path) -> None:
    out = tmp_path / "baselines"
    proc = heroes(["simulate", *TINY, "mode=baselines", "tracking.tensorboard=true",
                   f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    summary = json.loads((out / "metrics.json").read_text())
    arms = summary["baselines"]["arms"]
    assert set(arms) == {"centralised_non_private", "alone_dp", "federated_non_private",
                         "federated_dp"}
    gain = summary["baselines"]["gain"]
    sizes = [g["train_examples"] for g in gain]
    assert sizes == sorted(sizes) and len(gain) == 3  # smallest agencies first
    target = summary["privacy"]["target_epsilon"]
    for g in gain:
        # Alone: the same plan as federating, so the same epsilon at the same delta.
        assert 0.95 * target <= g["alone_epsilon"] <= target + 1e-6
        assert g["alone_delta"] == summary["privacy"]["target_delta"]
        assert g["federated_epsilon"] <= target + 1e-6
        if g["alone_dp_roc_auc"] is not None and g["federated_dp_roc_auc"] is not None:
            assert g["gain_own_test"] == pytest.approx(
                g["federated_dp_roc_auc"] - g["alone_dp_roc_auc"])
        assert g["gain_pooled_test"] == pytest.approx(
            g["federated_dp_pooled_roc_auc"] - g["alone_dp_pooled_roc_auc"])
    # The federated arms ran the real simulation, one with DP and one without (as each
    # agency recorded it; the non-private arm's ledgers now say epsilon infinite).
    from clients import local_metrics
    from federation.ledger import Ledger

    for arm, private in (("federated_dp", True), ("federated_non_private", False)):
        states = sorted((out / "arms" / arm / "agency_state").iterdir())
        assert len(states) == 3
        for state in states:
            trained = [e for e in local_metrics.read(state)
                       if e["kind"] == "train" and e["status"] == "ok"]
            assert len(trained) == 2
            assert all((e["figures"]["noise_multiplier"] > 0) == private for e in trained)
            with Ledger.open(state, create=False) as ledger:
                (item,) = ledger.report(None)
            assert math.isfinite(item["epsilon"]["rdp"]) == private
    assert "gain from federating" in proc.stdout
    # Optional tracking: the same numbers as TensorBoard scalars in the run folder.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    delta = f"{summary['privacy']['target_delta']:g}"
    eps = events.Scalars(f"privacy/max_epsilon_delta_{delta}")
    assert [e.step for e in eps] == [1, 2]
    assert eps[-1].value == pytest.approx(max(a["epsilon"] for a in summary["agencies"]))
    auc = events.Scalars("final/pooled_roc_auc")[0].value
    assert auc == pytest.approx(summary["global"]["roc_auc"], abs=1e-6)
    assert len([t for t in events.Tags()["scalars"] if t.startswith("baselines/gain_")]) == 6
    report = heroes(["report", str(out)])
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Own test split ROC-AUC, smallest agencies first" in (out / "report.html").read_text()
