"""DP-SGD on the conversation models: train_local's closed-form "layers" clipping equals a
per-record loop and Opacus' hooks, for conversations of one message up to a full one, and
runs inside train_local with the audit observer and secure-mode noise."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from federation.config import PrivacySettings, TrainSettings
from federation.privacy import plan_noise
from federation.records import Message
from federation.tasks import get_task
from federation.training import (
    clipped_layers,
    layers_clipped_grads,
    linear_head,
    train_local,
)

_WORDS = ("how old are you", "lets talk on another app", "homework is due", "practice at six",
          "this is just between us", "send me a pic", "see you tomorrow", "ok")
_SMALL = {"num_buckets": 64, "max_messages": 6, "head_messages": 2, "hidden": 8}


def _conversations(n: int, seed: int) -> list[tuple[Message, ...]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = (1, 6, 9)[i % 3] if i < 6 else int(rng.integers(1, 10))
        out.append(tuple(
            Message(("reported", "contact")[j % 2], str(rng.choice(_WORDS)),
                    f"2024-03-0{1 + j // 5}T1{j % 10}:00:00") for j in range(length)))
    return out


def _batch(kind: str, n: int = 24) -> tuple[Any, torch.Tensor, torch.Tensor]:
    task = get_task("conversation-risk", {**_SMALL, "model": kind})
    x = torch.from_numpy(task.featurize(_conversations(n, 1)).dense())
    y = torch.from_numpy((np.arange(n) % 3 == 0).astype(np.float32))
    torch.manual_seed(0)
    return task, x, y


def _loop(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, clip: float
          ) -> list[torch.Tensor]:
    """Sum over records of each record's own gradient, scaled to norm at most ``clip``."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for x, y in zip(xs, ys, strict=True):
        model.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x[None]), y[None],
                                                       reduction="sum").backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]
        norm = float(torch.sqrt(sum((g ** 2).sum() for g in grads)))  # type: ignore[arg-type]
        for t, g in zip(total, grads, strict=True):
            t += min(1.0, clip / (norm + 1e-6)) * g
    return total


def _ours(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, clip: float
          ) -> list[torch.Tensor]:
    layers = clipped_layers(model)
    assert layers is not None
    layers_clipped_grads(model, layers, xs, ys, clip)
    return [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]


def _hooks(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, clip: float
           ) -> list[torch.Tensor]:
    """Opacus' per-sample gradients from its module hooks, clipped as its optimizer does."""
    gsm = GradSampleModule(model, loss_reduction="sum")
    nn.functional.binary_cross_entropy_with_logits(gsm(xs), ys, reduction="sum").backward()
    samples = [p.grad_sample for p in model.parameters()]  # type: ignore[attr-defined]
    norms = torch.sqrt(sum((g.reshape(len(g), -1) ** 2).sum(1) for g in samples))
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    out = [torch.einsum("i,i...->...", factors, g) for g in samples]
    gsm._close()
    return out


def _close(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> None:
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["order", "linear"])
def test_layers_clipping_equals_a_per_record_loop_and_opacus_hooks(kind: str) -> None:
    task, xs, ys = _batch(kind)
    lengths = (xs.view(len(xs), _SMALL["max_messages"], -1)[..., _SMALL["num_buckets"]] > 0
               ).sum(1)
    assert {1, _SMALL["max_messages"]} <= set(lengths.tolist())  # one message and a full one
    model = task.build_model()
    twins = [task.build_model() for _ in range(2)]
    for t in twins:
        t.load_state_dict(model.state_dict())
    for clip in (0.05, 1e3):  # most records clipped; none clipped
        model.zero_grad()
        ours = _ours(model, xs, ys, clip)
        _close(ours, _loop(twins[0], xs, ys, clip))
        _close(ours, _hooks(twins[1], xs, ys, clip))


def test_the_bag_baseline_is_not_taken_for_a_fused_logistic_head() -> None:
    """Its one Linear reads the sum of slots, not the row: the row-based fused norms would
    be wrong, so the model's own ``dp_clipping`` keeps it on the layers path."""
    task, _, _ = _batch("linear")
    model = task.build_model()
    assert linear_head(model) is not None and model.dp_clipping == "layers"


class _Recorder:
    def __init__(self) -> None:
        self.canary = nn.Parameter(torch.zeros(3))
        self.clipped: list[list[torch.Tensor]] = []
        self.noisy: list[list[torch.Tensor]] = []

    def audit_parameters(self) -> Sequence[nn.Parameter]:
        return [self.canary]

    def before_noise(self, params: Sequence[torch.Tensor]) -> None:
        self.clipped.append([p.summed_grad.clone() for p in params])  # type: ignore[attr-defined]

    def after_noise(self, params: Sequence[torch.Tensor]) -> None:
        self.noisy.append([p.grad.clone() for p in params])  # type: ignore[union-attr]


@pytest.mark.parametrize("secure", [False, True])
def test_train_local_runs_dp_on_the_layers_path_with_the_audit_observer(secure: bool) -> None:
    task, _, ys = _batch("order", 48)
    features = task.featurize(_conversations(48, 1))
    labels = ys.numpy()
    train = TrainSettings(local_epochs=1, batch_size=16, learning_rate=0.1)
    privacy = PrivacySettings(target_epsilon=3.0, target_delta=1e-5, max_grad_norm=0.5,
                              secure_mode=secure)
    plan = plan_noise(num_records=48, batch_size=16, local_epochs=1, planned_rounds=1,
                      target_epsilon=3.0, target_delta=1e-5, accountant="rdp", where="test")
    model = task.build_model()
    before = [p.detach().clone() for p in model.parameters()]
    rec = _Recorder()
    result = train_local(model, features, labels, train=train, privacy=privacy, plan=plan,
                         observer=rec)
    steps = plan.steps_per_round
    assert result.steps == steps and 0 < result.epsilon <= 3.0 + 1e-6
    assert len(rec.clipped) == len(rec.noisy) == steps
    for clipped, noisy in zip(rec.clipped, rec.noisy, strict=True):
        assert float(clipped[-1].abs().sum()) == 0.0  # no record touches the canary
        assert float(noisy[-1].abs().sum()) > 0.0  # but it gets the step's noise
    assert all(bool((p.detach() != b).any()) for p, b in
               zip(model.parameters(), before, strict=True))
