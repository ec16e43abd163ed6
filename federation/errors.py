"""Every error heroes-fl raises on purpose, in one tree.

    HeroesError
    ├── ConfigError          a setting is missing, unknown, of the wrong type or out of range
    │   └── PrivacyConfigError   a privacy parameter is missing or impossible
    ├── DataError            an agency's files cannot be used as they are
    ├── TaskError            an unknown task name, or a task used against its contract
    ├── FederationError      a round could not be completed as configured
    │   ├── QuorumError          fewer agencies replied than the configured quorum
    │   └── ProtocolError        a message or run summary lacks a required key
    ├── DeploymentError      a consortium or agency deployment step cannot go ahead
    │                        (keys, certificates, addresses, registrations, processes)
    ├── SignatureError       a signature is missing, malformed, or does not verify
    └── LedgerError          the privacy ledger is unusable (corrupt, foreign, rolled back)
        └── PolicyError          the agency's policy file is missing or unusable

Each message says what arrived, what is allowed, and how to fix it; a DataError says what
kind of value arrived, never the value. Messages never quote advert text or any other
record content: errors leave the agency in logs and replies, so
they name files, rows and columns only. DataError makes this structural (its message is
composed from a fixed Rule and typed fields, see its docstring); the node's error mod
(clients/mods.py, contain_errors) passes on DataError, FederationError and TaskError as
they are and replaces every other error by its type name and a fixed sentence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from federation.records import LabelScheme, declared_columns, declared_reasons
from federation.schema import (
    KNOWN_COLUMNS,
    LABEL_SCHEMES,
    MANIFEST_KEYS,
    REQUIRED_COLUMNS,
    SET_ASIDE_REASONS,
    SUFFIXES,
)


class HeroesError(Exception):
    """Base of every deliberate heroes-fl error."""


class ConfigError(HeroesError):
    """One or more settings are unusable; all problems are listed at once."""

    def __init__(self, problems: Iterable[str], *, source: str = "configuration") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class PrivacyConfigError(ConfigError):
    """A privacy parameter is missing or cannot give the guarantee asked for."""


@dataclass(frozen=True)
class Rule:
    """A rule an agency's files must meet: what is wrong and how to fix it, as fixed text.

    ``text`` and ``fix`` are sentences written in the code. They may hold placeholders,
    filled only from DataError's typed fields: ``{line}`` ``{byte}`` ``{count}`` ``{limit}``
    ``{record}`` (integers), ``{column}`` (a schema column, or "an unexpected column (N
    characters)"), ``{key}`` (a manifest key, likewise), ``{columns}`` (schema columns),
    ``{kind}`` (one of ``kinds``, else "another kind"), ``{counts}`` (set-aside reasons and
    their counts), ``{scheme}`` (a label scheme), ``{required}`` (a declared schema's
    required columns; the advert schema's unless given), and the constants ``{schemes}``
    (the label scheme names) and ``{suffixes}`` (the export file types).
    """

    text: str
    fix: str
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    """One broken rule with its typed fields already rendered (so it pickles plainly)."""

    rule: Rule
    values: tuple[tuple[str, str], ...]

    def render(self) -> str:
        values = dict(self.values)
        return f"{self.rule.text.format_map(values)} Fix: {self.rule.fix.format_map(values)}"


class DataError(HeroesError):
    """An agency's data cannot be used: names the rule, the file and the row, never a value.

    Content-free by construction. A DataError may leave the node (its message goes back to
    the aggregator with a failed reply), and its message is composed here from an allow-list
    only: a :class:`Rule` (fixed sentences written in the code), a file name (relative to the
    data folder wherever a node raises it), row, line and byte numbers, counts and limits,
    column names of the advert schema (any other header cell or JSON key shows as "an
    unexpected column (N characters)"), a ``kind`` out of the rule's own fixed list, counts
    per set-aside reason and a label scheme. There is no argument for free text: a value
    read from a file has no way in. tests/test_hostile_data.py checks every construction
    site in the code base for this.

    Several problems found at once (a manifest's) travel in one error: see :func:`problem`.
    """

    def __init__(self, rule: Rule | Sequence[Problem], *, file: str | PurePath | None = None,
                 row: int | None = None, **fields: object) -> None:
        if isinstance(rule, Rule):
            problems: tuple[Problem, ...] = (problem(rule, **fields),)
        else:
            if fields:
                raise TypeError("pass fields to problem(), not with a list of problems")
            problems = tuple(rule)
            if not problems or not all(isinstance(p, Problem) for p in problems):
                raise TypeError("DataError needs a Rule or a non-empty list of Problems")
        self.file = None if file is None else _shown_file(file)
        self.row = None if row is None else _count("row", row)
        self.problems = problems
        where = ""
        if self.file is not None:
            where = self.file + ("" if self.row is None else f", row {self.row}") + ": "
        elif self.row is not None:
            where = f"row {self.row}: "
        if len(problems) == 1:
            body = problems[0].render()
        else:
            body = f"{len(problems)} problems: " + "; ".join(
                f"({i}) {p.render()}" for i, p in enumerate(problems, start=1))
        super().__init__(where + body)

    @property
    def rule(self) -> Rule:
        """The (first) rule broken."""
        return self.problems[0].rule

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its parts (the default would call __init__ with the message).
        return (_rebuild_data_error, (self.problems, self.file, self.row))


_INTEGERS = ("line", "byte", "count", "limit", "record")


def problem(rule: Rule, **fields: object) -> Problem:
    """A Problem from a rule and its typed fields (see :class:`Rule` for the fields)."""
    values: dict[str, str] = {
        "required": repr(list(REQUIRED_COLUMNS)),
        "schemes": repr(sorted(LABEL_SCHEMES)),
        "suffixes": ", ".join(SUFFIXES),
    }
    known = KNOWN_COLUMNS | declared_columns()
    for name, value in fields.items():
        if name in _INTEGERS:
            values[name] = str(_count(name, value))
        elif name == "column":
            values[name] = shown_name(_text(name, value), known, "column")
        elif name == "key":
            values[name] = shown_name(_text(name, value), MANIFEST_KEYS, "key")
        elif name == "columns":
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise TypeError("columns must be a list of column names")
            names = [_text(name, c) for c in value]
            values[name] = "[" + ", ".join(
                repr(c) if c in known else shown_name(c, known, "column")
                for c in names) + "]"
        elif name == "required":  # another schema's required columns (default: adverts')
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise TypeError("required must be a list of declared column names")
            wanted = [_text(name, c) for c in value]
            if not all(c in known for c in wanted):
                raise TypeError("required may only hold the columns of a declared schema")
            values[name] = repr(wanted)
        elif name == "kind":
            kind = _text(name, value)
            values[name] = kind if kind in rule.kinds else "another kind"
        elif name == "counts":
            if not isinstance(value, Mapping):
                raise TypeError("counts must map set-aside reasons to counts")
            reasons = declared_reasons() | frozenset(SET_ASIDE_REASONS)
            unknown = [k for k in value if k not in reasons]
            if unknown:
                raise TypeError("counts may only hold the set-aside reasons of a declared "
                                "schema (federation.records)")
            counts = {str(k): _count("counts", n) for k, n in value.items()}
            values[name] = repr(counts) if counts else "none"
        elif name == "scheme":
            if not isinstance(value, LabelScheme):
                raise TypeError("scheme must be a LabelScheme")
            values[name] = value.describe()
        else:
            raise TypeError(f"DataError has no field {name!r}")
    try:
        rule.text.format_map(values)
        rule.fix.format_map(values)
    except (KeyError, IndexError, ValueError) as exc:
        raise TypeError(f"rule placeholders and fields do not match ({exc!r})") from None
    return Problem(rule, tuple(sorted(values.items())))


def shown_name(name: str, known: frozenset[str], noun: str) -> str:
    """How an error shows a column or key: by name if the schema knows it, else by length."""
    if name in known:
        return f"{noun} {name!r}"
    return f"an unexpected {noun} ({len(name)} characters)"


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    return value


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


#: Longest path an error shows (a relative export name is at most 255 characters; a local
#: command may name a longer absolute folder).
_MAX_SHOWN_PATH = 4096


def _shown_file(file: str | PurePath) -> str:
    text = file.as_posix() if isinstance(file, PurePath) else file
    if not isinstance(text, str):
        raise TypeError("file must be a path or a string")
    if len(text) > _MAX_SHOWN_PATH or not text.isprintable():
        return f"(a file name of {len(text)} characters, not shown)"
    return text


def _rebuild_data_error(problems: tuple[Problem, ...], file: str | None,
                        row: int | None) -> DataError:
    return DataError(problems, file=file, row=row)


class TaskError(HeroesError):
    """An unknown task, or a task used against its contract."""


class FederationError(HeroesError):
    """A federated round could not be completed as configured."""


class QuorumError(FederationError):
    """Fewer agencies replied usefully than the configured quorum."""


class ProtocolError(FederationError):
    """A message or a run summary lacks a key the protocol requires, or holds one of the
    wrong kind (federation/protocol.py). The message names the key and where it was looked
    for, never the value; a node forwards it as it is (it quotes only protocol names)."""


class DeploymentError(HeroesError):
    """A deployment step cannot go ahead: says what is wrong and what to do."""


class SignatureError(HeroesError):
    """A signed file (app bundle, model release, receipt) failed verification."""


class LedgerError(HeroesError):
    """The privacy ledger (or its head, its key, the agency's policy) is unusable: corrupt,
    foreign, cut short, rolled back. The ledger file is always left exactly as it was."""


class PolicyError(LedgerError):
    """The agency's privacy policy is unusable; every problem is listed at once.

    A subclass of LedgerError because callers already treat "no usable policy" and "no
    usable ledger" alike: the node does not train.
    """

    def __init__(self, problems: Iterable[str], *, source: str) -> None:
        self.problems = list(problems)
        self.source = source
        if len(self.problems) == 1:  # one problem reads as one sentence
            super().__init__(f"{source}: {self.problems[0]}")
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"{source} has {len(self.problems)} problems:\n{listed}")
