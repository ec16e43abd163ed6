"""Run actions for the consortium console: start a run from a saved configuration, stop a
run, resume an interrupted one.

Each action is the command an operator would type, started for them: start and resume run
``heroes consortium train`` (signing, submitting and following the run exactly as on the
command line, its output in ``RUN/train.out``), stop runs ``flwr stop RUN_ID`` against the
consortium's own SuperLink. A started ``train`` is detached from the console (its own
session): stopping the console does not stop a run, and a run started on the command line can
be stopped from the console. The console allows these only behind its login
(federation/localweb.py); every action is appended to ``DIR/logs/console-actions.log``.

Saved configurations are TOML files under ``DIR/run-configs/``, one per name
(``NAME.toml``), written by the operator::

    # DIR/run-configs/dp-3-rounds.toml
    task = "advert-risk"            # optional; default advert-risk
    run_config = "strategy.num_rounds=3 privacy.target_epsilon=3.0"
    description = "the weekly DP run" # optional

A run's state comes from its folder: ``finished`` (model and metrics fetched), ``running``
(the ``train`` command that follows it is alive: ``RUN/train.pid``), ``stopped`` (stopped
from the console), ``ended without a model`` (Flower gave a run id, no model came back) or
``interrupted`` (neither). Only a run that is neither running nor finished, and has a
checkpoint, can be resumed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from federation.errors import DeploymentError
from federation.files import open_private, private_dir, write_atomic
from federation.protocol import SUMMARY_FILE

CONFIG_DIR = "run-configs"
STOPPED = "stopped-by-console.json"
ACTIONS_LOG = "console-actions.log"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FOLDER = re.compile(r"^[0-9TZ_-]{1,40}$|^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class SavedConfig:
    name: str
    task: str
    run_config: str
    description: str


def saved_configs(root: Path) -> tuple[list[SavedConfig], list[str]]:
    """The saved configurations, and a problem line per file that cannot be used."""
    from server.deploy import DEFAULT_TASK

    folder = root / CONFIG_DIR
    found: list[SavedConfig] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        name = path.stem
        if not NAME.match(name):
            problems.append(f"{path.name}: the name must be letters, digits, '.', '_' or '-'")
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{path.name}: not readable TOML ({type(exc).__name__})")
            continue
        unknown = sorted(set(data) - {"task", "run_config", "description"})
        rc, task = data.get("run_config", ""), data.get("task", DEFAULT_TASK)
        if unknown or not isinstance(rc, str) or not isinstance(task, str):
            extra = f"; unknown: {', '.join(unknown)}" if unknown else ""
            problems.append(f"{path.name}: keys are task (text), run_config (text) and "
                            f"description (text){extra}")
            continue
        found.append(SavedConfig(name, task, rc, str(data.get("description", ""))))
    return found, problems


def _alive(pid_file: Path) -> bool:
    """The `train` command whose pid the file holds is alive (and is that command)."""
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"train" in cmdline and b"consortium" in cmdline


def run_state(run: Path) -> str:
    """finished, running, stopped, ended without a model, or interrupted."""
    from server.deploy import TRAIN_PID

    if (run / "model.pt").is_file() and (run / SUMMARY_FILE).is_file():
        return "finished"
    if _alive(run / TRAIN_PID):
        return "running"
    if (run / STOPPED).is_file():
        return "stopped"
    if (run / "run-id").is_file():
        return "ended without a model"
    return "interrupted"


def resumable(run: Path) -> bool:
    return (run_state(run) not in ("finished", "running")
            and (run / "train.json").is_file()
            and any((run / "server" / "checkpoints").glob("round-*.pt")))


def _log(root: Path, who: str, action: str, what: str) -> None:
    """One line per action in DIR/logs/console-actions.log (owner only)."""
    logs = private_dir(root / "logs")
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    fd = open_private(logs / ACTIONS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(f"{stamp} {who} {action} {what}\n")


def _run_folder(root: Path, folder: str) -> Path:
    run = root / "runs" / folder
    if not FOLDER.match(folder) or not run.is_dir():
        raise DeploymentError(f"no run folder named {folder!r} under {root / 'runs'}")
    return run


def _spawn_train(root: Path, run: Path, args: list[str]) -> int:
    from server.deploy import BIN, TRAIN_PID, ConsortiumHome

    heroes = BIN / "heroes"
    cmd = [str(heroes)] if heroes.is_file() else [str(BIN / "python"), "-m", "cli"]
    fd = open_private(run / "train.out", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "ab") as out:
        proc = subprocess.Popen([*cmd, "consortium", "train", "--dir", str(root), *args],
                                env=ConsortiumHome(root).env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    # the run counts as running from now (the command writes the same pid itself), so a
    # second click cannot start a second resume; a thread reaps it when it ends
    write_atomic(run / TRAIN_PID, str(proc.pid).encode())
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc.pid


def start(root: Path, name: str, *, who: str) -> dict[str, object]:
    """Start `consortium train` with the saved configuration ``name``; its run folder."""
    configs, _ = saved_configs(root)
    chosen = next((c for c in configs if c.name == name), None)
    if chosen is None:
        raise DeploymentError(f"no saved configuration named {name!r}: saved ones are "
                              f"{[c.name for c in configs]} (files {root / CONFIG_DIR}/NAME.toml)")
    from server.deploy import task_overrides

    task_overrides(chosen.task, [chosen.run_config])  # an unknown task: refused here, now
    folder = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run = root / "runs" / folder
    n = 1
    while run.exists():
        n += 1
        run = root / "runs" / f"{folder}-{n}"
    private_dir(run)
    args = ["--task", chosen.task, "--out", str(run)]
    if chosen.run_config.strip():
        args += ["--run-config", chosen.run_config]
    pid = _spawn_train(root, run, args)
    _log(root, who, "start", f"{run.name} config={name} pid={pid}")
    return {"action": "start", "folder": run.name, "config": name, "pid": pid}


def stop(root: Path, folder: str, *, who: str) -> dict[str, object]:
    """`flwr stop` the run of folder ``folder``; the `train` following it then ends."""
    from server.deploy import BIN, CONNECTION, ConsortiumHome

    run = _run_folder(root, folder)
    if run_state(run) != "running":
        raise DeploymentError(f"run {folder} is not running ({run_state(run)}): nothing to stop")
    if not (run / "run-id").is_file():
        raise DeploymentError(f"run {folder} has no Flower run id yet (it is being submitted); "
                              "try again in a few seconds")
    run_id = (run / "run-id").read_text(encoding="utf-8").strip()
    r = subprocess.run([str(BIN / "flwr"), "stop", run_id, CONNECTION],
                       env=ConsortiumHome(root).env(), capture_output=True, text=True,
                       timeout=120, check=False)
    if r.returncode != 0:
        raise DeploymentError(f"`flwr stop {run_id}` failed (exit {r.returncode}): "
                              f"{(r.stdout + r.stderr).strip()[-400:]}")
    write_atomic(run / STOPPED, json.dumps({
        "stopped_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "by": who, "run_id": run_id}).encode())
    _log(root, who, "stop", f"{folder} run_id={run_id}")
    return {"action": "stop", "folder": folder, "run_id": run_id}


def resume(root: Path, folder: str, *, who: str) -> dict[str, object]:
    """`consortium train --resume` the run of folder ``folder`` from its last checkpoint."""
    run = _run_folder(root, folder)
    if not resumable(run):
        raise DeploymentError(f"run {folder} cannot be resumed ({run_state(run)}; a run is "
                              "resumable when it is neither running nor finished and has a "
                              "checkpoint of a completed round)")
    (run / STOPPED).unlink(missing_ok=True)
    pid = _spawn_train(root, run, ["--resume", str(run)])
    _log(root, who, "resume", f"{folder} pid={pid}")
    return {"action": "resume", "folder": folder, "pid": pid}
