"""privacy.secure_mode: ChaCha20 noise and sampling, checked statistically and in training."""

from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from federation.config import PrivacySettings, TrainSettings
from federation.privacy import plan_noise
from federation.secure_random import ChaChaRandom, SecurePoissonSampler
from federation.tasks import get_task
from federation.training import evaluate, train_local


def test_gaussian_noise_has_the_right_distribution() -> None:
    z = ChaChaRandom().normal(200_000)
    assert abs(z.mean()) < 0.01
    assert z.std() == pytest.approx(1.0, abs=0.01)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    noise = ChaChaRandom().gaussian_like(torch.zeros(100_000), std=0.7)
    assert float(noise.std()) == pytest.approx(0.7, rel=0.02)
    assert stats.kstest(noise.numpy() / 0.7, "norm").pvalue > 1e-3


def test_noise_cannot_be_reproduced_from_torch_or_numpy_seeds() -> None:
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        draws.append(ChaChaRandom().normal(16))
    assert not np.array_equal(draws[0], draws[1])
    u = ChaChaRandom().uniform(100_000)
    assert u.min() > 0.0 and u.max() < 1.0


def test_poisson_sampler_rate() -> None:
    sampler = SecurePoissonSampler(num_samples=2000, sample_rate=0.05, steps=200)
    sizes = [len(b) for b in sampler]
    assert len(sizes) == 200
    assert np.mean(sizes) == pytest.approx(100, rel=0.05)
    assert all(0 <= i < 2000 for b in SecurePoissonSampler(
        num_samples=2000, sample_rate=0.05, steps=3) for i in b)


def test_secure_mode_trains_and_accounts_like_the_default() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.3).astype(np.float32)
    texts = [("we keep your passport " if yi else "flat near the metro ") + str(i)
             for i, yi in enumerate(y)]
    task = get_task("advert-risk", {"num_buckets": 256})
    x = task.featurize(texts)
    plan = plan_noise(num_records=400, batch_size=32, local_epochs=1, planned_rounds=2,
                      target_epsilon=3.0, target_delta=1e-4, accountant="rdp", where="t")
    privacy = PrivacySettings(target_epsilon=3.0, target_delta=1e-4, secure_mode=True)
    torch.manual_seed(0)
    model = task.build_model()
    history: list[Any] = []
    for _ in range(2):
        res = train_local(model, x, y, train=TrainSettings(batch_size=32, local_epochs=1,
                                                           learning_rate=2.0),
                          privacy=privacy, plan=plan, history=history)
        history = res.history
        assert res.steps == plan.steps_per_round
    assert res.epsilon == pytest.approx(plan.planned_epsilon, rel=1e-9)
    assert evaluate(model, x, y, k=20)["roc_auc"] > 0.9
