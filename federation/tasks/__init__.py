"""Shared classifiers, registered by name.

A task is one module in this package that defines a ``Task`` subclass decorated with
``@register_task``: its parameters (the ``task.*`` settings), which adverts it uses, how it
turns text into features and which model it trains. Every module here is imported on first
use, so a second classifier is one new module plus a ``configs/task/<name>.yaml`` file.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from federation.data import AdvertTable
from federation.errors import TaskError
from federation.settings import Scalar, Section
from federation.text import SparseRows

if TYPE_CHECKING:  # torch is imported by a task's model module, when a node trains
    from torch import nn


class TaskParams(Section):
    """Base for a task's ``task.*`` settings (a frozen dataclass in each task)."""

    prefix: ClassVar[str] = "task"


class Task(ABC):
    """A shared classifier: what it reads, how it featurises, what it trains."""

    name: ClassVar[str]
    params_type: ClassVar[type[TaskParams]]

    def __init__(self, params: TaskParams) -> None:
        self.params = params

    @abstractmethod
    def rows(self, table: AdvertTable) -> np.ndarray:
        """Indices of the adverts this task learns from (e.g. job offers only)."""

    @abstractmethod
    def featurize(self, texts: list[str]) -> SparseRows:
        """Features for a list of advert texts."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model producing one logit per advert."""


T = TypeVar("T", bound=type[Task])
TASKS: dict[str, type[Task]] = {}
_loaded = False


def register_task(cls: T) -> T:
    """Class decorator: make a task available under ``cls.name``."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise TaskError(f"two tasks claim the name {cls.name!r}")
    TASKS[cls.name] = cls
    return cls


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
