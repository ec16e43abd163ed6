"""The advert task gives the features and metrics it gave before tasks owned their records.

Reference values, pinned once and never recomputed: they were printed by running the
steps below on the code of commit 05fec9f (before issue 14 moved the advert task onto
the record-schema Task interface), with ``federation.training._fresh_generator`` replaced
by a torch generator seeded with 0 (the same replacement this test makes; without it the
shuffling, Poisson sampling and DP noise draw fresh OS randomness on purpose), on the
three-agency preset generated with seed 0. A change here means the advert task's
features or training changed: bump FEATURES_VERSION (features) or explain it (training).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import federation.training as training
from federation.config import PrivacySettings, TrainSettings
from federation.data import AgencyData, load_agency
from federation.privacy import plan_noise
from federation.tasks import get_task
from federation.text import FEATURES_VERSION, SparseRows
from federation.training import evaluate, train_local
from simulation.generator import generate_federation, load_preset

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "federation"

#: sha256 over indptr (<i8), indices (<i8), values (<f4) and the width, see _digest.
FEATURE_DIGESTS = {
    "es-police": ("b2b525e057b7d2888e86196e38e06a16f4c481f9e3b77883c1577579b98605fb",
                  430, 124353),  # CSV export
    "uk-ngo": ("f63d59c66b459492b61603dbff570358d9b31a439d50e648214200c5fb9b8e11",
               236, 67381),  # JSONL export
}
#: train_local (batch 64, learning rate 2, 2 epochs) on es-police, evaluate (k=20) on its
#: test split; "loss" is LocalResult.train_loss.
METRICS = {
    "plain": {"loss": 0.3206639151001381, "steps": 14, "roc_auc": 0.47129629629629627,
              "pr_auc": 0.09305265821668615, "precision_at_20": 0.0, "recall_at_20": 0.0,
              "brier": 0.08653419483114358},
    "fused": {"loss": 0.3380991542597418, "steps": 14, "eps": 2.9955678827626957,
              "roc_auc": 0.5319444444444444, "pr_auc": 0.10256601145184141,
              "precision_at_20": 0.0, "recall_at_20": 0.0, "brier": 0.08818962655318491},
    "hooks": {"loss": 0.33809915526057815, "steps": 14, "eps": 2.9955678827626957,
              "roc_auc": 0.5319444444444444, "pr_auc": 0.10256601145184141,
              "precision_at_20": 0.0, "recall_at_20": 0.0, "brier": 0.08818962663039505},
}


@pytest.fixture(scope="module")
def federation_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reference") / "fed"
    generate_federation(load_preset(CONFIGS / "three_agency.yaml"), root, seed=0)
    return root


@pytest.fixture
def seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the run repeatable: every fresh generator is a real torch generator seeded 0."""

    def fixed() -> torch.Generator:
        gen = torch.Generator()
        gen.manual_seed(0)
        return gen

    monkeypatch.setattr(training, "_fresh_generator", fixed)


def _digest(f: SparseRows) -> str:
    h = hashlib.sha256()
    for a in (f.indptr.astype("<i8"), f.indices.astype("<i8"), f.values.astype("<f4")):
        h.update(a.tobytes())
    h.update(str(f.width).encode())
    return h.hexdigest()


def _train_features(data: AgencyData) -> SparseRows:
    task = get_task("advert-risk", {})
    return task.featurize_table(data.train, task.rows(data.train))


def test_features_version_is_unchanged() -> None:
    assert FEATURES_VERSION == 2
    assert get_task("advert-risk", {}).features_version == FEATURES_VERSION


def test_the_table_interface_gives_the_features_of_the_texts(federation_root: Path) -> None:
    """featurize_table is featurize over the table's texts: the callers that moved from
    one to the other (simulation, baselines, the node) see the same rows."""
    data = load_agency(federation_root / "agencies" / "uk-ngo")
    task = get_task("advert-risk", {})
    assert _digest(task.featurize_table(data.test)) == _digest(
        task.featurize(list(data.test.texts)))


@pytest.mark.parametrize("agency", sorted(FEATURE_DIGESTS))
def test_advert_features_are_the_pinned_ones(federation_root: Path, agency: str) -> None:
    features = _train_features(load_agency(federation_root / "agencies" / agency))
    digest, rows, nnz = FEATURE_DIGESTS[agency]
    assert (len(features), int(features.indptr[-1])) == (rows, nnz)
    assert _digest(features) == digest


@pytest.mark.parametrize("mode", sorted(METRICS))
def test_advert_training_metrics_are_the_pinned_ones(
    federation_root: Path, seeded: None, mode: str
) -> None:
    data = load_agency(federation_root / "agencies" / "es-police")
    task = get_task("advert-risk", {})
    x, y = task.featurize_table(data.train), data.train.positive
    xt, yt = task.featurize_table(data.test), data.test.positive
    train = TrainSettings(batch_size=64, learning_rate=2.0, local_epochs=2)
    torch.manual_seed(0)
    model = task.build_model()
    if mode == "plain":
        res = train_local(model, x, y, train=train, privacy=PrivacySettings(enabled=False),
                          plan=None)
        got: dict[str, float] = {}
    else:
        privacy = PrivacySettings(target_epsilon=3.0, target_delta=1e-5)
        plan = plan_noise(num_records=len(x), batch_size=64, local_epochs=2, planned_rounds=1,
                          target_epsilon=3.0, target_delta=1e-5, accountant="rdp", where="t")
        res = train_local(model, x, y, train=train, privacy=privacy, plan=plan, clipping=mode)
        got = {"eps": res.epsilon}
    got.update({"loss": res.train_loss, "steps": res.steps, **evaluate(model, xt, yt, k=20)})
    assert got.keys() == METRICS[mode].keys()
    for key, want in METRICS[mode].items():
        # 1e-6, not 1e-9: float32 sums differ in the last bits between CPUs and BLAS
        # thread counts (1.4e-9 seen on the loss); a real change moves them far more
        assert got[key] == pytest.approx(want, abs=1e-6, rel=0), key
