"""Several tasks in one ``heroes simulate`` (``experiment=both_tasks``): each task's
federation over the agencies that hold that kind of data.

The run's own ``task`` and ``federation`` are the first task, as in any run; ``tasks`` adds
more, each a section with its own ``task``, ``federation`` and optionally ``train`` (the
run's own when left out; configs/experiment/both_tasks.yaml adds conversation-risk over
conversations_six with train/for_conversation_risk.yaml). Everything else (privacy,
strategy, secagg, agency_policy, audit) is shared.

The federations run one after the other, each a whole run (simulation/run.py ``run_one``)
in its own folder ``<out>/<task name>/`` (data, server, metrics.json, model.pt,
config.yaml): a release, a report or a resume reads that folder as it reads any run. The
agencies' node states are shared (``<out>/agency_state/<agency>``): an agency in both
federations has one node key, one policy and one privacy ledger, in which each (task,
dataset) is a stream of its own, as at a deployed node that trains both
(clients/node_config.py). ``<out>/tasks.json`` lists the tasks and their folders (the
report reads it); the end of the run prints every task's headline figures, each epsilon
with its delta and its task's unit of privacy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from federation.errors import ConfigError
from federation.protocol import SUMMARY_FILE, Metric, RunSummary, figure
from simulation import preflight
from simulation.tasks_index import TASKS_FILE, read_index, write_index
from simulation.units import per_unit

__all__ = ["TASKS_FILE", "TaskRun", "check_all", "read_index", "read_summaries", "render",
           "run_tasks", "task_line", "task_runs"]

#: What a ``tasks`` section may hold: the rest of the run is shared by every task.
SECTION_KEYS = ("task", "federation", "train")
STATE_DIR = "agency_state"
SOURCE = "simulation config (tasks)"


@dataclass(frozen=True)
class TaskRun:
    """One task's federation inside a several-task run."""

    name: str  # the task's name, e.g. conversation-risk; also its folder
    cfg: DictConfig  # the whole run's configuration with this task's task and federation


def task_runs(cfg: DictConfig) -> list[TaskRun]:
    """The run's own task, then every section of ``tasks``; one ConfigError listing every
    problem with the sections (their shape, a task named twice, what cannot be shared)."""
    whole = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(whole, dict)
    whole = {str(k): v for k, v in whole.items() if k != "hydra"}
    sections = whole.pop("tasks")
    problems: list[str] = []
    if not isinstance(sections, dict):
        raise ConfigError([f"tasks must map a name to a section with {list(SECTION_KEYS)}, "
                           f"not {type(sections).__name__}. Fix: experiment=both_tasks"],
                          source=SOURCE)
    runs: list[TaskRun] = []
    own = whole.get("task")
    names: dict[str, str] = {}
    for key, section in [("(the run's own task)", {"task": own,
                                                    "federation": whole.get("federation"),
                                                    "train": whole.get("train")}),
                         *((f"tasks.{k}", v) for k, v in sections.items())]:
        if not isinstance(section, dict) or not isinstance(section.get("task"), dict) \
                or not isinstance(section.get("federation"), dict):
            problems.append(f"{key} must be a section with a task and a federation, each a "
                            "mapping of settings. Fix: give both as configs/experiment/"
                            "both_tasks.yaml does (/task@tasks.NAME.task: OPTION, "
                            "/federation@tasks.NAME.federation: PRESET)")
            continue
        extra = sorted(set(map(str, section)) - set(SECTION_KEYS))
        if extra:
            problems.append(f"{key} has {extra}; a task's section holds only "
                            f"{list(SECTION_KEYS)} (privacy, strategy and the rest are "
                            "shared by every task). Fix: remove them, or set them for the "
                            "whole run")
        name = section["task"].get("name")
        if not isinstance(name, str):
            problems.append(f"{key}.task.name must be a task name, e.g. conversation-risk")
            continue
        if name in names:
            problems.append(f"task {name!r} is federated twice ({names[name]} and {key}); "
                            "each task runs once per command. Fix: leave the run's own task "
                            "at its default (advert_risk) with experiment=both_tasks, or "
                            f"remove {key}")
            continue
        names[name] = key
        own_train = section.get("train", whole.get("train"))
        if not isinstance(own_train, dict):
            problems.append(f"{key}.train must be a mapping of training settings. Fix: "
                            "/train@tasks.NAME.train: for_TASK, or leave it out to share "
                            "the run's")
            continue
        runs.append(TaskRun(name=name, cfg=OmegaConf.create(
            {**whole, "task": section["task"], "federation": section["federation"],
             "train": own_train})))
    if len(runs) < 2 and not problems:
        problems.append("tasks adds no task to the run's own; Fix: experiment=both_tasks, or "
                        "leave tasks out for a run of one task")
    if whole.get("mode") != "federated":
        problems.append(f"mode={whole.get('mode')!r}: a run of several tasks federates each "
                        "of them (mode=federated). Fix: run the baselines or the centralised "
                        "model of one task at a time, e.g. heroes simulate "
                        "task=conversation_risk mode=baselines")
    paths = whole.get("paths")
    if isinstance(paths, dict) and paths.get("resume_from"):
        problems.append("paths.resume_from resumes one federation, and a run of several tasks "
                        "has one per task over shared node states: resuming it is not "
                        "supported. Fix: leave paths.resume_from empty and run the command "
                        "again (a new run folder); a run of one task resumes as before")
    if problems:
        raise ConfigError(problems, source=SOURCE)
    return runs


def check_all(runs: list[TaskRun], out_dir: Path) -> list[preflight.Checked]:
    """Preflight every task's configuration before anything is generated: every problem
    of every task in one ConfigError, each naming its task."""
    problems: list[str] = []
    checked: list[preflight.Checked] = []
    for r in runs:
        folder = out_dir / r.name
        try:
            checked.append(preflight.check(r.cfg, data_root=folder / "data",
                                           output_dir=folder / "server",
                                           state_root=out_dir / STATE_DIR))
        except ConfigError as exc:
            problems += [f"task {r.name}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems, source=SOURCE)
    return checked


class RunOne(Protocol):
    """simulation/run.py ``run_one`` (passed in: run.py imports this module)."""

    def __call__(self, cfg: DictConfig, out_dir: Path, *, state_root: Path | None = ...,
                 checked: preflight.Checked | None = ...) -> RunSummary: ...


def run_tasks(cfg: DictConfig, out_dir: Path, run_one: RunOne) -> dict[str, RunSummary]:
    """Every task's federation, one after the other, over one set of node states."""
    t0 = time.monotonic()
    runs = task_runs(cfg)
    checked = check_all(runs, out_dir)
    state_root = out_dir / STATE_DIR
    print(f"{len(runs)} tasks, one federation each, one after the other: "
          + "; ".join(f"{r.name} over {len(c.preset.agencies)} agencies ({c.preset.name})"
                      for r, c in zip(runs, checked, strict=True)), flush=True)
    both = _holding_several(checked)
    if both:
        print(f"agencies holding several kinds of data (one node state each, one ledger "
              f"stream per task and dataset): {', '.join(both)}", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the whole command's configuration; each task's folder has its own as it ran
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True),
                                         encoding="utf-8")
    summaries: dict[str, RunSummary] = {}
    for r, c in zip(runs, checked, strict=True):
        print(f"\n=== task {r.name} ({c.preset.name}) ===", flush=True)
        summaries[r.name] = run_one(r.cfg, out_dir / r.name, state_root=state_root,
                                    checked=c)
        _set_audit_aside(state_root, r.name, [a.agency_id for a in c.preset.agencies])
    index = {"tasks": [
        {"task": name, "folder": name, "unit": s.privacy.unit, "preset": s.preset}
        for name, s in summaries.items()], "agencies_with_several_tasks": both,
        "state_root": STATE_DIR}
    write_index(out_dir, index)
    print(render(summaries, state_root=state_root, several=both,
                 wall=time.monotonic() - t0), flush=True)
    print(f"outputs: {out_dir} (one folder per task: "
          + ", ".join(f"{n}/" for n in summaries) + f"; node states: {STATE_DIR}/)",
          flush=True)
    return summaries


def _holding_several(checked: list[preflight.Checked]) -> list[str]:
    seen: dict[str, int] = {}
    for c in checked:
        for a in c.preset.agencies:
            seen[a.agency_id] = seen.get(a.agency_id, 0) + 1
    return [a for a, n in seen.items() if n > 1]


def _set_audit_aside(state_root: Path, task: str, agencies: list[str]) -> None:
    """A white-box audit leaves its canary design in each audited agency's state folder,
    where the audited ClientApp looks for one; the next task's federation must not find
    this task's design. It stays in the agency's folder, under the task's name."""
    from simulation._audit_broken_client import AUDIT_DIR

    for agency in agencies:
        folder = state_root / agency / AUDIT_DIR
        if folder.is_dir():
            folder.rename(folder.with_name(f"{AUDIT_DIR}.{task}"))


def streams(state_root: Path, agency: str) -> list[tuple[str, str]]:
    """The (task, dataset) streams of one agency's privacy ledger."""
    from federation.ledger import Ledger

    state = state_root / agency
    if not (state / "privacy-ledger.sqlite").exists():
        return []
    with Ledger.open(state, create=False) as ledger:
        return ledger.streams()


def task_line(name: str, s: RunSummary) -> dict[str, Any]:
    """One task's headline figures (the printed table and the report's overview)."""
    p = s.privacy
    auc = figure(s.global_metrics, Metric.ROC_AUC, where=f"'global' of {name}'s run summary")
    eps = [a.epsilon for a in s.agencies or [] if a.epsilon is not None]
    return {
        "task": name, "federation": s.preset, "agencies": len(s.agencies or []),
        "rounds": len(s.rounds), "roc_auc": auc, "oracle_roc_auc": s.oracle_roc_auc,
        "target_epsilon": p.target_epsilon if p.enabled else None,
        "delta": p.target_delta if p.enabled else None,
        "max_agency_epsilon": max(eps) if eps else None,
        "unit": per_unit(p.unit), "privacy_enabled": p.enabled,
    }


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"  # v != v: NaN


def render(summaries: Mapping[str, RunSummary], *, state_root: Path, several: list[str],
           wall: float) -> str:
    """Every task's headline figures, each epsilon with its delta and unit of privacy,
    and the ledger streams of the agencies that hold several kinds of data."""
    lines = ["", "tasks of this run (each over its own agencies; per-task tables above)",
             f"{'task':<20}{'federation':<20}{'agencies':>9}{'rounds':>7}{'ROC-AUC':>9}"
             f"{'oracle':>8}  epsilon"]
    for name, s in summaries.items():
        t = task_line(name, s)
        eps = ("no DP" if not t["privacy_enabled"] else
               f"target {t['target_epsilon']:g} at delta {t['delta']:g}, agencies spent at "
               f"most {_fmt(t['max_agency_epsilon'], 2)}, {t['unit']}")
        lines.append(f"{name:<20}{t['federation']:<20}{t['agencies']:>9}{t['rounds']:>7}"
                     f"{_fmt(t['roc_auc']):>9}{_fmt(t['oracle_roc_auc']):>8}  {eps}")
    for agency in several:
        lines.append(f"{agency}: one node state, ledger streams "
                     + ", ".join(f"({task}, {ds})" for task, ds in streams(state_root, agency)))
    lines.append(f"wall time {wall:.1f} s for every task (one federation after the other)")
    return "\n".join(lines)


def read_summaries(run_dir: Path) -> dict[str, RunSummary]:
    """Every task's run summary of a several-task run folder."""
    return {name: RunSummary.read(folder / SUMMARY_FILE) for name, folder in read_index(run_dir)}
