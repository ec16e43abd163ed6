"""Deterministic generator of synthetic agencies' conversation exports (conversation-risk).

The sibling of simulation.generator (adverts); the notes on every move, its source and
weight, and why word spotting fails are in simulation/CONVERSATIONS.md. In short:

* hidden actors (the ``reported`` accounts) follow one pattern each: grooming,
  sextortion, debt-bondage coercion, or a benign kind (homework, pick-ups, coaches,
  customer service, gaming siblings, library/school reminders); each actor writes several
  conversations, each with a different contact;
* a conversation is a script of moves (with the role that makes them) padded with small
  talk and replies; risky actors make their moves in stage order, benign look-alikes make
  the same moves (the same phrases) but said by the contact or a third person, or out of
  order;
* a move by the reported account counts only where that account made a move of a lower
  stage earlier (stage 0 and 1 moves always count): ``x_k`` = move k counted;
* latent risk ``r = actor_effect + sum_k w_k x_k + conversation noise``;
* an expert reads ``r`` with judgement noise, gives a 0-6 level (cut points per agency put
  the positive share at the profile's rate); annotators move it +-1 (sometimes +-2) with
  probability ``label_noise``; stage-scheme agencies turn the level into a stage;
* train and test are split by actor, stratified so each side of each agency has both
  classes.

Everything is drawn from ``numpy.random.default_rng`` streams derived from the seed, so
the same inputs give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from federation.errors import ConfigError, DataError, Rule
from federation.metrics import roc_auc
from federation.schema import CONVERSATION_LABEL_SCHEMES, CONVERSATION_SCHEMA_VERSION
from simulation import _conversation_phrases as cp
from simulation.generator import (
    _SLUG,
    FederationManifest,
    _duplicate_problems,
    _is_number,
    _listing,
    _rng,
)

GENERATOR_VERSION = "1"
GENERATOR_NAME = "heroes-fl simulation.conversations"
MARKER_FILE = ".heroes-generator.json"   # the same marker as adverts: one safety rule
TASK = "conversation-risk"
EXPORT_FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
AGENCY_KINDS: tuple[str, ...] = ("police", "hotline", "ngo")
LANGUAGES: tuple[str, ...] = cp.CONVERSATION_LANGUAGES
CSV_COLUMNS: tuple[str, ...] = ("conversation_id", "position", "role", "timestamp", "text",
                                "label", "synthetic")
MIN_CONVERSATIONS_PER_AGENCY = 40
MIN_MESSAGES, MAX_MESSAGES_GENERATED = 6, 30

#: Stage of each move (the stage scheme's order: 1 contact, 2 grooming, 3 solicitation,
#: 4 extortion; 0 = evidence against). A reported move of stage >= 2 counts only after a
#: lower-stage reported move.
MOVE_STAGE: Mapping[str, int] = MappingProxyType({
    "access_probing": 1, "deceptive_trust": 1, "gifts": 1,
    "risk_assessment": 2, "isolation": 2, "secrecy": 2, "platform_move": 2, "debt": 2,
    "image_request": 3, "approach": 3, "document_retention": 3,
    "threat_share": 4, "payment_demand": 4, "deadline": 4, "family_threat": 4,
    "guardian_involved": 0, "public_group": 0,
})
MOVES: tuple[str, ...] = tuple(MOVE_STAGE)

#: Signed weight of each counted move in the latent risk (negative: evidence against).
DEFAULT_MOVE_WEIGHTS: Mapping[str, float] = MappingProxyType({
    "access_probing": 0.5, "deceptive_trust": 0.7, "gifts": 0.4,
    "risk_assessment": 1.2, "isolation": 0.9, "secrecy": 1.2, "platform_move": 0.7,
    "debt": 1.1,
    "image_request": 1.5, "approach": 1.1, "document_retention": 1.6,
    "threat_share": 1.6, "payment_demand": 0.9, "deadline": 0.6, "family_threat": 1.4,
    "guardian_involved": -0.8, "public_group": -0.5,
})

#: Risky patterns: the moves each stage draws from (O'Connell 2003; Lorenzo-Dus et al.
#: 2016; NCMEC/Europol/FBI sextortion alerts; ILO 2012) and how far conversations get.
RISKY_STAGES: Mapping[str, Mapping[int, tuple[str, ...]]] = MappingProxyType({
    "grooming": {1: ("access_probing", "deceptive_trust", "gifts"),
                 2: ("risk_assessment", "secrecy", "isolation", "platform_move"),
                 3: ("image_request", "approach"), 4: ("threat_share", "deadline")},
    "sextortion": {1: ("deceptive_trust", "access_probing"), 2: ("platform_move",),
                   3: ("image_request",), 4: ("threat_share", "payment_demand", "deadline")},
    "coercion": {1: ("deceptive_trust", "gifts"), 2: ("debt", "isolation"),
                 3: ("document_retention",),
                 4: ("family_threat", "payment_demand", "deadline")},
})
REACHED_STAGE: Mapping[str, tuple[float, float, float, float]] = MappingProxyType({
    "grooming": (0.2, 0.3, 0.35, 0.15),     # P(stage 1..4)
    "sextortion": (0.15, 0.1, 0.2, 0.55),
    "coercion": (0.15, 0.25, 0.3, 0.3),
})

#: Benign look-alikes: the moves each may make (same phrases as the risky ones).
BENIGN_MENUS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "homework": ("image_request", "secrecy", "deceptive_trust", "platform_move",
                 "threat_share", "public_group", "deadline", "access_probing"),
    "pickup": ("approach", "risk_assessment", "secrecy", "guardian_involved", "deadline",
               "family_threat", "image_request"),
    "coach": ("access_probing", "image_request", "platform_move", "public_group",
              "guardian_involved", "deadline", "approach", "document_retention",
              "risk_assessment"),
    "customer_service": ("payment_demand", "deadline", "threat_share", "debt",
                         "document_retention", "gifts", "platform_move", "secrecy"),
    "gaming": ("gifts", "secrecy", "isolation", "threat_share", "payment_demand", "deadline",
               "debt", "image_request", "deceptive_trust"),
    "reminder": ("deadline", "payment_demand", "document_retention", "family_threat",
                 "guardian_involved", "public_group", "access_probing", "debt"),
})
BENIGN_KINDS: tuple[str, ...] = tuple(BENIGN_MENUS)
RISKY_PATTERNS: tuple[str, ...] = tuple(RISKY_STAGES)

#: Which risky patterns each kind of agency sees most (police: seized coercion and
#: extortion cases; hotlines: reports of sextortion and grooming; NGOs: grooming).
PATTERN_MIX: Mapping[str, tuple[float, float, float]] = MappingProxyType({
    "police": (0.3, 0.35, 0.35), "hotline": (0.45, 0.45, 0.1), "ngo": (0.55, 0.25, 0.2),
})

_ACTOR_EFFECT_SD = 0.15
_ACTOR_EFFECT_RISKY = 0.2
_CONVERSATION_NOISE_SD = 0.15
_READING_SD = 0.9
_RISKY_SHARE_PER_POSITIVE = 1.6
_SIZE_P_BENIGN = 0.3        # geometric conversations per actor (mean ~3)
_SIZE_P_RISKY = 0.18        # (mean ~5)
_MAX_ACTOR_SIZE = 25
_P_TWO_LEVELS = 0.25
_P_BENIGN_BY_REPORTED = 0.6
_P_BENIGN_BY_OTHER = 0.1
_P_REPLY = 0.6
_P_RISKY_ASIDE = 0.5        # a risky conversation also holds one decoy from a contact
_START = datetime(2024, 1, 1, tzinfo=UTC)
_DAYS = 730


# --------------------------------------------------------------------------- presets

@dataclass(frozen=True)
class ConversationAgency:
    """One agency holding conversations; validated when built."""

    agency_id: str
    display_name: str
    kind: str
    language: str
    conversations: int
    positive_rate: float
    label_scheme: str
    label_noise: float
    export_format: str
    timestamps: bool = True

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        problems = _agency_problems(f"agency {self.agency_id!r}", values)
        if problems:
            raise ConfigError(problems, source=f"agency profile {self.agency_id!r}")


@dataclass(frozen=True)
class ConversationPreset:
    """A named set of conversation-holding agencies; ``scale`` multiplies every size."""

    name: str
    agencies: tuple[ConversationAgency, ...]
    scale: float = 1.0

    def __post_init__(self) -> None:
        problems = _preset_problems({"name": self.name, "scale": self.scale})
        if not self.agencies:
            problems.append("agencies: got none; a federation needs at least one agency. "
                            "Fix: list the agencies under 'agencies'.")
        problems += _duplicate_problems([a.agency_id for a in self.agencies])
        if problems:
            raise ConfigError(problems, source=f"preset {self.name!r}")

    def sizes(self) -> dict[str, int]:
        """Conversations per agency after scaling (at least MIN_CONVERSATIONS_PER_AGENCY)."""
        return {a.agency_id: max(MIN_CONVERSATIONS_PER_AGENCY, round(a.conversations * self.scale))
                for a in self.agencies}


_AGENCY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ConversationAgency))
_OPTIONAL_FIELDS: tuple[str, ...] = ("timestamps",)
_PRESET_KEYS: tuple[str, ...] = ("name", "scale", "agencies")


def _agency_problems(where: str, v: Mapping[str, Any]) -> list[str]:
    """Every problem with one agency's values, each naming value, rule and fix."""
    out: list[str] = []
    aid = v.get("agency_id")
    if not isinstance(aid, str) or not _SLUG.match(aid):
        out.append(f"{where}.agency_id: got {aid!r}; it must be a lower-case slug "
                   "(letters, digits, single hyphens). Fix: e.g. 'uk-hotline'.")
    if not isinstance(v.get("display_name"), str) or not v.get("display_name"):
        out.append(f"{where}.display_name: got {v.get('display_name')!r}; it must be a "
                   "non-empty string. Fix: e.g. 'UK hotline (synthetic)'.")
    for key, allowed in (("kind", AGENCY_KINDS), ("language", LANGUAGES),
                         ("label_scheme", tuple(CONVERSATION_LABEL_SCHEMES)),
                         ("export_format", EXPORT_FORMATS)):
        if v.get(key) not in allowed:
            out.append(f"{where}.{key}: got {v.get(key)!r}; it must be one of "
                       f"{_listing(allowed)}. Fix: use one of those spellings.")
    size = v.get("conversations")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        out.append(f"{where}.conversations: got {size!r}; it must be a whole number >= 1. "
                   "Fix: give the agency's size before scaling, e.g. 1500.")
    rate = v.get("positive_rate")
    if not _is_number(rate) or not 0.0 < float(rate) <= 0.5:
        out.append(f"{where}.positive_rate: got {rate!r}; it must be a share in (0, 0.5]. "
                   "Fix: e.g. 0.12 (reported conversations are more often positive than "
                   "adverts).")
    noise = v.get("label_noise")
    if not _is_number(noise) or not 0.0 <= float(noise) <= 1.0:
        out.append(f"{where}.label_noise: got {noise!r}; it must be a probability in [0, 1]. "
                   "Fix: e.g. 0.15.")
    if not isinstance(v.get("timestamps", True), bool):
        out.append(f"{where}.timestamps: got {v.get('timestamps')!r}; it must be true or "
                   "false. Fix: false for an agency whose exports omit message times.")
    return out


def _preset_problems(v: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    name = v.get("name")
    if not isinstance(name, str) or not name:
        out.append(f"name: got {name!r}; it must be a non-empty string. "
                   "Fix: e.g. 'conversations_six'.")
    scale = v.get("scale", 1.0)
    if not _is_number(scale) or not 0.0 < float(scale) <= 100.0:
        out.append(f"scale: got {scale!r}; it must be a number in (0, 100] that multiplies "
                   "every agency's size. Fix: e.g. 0.25 for a quick run.")
    return out


def preset_from_mapping(data: Mapping[str, Any], *, source: str = "preset"
                        ) -> ConversationPreset:
    """Build a conversation preset from a plain mapping; every problem is raised at once."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"got {type(data).__name__}; a preset must be a mapping with keys "
                           f"{_listing(_PRESET_KEYS)}. Fix: write the preset as a YAML dict."],
                          source=source)
    problems = [f"{key!r} is not a preset key; allowed: {_listing(_PRESET_KEYS)}. "
                "Fix: remove it or correct its spelling." for key in data
                if key not in _PRESET_KEYS]
    problems += _preset_problems(data)
    raw = data.get("agencies")
    if not isinstance(raw, (list, tuple)) or not raw:
        problems.append(f"agencies: got {raw!r}; it must be a non-empty list of agency dicts. "
                        f"Fix: list agencies with keys {_listing(_AGENCY_FIELDS)}.")
        raw = []
    for i, item in enumerate(raw):
        where = f"agencies[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: got {item!r}; each agency must be a mapping. "
                            f"Fix: give keys {_listing(_AGENCY_FIELDS)}.")
            continue
        problems += [f"{where}: {key!r} is not an agency key; allowed: "
                     f"{_listing(_AGENCY_FIELDS)}. Fix: remove it or fix its spelling."
                     for key in item if key not in _AGENCY_FIELDS]
        missing = [k for k in _AGENCY_FIELDS if k not in item and k not in _OPTIONAL_FIELDS]
        if missing:
            problems.append(f"{where}: missing {_listing(missing)}. Fix: add them.")
        else:
            problems += _agency_problems(where, item)
    problems += _duplicate_problems([a.get("agency_id") for a in raw if isinstance(a, Mapping)])
    if problems:
        raise ConfigError(problems, source=source)
    agencies = tuple(
        ConversationAgency(
            agency_id=str(a["agency_id"]), display_name=str(a["display_name"]),
            kind=str(a["kind"]), language=str(a["language"]),
            conversations=int(a["conversations"]), positive_rate=float(a["positive_rate"]),
            label_scheme=str(a["label_scheme"]), label_noise=float(a["label_noise"]),
            export_format=str(a["export_format"]), timestamps=bool(a.get("timestamps", True)),
        )
        for a in raw
    )
    return ConversationPreset(name=str(data["name"]), agencies=agencies,
                              scale=float(data.get("scale", 1.0)))


def load_preset(path: Path) -> ConversationPreset:
    """Read a conversation preset YAML file (plain YAML, no Hydra interpolation)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"cannot read the file ({exc.strerror}). Fix: check the path."],
                          source=str(path)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"is not valid YAML ({exc}). Fix: correct the syntax."],
                          source=str(path)) from exc
    return preset_from_mapping(data, source=str(path))


def resolve_weights(overrides: Mapping[str, float] | None) -> dict[str, float]:
    """Default move weights with the given overrides; unknown names or non-finite fail."""
    weights = dict(DEFAULT_MOVE_WEIGHTS)
    problems: list[str] = []
    for key, value in (overrides or {}).items():
        if key not in weights:
            problems.append(f"{key!r} is not a move; allowed: {_listing(MOVES)}. "
                            "Fix: correct the name.")
        elif not _is_number(value) or not math.isfinite(float(value)):
            problems.append(f"{key}: got {value!r}; a weight must be a finite number. "
                            "Fix: e.g. 0.5 (negative for evidence against).")
        else:
            weights[key] = float(value)
    if problems:
        raise ConfigError(problems, source="move_weights")
    return weights


# --------------------------------------------------------------------------- scripts

@dataclass(frozen=True)
class _Line:
    role: str
    text: str
    move: str | None          # None for small talk and replies


@dataclass
class _Conversation:
    agency: int
    actor: int
    pattern: str
    stage: int
    lines: list[_Line]
    start: float              # seconds after _START
    gaps: list[float]
    counted: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Actor:
    actor_id: str
    agency: int
    pattern: str
    effect: float


class _Writer:
    """Writes one agency's conversations into the shared list (one rng stream each)."""

    def __init__(self, a: int, prof: ConversationAgency, rng: np.random.Generator) -> None:
        self.a, self.prof, self.rng = a, prof, rng
        self.lang = prof.language

    def _pick(self, options: tuple[str, ...]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def _say(self, role: str, move: str | None) -> _Line:
        pool = cp.MOVE_PHRASES[move][self.lang] if move else (
            cp.REPLIES[self.lang] if role == "contact" and self.rng.random() < 0.5
            else cp.FILLER[self.lang])
        text = self._pick(pool)
        amount = int(self.rng.choice([20, 30, 50, 80, 100, 150, 200, 300]))
        text = text.replace("{amount}", cp.CURRENCY[self.lang].format(n=amount))
        text = text.replace("{name}", self._pick(cp.NAMES))
        u = self.rng.random()
        if u < 0.35:
            text = text[:1].lower() + text[1:]
        elif u < 0.45:
            text = text.rstrip("?.!")
        if self.rng.random() < 0.08:
            text = f"{text} {self._pick(cp.EMOJI)}"
        return _Line(role, text, move)

    def risky_script(self, pattern: str) -> tuple[int, list[tuple[str, str]]]:
        stages = RISKY_STAGES[pattern]
        reached = 1 + int(self.rng.choice(4, p=np.asarray(REACHED_STAGE[pattern])))
        events: list[tuple[str, str]] = []
        for s in range(1, reached + 1):
            menu = stages[s]
            k = int(self.rng.integers(1, min(2, len(menu)) + 1))
            for m in self.rng.choice(np.asarray(menu), size=k, replace=False):
                events.append(("reported", str(m)))
        if self.rng.random() < _P_RISKY_ASIDE:
            kind = self._pick(BENIGN_KINDS)
            aside = ("contact", self._pick(BENIGN_MENUS[kind]))
            events.insert(int(self.rng.integers(len(events) + 1)), aside)
        return reached, events

    def benign_script(self, kind: str) -> list[tuple[str, str]]:
        menu = BENIGN_MENUS[kind]
        k = int(self.rng.integers(3, 9))
        moves = [str(m) for m in self.rng.choice(np.asarray(menu), size=min(k, len(menu)),
                                                 replace=False)]
        roles = []
        for _ in moves:
            u = self.rng.random()
            roles.append("reported" if u < _P_BENIGN_BY_REPORTED else
                         "other" if u < _P_BENIGN_BY_REPORTED + _P_BENIGN_BY_OTHER
                         else "contact")
        # The reported account's moves never climb the stages: a look-alike, not a pattern.
        slots = [i for i, r in enumerate(roles) if r == "reported"]
        mine = sorted((moves[i] for i in slots), key=lambda m: -MOVE_STAGE[m])
        for i, m in zip(slots, mine, strict=True):
            moves[i] = m
        return list(zip(roles, moves, strict=True))

    def conversation(self, actor: int, pattern: str) -> _Conversation:
        if pattern in RISKY_STAGES:
            stage, events = self.risky_script(pattern)
        else:
            stage, events = 0, self.benign_script(pattern.removeprefix("benign-"))
        n_total = int(self.rng.integers(MIN_MESSAGES, MAX_MESSAGES_GENERATED + 1))
        lines: list[_Line] = []
        for role, move in events:
            lines.append(self._say(role, move))
            if self.rng.random() < _P_REPLY:
                lines.append(self._say("reported" if role != "reported" else "contact", None))
        while len(lines) < n_total:
            role = "reported" if self.rng.random() < 0.5 else "contact"
            lines.insert(int(self.rng.integers(len(lines) + 1)), self._say(role, None))
        start = float(self.rng.uniform(0, _DAYS * 86400))
        gaps = [float(g) for g in self.rng.exponential(120.0, len(lines))]
        return _Conversation(self.a, actor, pattern, stage, lines, start, gaps)


def _count_moves(conv: _Conversation) -> set[str]:
    """The moves that count: by the reported account, after a lower-stage reported move."""
    lowest = math.inf
    counted: set[str] = set()
    for i, line in enumerate(conv.lines):
        if line.role != "reported" or line.move is None:
            continue
        s = MOVE_STAGE[line.move]
        if s <= 1 or lowest < s:
            counted.add(line.move)
            conv.counted.append((i, line.move))
        lowest = min(lowest, s) if s >= 1 else lowest
    return counted


def _generate(preset: ConversationPreset, seed: int
              ) -> tuple[list[_Actor], list[_Conversation]]:
    actors: list[_Actor] = []
    convs: list[_Conversation] = []
    for a, (prof, size) in enumerate(zip(preset.agencies, preset.sizes().values(),
                                         strict=True)):
        rng = _rng(seed, 1, a)
        writer = _Writer(a, prof, rng)
        n_risky = round(min(0.9, _RISKY_SHARE_PER_POSITIVE * prof.positive_rate) * size)
        made = 0
        while made < size:
            risky = made < n_risky
            if risky:
                pattern = RISKY_PATTERNS[int(rng.choice(3, p=np.asarray(PATTERN_MIX[prof.kind])))]
            else:
                pattern = "benign-" + writer._pick(BENIGN_KINDS)
            p = _SIZE_P_RISKY if risky else _SIZE_P_BENIGN
            k = min(int(rng.geometric(p)), _MAX_ACTOR_SIZE, size - made,
                    (n_risky - made) if risky else size)
            effect = float(rng.normal(_ACTOR_EFFECT_RISKY if risky else 0.0, _ACTOR_EFFECT_SD))
            actor = len(actors)
            actors.append(_Actor(f"{prof.agency_id}-actor-{actor:05d}", a, pattern, effect))
            convs.extend(writer.conversation(actor, pattern) for _ in range(k))
            made += k
    return actors, convs


# --------------------------------------------------------------------------- labels

def _expert_levels(preset: ConversationPreset, agency: np.ndarray, risk: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clean expert levels (a discretised, noisy reading of risk) and annotated levels."""
    n = risk.size
    reading = risk + rng.normal(0.0, _READING_SD, n)
    move = rng.random(n)
    sign = np.where(rng.random(n) < 0.5, -1, 1)
    two = rng.random(n) < _P_TWO_LEVELS
    clean = np.zeros(n, dtype=np.int64)
    noisy = np.zeros(n, dtype=np.int64)
    for a, prof in enumerate(preset.agencies):
        rows = np.flatnonzero(agency == a)
        m = rows.size
        noise, p2 = prof.label_noise, _P_TWO_LEVELS
        # Annotators move more level-3 and level-2 readings up than 4-6 down: correct q.
        q = prof.positive_rate / (1.0 + noise * (0.5 + 0.5 * p2 - 0.25 - 0.15 * p2))
        n_pos = round(q * m)
        counts = [round(0.2 * n_pos), round(0.3 * n_pos)]
        counts.append(n_pos - sum(counts))
        counts += [round(q * m), round(q * m)]
        counts.append(round(0.4 * max(0, m - sum(counts))))
        levels = np.concatenate([np.full(max(0, c), lv) for c, lv in
                                 zip(counts, (6, 5, 4, 3, 2, 1), strict=True)] +
                                [np.zeros(m, dtype=np.int64)])[:m]
        lv = np.empty(m, dtype=np.int64)
        lv[np.argsort(-reading[rows], kind="stable")] = levels
        clean[rows] = lv
        step = np.where(two[rows], 2, 1) * sign[rows] * (move[rows] < noise)
        noisy[rows] = np.clip(lv + step, 0, 6)
    return clean, noisy


def _scheme_label(scheme: str, level: int, stage: int) -> int:
    """A 0-6 level in the agency's scheme; the stage scheme keeps the true stage where the
    level agrees (positive: stage 2-4; negative: none or contact)."""
    if scheme != "stage":
        return CONVERSATION_LABEL_SCHEMES[scheme].from_expert(level)
    return min(max(stage, 2), 4) if level >= 4 else min(stage, 1)


def _split(preset: ConversationPreset, actors: list[_Actor], convs: list[_Conversation],
           positive: np.ndarray, test_fraction: float, rng: np.random.Generator
           ) -> np.ndarray:
    """Test actors per agency, stratified by whether the actor has a positive conversation,
    so each side of each agency holds both classes (with two or more positive actors)."""
    has_pos = np.zeros(len(actors), dtype=bool)
    for c, conv in enumerate(convs):
        has_pos[conv.actor] |= bool(positive[c])
    test = np.zeros(len(actors), dtype=bool)
    home = np.array([act.agency for act in actors])
    for a in range(len(preset.agencies)):
        for group in (True, False):
            ids = np.flatnonzero((home == a) & (has_pos == group))
            if ids.size == 0:
                continue
            k = round(test_fraction * ids.size)
            if ids.size >= 2:
                k = min(max(k, 1), ids.size - 1)
            test[rng.permutation(ids)[:k]] = True
    return test


# --------------------------------------------------------------------------- word spotting

def _word_spotting_auc(convs: list[_Conversation], positive: np.ndarray,
                       in_test: np.ndarray) -> float:
    """Best pooled test ROC-AUC of a bag-of-words model that sees neither order nor roles.

    Unigrams and bigrams over each conversation's messages sorted alphabetically (so no
    order leaks through bigrams), a logistic regression fitted on train; the best of a small
    grid of C on the test split is kept, which flatters word spotting on purpose.
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    docs = ["\n".join(sorted(line.text for line in c.lines)) for c in convs]
    vec = CountVectorizer(binary=True, ngram_range=(1, 2), min_df=2)
    x_train = vec.fit_transform([d for d, t in zip(docs, in_test, strict=True) if not t])
    x_test = vec.transform([d for d, t in zip(docs, in_test, strict=True) if t])
    y_train, y_test = positive[~in_test], positive[in_test]
    if y_train.min() == y_train.max() or y_test.min() == y_test.max():
        return math.nan
    best = 0.0
    for c in (0.1, 1.0, 10.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
        best = max(best, roc_auc(y_test.astype(float), model.decision_function(x_test)))
    return best


# --------------------------------------------------------------------------- files

def _check_out_dir(out_dir: Path, preset: ConversationPreset, seed: int) -> None:
    """Refuse a non-empty directory unless it is this preset's and seed's earlier output."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(Rule("is a file, not a directory.",
                             "give a new or empty directory as out_dir."), file=out_dir)
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    marker = out_dir / MARKER_FILE
    if not marker.is_file():
        raise DataError(Rule("is not empty and is not a generator output; the generator never "
                             "deletes or overwrites files it did not write.",
                             "give a new or empty directory as out_dir."), file=out_dir)
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(Rule("has an unreadable generator marker (.heroes-generator.json).",
                             "give a new or empty directory as out_dir."), file=out_dir) from exc
    same = (isinstance(info, dict) and info.get("generator") == GENERATOR_NAME
            and info.get("preset") == preset.name and info.get("seed") == seed
            and info.get("agencies") == [a.agency_id for a in preset.agencies])
    if not same:
        raise DataError(Rule("holds generator output of another generator, preset or seed.",
                             "give a new or empty directory as out_dir, or remove the old "
                             "output yourself."), file=out_dir)


def _write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(data)
    os.replace(tmp, path)


def _dump(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


_MESSAGE_TYPE = pa.struct([("role", pa.string()), ("timestamp", pa.string()),
                           ("text", pa.string())])
_PARQUET_SCHEMA = pa.schema([("conversation_id", pa.string()),
                             ("messages", pa.list_(_MESSAGE_TYPE)),
                             ("label", pa.int64()), ("synthetic", pa.bool_())])


def _export(records: list[dict[str, Any]], fmt: str, timestamps: bool) -> str | bytes:
    """One split's file in the contract's format (see the BRIEF and federation.schema)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if fmt == "parquet":
        table = pa.Table.from_pylist(
            [{**r, "messages": [{"role": m["role"], "timestamp": m.get("timestamp"),
                                 "text": m["text"]} for m in r["messages"]]} for r in records],
            schema=_PARQUET_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return bytes(sink.getvalue().to_pybytes())
    columns = [c for c in CSV_COLUMNS if timestamps or c != "timestamp"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        for pos, m in enumerate(r["messages"]):
            row = {"conversation_id": r["conversation_id"], "position": pos, "role": m["role"],
                   "timestamp": m.get("timestamp"), "text": m["text"], "label": r["label"],
                   "synthetic": "true"}
            writer.writerow([row[c] for c in columns])
    return buf.getvalue()


def _iso(seconds: float) -> str:
    return (_START + timedelta(seconds=int(seconds))).strftime("%Y-%m-%dT%H:%M:%SZ")


def _auc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    return roc_auc(y, s) if y.size and 0 < y.sum() < y.size else math.nan


def _none_if_nan(v: float) -> float | None:
    return None if math.isnan(v) else v


# --------------------------------------------------------------------------- entry point

def generate_conversations(preset: ConversationPreset, out_dir: Path, *, seed: int,
                           test_fraction: float = 0.25,
                           move_weights: Mapping[str, float] | None = None
                           ) -> FederationManifest:
    """Generate every agency's conversation export and the ground truth under ``out_dir``."""
    out_dir = Path(out_dir)
    problems = []
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        problems.append(f"seed: got {seed!r}; it must be a whole number >= 0. Fix: e.g. 0.")
    if not _is_number(test_fraction) or not 0.0 < test_fraction < 1.0:
        problems.append(f"test_fraction: got {test_fraction!r}; it must be in (0, 1). "
                        "Fix: e.g. 0.25.")
    if problems:
        raise ConfigError(problems, source="generate_conversations")
    weights = resolve_weights(move_weights)
    _check_out_dir(out_dir, preset, seed)
    ids = [a.agency_id for a in preset.agencies]

    actors, convs = _generate(preset, seed)
    n = len(convs)
    agency = np.array([c.agency for c in convs], dtype=np.int64)
    x = np.zeros((n, len(MOVES)))
    for i, conv in enumerate(convs):
        for m in _count_moves(conv):
            x[i, MOVES.index(m)] = 1.0
    w = np.array([weights[m] for m in MOVES])
    visible = x @ w
    rng_lab = _rng(seed, 3)
    effects = np.array([actors[c.actor].effect for c in convs])
    risk = effects + visible + rng_lab.normal(0.0, _CONVERSATION_NOISE_SD, n)
    clean, noisy = _expert_levels(preset, agency, risk, rng_lab)
    positive = noisy >= 4
    test_actor = _split(preset, actors, convs, positive, test_fraction, _rng(seed, 4))
    in_test = test_actor[np.array([c.actor for c in convs], dtype=np.int64)]

    y_test = positive[in_test].astype(float)
    oracle = _auc_or_nan(y_test, risk[in_test])
    visible_auc = _auc_or_nan(y_test, visible[in_test])
    spotting = _word_spotting_auc(convs, positive, in_test)
    per_agency: dict[str, float] = {}
    counts: dict[str, dict[str, int]] = {}
    for a, aid in enumerate(ids):
        te, tr = in_test & (agency == a), ~in_test & (agency == a)
        per_agency[aid] = _auc_or_nan(positive[te].astype(float), risk[te])
        counts[aid] = {"train": int(tr.sum()), "test": int(te.sum()),
                       "train_positive": int(positive[tr].sum()),
                       "test_positive": int(positive[te].sum())}

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / MARKER_FILE, _dump(
        {"generator": GENERATOR_NAME, "preset": preset.name, "seed": seed, "agencies": ids}))
    for a, prof in enumerate(preset.agencies):
        _write_agency(out_dir, a, prof, actors, convs, in_test, risk, clean, noisy, positive,
                      weights)
    _write_atomic(out_dir / "federation.json", _dump({
        "preset": preset.name, "seed": seed, "scale": preset.scale,
        "test_fraction": test_fraction, "task": TASK, "synthetic": True,
        "generator_version": GENERATOR_VERSION, "agencies": ids,
        "oracle": {"pooled_test_roc_auc": _none_if_nan(oracle),
                   "per_agency_test_roc_auc": {k: _none_if_nan(v)
                                               for k, v in per_agency.items()}},
        "visible_test_roc_auc": _none_if_nan(visible_auc),
        "word_spotting_roc_auc": _none_if_nan(spotting),
        "move_weights": {m: weights[m] for m in MOVES},
        "counts": counts,
    }))
    return FederationManifest(
        root=out_dir, preset=preset.name, seed=seed, agencies=tuple(ids),
        oracle_roc_auc=oracle, oracle_per_agency=per_agency, visible_roc_auc=visible_auc,
        counts=counts, split_warnings=(),
    )


def _write_agency(out_dir: Path, a: int, prof: ConversationAgency, actors: list[_Actor],
                  convs: list[_Conversation], in_test: np.ndarray, risk: np.ndarray,
                  clean: np.ndarray, noisy: np.ndarray, positive: np.ndarray,
                  weights: Mapping[str, float]) -> None:
    rows = [c for c in range(len(convs)) if convs[c].agency == a]
    rows.sort(key=lambda c: (convs[c].start, c))
    exports: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    truth: list[str] = []
    for i, c in enumerate(rows):
        conv = convs[c]
        cid = f"{prof.agency_id}-c{i:06d}"
        split = "test" if in_test[c] else "train"
        label = _scheme_label(prof.label_scheme, int(noisy[c]), conv.stage)
        t = conv.start
        messages: list[dict[str, Any]] = []
        for line, gap in zip(conv.lines, conv.gaps, strict=True):
            t += 5.0 + gap
            msg: dict[str, Any] = {"role": line.role}
            if prof.timestamps:
                msg["timestamp"] = _iso(t)
            msg["text"] = line.text
            messages.append(msg)
        exports[split].append({"conversation_id": cid, "messages": messages, "label": label,
                               "synthetic": True})
        truth.append(json.dumps({
            "conversation_id": cid, "split": split, "actor_id": actors[conv.actor].actor_id,
            "pattern": conv.pattern, "stage": conv.stage, "latent_risk": float(risk[c]),
            "expert_level": int(clean[c]), "annotated_level": int(noisy[c]),
            "clean_label": _scheme_label(prof.label_scheme, int(clean[c]), conv.stage),
            "annotated_label": label, "binary_label": int(positive[c]),
            "rationale_messages": [{"index": idx, "move": move,
                                    "weight": weights[move]}
                                   for idx, move in conv.counted],
        }, ensure_ascii=False) + "\n")
    agency_dir = out_dir / "agencies" / prof.agency_id
    ext = prof.export_format
    for split, recs in exports.items():
        _write_atomic(agency_dir / f"conversations_{split}.{ext}",
                      _export(recs, ext, prof.timestamps))
    _write_atomic(agency_dir / "manifest.json", _dump({
        "agency": prof.agency_id, "display_name": prof.display_name,
        "label_scheme": prof.label_scheme, "format": ext,
        "train": f"conversations_train.{ext}", "test": f"conversations_test.{ext}",
        "schema_version": CONVERSATION_SCHEMA_VERSION, "synthetic": True,
    }))
    _write_atomic(out_dir / "ground_truth" / f"{prof.agency_id}.jsonl", "".join(truth))
