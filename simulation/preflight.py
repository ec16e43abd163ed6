"""Everything about a ``heroes simulate`` configuration that can be checked before any data
is generated, checked at once: one ConfigError lists every problem (key, rule, fix), and the
command exits 2 with nothing written but Hydra's own ``.hydra/`` folder.

A configuration that cannot run is refused here rather than after the agencies have been
generated and Ray started: a quorum, ``min_nodes`` or ``min_available`` above the number of
agencies (Flower would wait for nodes that never come), Krum with more Byzantine agencies
than the federation can outvote, privacy switched off (or plain rounds) where the simulated
agencies' own policies refuse them, sizes beyond the documented limits, resources that are
not numbers, a ``paths.resume_from`` without a checkpoint. Limits (README, "Researchers:
simulations"):

    agencies per federation        MAX_AGENCIES     (the presets go to 1,000)
    adverts in all, after scaling  MAX_ADVERTS      (the default run has 26,700)
    task.num_buckets               MAX_BUCKETS      (a dense batch is batch x buckets floats)
    task.hidden                    MAX_HIDDEN
    audit.canaries                 MAX_CANARIES
    audit.gradient_canaries        MAX_GRADIENT_CANARIES
    rounds, local epochs, batch    federation/config.py (they bind every node too)
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeGuard

from omegaconf import DictConfig, OmegaConf

from federation import limits
from federation.config import RunSettings, Scalar
from federation.errors import ConfigError, HeroesError
from federation.policy import YAML_TYPE_NAMES, Policy, type_name
from simulation.generators import Preset as FederationPreset
from simulation.generators import generator_for

MAX_AGENCIES = 1000
MAX_ADVERTS = 1_000_000
MAX_BUCKETS = limits.MAX_BUCKETS  # also checked by every node (federation/tasks)
MAX_HIDDEN = limits.MAX_HIDDEN
MAX_CANARIES = 10_000
MAX_GRADIENT_CANARIES = 1_000_000  # federation.audit's (that module imports torch)
MODES = ("federated", "centralised", "baselines")
#: Where a simulation's ClientApps run (simulation/inprocess.py): threads, or Ray workers.
BACKENDS = ("inprocess", "ray")
#: Tasks whose canary records simulation/audit.py can craft (single-ideograph adverts).
BLACKBOX_TASKS = ("advert-risk",)
RUN_SECTIONS = ("task", "train", "privacy", "strategy", "eval", "secagg")
#: The simulation's own sections and their keys (the run sections are RunSettings').
OWN_KEYS: dict[str, tuple[str, ...]] = {
    "simulation": ("backend", "client_cpus", "verbose"),
    "tracking": ("tensorboard",),
    "paths": ("resume_from", "ledger_heads"),
    "audit": ("enabled", "mode", "agency", "canaries", "gradient_canaries", "confidence",
              "break_noise_for_testing"),
}
TOP_LEVEL = frozenset({"seed", "mode", "baseline", "test_fraction", "federation",
                       "experiment", "agency_policy", "tasks", *OWN_KEYS, *RUN_SECTIONS})
SOURCE = "simulation config"
#: For the fix of a bad agency_policy field: a value of the right type (Hydra syntax).
POLICY_EXAMPLES = {"max_epsilon": "10.0", "delta": "1e-5", "accountant": "rdp",
                   "allow_non_private": "true", "on_budget": "stretch",
                   "secure_min_threshold": "0.5", "secure_min_agencies": "3",
                   "require_secure_aggregation": "false", "share_local_metrics": "false"}


@dataclass(frozen=True)
class Checked:
    """A configuration that passed every check, with what the run needs from it."""

    flat: dict[str, Scalar]
    settings: RunSettings
    preset: FederationPreset
    policies: dict[str, Policy]


def check(cfg: DictConfig, *, data_root: Path, output_dir: Path,
          state_root: Path) -> Checked:
    """Check ``cfg`` for a run writing under these folders; raise one ConfigError listing
    every problem. Reads nothing but the configuration (and a checkpoint to resume)."""
    problems: list[str] = []
    whole = _container(cfg, problems)
    flat = _flat(whole, problems, data_root=data_root, output_dir=output_dir,
                 state_root=state_root)
    _own_sections(whole, problems)
    preset = _preset(whole, problems)
    if preset is not None and not flat.get("strategy.min_available"):
        # every simulated agency exists from the start; their virtual nodes register while
        # the server starts, so a round waits for all of them rather than sampling early
        flat["strategy.min_available"] = len(preset.agencies)
    settings: RunSettings | None = None
    try:
        settings = RunSettings.from_flat(flat, source=SOURCE)
    except ConfigError as exc:
        problems += exc.problems
    policies = agency_policies(whole.get("agency_policy"), None if preset is None else
                               [a.agency_id for a in preset.agencies], problems)
    if settings is not None and preset is not None:
        problems += _fits_the_federation(settings, preset, whole)
        problems += _policies_allow(settings, preset, policies)
        if whole.get("mode") == "baselines" and settings.privacy.enabled:  # + a non-private arm
            problems += _policies_allow(replace(settings, privacy=replace(
                settings.privacy, enabled=False)), preset, policies, arm=" (non-private arm)")
        problems += _audit(whole.get("audit"), settings, preset, whole.get("mode"))
        if not problems and settings.paths.resume_from:
            problems += _resumable(settings)
    if problems:
        raise ConfigError(problems, source=SOURCE)
    assert settings is not None and preset is not None
    return Checked(flat=flat, settings=settings, preset=preset, policies=policies)


# --- reading ------------------------------------------------------------------------------

def _container(cfg: DictConfig, problems: list[str]) -> dict[str, Any]:
    whole = OmegaConf.to_container(cfg, resolve=True)  # interpolation errors: exit 2 (cli)
    assert isinstance(whole, dict)
    out = {str(k): v for k, v in whole.items() if k != "hydra"}
    for key in sorted(set(out) - TOP_LEVEL):
        problems.append(f"top-level key {key!r} is not a known setting; known: "
                        f"{sorted(TOP_LEVEL)}. Fix: correct its spelling or remove it")
    return out


def _flat(whole: Mapping[str, Any], problems: list[str], *, data_root: Path,
          output_dir: Path, state_root: Path) -> dict[str, Scalar]:
    """The Flower run config: the run sections flattened, plus this run's folders."""
    flat: dict[str, Any] = {}
    for section in RUN_SECTIONS:
        node = whole.get(section)
        if not isinstance(node, dict):
            problems.append(f"{section} must be a section of settings, not {_kind(node)}. "
                            f"Fix: pick an option of the {section} group, e.g. "
                            f"{_EXAMPLE_GROUP.get(section, section + '.KEY=VALUE')}")
            continue
        for key, value in node.items():
            if isinstance(value, dict | list):
                problems.append(f"{section}.{key} must be a single value, not {_kind(value)}")
            elif value is not None:
                flat[f"{section}.{key!s}"] = value
    raw_paths = whole.get("paths")
    paths: dict[str, Any] = raw_paths if isinstance(raw_paths, dict) else {}
    flat["paths.data_root"] = str(data_root)
    flat["paths.output_dir"] = str(output_dir)
    flat["paths.state_root"] = str(state_root)
    for key in ("resume_from", "ledger_heads"):
        value = paths.get(key) or ""
        if not isinstance(value, str):
            problems.append(f"paths.{key} must be a folder path (a string), not {_kind(value)}")
            value = ""
        flat[f"paths.{key}"] = value
    return flat


_EXAMPLE_GROUP = {"privacy": "privacy=eps3", "strategy": "strategy=fedavg",
                  "train": "train=default", "task": "task=advert_risk"}


def _kind(value: object) -> str:
    return type_name(value, YAML_TYPE_NAMES)  # the run config is YAML: its words


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def _own_sections(whole: Mapping[str, Any], problems: list[str]) -> None:
    """The simulation's own top-level keys and sections, typed strictly (a quoted "false"
    is not false, and a boolean is not a number)."""
    for section, keys in OWN_KEYS.items():
        node = whole.get(section, {})
        if not isinstance(node, dict):
            problems.append(f"{section} must be a section with keys {list(keys)}, not "
                            f"{_kind(node)}")
            continue
        for key in sorted(set(map(str, node)) - set(keys)):
            problems.append(f"{section}.{key} is not a known setting; allowed here: "
                            f"{', '.join(f'{section}.{k}' for k in keys)}")
    mode = whole.get("mode")
    if mode not in MODES:
        problems.append(f"mode={mode!r} is unknown; use one of {list(MODES)}")
    seed = whole.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        problems.append(f"seed={_shown(seed)} must be a whole number in [0, 2**32), e.g. seed=0")
    fraction = whole.get("test_fraction")
    if not _is_number(fraction) or not 0.05 <= float(fraction) <= 0.9:
        problems.append(f"test_fraction={_shown(fraction)} must be a number in [0.05, 0.9] "
                        "(the share of each agency's entities held out for testing), e.g. 0.25")
    for key in ("baseline", "tracking.tensorboard", "simulation.verbose"):
        value = _get(whole, key)
        if not isinstance(value, bool):
            problems.append(f"{key}={_shown(value)} must be true or false (unquoted)")
    backend = _get(whole, "simulation.backend")
    if backend not in BACKENDS:
        problems.append(f"simulation.backend={_shown(backend)} must be one of "
                        f"{', '.join(BACKENDS)}: inprocess runs the nodes on threads of this "
                        "process (the default: no Ray start-up), ray on Ray workers, e.g. "
                        "simulation.backend=inprocess")
    elif backend == "inprocess" and os.environ.get("RAY_ADDRESS"):
        problems.append("RAY_ADDRESS is set, but simulation.backend=inprocess runs every node "
                        "in this process and would ignore that Ray cluster. Fix: "
                        "simulation.backend=ray to run on it, or unset RAY_ADDRESS")
    cpus = _get(whole, "simulation.client_cpus")
    have = os.cpu_count() or 1
    if not _is_number(cpus) or float(cpus) <= 0:
        problems.append(f"simulation.client_cpus={_shown(cpus)} must be a number > 0: the "
                        "CPUs each virtual node is given (nodes at once: this machine's CPUs "
                        "divided by it), e.g. simulation.client_cpus=1")
    elif backend == "ray" and float(cpus) > have and not os.environ.get("RAY_ADDRESS"):
        problems.append(f"simulation.client_cpus={cpus} is more than this machine's {have} "
                        "CPUs: Ray could never start a ClientApp and the run would wait "
                        f"forever. Fix: simulation.client_cpus=1 (or at most {have}), or "
                        "join a larger Ray cluster with RAY_ADDRESS")


def _get(whole: Mapping[str, Any], dotted: str) -> Any:
    node: Any = whole
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _shown(value: object) -> str:
    """A configuration value in a message, cut short: it came from the researcher's own
    command line or files, but a message should stay one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _preset(whole: Mapping[str, Any], problems: list[str]) -> FederationPreset | None:
    data = whole.get("federation")
    task = whole.get("task")
    try:
        gen = generator_for(task.get("name") if isinstance(task, dict) else None)
    except ConfigError as exc:
        problems += exc.problems
        return None
    if not isinstance(data, dict):
        problems.append(f"federation must be a preset (a mapping), not {_kind(data)}. Fix: "
                        "pick one, e.g. federation=six_agency")
        return None
    try:
        preset = gen.preset_from_mapping(data, source="federation")
    except ConfigError as exc:
        problems += [f"federation: {p}" for p in exc.problems]
        problems.append(f"federation: task {gen.task!r} reads presets of its own generator "
                        f"({gen.module}); Fix: e.g. federation={gen.default_preset}")
        return None
    n, sizes = len(preset.agencies), preset.sizes()
    if n > MAX_AGENCIES:
        problems.append(f"federation has {n} agencies, more than the {MAX_AGENCIES} a "
                        "simulation takes. Fix: fewer agencies in the preset")
    total = sum(sizes.values())
    if total > MAX_ADVERTS:
        problems.append(f"federation.scale={preset.scale:g} gives {total:,} {gen.record_noun} in "
                        f"all, more than the {MAX_ADVERTS:,} a simulation generates. Fix: a "
                        f"smaller federation.scale, e.g. {preset.scale * MAX_ADVERTS / total:.2g}")
    return preset


# --- the run against the federation ---------------------------------------------------------

def sampled(settings: RunSettings, agencies: int) -> int:
    """How many agencies Flower's FedAvg samples per training round (its own rule)."""
    s = settings.strategy
    return max(int(agencies * s.fraction_train), s.min_nodes)


def _fits_the_federation(settings: RunSettings, preset: FederationPreset,
                         whole: Mapping[str, Any]) -> list[str]:
    s, n = settings.strategy, len(preset.agencies)
    out: list[str] = []
    for key, value in (("min_nodes", s.min_nodes), ("quorum", s.quorum),
                       ("min_available", s.min_available)):
        if value > n:
            out.append(f"strategy.{key}={value} is above the federation's {n} agencies: "
                       + ("no round could ever reach it" if key == "quorum" else
                          "Flower would wait for nodes that never connect")
                       + f". Fix: strategy.{key}={min(n, 2) if key != 'min_available' else 0}"
                       f" or fewer, or a larger federation")
    k = sampled(settings, n)
    if s.aggregation == "krum" and k < 2 * s.krum_byzantine + 3:
        out.append(f"strategy.krum_byzantine={s.krum_byzantine} is too large for {k} "
                   f"agencies per round: Krum tolerates f arbitrary agencies only among at "
                   f"least 2f + 3 = {2 * s.krum_byzantine + 3}. Fix: strategy.krum_byzantine="
                   f"{max(0, (k - 3) // 2)}, or a federation of at least "
                   f"{2 * s.krum_byzantine + 3} agencies")
    p = settings.task_params
    buckets, hidden = p.get("num_buckets"), p.get("hidden")
    if isinstance(buckets, int) and buckets > MAX_BUCKETS:
        out.append(f"task.num_buckets={buckets} is above the limit of {MAX_BUCKETS} (2**18). "
                   "Fix: e.g. task.num_buckets=4096")
    if isinstance(hidden, int) and hidden > MAX_HIDDEN:
        out.append(f"task.hidden={hidden} is above the limit of {MAX_HIDDEN}. Fix: e.g. "
                   "task.hidden=16, or 0 for the linear model")
    pr = settings.privacy
    if pr.enabled and pr.target_delta is not None:
        too_few = {a: size for a, size in preset.sizes().items() if pr.target_delta * size >= 1}
        if too_few:
            out.append(f"privacy.target_delta={pr.target_delta:g} must be < 1/records of every "
                       "agency, and these have fewer adverts than 1/delta even before the test "
                       f"split: {too_few}; such a delta allows publishing a record outright. "
                       "Fix: e.g. privacy.target_delta=1e-5")
    return out


def agency_policies(raw: object, names: Sequence[str] | None, problems: list[str]
                    ) -> dict[str, Policy]:
    """Each simulated agency's policy from ``agency_policy`` (base fields, then the agency's
    ``per_agency`` entry: a mapping of fields, or a number for max_epsilon), as strictly as
    a node reads its policy.toml: a boolean is not a budget. ``names``: the agencies (None
    when the federation itself is unusable: the base fields are still checked)."""
    if not isinstance(raw, dict):
        problems.append(f"agency_policy must be a mapping of policy fields, not {_kind(raw)}")
        return {}
    base = {k: v for k, v in raw.items() if k != "per_agency"}
    per_agency = raw.get("per_agency") or {}
    if not isinstance(per_agency, dict):
        problems.append(f"agency_policy.per_agency must map agency ids to policies, not "
                        f"{_kind(per_agency)}")
        per_agency = {}
    if names is not None:
        unknown = sorted(set(map(str, per_agency)) - set(names))
        if unknown:
            problems.append(f"agency_policy.per_agency names unknown agencies {unknown}; the "
                            f"federation has {names}")
    policies: dict[str, Policy] = {}
    reported: set[str] = set()
    for agency in names if names is not None else ["(every agency)"]:
        fields = dict(base)
        override = per_agency.get(agency)
        where = "agency_policy" if override is None else f"agency_policy.per_agency.{agency}"
        if isinstance(override, dict):
            fields.update(override)
        elif _is_number(override):
            fields["max_epsilon"] = float(override)
        elif override is not None:
            problems.append(f"{where} must be a budget (a number) or a mapping of policy "
                            f"fields, not {_kind(override)}")
            continue
        try:
            policies[agency] = Policy(**fields)
        except TypeError:
            known = [f for f in Policy.__dataclass_fields__]
            extra = sorted(set(map(str, fields)) - set(known))
            line = (f"{where}: {extra} are not policy fields; known: {known}" if extra else
                    f"{where}: missing fields; known: {known}")
            if line not in reported:
                problems.append(line)
                reported.add(line)
        except HeroesError as exc:
            for p in getattr(exc, "problems", [str(exc)]):
                name = re.match(r"\w+", p)
                example = POLICY_EXAMPLES.get(name.group(0) if name else "")
                fix = "" if example is None else \
                    f". Fix: e.g. {where}.{name.group(0) if name else ''}={example}"
                line = f"{where}: {p}{fix}"
                if line not in reported:
                    problems.append(line)
                    reported.add(line)
    return policies if names is not None else {}


def _policies_allow(settings: RunSettings, preset: FederationPreset,
                    policies: Mapping[str, Policy], *, arm: str = "") -> list[str]:
    """Which agencies' own policies would refuse every round of this run; an error when
    the rest cannot reach the quorum."""
    from federation import secagg as sa
    from server.secagg import active

    n = len(preset.agencies)
    k = sampled(settings, n)
    secure = active(settings, k)
    degree = settings.secagg.num_neighbours
    if degree <= 0:  # federation/secagg.neighbours' automatic degree
        degree = k - 1 if k <= 10 else 2 * math.ceil(math.log2(k)) + 2
    # a node's neighbourhood, itself included: all k in a complete graph; in a sparse one
    # degree + 1, or more where the graph is made symmetric, so every size up to k
    groups = [k] if degree >= k - 1 else list(range(degree + 1, k + 1))
    refusing: dict[str, str] = {}
    for agency, policy in policies.items():
        if not settings.privacy.enabled and not policy.allow_non_private:
            refusing[agency] = ("its [privacy_budget] allow_non_private is false and this run "
                                "has privacy.enabled=false")
        elif secure and k < policy.secure_min_agencies:
            refusing[agency] = (f"its [secure_aggregation] min_agencies is "
                                f"{policy.secure_min_agencies} and a secure sum here holds at "
                                f"most {k} agencies")
        elif not secure and policy.require_secure_aggregation:
            refusing[agency] = ("its [secure_aggregation] required is true and this run's "
                                "rounds are not securely aggregated (secagg.mode, "
                                "strategy.aggregation or fewer than 3 agencies)")
        elif secure and all(sa.share_threshold(g, settings.secagg.threshold)
                            < sa.share_threshold(g, policy.secure_min_threshold)
                            for g in groups):
            refusing[agency] = (f"its [secure_aggregation] min_threshold is "
                                f"{policy.secure_min_threshold:g}, above secagg.threshold="
                                f"{settings.secagg.threshold:g}")
    able = n - len(refusing)
    if not refusing or able >= settings.strategy.quorum:
        for agency, why in refusing.items():
            print(f"note{arm}: agency {agency} will refuse every round: {why}", flush=True)
        return []
    listed = "; ".join(f"{a}: {why}" for a, why in refusing.items())
    return [f"only {able} of {n} agencies would train{arm}, below strategy.quorum="
            f"{settings.strategy.quorum}, because their own policies refuse this run ({listed}). "
            "Fix: change the run (e.g. privacy=eps3, secagg.mode=auto) or the simulated "
            "policies (agency_policy.allow_non_private=true, agency_policy.secure_min_agencies, "
            "agency_policy.require_secure_aggregation=false, agency_policy.secure_min_threshold)"]


def _audit(raw: object, settings: RunSettings, preset: FederationPreset, mode: object
           ) -> list[str]:
    if not isinstance(raw, dict):
        return []  # reported with the simulation's own sections
    out: list[str] = []
    enabled, broken = raw.get("enabled"), raw.get("break_noise_for_testing")
    for key, value in (("enabled", enabled), ("break_noise_for_testing", broken)):
        if not isinstance(value, bool):
            out.append(f"audit.{key}={_shown(value)} must be true or false (unquoted)")
    if broken is True and enabled is not True:
        out.append("audit.break_noise_for_testing=true needs audit.enabled=true")
    if enabled is not True:
        return out
    if mode != "federated":
        out.append(f"audit.enabled=true needs mode=federated (got {_shown(mode)})")
    if broken is True and not settings.privacy.enabled:
        out.append("audit.break_noise_for_testing=true needs privacy.enabled=true (it removes "
                   "the noise a DP run claims)")
    canaries = raw.get("canaries")
    if (isinstance(canaries, bool) or not isinstance(canaries, int) or canaries < 4
            or canaries % 2 or canaries > MAX_CANARIES):
        out.append(f"audit.canaries={_shown(canaries)} must be an even whole number in [4, "
                   f"{MAX_CANARIES}] (half are planted), e.g. 200")
    confidence = raw.get("confidence")
    if not _is_number(confidence) or not 0.5 <= float(confidence) < 1:
        out.append(f"audit.confidence={_shown(confidence)} must be a number in [0.5, 1), "
                   "e.g. 0.95")
    agency = raw.get("agency")
    names = [a.agency_id for a in preset.agencies]
    # audit.mode and audit.gradient_canaries: simulation/audit.py's white-box audit
    audit_mode = raw.get("mode")
    if audit_mode not in ("whitebox", "blackbox"):
        out.append(f"audit.mode={_shown(audit_mode)} must be whitebox or blackbox")
    if audit_mode == "blackbox" and settings.task_name not in BLACKBOX_TASKS:
        out.append(f"audit.mode=blackbox plants canary records, and only {list(BLACKBOX_TASKS)} "
                   f"can craft them; task {settings.task_name!r} cannot. Fix: audit.mode="
                   "whitebox (gradient canaries: it audits any task's DP-SGD steps)")
    grad = raw.get("gradient_canaries")
    if grad != "auto" and grad is not None and (isinstance(grad, bool) or not isinstance(
            grad, int) or not 8 <= grad <= MAX_GRADIENT_CANARIES):
        out.append(f"audit.gradient_canaries={_shown(grad)} must be auto (the number that "
                   "certifies the most), null (one per model coordinate) or a whole number "
                   f"in [8, {MAX_GRADIENT_CANARIES}]")
    if agency is not None and agency not in names and not (
            agency == "all" and audit_mode == "whitebox"):
        out.append(f"audit.agency={_shown(agency)} is not in the federation {names}; null "
                   "picks the largest, all (audit.mode=whitebox) audits every agency")
    return out


def _resumable(settings: RunSettings) -> list[str]:
    """A run to resume must exist, hold a checkpoint and match these settings."""
    from server.checkpoint import load_checkpoint

    where = Path(settings.paths.resume_from)
    try:
        exists = where.exists()
    except (OSError, ValueError):  # a NUL character, a name too long
        exists = False
    if not exists:
        return [f"paths.resume_from={str(where)!r} does not exist. Fix: point it at the killed "
                "run's server/ folder (or its checkpoints/), or leave it empty"]
    try:
        load_checkpoint(where, settings)
    except ConfigError as exc:
        return exc.problems
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, TypeError,
            pickle.UnpicklingError) as exc:  # torch.load of a file that is no checkpoint
        return [f"paths.resume_from={str(where)!r}: its latest checkpoint cannot be read "
                f"({type(exc).__name__}). Fix: point it at the killed run's server/ folder"]
    return []
