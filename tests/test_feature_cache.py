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
