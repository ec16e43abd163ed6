"""DP-SGD as run by train_local's Opacus path: per-record clipping is exact (against a
per-record reference loop) and the noise covers every parameter."""

import numpy as np
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from federation.tasks import get_task
from federation.training import SparseDataset


def _setup(hidden: int) -> tuple:
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
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
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
