"""Where a node's data lives and how it becomes features.

Deployment: the node configuration names one export folder per task
(``datasets.<task>.data_dir``, clients/node_config.py), or the single ``data_dir`` of a
node from before several tasks, which is the advert-risk export. Which folder a round
reads is chosen by the run's ``task.name`` alone, after the node checked that its agency
allows that task.
Simulation: Flower gives each virtual node a ``partition-id``; the run's
``paths.data_root`` holds ``federation.json`` (agencies in partition order) and one folder
per agency under ``agencies/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clients import node_config as nc
from federation.config import RunPaths, RunSettings
from federation.errors import ConfigError, DataError, Rule, TaskError
from federation.files import StatCache, open_private, private_dir, stat_signature

if TYPE_CHECKING:  # the task registry and the ledger import torch: loaded where used
    from federation.tasks import Task
    from federation.text import SparseRows


@dataclass(frozen=True)
class NodeData:
    agency: str
    dataset: str  # the ledger key: the agency's dataset_id, or agency/fingerprint
    fingerprint: str  # SHA-256 of the training export
    state_dir: Path
    model_name: str
    task: Task
    features: SparseRows
    labels: np.ndarray
    train_size: int
    rows_set_aside: int


def _per_task_folders(node_config: Mapping[str, object]) -> list[str]:
    """The node-config keys of every per-task export folder, in a stable order."""
    prefix, suffix = f"{nc.DATASETS}.", f".{nc.DATA_DIR}"
    return sorted(k for k in node_config if k.startswith(prefix) and k.endswith(suffix))


def resolve_export(node_config: Mapping[str, object], paths: RunPaths, task: str | None
                   ) -> tuple[Path, str]:
    """The export folder a round of ``task`` reads, and the dataset id the node config
    gives it ("" when none: the ledger key is then agency/fingerprint).

    ``task`` None asks for any of the node's exports, only to read the agency's name from
    its manifest (the state folder of a simulated node is named after it). A deployed
    node (one that lists its ``allowed_tasks``) reads its single ``data_dir`` for
    advert-risk only: another task without a folder of its own is refused, naming the fix,
    rather than read from an export made for something else.
    """
    if task is not None and nc.task_data_dir_key(task) in node_config:
        return (Path(str(node_config[nc.task_data_dir_key(task)])),
                str(node_config.get(nc.task_dataset_id_key(task)) or ""))
    per_task = _per_task_folders(node_config)
    legacy = nc.DATA_DIR in node_config
    if legacy and (task in (None, nc.LEGACY_TASK) or nc.ALLOWED_TASKS not in node_config):
        return (Path(str(node_config[nc.DATA_DIR])),
                str(node_config.get(nc.DATASET_ID) or ""))
    if task is None and per_task:
        return Path(str(node_config[per_task[0]])), ""
    if legacy or per_task:
        raise TaskError(
            f"task {task!r} is allowed at this node but has no data folder of its own; the "
            f"agency names its export in policy.toml, [node.datasets.\"{task}\"] "
            'data_dir = "/path/to/export" (or `heroes agency init --data '
            f'{task}=DIR`), and restarts `heroes agency serve`')
    return _simulated_export(node_config, paths), ""


def export_agency(data_dir: Path) -> str:
    """The agency an export's manifest names, whatever record schema the export holds.

    ``federation.data.read_manifest`` checks ``label_scheme`` against the advert schemes
    only, so a conversation export labelled by stage failed every step that only needs the
    agency's name (the secure-aggregation stages, receipts, the error log): no
    conversation-risk simulation with such an agency could run. This reads the manifest
    with every registered schema's label schemes, as ``federation.data.load_export`` does.
    """
    from federation.data import EXPORT_SCHEMAS, MANIFEST
    from federation.data import _manifest as checked_manifest  # a public reader with the
    # schemes belongs in federation/data.py (read_manifest(data_dir, schemes)); until then
    # this is the one place a node reads a manifest without knowing its schema.

    manifest = Path(data_dir) / MANIFEST
    signature = stat_signature([Path(data_dir), manifest])
    held = _AGENCIES.get(str(manifest), signature)
    if held is not None:
        return held
    schemes = {k: v for s in EXPORT_SCHEMAS.values() for k, v in s.label_schemes.items()}
    agency = str(checked_manifest(Path(data_dir), schemes)[0]["agency"])
    _AGENCIES.put(str(manifest), signature, agency)
    return agency


#: The agency each manifest names, while the manifest's (and its folder's) stat signature
#: holds: every message a node handles names its agency (receipts, the error log).
_AGENCIES: StatCache[str] = StatCache(4096)


def resolve_data_dir(node_config: Mapping[str, object], paths: RunPaths,
                     task: str | None = None) -> Path:
    """The export folder of ``task`` (see ``resolve_export``)."""
    return resolve_export(node_config, paths, task)[0]


def _simulated_export(node_config: Mapping[str, object], paths: RunPaths) -> Path:
    if "partition-id" in node_config:
        root = Path(paths.data_root)
        if not paths.data_root:
            raise ConfigError(
                ["paths.data_root is empty; a simulated node needs the federation folder"],
                source="run config (client)",
            )
        index = root / "federation.json"
        if not index.is_file():
            raise DataError(Rule("federation.json not found in paths.data_root",
                                 "generate the federation first (heroes simulate does this)"))
        agencies = json.loads(index.read_text(encoding="utf-8"))["agencies"]
        pid = int(str(node_config["partition-id"]))
        if not 0 <= pid < len(agencies):
            raise ConfigError(
                [f"partition-id {pid} has no agency; the federation has {len(agencies)}"],
                source="node config",
            )
        return root / "agencies" / str(agencies[pid])
    raise ConfigError(
        ["node config has no data_dir; start the node with --node-config "
         "'data_dir=\"/path/to/export\"' (or one folder per task: "
         "'datasets.TASK.data_dir=\"/path/to/export\"')"],
        source="node config",
    )


def resolve_state_dir(node_config: Mapping[str, object], paths: RunPaths,
                      agency: str) -> Path:
    """Where the node keeps its privacy ledger and policy."""
    if nc.STATE_DIR in node_config:
        return Path(str(node_config[nc.STATE_DIR]))
    if "partition-id" in node_config and paths.state_root:
        return Path(paths.state_root) / agency
    raise ConfigError(
        ["node config has no state_dir (where the privacy ledger and policy live); start "
         "the node with --node-config 'state_dir=\"/var/lib/heroes\"'"],
        source="node config",
    )


def check_task_allowed(node_config: Mapping[str, object], task_name: str) -> None:
    """A deployed node trains only the tasks its agency agreed to (policy.toml [node]
    allowed_tasks, passed as node config ``allowed_tasks``); simulation nodes set none."""
    if nc.ALLOWED_TASKS not in node_config:
        return
    allowed = [t for t in str(node_config[nc.ALLOWED_TASKS]).split(",") if t]
    if task_name not in allowed:
        raise TaskError(f"task {task_name!r} is not among the tasks this agency allows "
                        f"({allowed}); the agency adds it to allowed_tasks in its policy.toml "
                        "if it agrees to train it")


CACHE_DIR = "feature-cache"


def cached_features(task: Task, export_sha256: str,
                    records: Sequence[Any] | Callable[[], Sequence[Any]], cache_dir: Path
                    ) -> SparseRows:
    """The task's features for ``records`` (the usable rows of the export whose SHA-256 is
    given), from a cache in the node's own state folder when the same export was featurised
    the same way.

    The key is the SHA-256 of the export's bytes, the task's name and parameters and the
    featuriser version, so a changed export or setting can never be served stale features.
    The cache is derived data that stays at the node; deleting it is always safe.
    ``records`` may be a function giving them: called only when they must be featurised.
    """
    from federation.text import SparseRows

    params = json.dumps([task.name, task.params.to_flat(), task.features_version,
                         export_sha256], sort_keys=True)
    key = hashlib.sha256(params.encode()).hexdigest()[:32]
    target = cache_dir / f"{key}.npz"
    if target.is_file():
        signature = stat_signature([target])
        held: SparseRows | None = _FEATURES.get(str(target), signature)
        if held is not None:
            return held
        with np.load(target) as z:
            rows = SparseRows(indptr=z["indptr"], indices=z["indices"], values=z["values"],
                              width=int(z["width"]))
        _FEATURES.put(str(target), signature, rows)
        return rows
    features = task.featurize(records() if callable(records) else records)
    private_dir(cache_dir)  # derived from the agency's adverts: 0700, files 0600 from birth
    tmp = cache_dir / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp.npz"
    tmp.unlink(missing_ok=True)
    with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
        np.savez(handle, indptr=features.indptr, indices=features.indices,
                 values=features.values, width=np.int64(features.width))
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(target)
    return features


#: The exports this process has read and validated: (task, folder) -> _Loaded. A node
#: process answers several messages per round (train, evaluate, the secure stages); the
#: export is read, validated and hashed on the first and reused while the folder is
#: unchanged. A deployed node holds one entry per task it trains; a simulation process
#: serves every simulated agency (in-process backend) or many (a Ray worker), hence room for
#: 1,024 before the oldest is dropped (and read again when next asked for). The features
#: read back from a node's feature cache are held the same way (``_FEATURES``, by file and
#: its stat signature).
_LOADED: StatCache[_Loaded] = StatCache(1024)
_FEATURES: StatCache[Any] = StatCache(1024)


@dataclass(frozen=True)
class _Loaded:
    data: Any  # the task's AgencyRecords
    sha256: dict[str, str]  # "train", "test" -> SHA-256 of that file's bytes


def _folder_signature(folder: Path) -> tuple[tuple[str, int, int, int, int], ...] | None:
    """Name, inode, size, modification and change time (ns) of every file in ``folder``:
    any write, replacement or rename there changes it (the change time cannot be set
    back). None where the folder cannot be listed (the load then reports why)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
        out = []
        for entry in entries:
            st = entry.stat()
            out.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    except OSError:
        return None
    return tuple(out)


def _load_once(task: Task, data_dir: Path) -> _Loaded:
    """The task's validated export in ``data_dir`` and its files' SHA-256, read once per
    process while the folder is unchanged (``_folder_signature`` before the read: a file
    that changes during the read changes the signature, so the next message reads again)."""
    from federation.ledger import fingerprint_file

    key = f"{task.name}\0{Path(data_dir).resolve()}"
    signature = _folder_signature(data_dir)
    hit = _LOADED.get(key, signature)
    if hit is not None:
        return hit
    data = task.load(data_dir)
    loaded = _Loaded(data, {"train": fingerprint_file(data.train.path),
                            "test": fingerprint_file(data.test.path)})
    inside = all(Path(t.path).resolve().parent == Path(data_dir).resolve()
                 for t in (data.train, data.test))
    if inside:  # files elsewhere: no signature covers them
        _LOADED.put(key, signature, loaded)
    return loaded


def load_node_data(
    node_config: Mapping[str, object], settings: RunSettings, *, split: str
) -> NodeData:
    """Validate the agency's whole export for the run's task (the folder that task.name
    selects), then featurise the requested split. The export is read and validated once
    per process while its folder is unchanged (``_load_once``), and its features come
    from the node's feature cache."""
    from federation.tasks import get_task

    check_task_allowed(node_config, settings.task_name)
    data_dir, dataset_id = resolve_export(node_config, settings.paths, settings.task_name)
    task = get_task(settings.task_name, settings.task_params)
    loaded = _load_once(task, data_dir)
    data = loaded.data
    fingerprint = loaded.sha256["train"]
    dataset = dataset_id or f"{data.agency}/{fingerprint[:16]}"
    which = "train" if split == "train" else "test"
    table = data.train if which == "train" else data.test
    rows = task.rows(table)
    state_dir = resolve_state_dir(node_config, settings.paths, data.agency)
    return NodeData(
        agency=data.agency,
        dataset=dataset,
        fingerprint=fingerprint,
        state_dir=state_dir,
        model_name=f"{task.name}:{type(task.build_model()).__name__}",
        task=task,
        features=cached_features(task, loaded.sha256[which],
                                 lambda: task.records(table, rows),
                                 state_dir / CACHE_DIR),
        labels=table.positive[rows],
        train_size=int(task.rows(data.train).size),
        rows_set_aside=data.train.rejected_total + data.test.rejected_total,
    )
