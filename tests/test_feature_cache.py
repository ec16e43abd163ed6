"""The node's feature cache: same export and settings -> same features from disk; any
change in either -> recomputed."""

from pathlib import Path

import numpy as np

from clients.node import cached_features
from federation.ledger import fingerprint_file
from federation.tasks import get_task

TEXTS = ["fotos 100% reales, sin sorpresas", "new in town", "we keep your passport"]


def test_cache_hit_is_identical_and_changes_invalidate(tmp_path: Path) -> None:
    export = tmp_path / "adverts_train.csv"
    export.write_text("advert_id,text\n1,a\n", encoding="utf-8")
    cache = tmp_path / "state" / "feature-cache"
    task = get_task("advert-risk", {"num_buckets": 256})
    first = cached_features(task, fingerprint_file(export), TEXTS, cache)
    assert len(list(cache.glob("*.npz"))) == 1
    # A hit is read from disk, not recomputed: different texts would give other features.
    again = cached_features(task, fingerprint_file(export), ["something else entirely"] * 3,
                            cache)
    for a, b in ((first.indptr, again.indptr), (first.indices, again.indices),
                 (first.values, again.values)):
        np.testing.assert_array_equal(a, b)
    assert again.width == 256
    # A changed export or changed task parameters never reuse the entry.
    export.write_text("advert_id,text\n1,b\n", encoding="utf-8")
    cached_features(task, fingerprint_file(export), TEXTS, cache)
    cached_features(get_task("advert-risk", {"num_buckets": 512}), fingerprint_file(export),
                    TEXTS, cache)
    assert len(list(cache.glob("*.npz"))) == 3


def _agency(tmp_path: Path) -> Path:
    from dataclasses import replace

    from simulation.generator import generate_federation, load_preset

    root = Path(__file__).resolve().parents[1]
    preset = load_preset(root / "configs" / "federation" / "three_agency.yaml")
    generate_federation(replace(preset, scale=0.05), tmp_path / "fed", seed=4)
    return sorted((tmp_path / "fed" / "agencies").iterdir())[0]


def test_an_export_is_read_once_per_process_until_its_folder_changes(tmp_path: Path) -> None:
    """The node reads and validates its export on the first message of a process and
    reuses it for the next ones; any change to the folder's files reads it again."""
    from clients.node import _load_once

    folder = _agency(tmp_path)
    task = get_task("advert-risk", {})
    first = _load_once(task, folder)
    assert _load_once(task, folder) is first  # not read again
    train = first.data.train.path
    assert first.sha256["train"] == fingerprint_file(train)
    lines = train.read_bytes().splitlines(keepends=True)
    train.write_bytes(b"".join(lines[:-1]))  # one advert fewer: a changed export
    changed = _load_once(task, folder)
    assert changed is not first and len(changed.data.train) == len(first.data.train) - 1
    assert changed.sha256["train"] == fingerprint_file(train) != first.sha256["train"]
    (folder / "notes.txt").write_text("a new file in the folder", encoding="utf-8")
    assert _load_once(task, folder) is not changed


def test_the_driver_pools_through_the_nodes_feature_caches(tmp_path: Path) -> None:
    """The simulation's pooled evaluation writes each agency's node cache entry; a node
    loading the same export and settings reads it instead of featurising again."""
    from clients.node import CACHE_DIR, _load_once
    from simulation.run import _pool

    folder = _agency(tmp_path)
    task = get_task("advert-risk", {})
    data = _load_once(task, folder).data
    state = tmp_path / "state"
    pooled = _pool(task, [data], "test", state)
    entries = list((state / data.agency / CACHE_DIR).glob("*.npz"))
    assert len(entries) == 1
    direct = task.featurize_table(data.test, task.rows(data.test))
    np.testing.assert_array_equal(pooled.features.indices, direct.indices)
    np.testing.assert_array_equal(pooled.features.values, direct.values)
    hit = cached_features(task, fingerprint_file(data.test.path), ["other"] * len(direct),
                          state / data.agency / CACHE_DIR)
    np.testing.assert_array_equal(hit.indptr, direct.indptr)  # the driver's entry, read back
