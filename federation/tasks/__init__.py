"""Shared classifiers, registered by name.

A task is one module in this package that defines a ``Task`` subclass decorated with
``@register_task``. It declares everything that depends on what its records are:

- ``record_schema``: its records' columns and types, which hold free text, its label
  schemes (federation.records.RecordSchema). The data layer reads any declared schema from
  CSV, JSONL or Parquet with the same limits, quarantine and content-free errors, so a task
  never writes a reader of its own;
- ``params_type``: its ``task.*`` settings, validated when they are parsed;
- ``records`` and ``featurize``: what one record is to the model, and its features;
- ``build_model``: the model, one logit per record;
- ``explainer``: the exact explanation of a score that scoring shows (and refuses to
  score without);
- ``default_threshold``, ``features_version``, ``privacy_unit``, ``intended_use``: its
  operating point and what a release card says about it.

Scoring, calibration, release cards, baselines and reports use only this interface. Every
module here is imported on first use, so a second classifier is one new module plus a
``configs/task/<name>.yaml`` file.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np

from federation.data import AgencyRecords, load_records
from federation.errors import TaskError
from federation.records import RecordSchema, RecordTable
from federation.settings import Scalar, Section
from federation.text import SparseRows

if TYPE_CHECKING:  # torch is imported by a task's model module, when a node trains
    from torch import nn


class TaskParams(Section):
    """Base for a task's ``task.*`` settings (a frozen dataclass in each task)."""

    prefix: ClassVar[str] = "task"


@dataclass(frozen=True)
class Explanation:
    """One record's score, taken apart exactly: its units (words, for text), where each
    is in the record's text (None where offsets cannot be mapped), each unit's share of
    ``logit - bias``, and the feature row (column -> value) the score is computed from."""

    units: list[str]
    spans: list[tuple[int, int] | None]
    shares: np.ndarray
    features: dict[int, float]
    #: Per unit, the indicator phrases found in it: (category, start, end) offsets into
    #: that unit's text (conversations: each message's lexicon hits); empty where a task
    #: has no lexicon.
    indicators: tuple[tuple[tuple[str, int, int], ...], ...] = ()


class Explainer(Protocol):
    """A trained model's explainer: ``bias`` plus the shares of ``explain(record)`` is the
    model's logit for the row ``features`` (of ``width`` columns)."""

    bias: float
    width: int

    def explain(self, record: Any) -> Explanation:
        """The explanation of one record, as ``Task.records`` gives it."""


class Task(ABC):
    """A shared classifier: what it reads, how it featurises, what it trains and explains."""

    name: ClassVar[str]
    params_type: ClassVar[type[TaskParams]]
    record_schema: ClassVar[RecordSchema]
    #: Bump when the features of a record change, so node caches are not reused.
    features_version: ClassVar[int]
    #: What one unit of privacy is (the release card's "unit"): one record of this schema.
    privacy_unit: ClassVar[str]
    #: What the release card says a model of this task is for.
    intended_use: ClassVar[str]
    #: The probability at or above which a scored record is flagged, unless the analyst
    #: sets another (heroes agency score --threshold).
    default_threshold: ClassVar[float] = 0.5

    def __init__(self, params: TaskParams) -> None:
        self.params = params

    def load(self, data_dir: Path) -> AgencyRecords:
        """An agency's train and test files, read and validated against the schema."""
        return load_records(data_dir, self.record_schema)

    def rows(self, table: RecordTable) -> np.ndarray:
        """Indices of the records this task learns from (all, unless a task narrows it)."""
        return np.arange(len(table))

    @abstractmethod
    def records(self, table: RecordTable, rows: np.ndarray | None = None) -> list[Any]:
        """The given rows of a table (all when None) as this task's records, in order: what
        ``featurize`` and an explainer take."""

    @abstractmethod
    def featurize(self, records: Sequence[Any]) -> SparseRows:
        """Features for a list of records."""

    def featurize_table(self, table: RecordTable, rows: np.ndarray | None = None
                        ) -> SparseRows:
        """Features of the given rows of a table (all when None)."""
        return self.featurize(self.records(table, rows))

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model producing one logit per record."""

    @abstractmethod
    def explainer(self, model: nn.Module) -> Explainer:
        """The exact explainer of ``model``'s scores; a TaskError when this model cannot be
        explained (a score is never shown without its reasons)."""


T = TypeVar("T", bound=type[Task])
TASKS: dict[str, type[Task]] = {}
_loaded = False


_RESERVED = ("name", "params")  # task.name and task.params are the run config's own keys


def register_task(cls: T) -> T:
    """Class decorator: make a task available under ``cls.name``."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise TaskError(f"two tasks claim the name {cls.name!r}")
    clash = [f.name for f in fields(cls.params_type)  # type: ignore[arg-type]  # a dataclass
             if f.name in _RESERVED]
    if clash:
        raise TaskError(f"task {cls.name!r}: a parameter may not be called {clash[0]!r} "
                        "(task.name and task.params are the run config's own keys)")
    TASKS[cls.name] = cls
    return cls


def unregister_task(name: str) -> None:
    """Remove a registered task (a test's own task, once the test is done)."""
    if name not in TASKS:
        raise TaskError(f"task {name!r} is not registered")
    del TASKS[name]


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")
        _loaded = True


def task_names() -> list[str]:
    _load_all()
    return sorted(TASKS)


def task_params_from(
    name: str, values: dict[str, object], problems: list[str]
) -> Mapping[str, Scalar]:
    """Validate the ``task.*`` settings of the named task into a flat mapping."""
    _load_all()
    if name not in TASKS:
        problems.append(f"task.name={name!r} is unknown; registered tasks: {task_names()}")
        return {}
    params = TASKS[name].params_type.parse(dict(values), problems)
    if params is None:
        return {}
    return {k.partition(".")[2]: v for k, v in params.to_flat().items()}


def get_task(name: str, params: Mapping[str, Any]) -> Task:
    """Instantiate a registered task from validated parameters."""
    _load_all()
    if name not in TASKS:
        raise TaskError(f"task {name!r} is unknown; registered tasks: {task_names()}")
    problems: list[str] = []
    cls = TASKS[name]
    parsed = cls.params_type.parse(dict(params), problems)
    if problems or parsed is None:
        raise TaskError(f"task {name!r} parameters: " + "; ".join(problems))
    return cls(parsed)
