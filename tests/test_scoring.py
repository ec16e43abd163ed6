"""`heroes agency score`: signature checks first, real adverts from generated files, exact
explanations, the consultation log, and (slow) explanations against the generator's
ground-truth rationale spans on a real federated DP model."""

import csv
import json
import os
import subprocess
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.score import (
    CONSULTATION_LOG,
    LEAD_NOT_DECISION,
    read_adverts,
    score_file,
    token_contributions,
    top_phrases,
)
from federation.bundle import verify_bundle
from federation.config import RunSettings
from federation.errors import DataError
from federation.indicators import UNLISTED, categorize
from federation.signing import file_sha256, generate_signing_key, load_public_key
from federation.tasks import get_task
from server.release import release_run
from server.server_app import write_outputs
from server.strategy import RunLog
from simulation.generator import generate_federation, load_preset
from tests._heroes import HEROES
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
FLAT = {"task.name": "advert-risk", "task.num_buckets": 1024, "privacy.target_epsilon": 3.0,
        "privacy.target_delta": 1e-5}
TASK = get_task("advert-risk", {"num_buckets": 1024})
FEATURIZER = TASK.featurizer  # type: ignore[attr-defined]
RNG_WEIGHTS = np.random.default_rng(0).normal(size=1024)


@pytest.fixture(scope="module")
def adverts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated adverts (three agencies, scaled down): one CSV, one JSONL export."""
    from dataclasses import replace

    out = tmp_path_factory.mktemp("fed")
    preset = load_preset(ROOT / "configs" / "federation" / "three_agency.yaml")
    generate_federation(replace(preset, scale=0.05), out, seed=3)
    return out


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A signed bundle of a linear model with random (nonzero) weights; and its keys."""
    tmp = tmp_path_factory.mktemp("rel")
    generate_signing_key(tmp / "c.key", tmp / "c.pub")
    model = TASK.build_model()
    with torch.no_grad():
        model.net.weight.copy_(torch.from_numpy(RNG_WEIGHTS[None, :]))  # type: ignore[union-attr,operator]
        model.net.bias.fill_(-1.0)  # type: ignore[union-attr,operator]
    write_outputs(tmp / "run", RunSettings.from_flat(FLAT), model.state_dict(), RunLog(), 0.0)
    bundle = release_run(tmp / "run", signing_key=tmp / "c.key", out=tmp / "bundle")
    return bundle, tmp / "c.key", tmp / "c.pub"


def _exports(adverts_dir: Path) -> list[Path]:
    return sorted(adverts_dir.glob("agencies/*/adverts_test.*"))


def test_explanation_shares_add_up_to_the_models_logit(adverts_dir: Path,
                                                      released: tuple[Path, Path, Path]) -> None:
    bundle = verify_bundle(load_public_key(released[2]), released[0])
    task, model = bundle.load_model()
    texts = [t for p in _exports(adverts_dir) for t in read_adverts(p).texts][:300]
    with torch.no_grad():
        logits = model(torch.from_numpy(task.featurize(texts).dense())).numpy()
    for text, logit in zip(texts, logits, strict=True):
        toks, spans, per_token = token_contributions(FEATURIZER, RNG_WEIGHTS, text)
        assert per_token.sum() - 1.0 == pytest.approx(float(logit), abs=1e-4)
        for tok, span in zip(toks, spans, strict=True):  # spans point at the token's text
            assert span is not None and text[span[0]:span[1]].lower() == tok
        phrases = top_phrases(text, toks, spans, per_token)
        assert [p.contribution for p in phrases] == sorted(
            (p.contribution for p in phrases), reverse=True)
        assert all(p.contribution > 0 for p in phrases)
        for p in phrases:
            assert p.start is not None and text[p.start:p.end] == p.text


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=1, max_size=200))
def test_shares_add_up_for_any_text(text: str) -> None:
    row = FEATURIZER.transform([text])
    logit = float(np.dot(row.dense()[0].astype(np.float64), RNG_WEIGHTS))
    toks, spans, per_token = token_contributions(FEATURIZER, RNG_WEIGHTS, text)
    assert per_token.sum() == pytest.approx(logit, abs=1e-4)
    for tok, span in zip(toks, spans, strict=True):  # offsets, when shown, cover the token
        if span is not None:
            assert tok in unicodedata.normalize("NFKC", text[span[0]:span[1]]).lower()


def test_csv_jsonl_and_parquet_read_alike(tmp_path: Path, adverts_dir: Path) -> None:
    src = read_adverts(_exports(adverts_dir)[0])
    rows = [{"advert_id": i, "text": t} for i, t in zip(src.ids, src.texts, strict=True)]
    rows.append({"advert_id": "", "text": "no id"})
    rows.append({"advert_id": src.ids[0], "text": "repeated id"})
    with (tmp_path / "a.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["advert_id", "text"])
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in ("a.csv", "a.jsonl", "a.parquet"):
        got = read_adverts(tmp_path / name)
        assert (got.ids, got.texts) == (src.ids, src.texts), name
        assert got.set_aside == {"missing advert_id": 1, "duplicate advert_id": 1}
    (tmp_path / "b.csv").write_text("id,body\n1,x\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['advert_id', 'text'\]"):
        read_adverts(tmp_path / "b.csv")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_adverts(tmp_path / "c.txt")


def test_scoring_logs_every_consultation(tmp_path: Path, adverts_dir: Path,
                                         released: tuple[Path, Path, Path]) -> None:
    export = _exports(adverts_dir)[0]
    state = tmp_path / "state"
    reports = [score_file(model=released[0], input_path=export, consortium_key=released[2],
                          purpose=f"case {i}", state_dir=state, analyst="a.analyst",
                          threshold=0.3, out=tmp_path / f"out{i}.jsonl") for i in range(2)]
    results = [json.loads(x) for x in (tmp_path / "out0.jsonl").read_text().splitlines()]
    assert len(results) == len(read_adverts(export).ids)
    version = reports[0].bundle.model_version
    for r in results:
        assert r["model_version"] == version
        assert 0.0 < r["probability"] < 1.0
        assert r["above_threshold"] == (r["probability"] >= 0.3)
        assert len(r["top_phrases"]) <= 3
    log = [json.loads(x) for x in (state / CONSULTATION_LOG).read_text().splitlines()]
    assert [e["seq"] for e in log] == [0, 1]
    assert [e["purpose"] for e in log] == ["case 0", "case 1"]
    assert log[0]["analyst"] == "a.analyst" and log[0]["input_sha256"] == file_sha256(export)
    assert log[0]["adverts_scored"] == len(results) and log[0]["model_version"] == version
    import hashlib
    first_line = (state / CONSULTATION_LOG).read_text().splitlines()[0]
    assert log[1]["prev_sha256"] == hashlib.sha256(first_line.encode()).hexdigest()


def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEROES, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=DEADLINE_S, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_cli_refuses_tampered_foreign_and_unsigned_bundles(
        tmp_path: Path, adverts_dir: Path, released: tuple[Path, Path, Path]) -> None:
    import shutil

    export = _exports(adverts_dir)[0]
    generate_signing_key(tmp_path / "o.key", tmp_path / "o.pub")
    tampered = tmp_path / "tampered"
    shutil.copytree(released[0], tampered)
    data = bytearray((tampered / "model.pt").read_bytes())
    data[-100] ^= 0x01
    (tampered / "model.pt").write_bytes(bytes(data))
    unsigned = tmp_path / "unsigned"
    shutil.copytree(released[0], unsigned)
    (unsigned / "model_card.json.sig").unlink()
    cases = [(tampered, released[2], "modified after signing"),
             (released[0], tmp_path / "o.pub", "not by the trusted key"),
             (unsigned, released[2], "unsigned")]
    for bundle, key, needle in cases:
        proc = _cli(["agency", "score", "--model", str(bundle), "--input", str(export),
                     "--consortium-key", str(key), "--purpose", "test",
                     "--dir", str(tmp_path / "state")])
        assert proc.returncode == 2, proc.stdout
        assert needle in proc.stderr
        assert not (tmp_path / "state" / CONSULTATION_LOG).exists()  # nothing was scored
    ok = _cli(["agency", "score", "--model", str(released[0]), "--input", str(export),
               "--consortium-key", str(released[2]), "--purpose", "test", "--out",
               str(tmp_path / "s.csv"), "--dir", str(tmp_path / "state")])
    assert ok.returncode == 0, ok.stderr
    assert LEAD_NOT_DECISION in ok.stdout
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert header.startswith("advert_id,row,score,probability")


def test_lexicon_places_domain_phrases_and_admits_what_it_cannot() -> None:
    assert categorize("bring your passport") == "document_retention"
    assert categorize("fotos 100% reales") == "trust_claims"
    assert categorize("disponible 24h, solo WhatsApp") == "availability_control"
    assert categorize("registration fee") == "recruitment_fee"
    assert categorize("massage and dinner") == UNLISTED


@pytest.mark.slow
def test_explanations_point_at_rationales_more_often_than_chance(
        tmp_path: Path, quick_run: Path) -> None:
    """A real federated DP model (three agencies, two rounds), released and used."""
    import shutil

    from federation.signing import load_public_key as load_pub
    from simulation.explain_eval import rationale_hit_rate

    # the session's shared quick run (tests/conftest.py QUICK_RUN); the release is
    # written into the run folder, so into a copy of it
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    generate_signing_key(tmp_path / "c.key", tmp_path / "c.pub")
    rel = _cli(["consortium", "release", str(run), "--signing-key", str(tmp_path / "c.key")])
    assert rel.returncode == 0, rel.stderr
    card = json.loads((run / "release" / "model_card.json").read_text())
    assert len(card["agencies"]) == 3
    target = json.loads((run / "metrics.json").read_text())["privacy"]["target_epsilon"]
    for a in card["agencies"]:
        assert a["epsilon"] is not None and 0 < a["epsilon"] <= target + 1e-9
        assert a["delta"] == 1e-5 and a["epsilon"] == pytest.approx(a["ledger_epsilon"])
    bundle = verify_bundle(load_pub(tmp_path / "c.pub"), run / "release")
    result = rationale_hit_rate(bundle, run / "data")
    n = result["adverts_evaluated"]
    assert n > 300
    p0 = result["chance_hit_rate"]
    se = (p0 * (1 - p0) / n) ** 0.5
    assert result["top_phrase_hit_rate"] > p0 + 3 * se, result


def test_platt_fit_recovers_a_known_logistic_link() -> None:
    from clients.calibration import fit_platt

    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=40_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.6 * z - 2.0)))).astype(float)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.6, abs=0.03) and b == pytest.approx(-2.0, abs=0.05)
    # First-order optimality on Platt's smoothed targets.
    pos, neg = y.sum(), y.size - y.sum()
    t = np.where(y > 0.5, (pos + 1) / (pos + 2), 1 / (neg + 2))
    p = 1 / (1 + np.exp(-(a * z + b)))
    assert abs(np.sum(p - t)) < 1e-6 * y.size and abs(np.sum((p - t) * z)) < 1e-6 * y.size


def test_agency_calibration_is_fitted_once_kept_and_used(
        tmp_path: Path, adverts_dir: Path, released: tuple[Path, Path, Path]) -> None:
    from clients.calibration import load as load_calibration

    agency_dir = _exports(adverts_dir)[0].parent
    state = tmp_path / "state"
    kwargs = {"model": released[0], "input_path": _exports(adverts_dir)[0],
              "consortium_key": released[2], "purpose": "p", "state_dir": state}
    plain = score_file(**kwargs, out=tmp_path / "a.jsonl")  # type: ignore[arg-type]
    assert plain.calibration.method == "none"
    fitted = score_file(**kwargs, out=tmp_path / "b.jsonl",  # type: ignore[arg-type]
                        calibrate_with=agency_dir)
    cal = load_calibration(state, fitted.bundle.model_version)
    assert cal.method == "platt" and cal.examples > 0 and "training split" in cal.source
    again = score_file(**kwargs, out=tmp_path / "c.jsonl")  # type: ignore[arg-type]
    assert again.calibration == cal
    for before, after in zip(plain.scored, again.scored, strict=True):
        expect = 1 / (1 + np.exp(-(cal.a * before.score + cal.b)))
        assert after.probability == pytest.approx(expect, rel=1e-9)
    log = [json.loads(x) for x in (state / CONSULTATION_LOG).read_text().splitlines()]
    assert log[0]["calibration"].startswith("none") and "Platt" in log[2]["calibration"]
