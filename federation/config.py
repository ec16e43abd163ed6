"""The typed, validated run configuration shared by the ClientApp and the ServerApp.

Flower hands both apps a flat ``run_config`` (keys like ``privacy.target_epsilon``). The
same spelling is used in the Hydra YAML files (``privacy: {target_epsilon: 3.0}``), in
overrides (``privacy.target_epsilon=3``) and in the dataclass fields below, so a key means
one thing everywhere. ``RunSettings.from_flat`` checks every key, collects every problem and
raises one ConfigError.

Privacy targets have no defaults: with DP on, a run must state its epsilon and delta.

A task's parameters travel as ``task.params``, one JSON object in a string (e.g.
``task.params='{"num_buckets": 4096}'``), beside ``task.name``: Flower needs a value in
pyproject.toml for every run-config key, and this way a new task, or a new parameter,
needs no new key there. A ``task.<param>`` key (a Hydra override such as
``task.num_buckets=1024``, which the simulation passes flat) sets that parameter over
``task.params``. Either way the task's own params dataclass validates every value, and
``to_flat`` writes the one canonical ``task.params``.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar, cast

from federation.errors import ConfigError, PrivacyConfigError
from federation.settings import Scalar as Scalar  # re-exported: callers type run configs
from federation.settings import Section, shown
from federation.tasks import task_params_from

#: Upper limits on sizes, for a consortium's run config as much as a simulation's: a node
#: plans, allocates and loops by these numbers, and a run config is the aggregator's word.
MAX_ROUNDS = 1000
MAX_LOCAL_EPOCHS = 100
MAX_BATCH_SIZE = 65536
MAX_NODES = 10_000  # min_nodes, quorum, min_available, krum_byzantine, num_neighbours
MAX_ROUND_TIMEOUT = 86_400.0  # seconds: a day
MAX_EVAL_K = 1_000_000
MAX_TASK_PARAMS_CHARS = 65_536  # task.params, a JSON object of a task's few settings
_PARAMS_EXAMPLE = "e.g. task.params='{\"num_buckets\": 4096}'"


def _task_params(values: dict[str, object], problems: list[str]) -> dict[str, object]:
    """The task's parameters: ``task.params`` (a JSON object), then ``task.<param>`` keys
    over it (see the module docstring)."""
    raw = values.pop("params", "")
    if raw == "":
        return values
    if not isinstance(raw, str):
        problems.append(f"task.params={shown(raw)} must be a JSON object written as a string, "
                        + _PARAMS_EXAMPLE)
        return values
    if len(raw) > MAX_TASK_PARAMS_CHARS:
        problems.append(f"task.params is {len(raw)} characters, above the limit of "
                        f"{MAX_TASK_PARAMS_CHARS}; a task has a few settings, {_PARAMS_EXAMPLE}")
        return values
    try:
        parsed = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        problems.append(f"task.params={shown(raw)} is not valid JSON; {_PARAMS_EXAMPLE}")
        return values
    if not isinstance(parsed, dict):
        problems.append(f"task.params={shown(raw)} must be a JSON object, {_PARAMS_EXAMPLE}")
        return values
    nested = sorted(k for k, v in parsed.items() if v is None or isinstance(v, dict | list))
    for key in nested:
        problems.append(f"task.params: {shown(key)} must be a single value (true/false, a "
                        "number or a string), not null, a list or an object")
    return {k: v for k, v in parsed.items() if k not in nested} | values


def _positive(problems: list[str], key: str, value: float, fix: str = "") -> None:
    if not (math.isfinite(value) and value > 0):
        problems.append(f"{key}={value} must be > 0{fix}")


def _at_most(problems: list[str], key: str, value: float, limit: float) -> None:
    if value > limit:
        problems.append(f"{key}={value} is above the limit of {limit:g}")


def _finite_non_negative(problems: list[str], key: str, value: float, what: str) -> None:
    if not (math.isfinite(value) and value >= 0):
        problems.append(f"{key}={value} must be a finite number >= 0 ({what})")


@dataclass(frozen=True)
class TrainSettings(Section):
    """Local training at each agency."""

    prefix: ClassVar[str] = "train"
    local_epochs: int = 2
    batch_size: int = 128
    learning_rate: float = 8.0
    momentum: float = 0.0
    seed: int = 0
    #: The step size of training without DP (privacy off, the simulation's centralised and
    #: non-private arms); None: learning_rate. DP-SGD's steps are clipped and noisy and
    #: want a larger step than plain SGD on the same model, so a task may set both.
    non_private_learning_rate: float | None = None

    def step_size(self, *, private: bool) -> float:
        """The learning rate of DP-SGD (``private``) or of plain SGD."""
        if private or self.non_private_learning_rate is None:
            return self.learning_rate
        return self.non_private_learning_rate

    def check(self) -> list[str]:
        p: list[str] = []
        if self.non_private_learning_rate is not None:
            _positive(p, "train.non_private_learning_rate", self.non_private_learning_rate)
        if self.local_epochs < 1:
            p.append(f"train.local_epochs={self.local_epochs} must be >= 1")
        _at_most(p, "train.local_epochs", self.local_epochs, MAX_LOCAL_EPOCHS)
        if self.batch_size < 1:
            p.append(f"train.batch_size={self.batch_size} must be >= 1")
        _at_most(p, "train.batch_size", self.batch_size, MAX_BATCH_SIZE)
        _positive(p, "train.learning_rate", self.learning_rate)
        if not 0 <= self.momentum < 1:
            p.append(f"train.momentum={self.momentum} must be in [0, 1)")
        if not 0 <= self.seed < 2 ** 63:
            p.append(f"train.seed={self.seed} must be in [0, 2**63)")
        return p


@dataclass(frozen=True)
class PrivacySettings(Section):
    """Record-level DP-SGD at each agency. Targets are required whenever DP is on."""

    prefix: ClassVar[str] = "privacy"
    enabled: bool = True
    target_epsilon: float | None = None
    target_delta: float | None = None
    max_grad_norm: float = 0.5
    accountant: str = "rdp"
    secure_mode: bool = False  # ChaCha20 noise and sampling (federation.secure_random)

    ACCOUNTANTS: ClassVar[tuple[str, ...]] = ("rdp", "prv")

    def check(self) -> list[str]:
        p: list[str] = []
        if self.enabled:
            if self.target_epsilon is None:
                p.append(
                    "privacy.target_epsilon is required when privacy.enabled is true "
                    "(there is no default budget); set e.g. privacy.target_epsilon=3.0 "
                    "or pick a preset such as privacy=eps3"
                )
            elif not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
                p.append(f"privacy.target_epsilon={self.target_epsilon} must be > 0")
            if self.target_delta is None:
                p.append(
                    "privacy.target_delta is required when privacy.enabled is true; "
                    "set e.g. privacy.target_delta=1e-5 (below 1/records of every agency)"
                )
            elif not (0 < self.target_delta < 1):
                p.append(f"privacy.target_delta={self.target_delta} must be in (0, 1)")
        _positive(p, "privacy.max_grad_norm", self.max_grad_norm)
        if self.accountant not in self.ACCOUNTANTS:
            p.append(
                f"privacy.accountant={self.accountant!r} is unknown; "
                f"use one of {list(self.ACCOUNTANTS)}"
            )
        return p


@dataclass(frozen=True)
class StrategySettings(Section):
    """Server-side aggregation and round control."""

    prefix: ClassVar[str] = "strategy"
    name: str = "fedavg"
    num_rounds: int = 5
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_nodes: int = 2
    # Nodes that must be connected before a round is sampled; 0 means min_nodes. A simulation
    # sets it to its number of agencies (its virtual nodes register while the server starts).
    min_available: int = 0
    quorum: int = 2
    proximal_mu: float = 0.0
    server_learning_rate: float = 0.1  # FedAdam's eta; FedAvgM's server step
    server_momentum: float = 0.0  # FedAvgM only: the server's momentum on the mean update
    round_timeout: float = 900.0
    # How the server combines the updates it sees. "mean" is the (weighted) mean of the
    # strategy; the others are robust to a minority of broken or malicious agencies and need
    # to see each update, so they exclude secure aggregation (see SecAggSettings).
    aggregation: str = "mean"
    trim_fraction: float = 0.2  # trimmed_mean: share cut at each end, per coordinate
    krum_byzantine: int = 1  # krum: how many agencies may be arbitrary
    # Update validation: an update whose L2 norm exceeds this multiple of the round's median
    # update norm is rejected (named in the round summary). 0 turns the norm check off.
    max_norm_ratio: float = 10.0

    NAMES: ClassVar[tuple[str, ...]] = ("fedavg", "fedprox", "fedadam", "fedavgm")
    AGGREGATIONS: ClassVar[tuple[str, ...]] = ("mean", "trimmed_mean", "median", "krum")

    def check(self) -> list[str]:
        p: list[str] = []
        if self.name not in self.NAMES:
            p.append(f"strategy.name={self.name!r} is unknown; use one of {list(self.NAMES)}")
        if self.num_rounds < 1:
            p.append(f"strategy.num_rounds={self.num_rounds} must be >= 1")
        _at_most(p, "strategy.num_rounds", self.num_rounds, MAX_ROUNDS)
        for key in ("min_nodes", "min_available", "quorum", "krum_byzantine"):
            _at_most(p, f"strategy.{key}", getattr(self, key), MAX_NODES)
        for key in ("fraction_train", "fraction_evaluate"):
            v = getattr(self, key)
            if not 0 < v <= 1:
                p.append(f"strategy.{key}={v} must be in (0, 1]")
        if self.min_nodes < 1:
            p.append(f"strategy.min_nodes={self.min_nodes} must be >= 1")
        if self.min_available < 0:
            p.append(f"strategy.min_available={self.min_available} must be >= 0 (0: min_nodes)")
        if not self.quorum >= 1:
            p.append(f"strategy.quorum={self.quorum} must be >= 1")
        if self.quorum > self.min_nodes:
            p.append(
                f"strategy.quorum={self.quorum} exceeds strategy.min_nodes={self.min_nodes}; "
                "a round could never reach it. Lower the quorum or raise min_nodes"
            )
        _finite_non_negative(p, "strategy.proximal_mu", self.proximal_mu, "FedProx's mu")
        if self.name == "fedprox" and self.proximal_mu == 0:
            p.append("strategy.proximal_mu must be > 0 with strategy.name=fedprox")
        _positive(p, "strategy.server_learning_rate", self.server_learning_rate)
        if not 0 <= self.server_momentum < 1:
            p.append(f"strategy.server_momentum={self.server_momentum} must be in [0, 1) "
                     "(FedAvgM's momentum; e.g. 0.9)")
        _positive(p, "strategy.round_timeout", self.round_timeout)
        _at_most(p, "strategy.round_timeout", self.round_timeout, MAX_ROUND_TIMEOUT)
        if self.aggregation not in self.AGGREGATIONS:
            p.append(f"strategy.aggregation={self.aggregation!r} is unknown; use one of "
                     f"{list(self.AGGREGATIONS)}")
        if not 0 <= self.trim_fraction < 0.5:
            p.append(f"strategy.trim_fraction={self.trim_fraction} must be in [0, 0.5)")
        if self.krum_byzantine < 0:
            p.append(f"strategy.krum_byzantine={self.krum_byzantine} must be >= 0")
        _finite_non_negative(p, "strategy.max_norm_ratio", self.max_norm_ratio, "0: off")
        return p


@dataclass(frozen=True)
class SecAggSettings(Section):
    """Secure aggregation (SecAgg+, server/secagg.py, federation/secagg.py): the server
    learns only the weighted sum of the updates of a round, never one agency's update.

    ``mode``: ``auto`` (on when a round samples at least 3 agencies and
    ``strategy.aggregation=mean``), ``on`` (always; an error with robust aggregation, which
    must see each update), ``off``."""

    prefix: ClassVar[str] = "secagg"
    mode: str = "auto"
    quantization_bits: int = 24  # levels per coordinate: 2**bits over [-clip_range, clip_range]
    clip_range: float = 4.0  # per-coordinate bound on a weighted update before quantisation
    num_neighbours: int = 0  # SecAgg+ graph degree; 0 = auto (all up to 10, then O(log n))
    # Shares needed to unmask a node: more than this fraction of its neighbourhood (itself
    # included). 0.5 is a strict majority, the least that holds against a malicious server;
    # each agency's policy sets its own floor ([secure_aggregation] min_threshold).
    threshold: float = 0.5
    # An agency's weight in the mean is min(its training examples, max_weight): the node masks
    # (weight / max_weight) * update and its weight, and the server divides the two sums.
    max_weight: int = 65536

    MODES: ClassVar[tuple[str, ...]] = ("auto", "on", "off")

    def check(self) -> list[str]:
        p: list[str] = []
        if self.mode not in self.MODES:
            p.append(f"secagg.mode={self.mode!r} is unknown; use one of {list(self.MODES)}")
        if not 8 <= self.quantization_bits <= 48:
            p.append(f"secagg.quantization_bits={self.quantization_bits} must be in [8, 48]")
        _positive(p, "secagg.clip_range", self.clip_range)
        if self.num_neighbours < 0:
            p.append(f"secagg.num_neighbours={self.num_neighbours} must be >= 0 (0: automatic)")
        _at_most(p, "secagg.num_neighbours", self.num_neighbours, MAX_NODES)
        if not 0.5 <= self.threshold < 1:
            p.append(f"secagg.threshold={self.threshold} must be in [0.5, 1): below a strict "
                     "majority of each neighbourhood a malicious server could collect both "
                     "kinds of shares of one agency, and every node would refuse the round")
        if not 1 <= self.max_weight < 2 ** min(self.quantization_bits, 48):
            p.append(f"secagg.max_weight={self.max_weight} must be in [1, "
                     f"2**secagg.quantization_bits)")
        return p


@dataclass(frozen=True)
class EvalSettings(Section):
    prefix: ClassVar[str] = "eval"
    k: int = 50

    def check(self) -> list[str]:
        p = [] if self.k >= 1 else [f"eval.k={self.k} must be >= 1"]
        _at_most(p, "eval.k", self.k, MAX_EVAL_K)
        return p


@dataclass(frozen=True)
class RunPaths(Section):
    """Where a run reads and writes. Empty means "not set"."""

    prefix: ClassVar[str] = "paths"
    data_root: str = ""
    output_dir: str = ""
    state_root: str = ""  # simulation only: one node state folder per agency under it
    resume_from: str = ""  # a killed run's output folder: continue from its last checkpoint
    # The consortium's book of the last privacy-ledger head seen per agency (JSON file);
    # empty: <output_dir>/ledger-heads.json. Deployments keep one per consortium.
    ledger_heads: str = ""
    # The consortium's registry.json (deployment): the names of its nodes, for every line
    # and record that would otherwise show a node id; empty in a simulation.
    registry: str = ""


@dataclass(frozen=True)
class AppSettings(Section):
    """The app bundle's provenance. ``app.signature`` is set by ``heroes consortium train``
    (the consortium's signature over the bundle's manifest); agency nodes verify it before
    running any of the bundle's code. Empty in simulation, where no bundle travels."""

    prefix: ClassVar[str] = "app"
    signature: str = ""


_PARSED_LIMIT = 64
_parsed_held: dict[tuple[type, tuple[tuple[str, type, object], ...]], object] = {}
_parsed_lock = threading.Lock()

T = TypeVar("T")


def _parsed(cls: type[T], flat: Mapping[str, object], parse: Callable[[], T]) -> T:
    """``parse()``, reused for the same flat config: a node parses the run config on every
    message it handles (about seven a round), always the same one. Only what parsed is
    kept (a config with problems raises every time); the results are frozen dataclasses."""
    try:
        # the type too: True == 1 == 1.0 as dict keys, and the parse tells them apart
        key = (cls, tuple((k, type(v), v) for k, v in flat.items()))
        hash(key)
    except TypeError:  # a value that is not hashable: parse it every time
        return parse()
    with _parsed_lock:
        held = _parsed_held.get(key)
    if held is not None:
        return cast(T, held)
    value = parse()
    with _parsed_lock:
        if len(_parsed_held) >= _PARSED_LIMIT:
            _parsed_held.pop(next(iter(_parsed_held)))
        _parsed_held[key] = value
    return value


@dataclass(frozen=True)
class RunSettings:
    task_name: str
    task_params: Mapping[str, Scalar]
    train: TrainSettings
    privacy: PrivacySettings
    strategy: StrategySettings
    eval: EvalSettings
    paths: RunPaths = field(default_factory=RunPaths)
    app: AppSettings = field(default_factory=AppSettings)
    secagg: SecAggSettings = field(default_factory=SecAggSettings)

    SECTIONS: ClassVar[tuple[type[Section], ...]] = (
        TrainSettings, PrivacySettings, StrategySettings, EvalSettings, RunPaths, AppSettings,
        SecAggSettings,
    )

    @classmethod
    def from_flat(cls, flat: Mapping[str, object], *, source: str = "run config") -> RunSettings:
        """Parse and validate a flat run config; one ConfigError lists every problem."""
        return _parsed(cls, flat, lambda: cls._from_flat(flat, source))

    @classmethod
    def _from_flat(cls, flat: Mapping[str, object], source: str) -> RunSettings:
        problems: list[str] = []
        grouped: dict[str, dict[str, object]] = {}
        for key, value in flat.items():
            prefix, _, name = str(key).partition(".")
            if not name:
                problems.append(
                    f"{shown(key)} is not a known setting; settings are written section.name, "
                    "e.g. privacy.target_epsilon"
                )
                continue
            grouped.setdefault(prefix, {})[name] = value
        task_values = grouped.pop("task", {})
        parsed = {s.prefix: s.parse(grouped.pop(s.prefix, {}), problems) for s in cls.SECTIONS}
        for prefix in sorted(grouped):
            known = ["task"] + [s.prefix for s in cls.SECTIONS]
            problems.append(f"section {prefix!r} is unknown; known sections: {known}")
        task_name = task_values.pop("name", None)
        task_values = _task_params(task_values, problems)
        params: Mapping[str, Scalar] = {}
        if not isinstance(task_name, str):
            problems.append("task.name is required, e.g. task.name=advert-risk")
        else:
            params = task_params_from(task_name, task_values, problems)
        agg, sa = parsed["strategy"], parsed["secagg"]
        if (isinstance(agg, StrategySettings) and isinstance(sa, SecAggSettings)
                and agg.aggregation != "mean" and sa.mode == "on"):
            problems.append(
                f"strategy.aggregation={agg.aggregation!r} and secagg.mode='on' exclude each "
                "other: robust aggregation must see every agency's update to judge it, and "
                "secure aggregation exists so that the server never sees one. Choose one: "
                "secagg.mode=off for robustness, or strategy.aggregation=mean for masking "
                "(secagg.mode=auto picks masking only when aggregation is mean)")
        if problems:
            error = PrivacyConfigError if all(
                p.startswith("privacy.") for p in problems
            ) else ConfigError
            raise error(problems, source=source)
        return cls(
            task_name=str(task_name),
            task_params=params,
            train=parsed["train"],
            privacy=parsed["privacy"],
            strategy=parsed["strategy"],
            eval=parsed["eval"],
            paths=parsed["paths"],
            app=parsed["app"],
            secagg=parsed["secagg"],
        )

    def to_flat(self) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {
            "task.name": self.task_name,
            "task.params": json.dumps(dict(self.task_params), sort_keys=True),
        }
        for section in (self.train, self.privacy, self.strategy, self.eval, self.paths,
                        self.app, self.secagg):
            out.update(section.to_flat())
        return out


@dataclass(frozen=True)
class NodeView:
    """The few run settings a node's light steps need (the secure-aggregation stages that
    only sign, share or reveal; receipts), parsed without the task registry, whose models
    import torch: seconds per message for a node that starts a process for each one. Every
    step that trains, evaluates or sets up parses the whole RunSettings first."""

    task_name: str
    paths: RunPaths
    privacy: PrivacySettings
    secagg: SecAggSettings

    @classmethod
    def from_flat(cls, flat: Mapping[str, object], *, source: str = "run config") -> NodeView:
        return _parsed(cls, flat, lambda: cls._from_flat(flat, source))

    @classmethod
    def _from_flat(cls, flat: Mapping[str, object], source: str) -> NodeView:
        problems: list[str] = []
        grouped: dict[str, dict[str, object]] = {}
        for key, value in flat.items():
            prefix, _, name = key.partition(".")
            grouped.setdefault(prefix, {})[name] = value
        parsed = {section.prefix: section.parse(dict(grouped.get(section.prefix, {})), problems)
                  for section in (RunPaths, PrivacySettings, SecAggSettings)}
        task_name = grouped.get("task", {}).get("name")
        if not isinstance(task_name, str):
            problems.append("task.name is required, e.g. task.name=advert-risk")
        if problems:
            raise ConfigError(problems, source=source)
        return cls(task_name=str(task_name), paths=parsed["paths"],
                   privacy=parsed["privacy"], secagg=parsed["secagg"])
