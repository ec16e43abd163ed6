"""DP-SGD as run by train_local's Opacus path: per-record clipping is exact (against a
per-record reference loop) and the noise covers every parameter."""

from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from federation.tasks import get_task
from federation.training import SparseDataset


def _setup(hidden: int) -> tuple[Any, ...]:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(50)]
    texts = [" ".join(rng.choice(words, 12)) for _ in range(64)]
    y = (rng.random(64) < 0.3).astype(np.float32)
    task = get_task("advert-risk", {"num_buckets": 64, "hidden": hidden})
    torch.manual_seed(0)
    return task, SparseDataset(task.featurize(texts), y)


def _reference_clipped_sum(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor,
                           clip: float) -> list[torch.Tensor]:
    """Sum over records of each record's gradient scaled to norm at most ``clip``."""
    crit = torch.nn.BCEWithLogitsLoss(reduction="sum")
    total = [torch.zeros_like(p) for p in model.parameters()]
    for x, y in zip(xs, ys, strict=True):
        model.zero_grad()
        crit(model(x[None]), y[None]).backward()
        grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        norm = torch.sqrt(torch.stack([(g**2).sum() for g in grads]).sum())
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    return total


def test_per_record_clipping_is_exact() -> None:
    for hidden in (0, 8):
        task, data = _setup(hidden)
        model = task.build_model()
        reference_model = task.build_model()
        reference_model.load_state_dict(model.state_dict())
        xs = torch.stack([data[i][0] for i in range(len(data))])
        ys = torch.stack([data[i][1] for i in range(len(data))])
        clip = 0.05  # small enough that most records are clipped
        engine = PrivacyEngine(accountant="rdp")
        loader = DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=len(xs))
        dp_model, opt, _ = engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
            data_loader=loader, noise_multiplier=0.0, max_grad_norm=clip,
            poisson_sampling=False)
        opt.zero_grad()
        torch.nn.BCEWithLogitsLoss()(dp_model(xs), ys).backward()
        opt.pre_step()  # clip and accumulate, no noise (multiplier 0)
        ours = [p.summed_grad for p in model.parameters()]
        ref = _reference_clipped_sum(reference_model, xs, ys, clip)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_noise_reaches_every_parameter() -> None:
    task, data = _setup(8)
    model = task.build_model()
    xs = torch.stack([data[i][0] for i in range(4)])
    ys = torch.stack([data[i][1] for i in range(4)])
    engine = PrivacyEngine(accountant="rdp")
    loader = DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=4)
    dp_model, opt, _ = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    (dp_model(xs) * 0).sum().backward()  # zero data gradient: any change is noise
    opt.step()
    for b, p in zip(before, model.parameters(), strict=True):
        assert bool((p.detach() != b).all()), "a parameter entry received no noise"


def test_fused_clipping_is_exact_and_matches_opacus_hooks() -> None:
    """train_local's fused path (logistic regression): closed-form per-record norms, one
    backward of the clipped loss, inside Opacus' ghost-clipping optimizer with its hooks
    off; the clipped sum equals the per-record reference loop and Opacus' hooks path."""
    from federation.training import fused_clipped_grads, linear_head

    task, data = _setup(0)
    model = task.build_model()
    assert linear_head(model) is not None
    assert linear_head(_setup(8)[0].build_model()) is None
    reference_model = task.build_model()
    reference_model.load_state_dict(model.state_dict())
    with torch.no_grad():  # a non-trivial model, so residuals differ between records
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    reference_model.load_state_dict(model.state_dict())
    xs = torch.stack([data[i][0] for i in range(len(data))])
    ys = torch.stack([data[i][1] for i in range(len(data))])
    for clip in (0.05, 0.5, 50.0):  # mostly clipped, mixed, never clipped
        fresh = task.build_model()
        fresh.load_state_dict(model.state_dict())
        engine = PrivacyEngine(accountant="rdp")
        loader = DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=len(xs))
        dp_model, opt, _, _ = engine.make_private(
            module=fresh, optimizer=torch.optim.SGD(fresh.parameters(), lr=0.0),
            data_loader=loader, criterion=torch.nn.BCEWithLogitsLoss(), noise_multiplier=0.0,
            max_grad_norm=clip, poisson_sampling=False, grad_sample_mode="ghost")
        dp_model.disable_hooks()
        opt.zero_grad()
        head = linear_head(fresh)
        assert head is not None
        with torch.no_grad():
            fused_clipped_grads(head, fresh(xs), xs, ys, clip)
        opt.pre_step()  # accumulate, no noise (multiplier 0)
        ours = [p.summed_grad for p in fresh.parameters()]
        ref = _reference_clipped_sum(reference_model, xs, ys, clip)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_path_trains_and_noises_every_parameter() -> None:
    import math

    from federation.config import PrivacySettings, TrainSettings
    from federation.privacy import NoisePlan
    from federation.training import train_local

    task, data = _setup(0)
    feats = data.features
    labels = data.labels.numpy()
    train = TrainSettings(local_epochs=1, batch_size=16, learning_rate=1.0)
    privacy = PrivacySettings(enabled=True, target_epsilon=3.0, target_delta=1e-3,
                              max_grad_norm=1e-9)  # data gradient clipped to ~0: noise only
    plan = NoisePlan(noise_multiplier=1e8, sample_rate=0.25, batch_size=16,
                     steps_per_round=4, planned_rounds=1,
                     target_epsilon=3.0, target_delta=1e-3, accountant="rdp",
                     budget_limited=False)
    for clipping in ("fused", "hooks"):
        model = task.build_model()
        before = [p.detach().clone() for p in model.parameters()]
        res = train_local(model, feats, labels, train=train, privacy=privacy, plan=plan,
                          clipping=clipping)
        assert res.steps == 4 and len(res.history) == 1
        for b, p in zip(before, model.parameters(), strict=True):
            assert bool((p.detach() != b).all()), (clipping, "an entry received no noise")
        assert math.isfinite(res.epsilon)
