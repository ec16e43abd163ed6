"""The conversation-risk task: slot layout, truncation, the models on padding, exact
per-message explanations and the indicator lexicon in English, Spanish and Portuguese."""

import numpy as np
import pytest
import torch

from federation.errors import TaskError
from federation.records import Message
from federation.schema import CONVERSATION_RECORDS, CONVERSATION_ROLES
from federation.tasks import TASKS, get_task, task_names
from federation.tasks.conversation_lexicon import CATEGORIES, indicator_hits
from federation.tasks.conversation_risk import (
    CUT,
    GAP,
    PRESENT,
    RESERVED,
    ROLE,
    ConversationRiskTask,
    kept_positions,
)

_P = {"num_buckets": 64, "max_messages": 5, "head_messages": 2, "hidden": 8}
_B, _M = 64, 5
_S = _B + RESERVED


def _conv(n: int, *, stamps: bool = True) -> tuple[Message, ...]:
    return tuple(Message(CONVERSATION_ROLES[j % 3], f"message number {j} about practice",
                         f"2024-05-01T{j:02d}:00:00" if stamps else None) for j in range(n))


def test_registered_with_defaults_and_checked_params() -> None:
    assert "conversation-risk" in task_names()
    task = get_task("conversation-risk", {})
    assert isinstance(task, ConversationRiskTask) and TASKS["conversation-risk"] is type(task)
    assert task.record_schema is CONVERSATION_RECORDS
    assert "conversation" in task.privacy_unit
    for bad in ({"model": "deep"}, {"num_buckets": 100}, {"head_messages": 30},
                {"max_messages": 0}, {"hidden": 0}):
        with pytest.raises(TaskError):
            get_task("conversation-risk", bad)


def test_truncation_keeps_the_head_and_the_tail() -> None:
    assert kept_positions(3, max_messages=5, head_messages=2) == [0, 1, 2]
    assert kept_positions(9, max_messages=5, head_messages=2) == [0, 1, 6, 7, 8]
    assert kept_positions(9, max_messages=5, head_messages=0) == [4, 5, 6, 7, 8]


def test_slot_layout_roles_gap_and_cut() -> None:
    task = get_task("conversation-risk", _P)
    rows = task.featurize([_conv(1), _conv(9), _conv(3, stamps=False)])
    assert rows.width == _M * _S and len(rows) == 3
    d = rows.dense().reshape(3, _M, _S)
    present = d[..., _B + PRESENT]
    assert present.tolist() == [[1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert not d[0, 1:].any() and not d[2, 3:].any()  # empty slots are all zero
    for slot, pos in enumerate([0, 1, 6, 7, 8]):  # the 9-message conversation's kept ones
        role = d[1, slot, _B + ROLE:_B + ROLE + 3]
        assert role.tolist() == [1.0 if i == pos % 3 else 0.0 for i in range(3)]
        norm = float(np.linalg.norm(d[1, slot, :_B]))
        assert norm == pytest.approx(1.0, abs=1e-5)  # each message's text row is unit norm
    assert d[1, :, _B + CUT].tolist() == [0, 0, 1, 0, 0]  # the first slot after the cut
    gaps = d[1, :, _B + GAP]
    assert gaps[0] == 0 and gaps[1] > 0 and gaps[2] > gaps[1]  # 5 hours > 1 hour
    assert not d[2, :, _B + GAP].any()  # no timestamps, no gap


@pytest.mark.parametrize("kind", ["order", "linear"])
def test_empty_slots_are_ignored_and_shares_are_exact(kind: str) -> None:
    task = get_task("conversation-risk", {**_P, "model": kind})
    torch.manual_seed(0)
    model = task.build_model()
    with torch.no_grad():  # padding must not matter even where an empty slot's row is not 0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    convs = [_conv(1), _conv(4), _conv(12)]
    x = torch.from_numpy(task.featurize(convs).dense())
    logits = model(x).detach()
    noisy = x.view(3, _M, _S).clone()
    absent = noisy[..., _B + PRESENT] == 0
    noisy[absent] = torch.rand(int(absent.sum()), _S) * (torch.arange(_S) != _B + PRESENT)
    torch.testing.assert_close(model(noisy.view(3, -1)).detach(), logits)
    explainer = task.explainer(model)
    for conv, logit in zip(convs, logits, strict=True):
        e = explainer.explain(conv)
        assert len(e.units) == len(e.shares) == len(e.indicators) == len(conv)
        assert explainer.bias + float(e.shares.sum()) == pytest.approx(float(logit), abs=1e-5)
        dense = np.zeros(explainer.width, dtype=np.float32)
        dense[list(e.features)] = list(e.features.values())
        again = float(model(torch.from_numpy(dense)[None]).detach()[0])
        assert again == pytest.approx(float(logit), abs=1e-6)
    long = explainer.explain(convs[2])
    assert (long.shares[2:9] == 0).all()  # the middle of a long conversation is not read
    kept = long.shares[[0, 1, 9, 10, 11]]
    if kind == "linear":
        assert (kept != 0).all()
    else:  # max pooling: a state's term belongs to the one message where it peaks
        assert (kept != 0).sum() >= 2


def test_order_changes_the_order_model_only() -> None:
    a = (Message("reported", "how old are you"), Message("reported", "this is our secret"),
         Message("contact", "ok"))
    b = (a[1], a[0], a[2])
    out = {}
    for kind in ("order", "linear"):
        task = get_task("conversation-risk", {**_P, "model": kind})
        torch.manual_seed(1)
        model = task.build_model()
        z = model(torch.from_numpy(task.featurize([a, b]).dense())).detach()
        out[kind] = abs(float(z[0] - z[1]))
    assert out["linear"] < 1e-6 < out["order"]


def test_explainer_refuses_a_foreign_model() -> None:
    with pytest.raises(TaskError):
        get_task("conversation-risk", _P).explainer(torch.nn.Linear(3, 1))


@pytest.mark.parametrize(("text", "category"), [
    ("hey how old are you? what grade are you in", "age_profile_probing"),
    ("¿cuántos años tienes?", "age_profile_probing"),
    ("quantos anos voce tem", "age_profile_probing"),
    ("this is just between us, delete our chats", "secrecy_exclusivity"),
    ("es nuestro secreto", "secrecy_exclusivity"),
    ("é nosso segredo, não conta pra ninguém", "secrecy_exclusivity"),
    ("let's talk on another app", "platform_move"),
    ("hablamos por otra app", "platform_move"),
    ("te recargo el saldo", "gifts_credits"),
    ("te dou creditos", "gifts_credits"),
    ("pay in gift cards by tonight or I'll send them to your friends", "deadline"),
    ("Pay in gift cards by tonight", "payment_demand"),
    ("you go home when the debt is paid, I keep your passport", "documents_retained"),
    ("tus padres miran tu movil?", "supervision_check"),
    ("sua família vai pagar", "threat_to_family"),
])
def test_lexicon_hits_in_three_languages(text: str, category: str) -> None:
    hits = indicator_hits(text)
    assert category in CATEGORIES
    assert any(cat == category for cat, _, _ in hits)
    for _, start, end in hits:
        assert 0 <= start < end <= len(text) and text[start:end].strip() == text[start:end]


def test_lexicon_is_quiet_on_benign_chat() -> None:
    assert indicator_hits("homework photo for page 12, practice moved to six") == ()
