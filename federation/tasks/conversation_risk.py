"""The conversation risk model: grooming, sextortion and coercion risk of one conversation.

One record is one conversation (federation.schema.CONVERSATION_RECORDS): its messages in
order, each with a sender role. The signal is in the *moves* and their order (probing, then
trust, then secrecy, then a platform move; an image request, then a threat and a deadline),
so the default model reads order; a bag-of-conversation logistic regression is kept as the
baseline it is measured against (README, "Conversation model selection").

Features (``featurize``): each kept message is hashed on its own with scikit-learn's
``HashingVectorizer`` (word 1-2-grams plus character 3-5-grams within words, signed hashing,
the message's row scaled to unit L2 norm), into ``num_buckets`` buckets, and placed in its
own *slot* of the record's row::

    column = slot * (num_buckets + RESERVED) + bucket                     (the text)
    column = slot * (num_buckets + RESERVED) + num_buckets + j            (reserved j)

with the reserved columns ``PRESENT`` (1 for a real message: the model's mask), the sender
role one-hot (``ROLE + i`` for ``CONVERSATION_ROLES[i]``), ``GAP`` (the time since the
previous kept message, log-scaled to [0, 1] at 30 days; 0 without timestamps) and ``CUT``
(1 on the first slot after messages were left out). The model reshapes a dense row to
``[max_messages, num_buckets + RESERVED]``.

Which messages a long conversation keeps: the first ``head_messages`` and the last
``max_messages - head_messages``. The opening carries the access and probing moves, the end
the escalation (threats, deadlines, meetings), and a conversation is labelled by how far it
got; the middle is left out, and ``CUT`` tells the model where.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize
from torch import nn

from federation.errors import TaskError
from federation.records import Message, RecordSchema, RecordTable
from federation.schema import CONVERSATION_RECORDS, CONVERSATION_ROLES
from federation.tasks import Explanation, Task, TaskParams, register_task
from federation.tasks.conversation_lexicon import indicator_hits
from federation.text import SparseRows

#: Reserved columns at the end of every slot (see the module docstring).
PRESENT = 0
ROLE = 1
GAP = ROLE + len(CONVERSATION_ROLES)
CUT = GAP + 1
RESERVED = CUT + 1
_GAP_SCALE = math.log1p(30 * 24.0)  # hours: a month's silence maps to 1
MODEL_KINDS = ("order", "linear")


@dataclass(frozen=True)
class ConversationRiskParams(TaskParams):
    model: str = "order"
    num_buckets: int = 2048
    max_messages: int = 24
    head_messages: int = 8
    hidden: int = 32
    char_min: int = 3
    char_max: int = 5

    def check(self) -> list[str]:
        p = []
        if self.model not in MODEL_KINDS:
            p.append(f"task.model={self.model!r} must be one of {list(MODEL_KINDS)} "
                     "(order reads message order; linear is the bag-of-conversation baseline)")
        n = self.num_buckets
        if n < 16 or n & (n - 1) or n > 1 << 16:
            p.append(f"task.num_buckets={n} must be a power of two from 16 to 65536, e.g. 2048")
        if not 1 <= self.max_messages <= 256:
            p.append(f"task.max_messages={self.max_messages} must be 1 to 256, e.g. 24")
        if not 0 <= self.head_messages <= self.max_messages:
            p.append(f"task.head_messages={self.head_messages} must be 0 to task.max_messages "
                     f"({self.max_messages}), e.g. a third of it")
        if not 1 <= self.hidden <= 512:
            p.append(f"task.hidden={self.hidden} must be 1 to 512, e.g. 32")
        if self.char_max != 0 and not 1 <= self.char_min <= self.char_max <= 8:
            p.append(f"task.char_min={self.char_min}, task.char_max={self.char_max} must "
                     "satisfy 1 <= char_min <= char_max <= 8 (or char_max=0 for none)")
        if self.max_messages * (n + RESERVED) > 1 << 22:
            p.append(f"task.max_messages * (task.num_buckets + {RESERVED}) must be at most "
                     "4194304 columns; lower one of them")
        return p


def kept_positions(length: int, *, max_messages: int, head_messages: int) -> list[int]:
    """Which messages of a conversation of ``length`` the model reads, in order: all, or
    the first ``head_messages`` and the last ``max_messages - head_messages``."""
    if length <= max_messages:
        return list(range(length))
    tail = max_messages - head_messages
    return list(range(head_messages)) + list(range(length - tail, length))


def _hours(a: str | None, b: str | None) -> float | None:
    """Hours from timestamp ``a`` to ``b``, None when either is missing or they cannot be
    compared (one with a time zone, one without)."""
    if a is None or b is None:
        return None
    try:
        return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() / 3600
    except (TypeError, ValueError):
        return None


class MessageHasher:
    """Hashed word 1-2-grams and character n-grams of messages: one unit-norm row each."""

    def __init__(self, num_buckets: int, char_min: int, char_max: int) -> None:
        common: dict[str, Any] = dict(n_features=num_buckets, alternate_sign=True, norm=None,
                                      lowercase=True, dtype=np.float32)
        self.word = HashingVectorizer(analyzer="word", ngram_range=(1, 2), **common)
        self.char = (HashingVectorizer(analyzer="char_wb", ngram_range=(char_min, char_max),
                                       **common) if char_max else None)

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        m = self.word.transform(texts)
        if self.char is not None:
            m = m + self.char.transform(texts)
        out: sparse.csr_matrix = normalize(sparse.csr_matrix(m), norm="l2", copy=False)
        return out


class ConversationFeaturizer:
    """Conversations to slot rows (see the module docstring for the layout)."""

    def __init__(self, p: ConversationRiskParams) -> None:
        self.p = p
        self.slot_width = p.num_buckets + RESERVED
        self.width = p.max_messages * self.slot_width
        self.hasher = MessageHasher(p.num_buckets, p.char_min, p.char_max)

    def kept(self, conversation: Sequence[Message]) -> list[int]:
        return kept_positions(len(conversation), max_messages=self.p.max_messages,
                              head_messages=self.p.head_messages)

    def _reserved(self, conversation: Sequence[Message], kept: list[int]
                  ) -> list[tuple[int, int, float]]:
        """(slot, reserved column, value) entries of one conversation."""
        out: list[tuple[int, int, float]] = []
        for slot, pos in enumerate(kept):
            msg = conversation[pos]
            out.append((slot, PRESENT, 1.0))
            if msg.role in CONVERSATION_ROLES:
                out.append((slot, ROLE + CONVERSATION_ROLES.index(msg.role), 1.0))
            if slot:
                hours = _hours(conversation[kept[slot - 1]].timestamp, msg.timestamp)
                if hours is not None and hours > 0:
                    out.append((slot, GAP, min(1.0, math.log1p(hours) / _GAP_SCALE)))
                if pos != kept[slot - 1] + 1:
                    out.append((slot, CUT, 1.0))
        return out

    def transform(self, conversations: Sequence[Sequence[Message]]) -> SparseRows:
        kept = [self.kept(c) for c in conversations]
        texts = [c[i].text for c, k in zip(conversations, kept, strict=True) for i in k]
        owner = np.repeat(np.arange(len(conversations)), [len(k) for k in kept])
        slot = np.concatenate([np.arange(len(k)) for k in kept]) if kept else np.zeros(0, int)
        m = self.hasher.transform(texts) if texts else sparse.csr_matrix(
            (0, self.p.num_buckets), dtype=np.float32)
        per_row = np.diff(m.indptr)
        rows = [np.repeat(owner, per_row)]
        cols = [np.repeat(slot * self.slot_width, per_row) + m.indices]
        vals = [m.data.astype(np.float32)]
        res = [(i, s * self.slot_width + self.p.num_buckets + j, v)
               for i, (c, k) in enumerate(zip(conversations, kept, strict=True))
               for s, j, v in self._reserved(c, k)]
        if res:
            r = np.asarray(res, dtype=np.float64)
            rows.append(r[:, 0].astype(np.int64))
            cols.append(r[:, 1].astype(np.int64))
            vals.append(r[:, 2].astype(np.float32))
        csr = sparse.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(conversations), self.width), dtype=np.float32)
        csr.sum_duplicates()
        csr.sort_indices()
        return SparseRows(indptr=csr.indptr.astype(np.int64),
                          indices=csr.indices.astype(np.int64),
                          values=csr.data.astype(np.float32), width=self.width)


class ConversationOrderModel(nn.Module):
    """Reads order: a per-message layer shared over slots, a layer over each message and a
    running summary of the messages before it, max pooling over the real messages, and a
    linear readout.

    - ``h_t = gelu(message(x_t))``: the message's text with its sender role (a move, and
      who made it).
    - ``p_t = max_{s<t} h_s``, elementwise (torch.cummax, shifted): which moves came
      before. Escalation is the signal: a secrecy request counts after trust-building, a
      threat after an image request, and a model that sees messages only one at a time, or
      in pairs, cannot tell it from the same words out of order.
    - ``c_t = h_t * 2 sigmoid(pair([h_t, p_t]))``: the message's own state, raised or
      damped by what came before. The context gates the message rather than adding to it,
      so a state peaks at the move itself, not at whatever message follows it (an additive
      context term peaked at the contact's replies: the top message hit the generator's
      rationale at chance; gated, about twice chance).
    - ``z_j = max_t c_tj`` over the real messages: each state is "did this (move, in this
      context) happen anywhere", which matches how a conversation is labelled (by how far
      it got), where a mean over messages dilutes one threat among twenty greetings.
    - ``logit = b + u . z``.

    Every parameter is in an nn.Linear called once per forward, so federation.training's
    closed-form "layers" clipping applies (the pooling is parameter-free). The logit splits
    exactly by message: state ``j``'s term ``u_j z_j`` belongs to the message where its
    maximum is reached (``contributions``), so the shares sum to ``logit - b``.
    """

    #: train_local's clipping for this model: every parameter is in an nn.Linear called
    #: once per forward, so federation.training's closed-form "layers" path applies.
    dp_clipping: ClassVar[str] = "layers"

    def __init__(self, *, num_buckets: int, max_messages: int, hidden: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.slots = max_messages
        self.slot_width = num_buckets + RESERVED
        self.message = nn.Linear(self.slot_width, hidden)
        self.pair = nn.Linear(2 * hidden, hidden)
        self.readout = nn.Linear(hidden, 1)

    def _states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Message states [b, M, H] and the real-message mask [b, M]."""
        s = x.view(x.shape[0], self.slots, self.slot_width)
        mask = s[..., self.num_buckets + PRESENT] > 0
        keep = mask[..., None].to(x.dtype)
        h = nn.functional.gelu(self.message(s)) * keep
        before = torch.cummax(h, dim=1).values
        before = torch.cat([torch.zeros_like(before[:, :1]), before[:, :-1]], dim=1)
        gate = 2 * torch.sigmoid(self.pair(torch.cat([h, before], dim=-1)))
        return h * gate * keep, mask

    def _pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled states [b, H] and, per state, the slot of its maximum [b, H]. A row
        without any real message (never a validated record) pools to 0."""
        c, mask = self._states(x)
        z, at = c.masked_fill(~mask[..., None], -1e4).max(dim=1)
        return torch.where(mask.any(dim=1, keepdim=True), z, torch.zeros_like(z)), at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.readout(self._pooled(x)[0]).squeeze(-1)
        return out

    @torch.no_grad()
    def contributions(self, x: torch.Tensor) -> torch.Tensor:
        """Each slot's share of ``logit - bias``, [b, M]: state j's term goes to its argmax."""
        z, at = self._pooled(x)
        terms = z * self.readout.weight[0]
        shares = torch.zeros(x.shape[0], self.slots, dtype=terms.dtype)
        shares.scatter_add_(1, at, terms)
        return shares


class ConversationBagModel(nn.Module):
    """The baseline: logistic regression on the sum of the conversation's message rows
    (order and position ignored; role and the reserved columns summed too)."""

    dp_clipping: ClassVar[str] = "layers"  # the head reads a sum, not the row itself

    def __init__(self, *, num_buckets: int, max_messages: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.slots = max_messages
        self.slot_width = num_buckets + RESERVED
        self.readout = nn.Linear(self.slot_width, 1)

    def _slots(self, x: torch.Tensor) -> torch.Tensor:
        """The real messages' rows [b, M, S]; empty slots are zeroed whatever they hold."""
        s = x.view(x.shape[0], self.slots, self.slot_width)
        return s * (s[..., self.num_buckets + PRESENT] > 0).to(x.dtype)[..., None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.readout(self._slots(x).sum(dim=1)).squeeze(-1)
        return out

    @torch.no_grad()
    def contributions(self, x: torch.Tensor) -> torch.Tensor:
        shares: torch.Tensor = self._slots(x).matmul(self.readout.weight[0])
        return shares


class ConversationExplainer:
    """Exact per-message shares of either model's logit: ``bias + sum(shares) == logit``.
    Messages the model does not read (the middle of a long conversation) get share 0."""

    def __init__(self, featurizer: ConversationFeaturizer,
                 model: ConversationOrderModel | ConversationBagModel) -> None:
        self.featurizer = featurizer
        self.model = model
        self.bias = float(model.readout.bias.detach()[0])
        self.width = featurizer.width

    def explain(self, record: Sequence[Message]) -> Explanation:
        rows = self.featurizer.transform([record])
        dense = rows.dense()
        self.model.eval()
        slot_shares = self.model.contributions(torch.from_numpy(dense))[0].double().numpy()
        shares = np.zeros(len(record), dtype=np.float64)
        for slot, pos in enumerate(self.featurizer.kept(record)):
            shares[pos] = slot_shares[slot]
        lo, hi = int(rows.indptr[0]), int(rows.indptr[1])
        features = {int(c): float(v) for c, v in
                    zip(rows.indices[lo:hi], rows.values[lo:hi], strict=True)}
        return Explanation(
            units=[m.text for m in record], spans=[None] * len(record), shares=shares,
            features=features, indicators=tuple(indicator_hits(m.text) for m in record))


@register_task
class ConversationRiskTask(Task):
    """One record is one conversation: its messages, in order, with their sender roles."""

    name: ClassVar[str] = "conversation-risk"
    params_type: ClassVar[type[TaskParams]] = ConversationRiskParams
    record_schema: ClassVar[RecordSchema] = CONVERSATION_RECORDS
    #: 1: per-message slots of scikit-learn hashed n-grams plus role, gap and cut columns.
    features_version: ClassVar[int] = 1
    privacy_unit: ClassVar[str] = (
        "one conversation (all its messages) in one agency's training export")
    intended_use: ClassVar[str] = (
        "ranking reported or seized conversations for review by a trained analyst "
        "(grooming, sextortion, coercion). A score is a lead for a person to assess, with "
        "each message's share and indicator phrases shown, never a decision about anyone.")
    default_threshold: ClassVar[float] = 0.5

    @property
    def p(self) -> ConversationRiskParams:
        assert isinstance(self.params, ConversationRiskParams)
        return self.params

    @functools.cached_property
    def featurizer(self) -> ConversationFeaturizer:
        return ConversationFeaturizer(self.p)

    def records(self, table: RecordTable, rows: np.ndarray | None = None) -> list[Any]:
        """A conversation's record is its tuple of Message, in order."""
        col = table.column("messages")
        return list(col) if rows is None else [col[int(i)] for i in rows]

    def featurize(self, records: Sequence[Any]) -> SparseRows:
        return self.featurizer.transform(list(records))

    def build_model(self) -> nn.Module:
        p = self.p
        if p.model == "linear":
            return ConversationBagModel(num_buckets=p.num_buckets, max_messages=p.max_messages)
        return ConversationOrderModel(num_buckets=p.num_buckets, max_messages=p.max_messages,
                                      hidden=p.hidden)

    def explainer(self, model: nn.Module) -> ConversationExplainer:
        if not isinstance(model, ConversationOrderModel | ConversationBagModel):
            raise TaskError("this model is not a conversation-risk model; heroes agency score "
                            "explains the task's own models only, and a score without its "
                            "reasons is not shown")
        return ConversationExplainer(self.featurizer, model)
