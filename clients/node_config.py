"""The node-config keys a deployed agency node is started with, and what they mean.

Two processes agree on these: ``heroes agency serve`` writes them into the SuperNode's
``--node-config`` from the agency's policy.toml ``[node]`` section (clients/agency.py), and
the ClientApp reads them for every message (clients/node.py). They live here, with no
heavy import, so that both read one spelling.

A node serves one export per task. ``datasets.<task>.data_dir`` and
``datasets.<task>.dataset_id`` name a task's export folder and its ledger key (written from
``[node.datasets."<task>"]``). The single ``data_dir`` and ``dataset_id`` that nodes had
before several tasks are kept: they are ``LEGACY_TASK``'s export, so existing deployments
keep training it unchanged.
"""

from __future__ import annotations

#: The task a node's single ``data_dir`` / ``dataset_id`` has always served.
LEGACY_TASK = "advert-risk"

DATA_DIR = "data_dir"
DATASET_ID = "dataset_id"
STATE_DIR = "state_dir"
ALLOWED_TASKS = "allowed_tasks"  # comma-separated task names
DATASETS = "datasets"  # the prefix of the per-task keys


def task_data_dir_key(task: str) -> str:
    """The node-config key of ``task``'s export folder."""
    return f"{DATASETS}.{task}.{DATA_DIR}"


def task_dataset_id_key(task: str) -> str:
    """The node-config key of ``task``'s dataset id (its ledger key)."""
    return f"{DATASETS}.{task}.{DATASET_ID}"


__all__ = ["ALLOWED_TASKS", "DATASETS", "DATASET_ID", "DATA_DIR", "LEGACY_TASK", "STATE_DIR",
           "task_data_dir_key", "task_dataset_id_key"]
