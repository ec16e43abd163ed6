"""`heroes consortium release` on an aggregator output folder written by the real ServerApp
writer: the bundle, its card, and the refusals of scoring's verifier on tampered bundles."""

import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from federation.appsign import manifest_digest
from federation.bundle import verify_bundle
from federation.config import RunSettings
from federation.errors import DeploymentError, SignatureError
from federation.protocol import Status
from federation.signing import generate_signing_key, key_fingerprint, load_public_key
from federation.tasks import get_task
from server.release import release_run
from server.server_app import write_outputs
from server.strategy import NodeOutcome, RunLog
from tests._heroes import HEROES
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
FLAT = {"task.name": "advert-risk", "task.num_buckets": 64, "privacy.target_epsilon": 3.0,
        "privacy.target_delta": 1e-5, "strategy.num_rounds": 2}


def _server_output(out: Path) -> Path:
    """An aggregator output folder (rounds only, no per-agency table), via write_outputs."""
    settings = RunSettings.from_flat(FLAT)
    torch.manual_seed(0)
    model = get_task(settings.task_name, settings.task_params).build_model()
    run_log = RunLog()
    for rnd in (1, 2):
        rec = run_log.round(rnd)
        for i, name in enumerate(("es-police", "uk-ngo")):
            rec.train.append(NodeOutcome(i, name, Status.OK, metrics={
                "num-examples": 100.0 * (i + 1), "epsilon": 1.5 * rnd + i, "delta": 1e-5,
                "run_epsilon": 1.5 * rnd, "noise_multiplier": 1.1, "sample_rate": 0.05,
                "steps": 40.0}))
            rec.evaluate.append(NodeOutcome(i, name, Status.OK, metrics={
                "num-examples": 50.0, "roc_auc": 0.6 + 0.1 * i}))
        rec.evaluate_aggregate = {"roc_auc": 0.65, "loss": float("nan")}
    write_outputs(out, settings, model.state_dict(), run_log, wall_s=1.0)
    return out


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_signing_key(tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub")
    return tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub"


def test_release_of_an_aggregator_output(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    run = _server_output(tmp_path / "server")
    bundle = release_run(run, signing_key=keys[0], out=tmp_path / "bundle")
    verified = verify_bundle(load_public_key(keys[1]), bundle)
    card = verified.card
    assert verified.signer == key_fingerprint(load_public_key(keys[1]))
    assert card["task"]["name"] == "advert-risk"
    assert card["versions"]["data_schema"] == "advert-export/1"
    assert card["versions"]["app_bundle_sha256"] == "unknown"
    # Each agency's epsilon is its last reported cumulative value, with delta and unit.
    eps = {a["agency"]: (a["epsilon"], a["delta"], a["epsilon_unit"]) for a in card["agencies"]}
    assert eps["es-police"][:2] == (3.0, 1e-5) and eps["uk-ngo"][:2] == (4.0, 1e-5)
    assert "one advert record" in eps["uk-ngo"][2]
    assert card["metrics"]["worst_agency"] == {"agency": "es-police", "local_roc_auc": 0.6}
    assert card["metrics"]["federated_evaluation_last_round"]["loss"] is None  # NaN -> null
    assert card["training"]["rounds_completed"] == 2
    md = (bundle / "model_card.md").read_text()
    assert card["model_version"] in md and "es-police" in md
    _, model = verified.load_model()
    saved = torch.load(run / "model.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k])


def test_release_never_overwrites_and_needs_a_finished_run(
        tmp_path: Path, keys: tuple[Path, Path]) -> None:
    run = _server_output(tmp_path / "server")
    release_run(run, signing_key=keys[0], out=tmp_path / "bundle")
    with pytest.raises(DeploymentError, match="already exists"):
        release_run(run, signing_key=keys[0], out=tmp_path / "bundle")
    (run / "model.pt").unlink()
    with pytest.raises(DeploymentError, match=r"not a finished run.*model\.pt is missing"):
        release_run(run, signing_key=keys[0], out=tmp_path / "b2")


@pytest.mark.parametrize("target", ["model.pt", "model_card.json", "model_card.md"])
def test_one_flipped_byte_anywhere_is_refused(tmp_path: Path, keys: tuple[Path, Path],
                                              target: str) -> None:
    bundle = release_run(_server_output(tmp_path / "server"), signing_key=keys[0],
                         out=tmp_path / "bundle")
    data = bytearray((bundle / target).read_bytes())
    data[len(data) // 2] ^= 0x04
    (bundle / target).write_bytes(bytes(data))
    with pytest.raises(SignatureError, match=r"modified after signing|does not verify"):
        verify_bundle(load_public_key(keys[1]), bundle)


def test_other_key_and_unsigned_are_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = release_run(_server_output(tmp_path / "server"), signing_key=keys[0],
                         out=tmp_path / "bundle")
    generate_signing_key(tmp_path / "other.key", tmp_path / "other.pub")
    with pytest.raises(SignatureError, match=r"signed by key sha256:.*not by the trusted key"):
        verify_bundle(load_public_key(tmp_path / "other.pub"), bundle)
    unsigned = tmp_path / "unsigned"
    shutil.copytree(bundle, unsigned)
    (unsigned / "model_card.json.sig").unlink()
    with pytest.raises(SignatureError, match="unsigned"):
        verify_bundle(load_public_key(keys[1]), unsigned)


def _fab(path: Path, code: bytes) -> Path:
    """A minimal Flower app bundle: files plus .info/CONTENT."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("app.py", code)
        z.writestr(".info/CONTENT",
                   f"app.py,{hashlib.sha256(code).hexdigest()},{len(code) * 8}\n")
    return path


def test_release_records_the_bundle_train_kept(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """`consortium train` keeps the submitted app.fab and its digest in the run folder; a
    release records that digest without being told, refuses an app.fab swapped since, and
    falls back to the recorded digest when the file is gone."""
    run = _server_output(tmp_path / "server")
    fab = _fab(run / "app.fab", b"print('submitted')\n")
    (run / "app-bundle.json").write_text(json.dumps(
        {"manifest_sha256": manifest_digest(fab.read_bytes())}), encoding="utf-8")
    card = verify_bundle(load_public_key(keys[1]),
                         release_run(run, signing_key=keys[0], out=tmp_path / "r1")).card
    assert card["versions"]["app_bundle_sha256"] == manifest_digest(fab.read_bytes())
    _fab(run / "app.fab", b"print('swapped')\n")
    with pytest.raises(DeploymentError, match="is not the bundle this run submitted"):
        release_run(run, signing_key=keys[0], out=tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
    (run / "app.fab").unlink()
    card = verify_bundle(load_public_key(keys[1]),
                         release_run(run, signing_key=keys[0], out=tmp_path / "r3")).card
    assert card["versions"]["app_bundle_sha256"] == manifest_digest(
        _fab(tmp_path / "again.fab", b"print('submitted')\n").read_bytes())


def test_cli_release(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    run = _server_output(tmp_path / "server")
    fab = tmp_path / "app.fab"  # a minimal Flower app bundle: files plus .info/CONTENT
    code = b"print('hello')\n"
    with zipfile.ZipFile(fab, "w") as z:
        z.writestr("app.py", code)
        z.writestr(".info/CONTENT",
                   f"app.py,{hashlib.sha256(code).hexdigest()},{len(code) * 8}\n")
    proc = subprocess.run(
        [*HEROES, "consortium", "release", str(run),
         "--signing-key", str(keys[0]), "--out", str(tmp_path / "rel"), "--app-bundle", str(fab)],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((tmp_path / "rel" / "model_card.json").read_text())

    assert card["versions"]["app_bundle_sha256"] == manifest_digest(fab.read_bytes())
    proc = subprocess.run(
        [*HEROES, "consortium", "release", str(tmp_path / "none"),
         "--signing-key", str(keys[0])],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    assert proc.returncode == 2 and "not a finished run" in proc.stderr
