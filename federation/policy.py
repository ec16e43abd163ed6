"""The agency's own privacy policy: ``<state_dir>/policy.toml``, written by the agency.

The node obeys this file, not the consortium: the run config says what the consortium
would like, the policy says what the agency accepts. Three sections are ours:

    [privacy_budget]       lifetime epsilon per dataset, delta, accountant, whether DP may
                           be off, and what to do when a run does not fit;
                           [privacy_budget.datasets."<dataset_id>"] gives one dataset a
                           budget of its own (max_epsilon), else the agency-wide one applies
    [secure_aggregation]   the least the node accepts from a secure-aggregation round
    [sharing]              whether per-agency figures may leave in the clear

Other sections (``[node]``, written by ``heroes agency init``) belong to other code and are
ignored here. Parsing is strict because a lenient parser is a privacy bug: ``bool("false")``
is True in Python, so a quoted "false" would have allowed non-private training. Every
problem is collected and reported at once, naming the file, the key, the rule and the fix;
a value read from the file is shown only when it is a number (its type otherwise), since
the file is the agency's and its error messages travel to logs and to the consortium.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from dataclasses import field as dc_field
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

from federation.config import PrivacySettings
from federation.errors import LedgerError, PolicyError
from federation.files import StatCache, open_private, private_dir, stat_signature

POLICY_FILE = "policy.toml"

#: Below a strict majority of its neighbourhood, a malicious aggregator could ask one half
#: of a node's neighbours for its mask-key shares and the other half for its self-mask
#: shares and so unmask that node alone; a threshold above half makes that impossible.
SECURE_THRESHOLD_FLOOR = 0.5

_NUMBER, _INTEGER, _STRING, _BOOLEAN = "number", "integer", "string", "boolean"

#: (TOML section, TOML key) -> (Policy field, kind, example for the fix)
_KEYS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("privacy_budget", "max_epsilon"): ("max_epsilon", _NUMBER, "max_epsilon = 10.0"),
    ("privacy_budget", "delta"): ("delta", _NUMBER, "delta = 1e-5"),
    ("privacy_budget", "accountant"): ("accountant", _STRING, 'accountant = "rdp"'),
    ("privacy_budget", "allow_non_private"): ("allow_non_private", _BOOLEAN,
                                              "allow_non_private = false"),
    ("privacy_budget", "on_budget"): ("on_budget", _STRING, 'on_budget = "stretch"'),
    ("secure_aggregation", "min_threshold"): ("secure_min_threshold", _NUMBER,
                                              "min_threshold = 0.5"),
    ("secure_aggregation", "min_agencies"): ("secure_min_agencies", _INTEGER,
                                             "min_agencies = 3"),
    ("secure_aggregation", "required"): ("require_secure_aggregation", _BOOLEAN,
                                         "required = false"),
    ("sharing", "share_local_metrics"): ("share_local_metrics", _BOOLEAN,
                                         "share_local_metrics = false"),
}
SECTIONS: tuple[str, ...] = ("privacy_budget", "secure_aggregation", "sharing")
_REQUIRED = (("privacy_budget", "max_epsilon"), ("privacy_budget", "delta"))
_TOML_KEY = {field: (section, key) for (section, key), (field, _, _) in _KEYS.items()}
#: [privacy_budget.datasets."<dataset_id>"]: a dataset's own budget (Policy.dataset_budgets)
_DATASETS, _DATASETS_FIELD = "datasets", "dataset_budgets"
_DATASET_EXAMPLE = '[privacy_budget.datasets."DATASET_ID"] with `max_epsilon = 2.0`'

EXAMPLE = """\
  [privacy_budget]
  max_epsilon = 10.0          # lifetime budget per dataset (unit: one record of the task
                              # that trains it: an advert, a conversation)
  delta = 1e-5
  accountant = "rdp"          # or "prv"
  allow_non_private = false
  on_budget = "stretch"       # or "stop"

  [privacy_budget.datasets."eu-police-north/chats-2026"]
  max_epsilon = 2.0           # optional: this dataset's own lifetime budget

  [secure_aggregation]
  min_threshold = 0.5         # share threshold t must exceed this fraction; in [0.5, 1)
  min_agencies = 3            # smallest secure sum this node takes part in (>= 2)
  required = false            # true: refuse plain (unmasked) rounds

  [sharing]
  share_local_metrics = false # true: per-agency loss, counts, metrics, epsilon in the clear"""


@dataclass(frozen=True)
class Policy:
    """The agency's limits. Epsilon at most ``max_epsilon`` at ``delta`` per dataset, over
    its whole life, computed with ``accountant`` (the reported guarantee); the rest says
    what the node accepts from the consortium beyond DP."""

    max_epsilon: float
    delta: float
    accountant: str = "rdp"
    allow_non_private: bool = False
    #: "stretch": raise the noise so every planned round fits the remaining budget;
    #: "stop": keep the run's noise and refuse rounds once the budget would be passed.
    on_budget: str = "stretch"
    #: A secure round's share threshold t must be more than this fraction of the node's
    #: neighbourhood g: t >= floor(f * g) + 1. In [0.5, 1); see SECURE_THRESHOLD_FLOOR.
    secure_min_threshold: float = 0.5
    #: The fewest agencies in any secure sum this node takes part in (a sum of two tells
    #: each of them the other's update).
    secure_min_agencies: int = 3
    #: Refuse plain (unmasked) rounds: the aggregator would see this node's update.
    require_secure_aggregation: bool = False
    #: Whether per-agency figures (loss, counts, evaluation metrics, epsilon, DP
    #: parameters) may be sent to the consortium in the clear.
    share_local_metrics: bool = False
    #: Datasets with a lifetime budget of their own (dataset id -> max_epsilon, at the same
    #: delta and accountant); every other dataset has ``max_epsilon``. Budgets are per
    #: dataset, not per task: the data is what is protected, so two tasks trained on one
    #: dataset spend one budget.
    dataset_budgets: Mapping[str, float] = dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        problems: list[str] = []
        values: dict[str, Any] = {}
        budgets = dict(self.dataset_budgets)
        problems += _dataset_budget_problems(budgets, "dataset_budgets")
        object.__setattr__(self, "dataset_budgets",
                           {k: float(v) for k, v in budgets.items()} if not problems else budgets)
        for f in fields(self):
            if f.name == _DATASETS_FIELD:
                continue
            value = getattr(self, f.name)
            kind = _KEYS[_TOML_KEY[f.name]][1]
            problem = _type_problem(value, kind)
            if problem:
                problems.append(f"{f.name} {problem}")
            else:
                values[f.name] = value
        for name in ("max_epsilon", "delta", "secure_min_threshold"):
            if name in values:  # ints are fine numbers; keep them floats from here on
                object.__setattr__(self, name, float(values[name]))
                values[name] = float(values[name])
        problems += _range_problems(values, lambda name: name)
        if problems:
            raise PolicyError(problems, source="agency privacy policy")

    def budget_for(self, dataset: str) -> float:
        """The lifetime epsilon budget of ``dataset``: its own, else the agency-wide one."""
        return self.dataset_budgets.get(dataset, self.max_epsilon)

    def for_dataset(self, dataset: str) -> Policy:
        """This policy as it applies to one dataset: ``max_epsilon`` is that dataset's
        budget (everything else unchanged), so code that plans, reserves or reports
        against ``max_epsilon`` uses the right one. Applying it twice changes nothing."""
        return replace(self, max_epsilon=self.budget_for(dataset))

    def min_share_threshold(self, neighbourhood: int) -> int:
        """The smallest share threshold this node accepts in a neighbourhood of
        ``neighbourhood`` nodes (itself included): floor(f * g) + 1, computed exactly
        (0.57 * 100 is 56.99... in floating point; the rule means 57)."""
        return math.floor(Fraction(str(self.secure_min_threshold)) * neighbourhood) + 1

    def accepts_secure_round(self, *, threshold: int, neighbourhood: int,
                             agencies: int) -> str | None:
        """None when a secure round with these parameters is acceptable, else why not."""
        if agencies < self.secure_min_agencies:
            return (f"the secure sum would hold {agencies} agencies; this agency's policy "
                    f"asks for at least {self.secure_min_agencies} "
                    "([secure_aggregation] min_agencies)")
        need = self.min_share_threshold(neighbourhood)
        if threshold < need:
            return (f"share threshold {threshold} of a neighbourhood of {neighbourhood} is "
                    f"not more than {self.secure_min_threshold:g} of it; this agency's policy "
                    f"asks for at least {need} ([secure_aggregation] min_threshold)")
        return None


# How a value's type is named in a message that must not show the value: in the words of
# the file it came from. The first match wins (bool before int: True is an int).
TOML_TYPE_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
    (list, "an array"), (dict, "a table"))
YAML_TYPE_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "a list"),
    (dict, "a mapping"))


def type_name(value: object,
              names: tuple[tuple[type | tuple[type, ...], str], ...] = TOML_TYPE_NAMES) -> str:
    """The name of ``value``'s type in ``names``' vocabulary (TOML's by default)."""
    if value is None:
        return "null"
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def toml_type(value: object) -> str:
    """The TOML name of a value's type, for messages that must not show the value."""
    return type_name(value, TOML_TYPE_NAMES)


def _type_problem(value: object, kind: str) -> str | None:
    if kind == _BOOLEAN and not isinstance(value, bool):
        return (f"must be a boolean (true or false, without quotes), not "
                f"{toml_type(value)}")
    if kind == _NUMBER and (isinstance(value, bool) or not isinstance(value, int | float)):
        return f"must be a number, not {toml_type(value)}"
    if kind == _INTEGER and (isinstance(value, bool) or not isinstance(value, int)):
        return f"must be a whole number, not {toml_type(value)}"
    if kind == _STRING and not isinstance(value, str):
        return f"must be a string (in quotes), not {toml_type(value)}"
    return None


def _range_problems(values: Mapping[str, Any], name: Callable[[str], str]) -> list[str]:
    """The range rules, for the fields present in ``values`` (already of the right type).
    Numbers are shown (they are limits, not data); strings are not."""
    out: list[str] = []
    if "max_epsilon" in values:
        v = float(values["max_epsilon"])
        if not math.isfinite(v):
            out.append(f"{name('max_epsilon')}={v} must be finite: the lifetime budget per "
                       "dataset, e.g. 10.0")
        elif v <= 0:
            out.append(f"{name('max_epsilon')}={v} must be > 0: the lifetime budget per "
                       "dataset, e.g. 10.0")
    if "delta" in values:
        v = float(values["delta"])
        if not 0 < v < 1:
            out.append(f"{name('delta')}={v} must be in (0, 1), e.g. 1e-5 (well below 1 "
                       "over the number of training records)")
    accountants = PrivacySettings.ACCOUNTANTS
    if "accountant" in values and values["accountant"] not in accountants:
        out.append(f"{name('accountant')} must be one of {sorted(accountants)}")
    if "on_budget" in values and values["on_budget"] not in ("stretch", "stop"):
        out.append(f"{name('on_budget')} must be 'stretch' or 'stop'")
    if "secure_min_threshold" in values:
        v = float(values["secure_min_threshold"])
        if not (SECURE_THRESHOLD_FLOOR <= v < 1):
            out.append(
                f"{name('secure_min_threshold')}={v} must be at least "
                f"{SECURE_THRESHOLD_FLOOR} and below 1: with a share threshold at or below "
                "half of a neighbourhood, a malicious aggregator can collect both kinds of "
                "shares of one node and unmask its update, so 0.5 is a hard floor")
    if "secure_min_agencies" in values and int(values["secure_min_agencies"]) < 2:
        out.append(f"{name('secure_min_agencies')}={values['secure_min_agencies']} must be at "
                   "least 2: a secure sum of one agency is that agency's update")
    return out


def _dataset_budget_problems(budgets: Mapping[str, object], where: str,
                             numbers: Mapping[str, int] | None = None) -> list[str]:
    """What is wrong with per-dataset budgets (dataset id -> max_epsilon). A dataset is
    named by its place in the file (``numbers``, else the mapping's order), never by its
    id: ids are the agency's own names, and these messages reach logs and the consortium.
    Budgets are limits, so they are shown."""
    out: list[str] = []
    for index, (dataset, value) in enumerate(budgets.items(), start=1):
        number = numbers[dataset] if numbers else index
        place = f"{where}: dataset {number} (counting from 1, in file order)"
        if not dataset.strip() or any(ord(c) < 32 for c in dataset):
            out.append(f"{place} has an empty id or one holding a control character. Fix: "
                       f"name it as the node names the dataset, e.g. {_DATASET_EXAMPLE}")
        problem = _type_problem(value, _NUMBER)
        if problem:
            out.append(f"{place}: max_epsilon {problem}. Fix: e.g. {_DATASET_EXAMPLE}")
            continue
        v = float(cast(float, value))  # a number: checked just above
        if not math.isfinite(v) or v <= 0:
            out.append(f"{place}: max_epsilon={v} must be finite and > 0: that dataset's "
                       f"lifetime budget. Fix: e.g. {_DATASET_EXAMPLE}")
    return out


def _read_dataset_budgets(table: object, problems: list[str]) -> dict[str, object]:
    """[privacy_budget.datasets]: a table of one table per dataset, each holding only
    max_epsilon. Returns dataset id -> value (checked by _dataset_budget_problems)."""
    where = f"[privacy_budget.{_DATASETS}]"
    if not isinstance(table, dict):
        problems.append(f"[privacy_budget] {_DATASETS} must be a table of datasets, not "
                        f"{toml_type(table)}. Fix: write each as {_DATASET_EXAMPLE}")
        return {}
    out: dict[str, object] = {}
    numbers: dict[str, int] = {}
    for number, (dataset, entry) in enumerate(table.items(), start=1):
        place = f"{where}: dataset {number} (counting from 1, in file order)"
        if not isinstance(entry, dict):
            problems.append(f"{place} must be a table, not {toml_type(entry)}. Fix: write it "
                            f"as {_DATASET_EXAMPLE}")
            continue
        extra = sorted(set(entry) - {"max_epsilon"})
        if extra:
            problems.append(f"{place} has {len(extra)} key(s) other than max_epsilon, the "
                            "only one allowed there. Fix: remove them (delta and accountant "
                            "are the agency's, in [privacy_budget])")
        if "max_epsilon" not in entry:
            problems.append(f"{place} has no max_epsilon. Fix: e.g. {_DATASET_EXAMPLE}")
            continue
        out[dataset] = entry["max_epsilon"]
        numbers[dataset] = number
    problems += _dataset_budget_problems(out, where, numbers)
    return out


def load_policy(state_dir: Path) -> Policy:
    """The agency's policy from ``<state_dir>/policy.toml``.

    There is no default: a node without a policy does not train with privacy it was not
    told to accept. Raises PolicyError (a LedgerError) listing every problem at once.
    """
    path = Path(state_dir) / POLICY_FILE
    signature = stat_signature([path])
    held = _POLICIES.get(str(path), signature)
    if held is not None:
        return held
    policy = _load_policy(path)
    _POLICIES.put(str(path), signature, policy)
    return policy


#: What this process read, by file, while its stat signature holds (a node reads its
#: policy on every message it handles; an edited policy is read again).
_POLICIES: StatCache[Policy] = StatCache(4096)


def _load_policy(path: Path) -> Policy:
    import tomllib

    if not path.is_file():
        raise PolicyError(
            [f"there is no privacy policy file. Fix: the agency writes it (`heroes agency "
             f"init` does), e.g.\n{EXAMPLE}"], source=str(path))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"cannot be read ({type(exc).__name__}). Fix: the node's user "
                           "must be able to read it, and it must be UTF-8 text"],
                          source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"is not valid TOML ({exc}). Fix: correct the syntax there; a "
                           f"valid policy looks like\n{EXAMPLE}"], source=str(path)) from None
    except RecursionError:  # arrays or inline tables nested thousands deep
        raise PolicyError(["is not a usable TOML file (values nested too deeply). Fix: "
                           f"write it as a valid policy looks, e.g.\n{EXAMPLE}"],
                          source=str(path)) from None
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            continue  # a section; ours are checked below, others are not ours to check
        if key in SECTIONS:
            problems.append(f"{key} must be a section ([{key}] on a line of its own), not "
                            f"{toml_type(value)}")
        else:
            problems.append(f"{key!r} is outside any section. Fix: move it under "
                            "[privacy_budget], [secure_aggregation] or [sharing]")
    for section in SECTIONS:
        if section not in data:
            if section == "privacy_budget":
                problems.append("has no [privacy_budget] section. Fix: add one with "
                                "max_epsilon and delta, e.g.\n" + EXAMPLE)
            continue
        table = data[section]
        if not isinstance(table, dict):
            continue  # reported above
        allowed = sorted(k for s, k in _KEYS if s == section)
        if section == "privacy_budget" and _DATASETS in table:
            values[_DATASETS_FIELD] = _read_dataset_budgets(table[_DATASETS], problems)
        for key in sorted(set(table) - set(allowed) - ({_DATASETS} if section ==
                                                         "privacy_budget" else set())):
            problems.append(f"[{section}] {key!r} is not a known key; allowed: {allowed}. "
                            "Fix: correct its spelling or remove it")
        for key in allowed:
            field, kind, example = _KEYS[(section, key)]
            if key not in table:
                if (section, key) in _REQUIRED:
                    problems.append(f"[{section}] {key} is missing. Fix: add e.g. "
                                    f"`{example}`")
                continue
            problem = _type_problem(table[key], kind)
            if problem:
                problems.append(f"[{section}] {key} {problem}. Fix: e.g. `{example}`")
            else:
                values[field] = table[key]

    def where(field: str) -> str:
        section, key = _TOML_KEY[field]
        return f"[{section}] {key}"

    problems += _range_problems(values, where)
    if problems:
        raise PolicyError(problems, source=f"{path} (the agency's privacy policy)")
    return Policy(**values)


def policy_document(policy: Policy) -> dict[str, dict[str, Any]]:
    """The policy as the TOML document ``write_policy`` writes (all three sections)."""
    doc: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in asdict(policy).items():
        if name == _DATASETS_FIELD:
            continue
        section, key = _TOML_KEY[name]
        doc[section][key] = value
    if policy.dataset_budgets:
        doc["privacy_budget"][_DATASETS] = {
            dataset: {"max_epsilon": budget} for dataset, budget in policy.dataset_budgets.items()}
    return doc


def write_policy(state_dir: Path, policy: Policy) -> Path:
    """Write (or replace, atomically: a reader sees the old file or the new one, never half
    of one) the agency's policy file with all three sections."""
    import tomli_w

    path = Path(state_dir) / POLICY_FILE
    private_dir(path.parent)  # the node's state folder: 0700 when this makes it
    tmp = path.with_name(POLICY_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as handle:
        handle.write(tomli_w.dumps(policy_document(policy)))
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


__all__ = ["EXAMPLE", "POLICY_FILE", "SECTIONS", "SECURE_THRESHOLD_FLOOR", "TOML_TYPE_NAMES",
           "YAML_TYPE_NAMES", "LedgerError", "Policy", "PolicyError", "load_policy",
           "policy_document", "toml_type", "type_name", "write_policy"]
