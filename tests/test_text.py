"""The hashed featuriser: deterministic across processes, no vocabulary, masks special
categories."""

import subprocess
import sys

import numpy as np
import pytest

from federation.text import SPECIAL_CATEGORY_TERMS, HashingFeaturizer

TEXTS = ["Fotos 100% reales, sin sorpresas", "new in town, this week only",
         "we pay your ticket, housing included", "n3w g1rls every week 🌹"]


def test_same_features_in_a_fresh_process() -> None:
    code = (
        "from federation.text import HashingFeaturizer; import sys, json;"
        "r = HashingFeaturizer().transform(json.loads(sys.argv[1]));"
        "print((r.indices.tolist(), [round(float(v), 6) for v in r.values]))"
    )
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], check=True,
                         capture_output=True, text=True, env={"PYTHONHASHSEED": "123"}).stdout
    here = HashingFeaturizer().transform(TEXTS)
    assert out.strip() == str((here.indices.tolist(), [round(float(v), 6)
                                                       for v in here.values]))


def test_rows_are_unit_norm_and_in_range() -> None:
    rows = HashingFeaturizer(num_buckets=1024).transform(TEXTS)
    dense = rows.dense()
    assert dense.shape == (4, 1024)
    np.testing.assert_allclose(np.linalg.norm(dense, axis=1), 1.0, rtol=1e-5)
    assert rows.indices.max() < 1024


def test_special_category_terms_are_masked_by_default() -> None:
    f = HashingFeaturizer()
    assert "latina" in SPECIAL_CATEGORY_TERMS
    assert "latina" not in f.tokens("exotic Latina recien llegada")
    with_terms = HashingFeaturizer(exclude_special_categories=False)
    assert "latina" in with_terms.tokens("exotic Latina recien llegada")
    same = f.transform(["chica latina nueva"]).dense()
    assert np.array_equal(same, f.transform(["chica nueva"]).dense())


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="power of two"):
        HashingFeaturizer(num_buckets=1000)
    with pytest.raises(ValueError, match="char_min <= char_max"):
        HashingFeaturizer(char_min=4, char_max=3)


def test_a_batch_gives_each_texts_own_row() -> None:
    """transform(texts) tokenises all texts in one pass over them joined by NUL; each row
    must be what that text alone gives: accents that compose across the join, a Greek
    final sigma, special-category words, empty texts and a text that holds a NUL itself."""
    texts = ["\u0301combining first", "ΟΔΥΣΣΕΥΣ", "café\u0301", "", "latina nueva",
             "end with Σ", "Σ starts", "ﬁ ligature ＡＢＣ", "x\x00y", "  ", *TEXTS]
    f = HashingFeaturizer(num_buckets=1024)
    for batch in (texts, [t for t in texts if "\x00" not in t]):
        together = f.transform(batch).dense()
        alone = np.vstack([f.transform([t]).dense() for t in batch])
        np.testing.assert_array_equal(together, alone)
