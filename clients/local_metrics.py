"""The agency's own per-round figures, kept at the agency.

Every training and evaluation the node runs appends one JSON line to
``STATE_DIR/local-metrics.jsonl``: the run, round, kind, status, the full reason of a refusal
and every figure the node computed (loss, example count, epsilon with its delta, DP
parameters, evaluation metrics). What leaves the node is decided elsewhere
(clients/client_app.py): in a secure round only masked sums; in the clear only what the
agency's policy shares (``[sharing] share_local_metrics``). This file is how the agency (and a
simulation, which owns every agency's folder) still sees its own numbers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from federation.files import open_private, private_dir

LOCAL_METRICS = "local-metrics.jsonl"


def record(state_dir: Path, *, run_id: str, server_round: int, kind: str, status: str,
           reason: str, figures: Mapping[str, float]) -> None:
    """Append one entry (fsynced: a crash never loses a figure the node already sent)."""
    private_dir(state_dir)
    entry = {"run_id": run_id, "round": server_round, "kind": kind, "status": status,
             "reason": reason, "figures": {k: float(v) for k, v in figures.items()},
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fd = open_private(state_dir / LOCAL_METRICS, os.O_WRONLY | os.O_APPEND)  # 0600 at birth
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read(state_dir: Path) -> list[dict[str, Any]]:
    """Every entry, oldest first; an unreadable line (torn by a crash) is skipped with a
    warning naming its line number."""
    path = Path(state_dir) / LOCAL_METRICS
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                logging.getLogger("heroes.client").warning(
                    "%s: line %d is not a JSON entry (torn by a crash?); skipped", path, number)
    return out
