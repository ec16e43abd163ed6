"""Local training with real Opacus on a tiny model: accounting across rounds, learning."""

from typing import Any

import numpy as np
import pytest
import torch

from federation.config import PrivacySettings, TrainSettings
from federation.privacy import plan_noise
from federation.tasks import get_task
from federation.training import evaluate, train_local

RNG = np.random.default_rng(0)
POS = ["fotos 100% reales", "we keep your passport", "new girls every week", "young student"]
NEG = ["new in town", "office job with contract", "flat near the metro", "cheap flights"]


def corpus(n: int) -> tuple[list[str], np.ndarray]:
    y = (RNG.random(n) < 0.3).astype(np.float32)
    texts = [" ".join(RNG.choice(POS if yi else NEG, 2)) + f" ref {i}" for i, yi in enumerate(y)]
    return texts, y


@pytest.fixture(scope="module")
def data() -> tuple[Any, ...]:
    task = get_task("advert-risk", {"num_buckets": 256})
    texts, y = corpus(400)
    return task, task.featurize(texts), y


def test_dp_epsilon_accumulates_and_stays_within_target(data: tuple[Any, ...]) -> None:
    task, x, y = data
    torch.manual_seed(0)
    model = task.build_model()
    privacy = PrivacySettings(target_epsilon=2.0, target_delta=1e-4)
    train = TrainSettings(batch_size=32, learning_rate=1.0, local_epochs=1)
    plan = plan_noise(num_records=400, batch_size=32, local_epochs=1, planned_rounds=3,
                      target_epsilon=2.0, target_delta=1e-4, accountant="rdp", where="t")
    history: list[Any] = []
    eps = []
    for _ in range(3):
        res = train_local(model, x, y, train=train, privacy=privacy, plan=plan,
                          history=history)
        history = res.history
        eps.append(res.epsilon)
        assert res.steps == plan.steps_per_round
    assert eps[0] < eps[1] < eps[2] <= 2.0
    assert eps[2] == pytest.approx(2.0, rel=0.03)
    assert sum(n for _, _, n in history) == 3 * plan.steps_per_round
    assert evaluate(model, x, y, k=20)["roc_auc"] > 0.8


def test_dp_noise_is_fresh_each_run(data: tuple[Any, ...]) -> None:
    task, x, y = data
    privacy = PrivacySettings(target_epsilon=2.0, target_delta=1e-4)
    plan = plan_noise(num_records=400, batch_size=32, local_epochs=1, planned_rounds=1,
                      target_epsilon=2.0, target_delta=1e-4, accountant="rdp", where="t")
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = task.build_model()
        train_local(m, x, y, train=TrainSettings(batch_size=32, local_epochs=1), privacy=privacy,
                    plan=plan)
        outs.append(torch.cat([p.detach().ravel() for p in m.parameters()]))
    assert not torch.equal(outs[0], outs[1])


def test_non_private_training_learns(data: tuple[Any, ...]) -> None:
    task, x, y = data
    torch.manual_seed(0)
    model = task.build_model()
    before = evaluate(model, x, y, k=20)["loss"]
    res = train_local(model, x, y, train=TrainSettings(batch_size=32, local_epochs=3),
                      privacy=PrivacySettings(enabled=False), plan=None)
    assert res.epsilon == 0.0 and res.history == []
    assert evaluate(model, x, y, k=20)["loss"] < before


def test_proximal_term_pulls_towards_the_global_model(data: tuple[Any, ...]) -> None:
    task, x, y = data
    drift = []
    for mu in (0.0, 1.0):
        torch.manual_seed(0)
        m = task.build_model()
        start = torch.cat([p.detach().ravel().clone() for p in m.parameters()])
        train_local(m, x, y, train=TrainSettings(batch_size=32, local_epochs=2, learning_rate=1.0),
                    privacy=PrivacySettings(enabled=False), plan=None, proximal_mu=mu)
        drift.append(float((torch.cat([p.detach().ravel() for p in m.parameters()]) - start)
                           .norm()))
    assert drift[1] < drift[0]
