"""Local training and evaluation in plain PyTorch and Opacus (no Flower here).

``train_local`` runs one round of an agency's local training. With a NoisePlan it is
DP-SGD: Poisson sampling, per-record clipping to ``max_grad_norm`` and Gaussian noise of
``noise_multiplier * max_grad_norm`` on every parameter at every step. The accountant is
primed with the history of earlier rounds and its extended history is returned, so the
epsilon reported is for the run so far, never for one round.

DP noise and Poisson sampling draw from fresh OS randomness, not a configured seed: noise
that anyone could regenerate from a known seed would protect nothing. With
``privacy.secure_mode`` every random bit comes from a ChaCha20 keystream instead of torch's
Mersenne Twister (see federation.secure_random).

A round is three parts, composed by ``train_local``: ``make_loader`` (the shuffled
batches, or ChaCha20 Poisson samples in secure mode), ``privatise`` (SGD, wrapped by Opacus
with a plan: the accountant primed with the history, fused or hooks clipping, the noise, the
observer) and ``step`` (one batch; ``_empty_step`` for an empty Poisson sample).

Audit hook: ``train_local(..., observer=...)`` lets an auditor inside the agency see each
DP-SGD step as the agency itself does (the sum of clipped record gradients, then the noisy
sum) and add canary gradients to that sum before the noise (federation.audit's Dirac
canaries), on the model's coordinates and on audit-only ones that the DP optimiser treats
as parameters (``observe_steps``). It is used only on a side copy of a round that is
thrown away; without an observer nothing changes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, overload

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import wrap_collate_with_empty
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from federation import metrics
from federation.config import PrivacySettings, TrainSettings
from federation.privacy import HistoryEntry, NoisePlan, epsilon_spent, steps_per_epoch
from federation.secure_random import SecurePoissonSampler, use_secure_noise
from federation.text import SparseRows


class RowBatch(Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """A batch fetched whole by ``SparseDataset.__getitems__``: its rows densified at once
    (``x``) and their labels (``y``). It is also a sequence of its (row, label) pairs
    (views made on access), so torch's default collate and Opacus' empty-batch handling,
    which read ``len``, take it as any list of samples; ``collate_rows`` takes ``x`` and
    ``y`` as they are."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @overload
    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[tuple[torch.Tensor, torch.Tensor]]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [(self.x[j], self.y[j]) for j in range(len(self))[i]]
        return self.x[i], self.y[i]


def collate_rows(batch: Any) -> Any:
    """The DataLoader's collate: a RowBatch is already (x, y); anything else (a list of
    single rows) goes to torch's default collate."""
    if isinstance(batch, RowBatch):
        return batch.x, batch.y
    return default_collate(batch)


class SparseDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Rows of a SparseRows matrix, densified one batch at a time (memory stays O(nnz) plus
    one dense batch). The DataLoader fetches a batch whole through ``__getitems__`` (one
    vectorised scatter, ``SparseRows.dense``), never row by row."""

    def __init__(self, features: SparseRows, labels: np.ndarray) -> None:
        if len(features) != labels.size:
            raise ValueError(f"{len(features)} feature rows but {labels.size} labels")
        self.features = features
        self.labels = torch.as_tensor(labels, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features
        lo, hi = int(f.indptr[i]), int(f.indptr[i + 1])
        row = torch.zeros(f.width, dtype=torch.float32)
        row[torch.from_numpy(f.indices[lo:hi])] = torch.from_numpy(f.values[lo:hi])
        return row, self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> RowBatch:
        rows = np.asarray(indices, dtype=np.int64)
        return RowBatch(torch.from_numpy(self.features.dense(rows)),
                        self.labels[torch.from_numpy(rows)])


@dataclass(frozen=True)
class LocalResult:
    num_examples: int
    train_loss: float
    steps: int
    history: list[HistoryEntry]
    epsilon: float  # cumulative over the whole history; 0.0 without DP
    noise_multiplier: float


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The model's only layer when it is a logistic regression (one Linear, one output)."""
    layers = [m for m in model.modules() if list(m.parameters(recurse=False))]
    if len(layers) == 1 and isinstance(layers[0], nn.Linear) and layers[0].out_features == 1:
        return layers[0]
    return None


def fused_clip_factors(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       max_grad_norm: float) -> torch.Tensor:
    """Opacus' per-record clipping factors ``min(1, C / (norm_i + 1e-6))`` for a logistic
    regression with binary cross-entropy, with each record's gradient norm in closed form.

    Record i's loss gradient is ``(sigmoid(z_i) - y_i) * x_i`` for the weights and
    ``sigmoid(z_i) - y_i`` for the bias, so its norm is
    ``|sigmoid(z_i) - y_i| * sqrt(|x_i|^2 + 1)``: exactly what Opacus' hooks would compute
    from per-sample gradients (tests/test_dp_exactness.py checks both against a per-record
    loop), without materialising them.
    """
    residual = torch.sigmoid(logits) - y
    norms = residual.abs() * torch.sqrt(torch.linalg.vector_norm(x, dim=1) ** 2 + 1.0)
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


def fused_clipped_grads(head: nn.Linear, logits: torch.Tensor, x: torch.Tensor,
                        y: torch.Tensor, max_grad_norm: float) -> None:
    """Set ``head``'s ``.grad`` to the sum over records of each record's clipped gradient:
    ``sum_i c_i (sigmoid(z_i) - y_i) [x_i, 1]``, one matrix-vector product, no autograd.
    Opacus' ghost-clipping optimizer then adds the noise and scales (its ``step``)."""
    coeff = fused_clip_factors(logits, x, y, max_grad_norm) * (torch.sigmoid(logits) - y)
    head.weight.grad = (coeff @ x).reshape(head.weight.shape)
    if head.bias is not None:
        head.bias.grad = coeff.sum().reshape(head.bias.shape)


def clipped_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The model's nn.Linear layers when they hold every parameter (the closed-form
    "layers" path applies), else None."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    owned = {id(p) for m in linears for p in m.parameters(recurse=False)}
    params = list(model.parameters())
    if linears and params and all(id(p) in owned for p in params):
        return linears
    return None


def _as_sequence(t: torch.Tensor) -> torch.Tensor:
    """A Linear's input or output gradient as [records, positions, features]."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


def _record_norms_sq(a: torch.Tensor, g: torch.Tensor, bias: bool) -> torch.Tensor:
    """Each record's squared gradient norm of one Linear, from its inputs ``a`` [b, T, d]
    and output gradients ``g`` [b, T, p]: the record's weight gradient is ``g^T a``, so
    its squared norm is ``sum_{t,s} (a_t . a_s)(g_t . g_s)`` (T^2 (d + p) work, the ghost
    norm) or ``|g^T a|^2`` directly (T d p work), whichever is cheaper; the bias gradient
    is ``sum_t g_t``."""
    t, d, q = a.shape[1], a.shape[2], g.shape[2]
    if t == 1:
        sq = (a[:, 0] ** 2).sum(1) * (g[:, 0] ** 2).sum(1)
    elif t * (d + q) < d * q:
        sq = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    else:
        sq = (torch.bmm(g.transpose(1, 2), a) ** 2).sum((1, 2))
    if bias:
        sq = sq + (g.sum(1) ** 2).sum(1)
    return sq


def layers_clipped_grads(model: nn.Module, layers: Sequence[nn.Linear], x: torch.Tensor,
                         y: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Set every parameter's ``.grad`` to the sum over records of each record's gradient
    clipped to ``max_grad_norm`` (Opacus' factors ``min(1, C / (norm_i + 1e-6))``), for a
    model whose parameters all sit in nn.Linear layers that are each called once.

    One forward pass records each layer's input; one backward pass gives the gradient of
    the summed loss with respect to each layer's output, which for record i is record i's
    own (records do not interact). Each record's norm is then exact in closed form
    (``_record_norms_sq``) and the clipped sum is one matrix product per layer, so no
    per-record gradient is materialised and no second backward pass is taken
    (tests/test_conversation_dp.py checks it against a per-record loop and Opacus' hooks).
    Returns the batch's mean loss."""
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if module in seen:
            raise ValueError("layers clipping needs each nn.Linear called once per forward; "
                             "use clipping=hooks for this model")
        seen[module] = (inputs[0].detach(), out)

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    used = [layer for layer in layers if layer in seen]
    outs = torch.autograd.grad(loss, [seen[layer][1] for layer in used])
    acts = [_as_sequence(seen[layer][0]) for layer in used]
    backs = [_as_sequence(g.detach()) for g in outs]
    norms_sq = torch.zeros(x.shape[0], dtype=x.dtype)
    for layer, a, g in zip(used, acts, backs, strict=True):
        norms_sq += _record_norms_sq(a, g, layer.bias is not None)
    factors = (max_grad_norm / (norms_sq.sqrt() + 1e-6)).clamp(max=1.0)
    for layer in layers:
        layer.weight.grad = torch.zeros_like(layer.weight)
        if layer.bias is not None:
            layer.bias.grad = torch.zeros_like(layer.bias)
    for layer, a, g in zip(used, acts, backs, strict=True):
        scaled = (g * factors[:, None, None]).reshape(-1, g.shape[-1])
        layer.weight.grad = scaled.T @ a.reshape(-1, a.shape[-1])
        if layer.bias is not None:
            layer.bias.grad = scaled.sum(0)
    return loss.detach() / x.shape[0]


def lean_accumulate(optimizer: torch.optim.Optimizer) -> None:
    """Opacus' ghost-clipping optimizer copies each gradient with ``copy.deepcopy`` every
    step (a third of the step's cost for this model); a tensor clone is the same copy."""

    def accumulate() -> None:
        for p in optimizer.params:  # type: ignore[attr-defined]  # DPOptimizer's attribute
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad)
            else:
                p.summed_grad = p.grad.detach().clone()

    optimizer.accumulate = accumulate  # type: ignore[attr-defined]  # instance override


class StepObserver(Protocol):
    """An auditor's view of every DP-SGD step of one ``train_local`` call (audit only).

    Both step methods get the optimiser's parameters: ``model.parameters()`` in order,
    then the observer's ``audit_parameters()``."""

    def audit_parameters(self) -> Sequence[nn.Parameter]:
        """Audit-only tensors the DP optimiser treats as parameters of the model: no record
        touches them (their record gradients are exactly 0) and they get the same noise
        as every model coordinate (see ``observe_steps``); ``[]`` for none."""

    def before_noise(self, params: Sequence[torch.Tensor]) -> None:
        """``p.summed_grad`` holds this step's sum of clipped record gradients; the
        observer may add to it in place (a canary record's gradient, norm <= C)."""

    def after_noise(self, params: Sequence[torch.Tensor]) -> None:
        """``p.grad`` holds this step's noisy sum, before it is scaled and applied."""


def observe_steps(optimizer: torch.optim.Optimizer, observer: StepObserver) -> None:
    """Wrap the DP optimiser's ``add_noise`` (Opacus calls it once per step, after
    clipping and accumulating, before scaling) so that ``observer`` sees both sides of
    it. Wraps whatever ``add_noise`` is in place, so secure-mode noise is observed too.

    The observer's ``audit_parameters()`` join the DP optimiser as a second parameter
    group, after the model's, so Opacus handles them as it handles every parameter: they
    count in each record's gradient norm (with a zero gradient: before every step they get
    a zero ``grad_sample`` row per record for the per-sample clipping, and a zero
    ``grad`` for the fused path), and its own ``add_noise`` gives them noise of the same
    ``noise_multiplier * max_grad_norm`` from the same generator in the same step (a noise
    multiplier of 0 leaves them without noise too)."""
    extra = list(observer.audit_parameters())
    if extra:
        first = optimizer.params[0]  # type: ignore[attr-defined]  # DPOptimizer's attribute
        optimizer.original_optimizer.add_param_group(  # type: ignore[attr-defined]
            {"params": extra})
        for p in extra:
            p.summed_grad = None  # type: ignore[attr-defined]  # as DPOptimizer.__init__ does
        pre_step = optimizer.pre_step  # type: ignore[attr-defined]  # DPOptimizer's method

        def zero_record_gradients() -> bool:
            samples = getattr(first, "grad_sample", None)  # per-sample path only
            rows = (None if samples is None else len(samples)
                    if isinstance(samples, torch.Tensor) else sum(len(g) for g in samples))
            for p in extra:
                p.grad = torch.zeros_like(p)
                if rows is not None:
                    p.grad_sample = torch.zeros(  # type: ignore[attr-defined]  # Opacus'
                        (rows, *p.shape), dtype=p.dtype)
            return bool(pre_step())

        optimizer.pre_step = zero_record_gradients  # type: ignore[attr-defined]
    add_noise = optimizer.add_noise  # type: ignore[attr-defined]  # DPOptimizer's method
    params = optimizer.params  # type: ignore[attr-defined]  # DPOptimizer's attribute

    def observed() -> None:
        observer.before_noise(params)
        add_noise()
        observer.after_noise(params)

    optimizer.add_noise = observed  # type: ignore[attr-defined]  # instance override


def _fresh_generator() -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    return gen


# --- the three parts of a round: sampler and loader, privatiser, step ---------------------

def _check_plan(plan: NoisePlan | None, train: TrainSettings, records: int) -> None:
    """The noise plan was made for these records, batch and epochs (else its epsilon lies)."""
    if plan is None:
        return
    expected = train.local_epochs * steps_per_epoch(records, train.batch_size)
    if plan.steps_per_round != expected:
        raise ValueError(
            f"the noise plan covers {plan.steps_per_round} steps per round but these "
            f"settings take {expected}; plan with the same records, batch and epochs"
        )


def make_loader(dataset: SparseDataset, *, train: TrainSettings, privacy: PrivacySettings,
                plan: NoisePlan | None) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a round. Shuffled batches from fresh OS randomness (Opacus turns them into
    Poisson samples of the plan's rate); with ``privacy.secure_mode`` and DP, Poisson
    sampling with ChaCha20 coin flips, which Opacus must not re-wrap."""
    batch_size = plan.batch_size if plan else min(train.batch_size, len(dataset))
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=_fresh_generator(),
        collate_fn=collate_rows,
    )
    if plan is not None and privacy.secure_mode:
        loader = DataLoader(
            dataset,
            batch_sampler=SecurePoissonSampler(
                num_samples=len(dataset), sample_rate=plan.sample_rate,
                steps=steps_per_epoch(len(dataset), train.batch_size)),
            collate_fn=wrap_collate_with_empty(collate_fn=collate_rows),
        )
    return loader


@dataclass
class Privatised:
    """What the privatiser hands the step: the module to call, the (DP) optimiser, the
    loader Opacus sampled, its engine (None without DP) and whether clipping is fused."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]]
    engine: PrivacyEngine | None
    head: nn.Linear | None  # set when the fused path clips
    criterion: nn.Module
    layers: list[nn.Linear] | None = None  # set when the closed-form layers path clips

    @property
    def closed_form(self) -> bool:
        """Whether clipping is computed here (fused or layers), not by Opacus' hooks."""
        return self.head is not None or self.layers is not None


def _fused_head(model: nn.Module, clipping: str, dp: bool) -> nn.Linear | None:
    """The logistic-regression layer to clip in closed form, or None for Opacus' hooks
    (or the layers path, where the model asks for it: its head need not read the row)."""
    head = linear_head(model)
    if clipping not in ("auto", "hooks", "fused", "layers"):
        raise ValueError(f"clipping={clipping!r}: use auto, hooks, fused or layers")
    if clipping == "fused" and (head is None or _declared(model) == "layers"):
        raise ValueError("fused clipping needs a logistic regression model (task.hidden=0)")
    if clipping == "auto" and _declared(model) == "layers":
        return None
    return head if dp and head is not None and clipping in ("auto", "fused") else None


def _declared(model: nn.Module) -> str | None:
    """The clipping a model asks for (its ``dp_clipping`` attribute), if any."""
    declared = getattr(model, "dp_clipping", None)
    return declared if isinstance(declared, str) else None


def _layers(model: nn.Module, clipping: str, dp: bool) -> list[nn.Linear] | None:
    """The Linear layers to clip in closed form: with ``clipping=layers``, or ``auto`` for
    a model that declares ``dp_clipping = "layers"``; None otherwise."""
    if not dp or clipping not in ("auto", "layers"):
        return None
    if clipping == "auto" and _declared(model) != "layers":
        return None
    layers = clipped_layers(model)
    if layers is None and clipping == "layers":
        raise ValueError("layers clipping needs every parameter in an nn.Linear; use hooks")
    return layers


def privatise(model: nn.Module, loader: DataLoader[tuple[torch.Tensor, torch.Tensor]], *,
              train: TrainSettings, privacy: PrivacySettings, plan: NoisePlan | None,
              history: Sequence[HistoryEntry], clipping: str,
              observer: StepObserver | None) -> Privatised:
    """SGD, wrapped by Opacus when there is a noise plan: its accountant primed with the
    run's history, per-record clipping (fused or hooks), noise from fresh OS randomness
    (ChaCha20 in secure mode) and the audit observer, if any."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=train.step_size(private=plan is not None),
        momentum=train.momentum
    )
    criterion = nn.BCEWithLogitsLoss()
    head = _fused_head(model, clipping, plan is not None)
    layers = None if head is not None else _layers(model, clipping, plan is not None)
    if plan is None:
        return Privatised(model, optimizer, loader, None, None, criterion)
    engine = PrivacyEngine(accountant=plan.accountant)
    engine.accountant.history = list(history)
    common: dict[str, Any] = dict(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=plan.noise_multiplier, max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=not privacy.secure_mode, noise_generator=_fresh_generator())
    if head is not None or layers is not None:
        # Opacus' ghost-clipping optimizer adds the noise to the clipped sum we hand it
        # in p.grad; its module hooks are switched off since the norms are exact here.
        net, optimizer, _, loader = engine.make_private(
            **common, criterion=criterion, grad_sample_mode="ghost")
        net.disable_hooks()  # GradSampleModule's method
        lean_accumulate(optimizer)
    else:
        net, optimizer, loader = engine.make_private(**common)
    if privacy.secure_mode:
        use_secure_noise(optimizer)
    if observer is not None:
        observe_steps(optimizer, observer)
    return Privatised(net, optimizer, loader, engine, head, criterion, layers)


def _empty_step(model: nn.Module, p: Privatised) -> None:
    """An empty Poisson sample still releases a noisy (zero) update: the accounting
    assumes noise at every step."""
    for param in model.parameters():
        if p.closed_form:
            param.grad = torch.zeros_like(param)
        else:
            param.grad_sample = torch.zeros((0, *param.shape))  # type: ignore[attr-defined]  # Opacus' own attribute
    p.optimizer.step()


def step(model: nn.Module, p: Privatised, x: torch.Tensor, y: torch.Tensor, *,
         max_grad_norm: float) -> float:
    """One (DP-)SGD step on one batch; returns the batch's loss."""
    if p.head is not None:
        with torch.no_grad():  # Opacus' wrapper has its hooks off: the module itself
            logits = model(x)
            fused_clipped_grads(p.head, logits, x, y, max_grad_norm)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
    elif p.layers is not None:  # Opacus' hooks are off: the module itself, as fused
        loss = layers_clipped_grads(model, p.layers, x, y, max_grad_norm)
    else:
        loss = p.criterion(p.net(x), y)
        loss.backward()
    p.optimizer.step()
    return float(loss.detach())


def _pull_towards(model: nn.Module, global_params: Sequence[torch.Tensor],
                  shrink: float) -> None:
    """FedProx's proximal term is data-independent, so it is applied after the private
    step (post-processing) rather than clipped with the data, as the exact proximal step:
    stable for any learning_rate * mu."""
    with torch.no_grad():
        for param, g in zip(model.parameters(), global_params, strict=True):
            param.add_(g, alpha=shrink).div_(1.0 + shrink)


def _accounted(p: Privatised, plan: NoisePlan | None) -> tuple[list[HistoryEntry], float]:
    """The run's extended accountant history and its epsilon; Opacus' hooks detached."""
    if p.engine is None or plan is None:
        return [], 0.0
    history = [(float(s), float(q), int(n)) for s, q, n in p.engine.accountant.history]
    epsilon = epsilon_spent(history, delta=plan.target_delta, accountant=plan.accountant)
    close = getattr(p.net, "_close", None)
    if callable(close):
        close()  # detach Opacus' hooks so the caller gets a plain module back
    return history, epsilon


def train_local(
    model: nn.Module,
    features: SparseRows,
    labels: np.ndarray,
    *,
    train: TrainSettings,
    privacy: PrivacySettings,
    plan: NoisePlan | None,
    history: Sequence[HistoryEntry] = (),
    proximal_mu: float = 0.0,
    clipping: str = "auto",
    observer: StepObserver | None = None,
) -> LocalResult:
    """One round of local training; ``model`` is updated in place.

    ``clipping`` (DP only): ``hooks`` is Opacus' per-sample gradients through its module
    hooks; ``fused`` computes each record's gradient norm in closed form for a logistic
    regression model (see ``fused_clip_factors``) and takes one backward pass of the
    clipped loss, inside Opacus' ghost-clipping optimizer (its noise, scaling, Poisson
    sampling and accountant); ``layers`` does the same for any model whose parameters are
    all in nn.Linear layers (on 2-D or 3-D inputs), with each record's norm in closed form
    from the layers' inputs and output gradients (``layers_clipped_grads``); ``auto`` is
    ``layers`` for a model that declares ``dp_clipping = "layers"``, else ``fused`` where
    it applies, else ``hooks``.

    ``observer`` (DP only, audits only): sees every step's clipped sum and noisy sum and
    may add canary gradients to the clipped sum (see ``StepObserver``). Call it only on a
    side copy of the model that never leaves the agency."""
    if observer is not None and plan is None:
        raise ValueError("an audit observer needs DP training (a noise plan)")
    dataset = SparseDataset(features, labels)
    _check_plan(plan, train, len(dataset))
    global_params = [p.detach().clone() for p in model.parameters()]
    loader = make_loader(dataset, train=train, privacy=privacy, plan=plan)
    p = privatise(model, loader, train=train, privacy=privacy, plan=plan, history=history,
                  clipping=clipping, observer=observer)
    p.net.train()
    losses: list[float] = []
    steps = 0
    for _ in range(train.local_epochs):
        for x, y in p.loader:
            p.optimizer.zero_grad(set_to_none=True)
            steps += 1
            if x.shape[0] == 0:
                _empty_step(model, p)
                continue
            losses.append(step(model, p, x, y, max_grad_norm=privacy.max_grad_norm))
            if proximal_mu > 0:
                _pull_towards(model, global_params,
                              train.step_size(private=plan is not None) * proximal_mu)
    new_history, epsilon = _accounted(p, plan)
    return LocalResult(
        num_examples=len(dataset),
        train_loss=float(np.mean(losses)) if losses else math.nan,
        steps=steps,
        history=new_history,
        epsilon=epsilon,
        noise_multiplier=plan.noise_multiplier if plan else 0.0,
    )


@torch.no_grad()
def predict_proba(model: nn.Module, features: SparseRows, *, batch: int = 2048) -> np.ndarray:
    """Probabilities for every row, in order."""
    model.eval()
    out = []
    for start in range(0, len(features), batch):
        rows = np.arange(start, min(start + batch, len(features)))
        x = torch.from_numpy(features.dense(rows))
        out.append(torch.sigmoid(model(x)).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def evaluate(
    model: nn.Module, features: SparseRows, labels: np.ndarray, *, k: int
) -> dict[str, float]:
    """Loss and ranking metrics of ``model`` on one labelled set."""
    proba = predict_proba(model, features).astype(np.float64)
    eps = 1e-7
    clipped = np.clip(proba, eps, 1 - eps)
    loss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    return {"loss": loss, **metrics.summary(labels, proba, k=k)}
