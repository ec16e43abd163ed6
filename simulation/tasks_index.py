"""The index of a run folder of several tasks (``experiment=both_tasks``): ``tasks.json``,
the tasks in the order they ran and each one's run folder. Written by
simulation/both_tasks.py; read by it, the report and the sweep table. No other import, so
that any of them may read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from federation.errors import ConfigError

TASKS_FILE = "tasks.json"
TASKS_VERSION = 1


def write_index(run_dir: Path, doc: Mapping[str, Any]) -> None:
    """Write whole or not at all: a reader never sees half an index."""
    path = Path(run_dir) / TASKS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": TASKS_VERSION, **doc}, indent=2) + "\n",
                   encoding="utf-8")
    tmp.replace(path)


def read_index(run_dir: Path) -> list[tuple[str, Path]]:
    """(task, its run folder) of a several-task run folder, read strictly."""
    path = Path(run_dir) / TASKS_FILE
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != TASKS_VERSION \
            or not isinstance(doc.get("tasks"), list):
        raise ConfigError([f"{path} is not a version-{TASKS_VERSION} index of tasks; it was "
                           "written by another version of heroes simulate"],
                          source="several-task run")
    out = []
    for item in doc["tasks"]:
        if not isinstance(item, dict) or not isinstance(item.get("task"), str) \
                or not isinstance(item.get("folder"), str):
            raise ConfigError([f"{path}: every task needs a task and a folder"],
                              source="several-task run")
        out.append((item["task"], Path(run_dir) / item["folder"]))
    return out
