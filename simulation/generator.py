"""Deterministic generator of synthetic agencies' advert exports.

Each agency's export looks like a real one (advert rows, a label in the agency's own
scheme) while a separate ``ground_truth/`` folder keeps what no agency knows: the hidden
entity behind each advert, the latent risk, and character spans of every inserted
indicator phrase. The generative model, in short:

* hidden entities (benign posters or exploitative organisers) with heavy-tailed sizes post
  reposts of 1-3 templates, rotating persona names, cities and churned fictional phones;
  a share of them also post into another agency;
* each template carries indicator phrases; exploitative entities use the positive-weight
  indicators more often and "new in town" less;
* latent risk ``r = entity_effect + sum_k w_k x_k + advert noise``;
* an expert reads ``r`` with some judgement noise and gives a 0-6 level (cut points per
  agency put the positive share at the profile's rate); annotators then disagree by +-1
  (sometimes +-2) levels with probability ``label_noise``;
* train and test are split by entity, across agencies.

Everything is drawn from ``numpy.random.default_rng`` streams derived from the seed, so
the same inputs give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import date, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeGuard

import numpy as np
import yaml

from federation.errors import ConfigError, DataError, Rule
from federation.metrics import roc_auc
from federation.schema import CATEGORIES, LABEL_SCHEMES, LANGUAGES, SCHEMA_VERSION
from simulation import _phrases as ph

GENERATOR_VERSION = "2"  # 2: no agency of a single own entity
GENERATOR_NAME = "heroes-fl simulation.generator"
MARKER_FILE = ".heroes-generator.json"
EXPORT_COLUMNS: tuple[str, ...] = (
    "advert_id", "posted_at", "site", "language", "category", "text", "phone", "label",
    "synthetic",
)
EXPORT_FORMATS: tuple[str, ...] = ("csv", "jsonl")
MIN_ADVERTS_PER_AGENCY = 40

INDICATORS: tuple[str, ...] = ph.ESCORT_INDICATORS + ph.LABOUR_INDICATORS

#: Signed weight of each indicator in the latent risk. Positive: evidence of exploitation;
#: negative: evidence against ("new in town" in the 2024 study).
DEFAULT_INDICATOR_WEIGHTS: Mapping[str, float] = MappingProxyType({
    "trust_claims": 1.6,
    "obscured_phone": 1.1,
    "youth_language": 1.2,
    "ethnicity_listed": 0.8,
    "managed_voice": 0.5,
    "multiple_providers": 0.5,
    "availability_control": 0.4,
    "new_in_town": -0.6,
    "obfuscation": 0.3,
    "unrealistic_pay": 0.7,
    "travel_housing_provided": 0.5,
    "recruitment_fee": 1.3,
    "document_retention": 1.8,
    "no_company_contact": 0.6,
    "gender_age_targeting": 0.8,
    "urgency": 0.4,
})

# Constants of the generative model (tuned by the calibration check in the report).
_ENTITY_EFFECT_SD = 0.15        # hidden per-entity term, exploitative mean below
_ENTITY_EFFECT_EXPLOIT = 0.2
_ADVERT_NOISE_SD = 0.15         # per-advert hidden term
_READING_SD = 1.6               # expert's judgement noise (not in latent_risk)
_EXPLOIT_SHARE_PER_POSITIVE = 1.6  # exploitative advert share = this * positive_rate
_SIZE_P_BENIGN = 0.08           # geometric entity sizes, capped
_SIZE_P_EXPLOIT = 0.06
_MAX_ENTITY_SIZE = 60
_BAND3_PER_Q = 2.0              # expert level 3 share, relative to the positive share
_BAND2_PER_Q = 2.0
_P_TWO_LEVELS = 0.25            # share of annotator disagreements that move two levels
_P_DROP = 0.08                  # per advert: drop one template indicator
_P_ADD = 0.15                   # per advert: try to add one indicator
_P_TYPO = 0.12
_P_EMOJI = 0.25
_START = date(2024, 1, 1)
_DAYS = 730


# --------------------------------------------------------------------------- presets

@dataclass(frozen=True)
class AgencyProfile:
    """One agency as the generator sees it; validated when built."""

    agency_id: str
    display_name: str
    languages: tuple[str, ...]
    tasks: tuple[str, ...]
    adverts: int
    positive_rate: float
    label_scheme: str
    label_noise: float
    export_format: str

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        problems = _agency_problems(f"agency {self.agency_id!r}", values)
        if problems:
            raise ConfigError(problems, source=f"agency profile {self.agency_id!r}")


@dataclass(frozen=True)
class FederationPreset:
    """A named set of agencies; ``scale`` multiplies every agency's size."""

    name: str
    agencies: tuple[AgencyProfile, ...]
    scale: float = 1.0
    cross_agency_rate: float = 0.07
    skew: float = 1.0  # non-IID knob: 1 = the preset as written, 0 = one shared prevalence

    def __post_init__(self) -> None:
        problems = _preset_problems(
            {"name": self.name, "scale": self.scale, "cross_agency_rate": self.cross_agency_rate,
             "skew": self.skew}
        )
        if not self.agencies:
            problems.append("agencies: got none; a federation needs at least one agency. "
                            "Fix: list the agencies under 'agencies'.")
        problems += _duplicate_problems([a.agency_id for a in self.agencies])
        if problems:
            raise ConfigError(problems, source=f"preset {self.name!r}")

    def sizes(self) -> dict[str, int]:
        """Adverts per agency after scaling (at least MIN_ADVERTS_PER_AGENCY)."""
        return {a.agency_id: max(MIN_ADVERTS_PER_AGENCY, round(a.adverts * self.scale))
                for a in self.agencies}


_AGENCY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(AgencyProfile))
_PRESET_KEYS: tuple[str, ...] = ("name", "scale", "cross_agency_rate", "skew", "agencies")
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _listing(values: Sequence[str]) -> str:
    return ", ".join(values)


def _agency_problems(where: str, v: Mapping[str, Any]) -> list[str]:
    """Every problem with one agency's values, each naming value, rule and fix."""
    out: list[str] = []
    aid = v.get("agency_id")
    if not isinstance(aid, str) or not _SLUG.match(aid):
        out.append(f"{where}.agency_id: got {aid!r}; it must be a lower-case slug "
                   "(letters, digits, single hyphens). Fix: e.g. 'es-police'.")
    if not isinstance(v.get("display_name"), str) or not v.get("display_name"):
        out.append(f"{where}.display_name: got {v.get('display_name')!r}; it must be a "
                   "non-empty string. Fix: e.g. 'Spanish police (synthetic)'.")
    for key, allowed in (("languages", LANGUAGES), ("tasks", CATEGORIES)):
        items = v.get(key)
        if not isinstance(items, (list, tuple)) or not items:
            out.append(f"{where}.{key}: got {items!r}; it must be a non-empty list. "
                       f"Fix: list some of {_listing(allowed)}.")
            continue
        for item in items:
            if item not in allowed:
                out.append(f"{where}.{key}: {item!r} is not one of {_listing(allowed)}. "
                           "Fix: use one of those spellings.")
        if len(set(map(str, items))) != len(items):
            out.append(f"{where}.{key}: {list(items)!r} repeats an entry. Fix: list each once.")
    adverts = v.get("adverts")
    if not isinstance(adverts, int) or isinstance(adverts, bool) or adverts < 1:
        out.append(f"{where}.adverts: got {adverts!r}; it must be a whole number >= 1. "
                   "Fix: give the agency's size before scaling, e.g. 5000.")
    rate = v.get("positive_rate")
    if not _is_number(rate) or not 0.0 < float(rate) <= 0.5:
        out.append(f"{where}.positive_rate: got {rate!r}; it must be a share in (0, 0.5] "
                   "(positives are rare, 0.02-0.15 in the domain). Fix: e.g. 0.06.")
    scheme = v.get("label_scheme")
    if scheme not in LABEL_SCHEMES:
        out.append(f"{where}.label_scheme: got {scheme!r}; it must be one of "
                   f"{_listing(list(LABEL_SCHEMES))}. Fix: use one of those names.")
    noise = v.get("label_noise")
    if not _is_number(noise) or not 0.0 <= float(noise) <= 1.0:
        out.append(f"{where}.label_noise: got {noise!r}; it must be a probability in [0, 1]. "
                   "Fix: e.g. 0.15.")
    fmt = v.get("export_format")
    if fmt not in EXPORT_FORMATS:
        out.append(f"{where}.export_format: got {fmt!r}; it must be one of "
                   f"{_listing(EXPORT_FORMATS)}. Fix: use one of those.")
    return out


def _preset_problems(v: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    name = v.get("name")
    if not isinstance(name, str) or not name:
        out.append(f"name: got {name!r}; it must be a non-empty string. Fix: e.g. 'six_agency'.")
    scale = v.get("scale", 1.0)
    if not _is_number(scale) or not 0.0 < float(scale) <= 100.0:
        out.append(f"scale: got {scale!r}; it must be a number in (0, 100] that multiplies "
                   "every agency's size. Fix: e.g. 0.1 for a quick run.")
    rate = v.get("cross_agency_rate", 0.07)
    if not _is_number(rate) or not 0.0 <= float(rate) <= 0.5:
        out.append(f"cross_agency_rate: got {rate!r}; it must be a share in [0, 0.5] "
                   "(5-10% of entities post in two agencies). Fix: e.g. 0.07.")
    skew = v.get("skew", 1.0)
    if not _is_number(skew) or not 0.0 <= float(skew) <= MAX_SKEW:
        out.append(f"skew: got {skew!r}; it must be a number in [0, {MAX_SKEW:g}]: 0 gives "
                   "every agency the same label prevalence, 1 the preset's own, more "
                   "spreads them further apart. Fix: e.g. 1.0.")
    return out


#: Largest non-IID skew accepted (prevalences are clipped to [MIN_SKEWED_RATE, 0.5]).
MAX_SKEW = 3.0
MIN_SKEWED_RATE = 0.005


def apply_skew(preset: FederationPreset) -> FederationPreset:
    """The preset with each agency's label prevalence moved ``skew`` times its distance
    from the agencies' mean prevalence (clipped to [0.005, 0.5]).

    ``skew=1`` returns the preset unchanged (so default outputs are exactly as before);
    ``skew=0`` gives every agency the mean prevalence (labels closer to IID: languages,
    tasks and sizes still differ); ``skew=2`` doubles the spread. The agencies' language and
    task mixes, which set the indicator mix, are left as the preset writes them.
    """
    if preset.skew == 1.0:
        return preset
    mean = sum(a.positive_rate for a in preset.agencies) / len(preset.agencies)
    agencies = tuple(
        replace(a, positive_rate=min(0.5, max(MIN_SKEWED_RATE,
                                              mean + preset.skew * (a.positive_rate - mean))))
        for a in preset.agencies)
    return replace(preset, agencies=agencies)


def _duplicate_problems(ids: Sequence[object]) -> list[str]:
    seen: list[object] = []
    out: list[str] = []
    for aid in ids:
        if aid in seen:
            out.append(f"agencies: agency_id {aid!r} appears more than once; ids must be "
                       "unique. Fix: rename one of them.")
        seen.append(aid)
    return out


def preset_from_mapping(data: Mapping[str, Any], *, source: str = "preset") -> FederationPreset:
    """Build a preset from a plain mapping (YAML or an OmegaConf container).

    Every problem is collected first and raised once as a ConfigError.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError([f"got {type(data).__name__}; a preset must be a mapping with keys "
                           f"{_listing(_PRESET_KEYS)}. Fix: write the preset as a YAML dict."],
                          source=source)
    for key in data:
        if key not in _PRESET_KEYS:
            problems.append(f"{key!r} is not a preset key; allowed: {_listing(_PRESET_KEYS)}. "
                            "Fix: remove it or correct its spelling.")
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
        for key in item:
            if key not in _AGENCY_FIELDS:
                problems.append(f"{where}: {key!r} is not an agency key; allowed: "
                                f"{_listing(_AGENCY_FIELDS)}. Fix: remove it or fix its spelling.")
        missing = [k for k in _AGENCY_FIELDS if k not in item]
        if missing:
            problems.append(f"{where}: missing {_listing(missing)}. Fix: add them.")
        else:
            problems += _agency_problems(where, item)
    problems += _duplicate_problems(
        [a.get("agency_id") for a in raw if isinstance(a, Mapping)]
    )
    if problems:
        raise ConfigError(problems, source=source)
    agencies = tuple(
        AgencyProfile(
            agency_id=str(a["agency_id"]), display_name=str(a["display_name"]),
            languages=tuple(a["languages"]), tasks=tuple(a["tasks"]),
            adverts=int(a["adverts"]), positive_rate=float(a["positive_rate"]),
            label_scheme=str(a["label_scheme"]), label_noise=float(a["label_noise"]),
            export_format=str(a["export_format"]),
        )
        for a in raw
    )
    return FederationPreset(
        name=str(data["name"]), agencies=agencies, scale=float(data.get("scale", 1.0)),
        cross_agency_rate=float(data.get("cross_agency_rate", 0.07)),
        skew=float(data.get("skew", 1.0)),
    )


def load_preset(path: Path) -> FederationPreset:
    """Read a preset YAML file (plain YAML, no Hydra interpolation)."""
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
    """Default weights with the given overrides; unknown names or non-finite values fail."""
    weights = dict(DEFAULT_INDICATOR_WEIGHTS)
    problems: list[str] = []
    for key, value in (overrides or {}).items():
        if key not in weights:
            problems.append(f"{key!r} is not an indicator; allowed: {_listing(INDICATORS)}. "
                            "Fix: correct the name.")
        elif not _is_number(value) or not math.isfinite(float(value)):
            problems.append(f"{key}: got {value!r}; a weight must be a finite number. "
                            "Fix: e.g. 0.5 (negative for evidence against).")
        else:
            weights[key] = float(value)
    if problems:
        raise ConfigError(problems, source="indicator_weights")
    return weights


# --------------------------------------------------------------------------- generation

@dataclass(frozen=True)
class FederationManifest:
    """What was generated, where, and how well the hidden risk ranks the test labels."""

    root: Path
    preset: str
    seed: int
    agencies: tuple[str, ...]
    oracle_roc_auc: float
    oracle_per_agency: dict[str, float]   # NaN where undefined (one class in test)
    visible_roc_auc: float                # sum_k w_k x_k only: what the text shows
    counts: dict[str, dict[str, int]]
    split_warnings: tuple[str, ...]


@dataclass(frozen=True)
class _Template:
    template_id: str
    layout: tuple[tuple[str, int], ...]   # ("b", body index) or ("i", indicator index)
    variants: tuple[int, ...]             # phrase variant per INDICATORS index
    opener: int
    closer: int
    phone_closer: bool
    separator: str
    emoji: str


@dataclass
class _Entity:
    entity_id: str
    home: int
    exploitative: bool
    category: str
    language: str
    size: int
    effect: float


@dataclass
class _Adverts:
    """Column store of every advert, in generation order."""

    agency: list[int]
    entity: list[int]
    template: list[str]
    day: list[int]
    site: list[str]
    language: list[str]
    category: list[str]
    text: list[str]
    phone: list[str]
    spans: list[list[tuple[int, int, int]]]   # (start, end, indicator index)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


class _PhoneBook:
    """Hands out fictional numbers, unique until a range is used up (then it wraps)."""

    _KINDS: ClassVar[Mapping[str, tuple[tuple[str, float], ...]]] = {
        "en": (("uk", 0.5), ("ie", 0.3), ("us", 0.2)),
        "es-ES": (("es", 1.0),),
        "es-419": (("mx", 0.4), ("co", 0.4), ("pe", 0.2)),
        "pt-PT": (("pt", 1.0),),
        "pt-BR": (("br", 1.0),),
    }
    _CAPACITY: ClassVar[Mapping[str, int]] = {
        "uk": 1000, "ie": 10_000, "us": 80_000, "es": 1_000_000, "mx": 10_000, "co": 10_000,
        "pe": 1000, "pt": 1_000_000, "br": 10_000,
    }

    def __init__(self, rng: np.random.Generator) -> None:
        self._next = {k: 0 for k in self._CAPACITY}
        self._offset = {k: int(rng.integers(cap)) for k, cap in self._CAPACITY.items()}

    def kind_for(self, language: str, u: float) -> str:
        acc = 0.0
        kinds = self._KINDS[language]
        for kind, share in kinds:
            acc += share
            if u < acc:
                return kind
        return kinds[-1][0]

    def take(self, kind: str) -> str:
        cap = self._CAPACITY[kind]
        i = (7919 * self._next[kind] + self._offset[kind]) % cap  # 7919 is prime, coprime
        self._next[kind] += 1
        return _format_phone(kind, i)


def _format_phone(kind: str, i: int) -> str:
    formats = {
        "uk": lambda: f"07700 900{i:03d}",
        "ie": lambda: f"+353 00 555 {i:04d}",
        "us": lambda: f"({200 + i // 100}) 555-01{i % 100:02d}",
        "es": lambda: f"+34 000 {i // 1000:03d} {i % 1000:03d}",
        "mx": lambda: f"+52 00 5555 {i:04d}",
        "co": lambda: f"+57 000 555 {i:04d}",
        "pe": lambda: f"+51 000 555 {i:03d}",
        "pt": lambda: f"+351 000 {i // 1000:03d} {i % 1000:03d}",
        "br": lambda: f"+55 00 95555-{i:04d}",
    }
    return formats[kind]()


def _obscure(phone: str, base: str, style: int) -> str:
    """The 'obscured phone' indicator: the national digits spelled out or dotted."""
    national = phone.split(" ", 1)[1] if phone.startswith("+") else phone
    digits = [int(c) for c in national if c.isdigit()]
    lead = {"en": "call", "es": "llama al", "pt": "ligue"}[base]
    if style == 0:
        body = "-".join(ph.DIGIT_WORDS[base][d] for d in digits)
    elif style == 1:
        body = ".".join(str(d) for d in digits)
    else:
        body = " ".join(ph.DIGIT_WORDS[base][d] for d in digits)
    return f"{lead} {body}"


def _money(language: str, amount: int) -> str:
    if language == "en":
        return f"£{amount:,}"
    dotted = f"{amount:,}".replace(",", ".")
    if language == "es-419":
        return f"${dotted}"
    if language == "pt-BR":
        return f"R$ {dotted}"
    return f"{dotted} €"


def _nice(amount: float) -> int:
    step = 10 if amount < 1000 else (50 if amount < 5000 else 500)
    return max(step, round(amount / step) * step)


def _applicable(category: str) -> tuple[int, ...]:
    names = ph.ESCORT_INDICATORS if category == "escort" else ph.LABOUR_INDICATORS
    return tuple(INDICATORS.index(n) for n in names)


_APPLICABLE: dict[str, tuple[int, ...]] = {c: _applicable(c) for c in CATEGORIES}
_OBSCURED = INDICATORS.index("obscured_phone")
_NO_COMPANY = INDICATORS.index("no_company_contact")
_PROP = np.array([[ph.PROPENSITY[n][0] for n in INDICATORS],
                  [ph.PROPENSITY[n][1] for n in INDICATORS]])
_WORD = re.compile(r"[^\W\d_]{5,}")


def _weighted_index(weights: Sequence[float], u: float) -> int:
    total = sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w / total
        if u < acc:
            return i
    return len(weights) - 1


class _AgencyWriter:
    """Generates one agency's entities and adverts into the shared column store."""

    def __init__(self, index: int, profile: AgencyProfile, n_adverts: int,
                 rng: np.random.Generator, phones: _PhoneBook, store: _Adverts,
                 entities: list[_Entity]) -> None:
        self.index = index
        self.profile = profile
        self.n = n_adverts
        self.rng = rng
        self.phones = phones
        self.store = store
        self.entities = entities

    def run(self) -> None:
        share = min(0.6, _EXPLOIT_SHARE_PER_POSITIVE * self.profile.positive_rate)
        m_b, m_e = 1.0 / _SIZE_P_BENIGN, 1.0 / _SIZE_P_EXPLOIT
        p_exploit = share * m_b / (share * m_b + (1.0 - share) * m_e)
        lang_w = [1.0 / (i + 1) for i in range(len(self.profile.languages))]
        task_w = [1.0, 0.6, 0.4, 0.3][: len(self.profile.tasks)]
        made = 0
        while made < self.n:
            exploit = bool(self.rng.random() < p_exploit)
            size = int(self.rng.geometric(_SIZE_P_EXPLOIT if exploit else _SIZE_P_BENIGN))
            size = min(size, _MAX_ENTITY_SIZE, self.n - made)
            if made == 0 and size == self.n > 1:
                # one entity would hold the whole agency, and an entity split would leave
                # one side of it empty: it takes half (only agencies of 60 adverts or fewer)
                size = self.n // 2
            u = self.rng.random(2)
            ent = _Entity(
                entity_id=f"ent-{self.index:02d}-{len(self.entities):06d}", home=self.index,
                exploitative=exploit,
                category=self.profile.tasks[_weighted_index(task_w, float(u[0]))],
                language=self.profile.languages[_weighted_index(lang_w, float(u[1]))],
                size=size,
                effect=float(self.rng.normal(_ENTITY_EFFECT_EXPLOIT if exploit else 0.0,
                                             _ENTITY_EFFECT_SD)),
            )
            self.entities.append(ent)
            self._adverts(len(self.entities) - 1, ent)
            made += size

    def _template(self, tid: str, ent: _Entity) -> _Template:
        rng = self.rng
        base = ph.BASE_LANGUAGE[ent.language]
        filler = ph.FILLER[ent.category][base]
        applicable = _APPLICABLE[ent.category]
        u = rng.random(len(applicable))
        present = [k for k, uk in zip(applicable, u, strict=True)
                   if uk < _PROP[int(ent.exploitative), k]]
        variants = [0] * len(INDICATORS)
        for k in applicable:
            n_var = 3 if k == _OBSCURED else len(ph.INDICATOR_PHRASES[INDICATORS[k]][base])
            variants[k] = int(rng.integers(n_var))
        no_company = _NO_COMPANY in present

        def pick(part: str) -> int:
            options = [i for i, s in enumerate(filler[part])
                       if not (no_company and "{company" in s)]
            return options[int(rng.integers(len(options)))]

        n_bodies = int(rng.integers(1, 3))
        bodies = rng.choice(len(filler["body"]), size=n_bodies, replace=False)
        layout = [("b", int(b)) for b in bodies] + [("i", k) for k in present]
        order = rng.permutation(len(layout))
        phone_closer = bool(rng.random() < 0.7)
        return _Template(
            template_id=tid,
            layout=tuple(layout[int(i)] for i in order),
            variants=tuple(variants),
            opener=pick("open"),
            closer=pick("close_phone" if phone_closer else "close_plain"),
            phone_closer=phone_closer,
            separator=ph.SEPARATORS[int(rng.integers(len(ph.SEPARATORS)))],
            emoji=ph.EMOJI[int(rng.integers(len(ph.EMOJI)))] if rng.random() < 0.4 else "",
        )

    def _adverts(self, ent_index: int, ent: _Entity) -> None:
        rng = self.rng
        lang, base = ent.language, ph.BASE_LANGUAGE[ent.language]
        group = "escort" if ent.category == "escort" else "labour"
        n_templates = min(ent.size, 1 + int(ent.size >= 10) + int(ent.size >= 30))
        templates = [self._template(f"{ent.entity_id}-t{j}", ent) for j in range(n_templates)]
        t_weights = [1.0 / (j + 1) for j in range(n_templates)]
        names = list(rng.choice(ph.PERSONA_NAMES[base], size=int(rng.integers(1, 4)),
                                replace=False))
        cities = list(rng.choice(ph.CITIES[lang], size=int(rng.integers(1, 4)), replace=False))
        sites = list(rng.choice(ph.SITES[base][group], size=int(rng.integers(1, 3)),
                                replace=False))
        w1 = ph.COMPANY_WORDS[0][int(rng.integers(len(ph.COMPANY_WORDS[0])))]
        w2 = ph.COMPANY_WORDS[1][int(rng.integers(len(ph.COMPANY_WORDS[1])))]
        amounts = ph.AMOUNTS[lang]
        scale = float(rng.uniform(0.8, 1.3))
        kind = self.phones.kind_for(lang, float(rng.random()))
        per_phone = int(rng.integers(6, 25))  # under 25 adverts per number
        phone_list = [self.phones.take(kind) for _ in range(-(-ent.size // per_phone))]
        start = int(rng.integers(0, _DAYS))
        gaps = rng.geometric(1.0 / float(rng.uniform(1.0, 8.0)), size=ent.size) - 1
        days = np.minimum(start + np.cumsum(gaps), _DAYS - 1)
        vocab = {k: v[lang] for k, v in ph.VOCAB.items()}
        slots_fixed = {
            **vocab,
            "company": f"{w1} {w2}", "company_slug": f"{w1}-{w2}".lower(),
            "pay": _money(lang, _nice(amounts[4] * scale)),
            "fee": _money(lang, _nice(amounts[5] * scale)),
        }
        price_base = amounts[{"escort": 0, "job": 1, "housing": 2, "travel": 3}[ent.category]]
        draws = rng.random((ent.size, 14))
        store = self.store
        for a in range(ent.size):
            u = draws[a]
            tmpl = templates[_weighted_index(t_weights, float(u[13]))]
            slots = dict(slots_fixed)
            slots["name"] = names[int(u[5] * len(names))]
            slots["city"] = cities[int(u[6] * len(cities))]
            slots["day"] = ph.DAYS[base][int(u[7] * 4)].format_map(vocab)
            slots["job"] = ph.JOBS[base][int(u[11] * len(ph.JOBS[base]))].format_map(vocab)
            slots["price"] = _money(lang, _nice(price_base * scale * (0.9 + 0.2 * float(u[11]))))
            slots["phone"] = phone_list[a // per_phone]
            text, spans = self._render(ent, tmpl, u, slots, base)
            store.agency.append(self.index)
            store.entity.append(ent_index)
            store.template.append(tmpl.template_id)
            store.day.append(int(days[a]))
            store.site.append(sites[int(u[12] * len(sites))])
            store.language.append(lang)
            store.category.append(ent.category)
            store.text.append(text)
            store.phone.append(slots["phone"])
            store.spans.append(spans)

    def _render(self, ent: _Entity, tmpl: _Template, u: np.ndarray, slots: dict[str, str],
                base: str) -> tuple[str, list[tuple[int, int, int]]]:
        layout = list(tmpl.layout)
        inds = [i for i, (kind, _) in enumerate(layout) if kind == "i"]
        if inds and u[0] < _P_DROP:
            del layout[inds[int(u[1] * len(inds))]]
        if u[2] < _P_ADD:
            applicable = _APPLICABLE[ent.category]
            k = applicable[int(u[3] * len(applicable))]
            if ("i", k) not in layout and u[4] < _PROP[int(ent.exploitative), k]:
                layout.append(("i", k))
        filler = ph.FILLER[ent.category][base]
        has_obscured = ("i", _OBSCURED) in layout
        closers = filler["close_phone"] if tmpl.phone_closer and not has_obscured \
            else filler["close_plain"]
        opener = filler["open"][tmpl.opener].format_map(slots)
        if tmpl.emoji:
            opener = f"{opener} {tmpl.emoji}"
        pieces: list[tuple[str, int]] = [(opener, -1)]
        for kind, idx in layout:
            if kind == "b":
                pieces.append((filler["body"][idx].format_map(slots), -1))
            elif idx == _OBSCURED:
                pieces.append((_obscure(slots["phone"], base, tmpl.variants[idx]), idx))
            else:
                phrase = ph.INDICATOR_PHRASES[INDICATORS[idx]][base][tmpl.variants[idx]]
                pieces.append((phrase.format_map(slots), idx))
        pieces.append((closers[tmpl.closer % len(closers)].format_map(slots), -1))
        if u[8] < _P_TYPO:
            fill = [i for i, (_, k) in enumerate(pieces) if k < 0]
            target = fill[int(u[9] * len(fill))]
            pieces[target] = (_typo(pieces[target][0], float(u[9])), -1)
        parts: list[str] = []
        spans: list[tuple[int, int, int]] = []
        pos = 0
        for i, (piece, k) in enumerate(pieces):
            if i:
                parts.append(tmpl.separator)
                pos += len(tmpl.separator)
            if k >= 0:
                spans.append((pos, pos + len(piece), k))
            parts.append(piece)
            pos += len(piece)
        if u[10] < _P_EMOJI:
            parts.append(" " + ph.EMOJI[int(u[10] / _P_EMOJI * len(ph.EMOJI))])
        return "".join(parts), spans


def _typo(text: str, u: float) -> str:
    """Swap two neighbouring letters inside one longer word (filler text only)."""
    words = list(_WORD.finditer(text))
    if not words:
        return text
    m = words[int(u * len(words)) % len(words)]
    i = m.start() + 1 + int(u * 1000) % (len(m.group()) - 2)
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def _cross_agency(preset: FederationPreset, entities: list[_Entity], store: _Adverts,
                  rng: np.random.Generator) -> np.ndarray:
    """Move part of some entities' adverts into another agency; returns a per-entity flag."""
    n_ent = len(entities)
    flag = np.zeros(n_ent, dtype=bool)
    hosts = {c: [i for i, a in enumerate(preset.agencies) if c in a.tasks] for c in CATEGORIES}
    sizes = list(preset.sizes().values())
    eligible = [e for e, ent in enumerate(entities)
                if ent.size >= 2 and len(hosts[ent.category]) >= 2]
    n_cross = min(len(eligible), round(preset.cross_agency_rate * n_ent))
    if n_cross == 0:
        return flag
    chosen = np.sort(rng.choice(np.asarray(eligible), size=n_cross, replace=False))
    by_entity: dict[int, list[int]] = {int(e): [] for e in chosen}
    for row, e in enumerate(store.entity):
        if e in by_entity:
            by_entity[e].append(row)
    for e in chosen:
        ent = entities[int(e)]
        others = [h for h in hosts[ent.category] if h != ent.home]
        # Larger agencies receive more visitors, so small ones keep roughly their size.
        target = others[_weighted_index([sizes[h] for h in others], float(rng.random()))]
        rows = by_entity[int(e)]
        k = max(1, round(len(rows) * float(rng.uniform(0.2, 0.5))))
        for row in rng.choice(np.asarray(rows), size=k, replace=False):
            store.agency[int(row)] = target
        flag[int(e)] = True
    return flag


def _expert_levels(preset: FederationPreset, agency: np.ndarray, risk: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clean expert levels (discretised reading of risk) and annotated (noisy) levels."""
    n = risk.size
    reading = risk + rng.normal(0.0, _READING_SD, n)
    move = rng.random(n)
    sign = np.where(rng.random(n) < 0.5, -1, 1)
    two = rng.random(n) < _P_TWO_LEVELS
    clean = np.zeros(n, dtype=np.int64)
    noisy = np.zeros(n, dtype=np.int64)
    for a, prof in enumerate(preset.agencies):
        rows = np.flatnonzero(agency == a)
        if rows.size == 0:
            continue
        noise = prof.label_noise
        c3, c2, p2 = _BAND3_PER_Q, _BAND2_PER_Q, _P_TWO_LEVELS
        factor = 1.0 + noise * (0.5 * c3 + 0.5 * p2 * c2 - 0.5 * 0.5 - 0.3 * 0.5 * p2)
        q = prof.positive_rate / factor
        m = rows.size
        n_pos = round(q * m)
        counts = [round(0.2 * n_pos), round(0.3 * n_pos)]
        counts.append(n_pos - sum(counts))
        counts += [round(c3 * q * m), round(c2 * q * m)]
        rest = max(0, m - sum(counts))
        counts.append(round(0.4 * rest))
        levels = np.concatenate([np.full(max(0, c), lv) for c, lv in
                                 zip(counts, (6, 5, 4, 3, 2, 1), strict=True)] +
                                [np.zeros(m, dtype=np.int64)])[:m]
        order = np.argsort(-reading[rows], kind="stable")
        lv = np.empty(m, dtype=np.int64)
        lv[order] = levels
        clean[rows] = lv
        step = np.where(two[rows], 2, 1) * sign[rows] * (move[rows] < noise)
        noisy[rows] = np.clip(lv + step, 0, 6)
    return clean, noisy


def _fix_single_entity_positives(preset: FederationPreset, agency: np.ndarray,
                                 entity: np.ndarray, risk: np.ndarray,
                                 positive: np.ndarray, noisy: np.ndarray) -> list[str]:
    """Where >= 2 positives all come from one entity, raise the riskiest other advert.

    Without this an entity split cannot give both sides a positive.
    """
    notes: list[str] = []
    for a, prof in enumerate(preset.agencies):
        rows = np.flatnonzero(agency == a)
        pos_rows = rows[positive[rows]]
        owners = np.unique(entity[pos_rows])
        if pos_rows.size >= 2 and owners.size == 1:
            others = rows[(entity[rows] != owners[0]) & ~positive[rows]]
            if others.size:
                pick = others[np.argmax(risk[others])]
                noisy[pick] = max(int(noisy[pick]), 4)
                positive[pick] = True
                notes.append(f"{prof.agency_id}: all positives came from one entity; raised the "
                             "riskiest advert of another entity to level 4")
    return notes


def _split(preset: FederationPreset, n_ent: int, agency: np.ndarray, entity: np.ndarray,
           positive: np.ndarray, test_fraction: float,
           rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Entities to test, then repairs so each agency's sides have both classes.

    The repair is greedy: take the first unmet condition (by agency, test side first, then
    "advert", "positive", "negative"), move the smallest entity that can help to that side
    if the move lowers the number of unmet conditions, else give the condition up. Counts
    are kept per agency and per side, so a trial move costs the agencies the entity posts
    in, not every agency times every entity (tests/test_generator.py holds the direct form
    this equals on random federations)."""
    test = np.zeros(n_ent, dtype=bool)
    test[rng.permutation(n_ent)[: round(test_fraction * n_ent)]] = True
    n_ag = len(preset.agencies)
    # sparse (agency, entity) cells: positives and negatives of each entity in each agency
    cell = agency * n_ent + entity
    keys, inv = np.unique(cell, return_inverse=True)
    c_pos = np.bincount(inv, weights=positive, minlength=keys.size).astype(np.int64)
    c_neg = np.bincount(inv, minlength=keys.size).astype(np.int64) - c_pos
    c_ag, c_ent = keys // n_ent, keys % n_ent
    n_entities = np.bincount(c_ag, minlength=n_ag)
    tot_pos = np.bincount(c_ag, weights=c_pos, minlength=n_ag).astype(np.int64)
    tot_neg = np.bincount(c_ag, weights=c_neg, minlength=n_ag).astype(np.int64)
    sizes = np.bincount(c_ent, weights=c_pos + c_neg, minlength=n_ent).astype(np.int64)
    by_ent = np.argsort(c_ent, kind="stable")                 # cells of each entity
    ent_start = np.searchsorted(c_ent[by_ent], np.arange(n_ent + 1))
    by_ag = np.argsort(c_ag, kind="stable")                   # cells of each agency
    ag_start = np.searchsorted(c_ag[by_ag], np.arange(n_ag + 1))
    in_test = test[c_ent]
    t_pos = np.bincount(c_ag, weights=c_pos * in_test, minlength=n_ag).astype(np.int64)
    t_neg = np.bincount(c_ag, weights=c_neg * in_test, minlength=n_ag).astype(np.int64)
    several, pos2 = n_entities >= 2, tot_pos >= 2

    def unmet(a: np.ndarray, tp: np.ndarray, tn: np.ndarray) -> np.ndarray:
        """Unmet conditions of agencies ``a`` with test counts (tp, tn): shape (len(a), 6),
        columns (test, train) x (advert, positive, negative)."""
        out = np.empty((a.size, 6), dtype=bool)
        for k, (p, q) in enumerate(((tp, tn), (tot_pos[a] - tp, tot_neg[a] - tn))):
            out[:, 3 * k] = several[a] & (p + q == 0)
            out[:, 3 * k + 1] = pos2[a] & (p == 0)
            out[:, 3 * k + 2] = pos2[a] & (q == 0)
        return out

    needs = ("advert", "positive", "negative")

    def listing(table: np.ndarray) -> list[tuple[int, bool, str]]:
        return [(int(a), k < 3, needs[k % 3]) for a, k in zip(*np.nonzero(table), strict=True)]

    all_ag = np.arange(n_ag)
    table = unmet(all_ag, t_pos, t_neg)
    count = int(table.sum())
    stuck: set[tuple[int, bool, str]] = set()
    while True:
        todo = next((v for v in listing(table) if v not in stuck), None)
        if todo is None:
            break
        a, side, need = todo
        cells = by_ag[ag_start[a]:ag_start[a + 1]]
        has = {"positive": c_pos[cells], "negative": c_neg[cells],
               "advert": c_pos[cells] + c_neg[cells]}[need] > 0
        cands = c_ent[cells][has & (test[c_ent[cells]] != side)]
        cands = cands[np.lexsort((cands, sizes[cands]))]  # smallest entities first
        for e in cands:
            cs = by_ent[ent_start[e]:ent_start[e + 1]]
            ags, sign = c_ag[cs], (1 if side else -1)
            tp, tn = t_pos[ags] + sign * c_pos[cs], t_neg[ags] + sign * c_neg[cs]
            after = count - int(table[ags].sum()) + int(unmet(ags, tp, tn).sum())
            if after < count:
                test[e] = side
                t_pos[ags], t_neg[ags] = tp, tn
                table[ags] = unmet(ags, tp, tn)
                count = after
                break
        else:
            stuck.add(todo)
    warnings = [
        f"{preset.agencies[a].agency_id}: the {'test' if side else 'train'} split has no "
        f"{need} and no entity could be moved to fix it"
        for a, side, need in listing(table)
    ]
    return test, warnings


def _check_out_dir(out_dir: Path, preset: FederationPreset, seed: int) -> None:
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
    same = (info.get("generator") == GENERATOR_NAME and info.get("preset") == preset.name
            and info.get("seed") == seed
            and info.get("agencies") == [a.agency_id for a in preset.agencies])
    if not same:
        raise DataError(Rule("holds generator output of another preset or seed.",
                             "give a new or empty directory as out_dir, or remove the old "
                             "output yourself."), file=out_dir)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _dump(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def _export(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for r in rows:
        writer.writerow([("true" if r[c] is True else r[c]) for c in EXPORT_COLUMNS])
    return buf.getvalue()


def _auc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    return roc_auc(y, s) if y.size else math.nan


def generate_federation(preset: FederationPreset, out_dir: Path, *, seed: int,
                        test_fraction: float = 0.25,
                        indicator_weights: Mapping[str, float] | None = None
                        ) -> FederationManifest:
    """Generate every agency's export and the ground truth under ``out_dir``."""
    out_dir = Path(out_dir)
    problems = []
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        problems.append(f"seed: got {seed!r}; it must be a whole number >= 0. Fix: e.g. 0.")
    if not _is_number(test_fraction) or not 0.0 < test_fraction < 1.0:
        problems.append(f"test_fraction: got {test_fraction!r}; it must be in (0, 1). "
                        "Fix: e.g. 0.25.")
    if problems:
        raise ConfigError(problems, source="generate_federation")
    weights = resolve_weights(indicator_weights)
    _check_out_dir(out_dir, preset, seed)
    preset = apply_skew(preset)
    ids = [a.agency_id for a in preset.agencies]

    store = _Adverts([], [], [], [], [], [], [], [], [], [])
    entities: list[_Entity] = []
    phones = _PhoneBook(_rng(seed, 0))
    for a, (prof, size) in enumerate(zip(preset.agencies, preset.sizes().values(), strict=True)):
        _AgencyWriter(a, prof, size, _rng(seed, 1, a), phones, store, entities).run()
    cross = _cross_agency(preset, entities, store, _rng(seed, 2))

    n = len(store.text)
    agency = np.asarray(store.agency, dtype=np.int64)
    entity = np.asarray(store.entity, dtype=np.int64)
    x = np.zeros((n, len(INDICATORS)), dtype=np.float64)
    for row, spans in enumerate(store.spans):
        for _, _, k in spans:
            x[row, k] = 1.0
    w = np.array([weights[k] for k in INDICATORS])
    visible = x @ w
    rng_lab = _rng(seed, 3)
    effects = np.array([e.effect for e in entities])
    risk = effects[entity] + visible + rng_lab.normal(0.0, _ADVERT_NOISE_SD, n)
    clean, noisy = _expert_levels(preset, agency, risk, rng_lab)
    positive = noisy >= 4   # is_positive in every scheme agrees with expert >= 4
    notes = _fix_single_entity_positives(preset, agency, entity, risk, positive, noisy)
    test_ent, warnings = _split(preset, len(entities), agency, entity, positive,
                                test_fraction, _rng(seed, 4))
    in_test = test_ent[entity]

    oracle = _auc_or_nan(positive[in_test].astype(float), risk[in_test])
    visible_auc = _auc_or_nan(positive[in_test].astype(float), visible[in_test])
    per_agency: dict[str, float] = {}
    counts: dict[str, dict[str, int]] = {}
    for a, aid in enumerate(ids):
        sel = in_test & (agency == a)
        per_agency[aid] = _auc_or_nan(positive[sel].astype(float), risk[sel])
        tr = ~in_test & (agency == a)
        counts[aid] = {"train": int(tr.sum()), "test": int(sel.sum()),
                       "train_positive": int(positive[tr].sum()),
                       "test_positive": int(positive[sel].sum())}

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / MARKER_FILE, _dump(
        {"generator": GENERATOR_NAME, "preset": preset.name, "seed": seed, "agencies": ids}))
    tiebreak = _rng(seed, 5).random(n)
    for a, prof in enumerate(preset.agencies):
        _write_agency(out_dir, a, prof, store, entities, agency, cross, in_test, risk, clean,
                      noisy, positive, tiebreak, w)
    fed = {
        "preset": preset.name, "seed": seed, "scale": preset.scale,
        "test_fraction": test_fraction, "synthetic": True,
        "generator_version": GENERATOR_VERSION, "agencies": ids,
        "oracle": {"pooled_test_roc_auc": None if math.isnan(oracle) else oracle,
                   "per_agency_test_roc_auc": {k: None if math.isnan(v) else v
                                               for k, v in per_agency.items()}},
        "indicator_weights": {k: weights[k] for k in INDICATORS},
        "counts": counts,
    }
    _write_atomic(out_dir / "federation.json", _dump(fed))
    return FederationManifest(
        root=out_dir, preset=preset.name, seed=seed, agencies=tuple(ids),
        oracle_roc_auc=oracle, oracle_per_agency=per_agency, visible_roc_auc=visible_auc,
        counts=counts, split_warnings=tuple(notes + warnings),
    )


def _write_agency(out_dir: Path, a: int, prof: AgencyProfile, store: _Adverts,
                  entities: list[_Entity], agency: np.ndarray, cross: np.ndarray,
                  in_test: np.ndarray, risk: np.ndarray, clean: np.ndarray, noisy: np.ndarray,
                  positive: np.ndarray, tiebreak: np.ndarray, w: np.ndarray) -> None:
    rows = np.flatnonzero(agency == a)
    day = np.asarray(store.day)[rows]
    rows = rows[np.lexsort((tiebreak[rows], day))]
    scheme = LABEL_SCHEMES[prof.label_scheme]
    ext = prof.export_format
    exports: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    truth: list[str] = []
    for i, r in enumerate(rows.tolist()):
        advert_id = f"{prof.agency_id}-{i:06d}"
        split = "test" if in_test[r] else "train"
        label = scheme.from_expert(int(noisy[r]))
        exports[split].append({
            "advert_id": advert_id,
            "posted_at": (_START + timedelta(days=store.day[r])).isoformat(),
            "site": store.site[r], "language": store.language[r],
            "category": store.category[r], "text": store.text[r], "phone": store.phone[r],
            "label": label, "synthetic": True,
        })
        ent = entities[store.entity[r]]
        truth.append(json.dumps({
            "advert_id": advert_id, "split": split, "entity_id": ent.entity_id,
            "template_id": store.template[r], "cross_agency": bool(cross[store.entity[r]]),
            "exploitative": ent.exploitative, "latent_risk": float(risk[r]),
            "expert_label": int(clean[r]), "annotated_level": int(noisy[r]),
            "binary_label": int(positive[r]),
            "rationales": [{"start": s, "end": e, "indicator": INDICATORS[k],
                            "weight": float(w[k])} for s, e, k in store.spans[r]],
        }, ensure_ascii=False) + "\n")
    agency_dir = out_dir / "agencies" / prof.agency_id
    for split, recs in exports.items():
        _write_atomic(agency_dir / f"adverts_{split}.{ext}", _export(recs, ext))
    _write_atomic(agency_dir / "manifest.json", _dump({
        "agency": prof.agency_id, "display_name": prof.display_name,
        "label_scheme": prof.label_scheme, "format": ext,
        "train": f"adverts_train.{ext}", "test": f"adverts_test.{ext}",
        "schema_version": SCHEMA_VERSION, "synthetic": True,
    }))
    _write_atomic(out_dir / "ground_truth" / f"{prof.agency_id}.jsonl", "".join(truth))
