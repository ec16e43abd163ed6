"""Exact explanations of the advert risk model's logit, from its own hashed n-grams.

The logit of the linear model (``task.hidden=0``) is ``bias + sum_b w_b x_b`` over hashed
buckets, and each bucket's value is a signed sum of the n-grams hashed into it, so every
n-gram present gets the share ``w_b x_b s_g / c_b`` (its sign ``s_g`` over the bucket's
signed count ``c_b``). The shares add up to the logit minus the bias. The explainer
rebuilds each advert's feature row from the same grams, so the score shown is computed from
exactly the row that is explained (clients/score.py checks both).
"""

from __future__ import annotations

import math
import unicodedata

import numpy as np

from federation.tasks import Explanation

# _TOKEN: the featuriser's own tokeniser, so explanations see exactly the model's tokens.
from federation.text import _TOKEN, SPECIAL_CATEGORY_TERMS, HashingFeaturizer


def tokens_with_spans(featurizer: HashingFeaturizer, text: str
                       ) -> tuple[list[str], list[tuple[int, int] | None]]:
    """The featuriser's tokens, each with its character span in the original text."""
    norm = unicodedata.normalize("NFKC", text).lower()
    owners: list[int] = []
    pieces: list[str] = []
    for i, ch in enumerate(text):
        piece = unicodedata.normalize("NFKC", ch).lower()
        pieces.append(piece)
        owners.extend([i] * len(piece))
    # Character by character equals the whole text's normalisation unless characters
    # combine (a base letter and a combining accent); then offsets are not shown.
    mappable = "".join(pieces) == norm
    toks: list[str] = []
    spans: list[tuple[int, int] | None] = []
    for m in _TOKEN.finditer(norm):
        tok = m.group()
        if featurizer.exclude_special_categories and tok in SPECIAL_CATEGORY_TERMS:
            continue
        toks.append(tok)
        spans.append((owners[m.start()], owners[m.end() - 1] + 1) if mappable else None)
    return toks, spans


class Explainer:
    """Exact per-token shares of a linear model's logit, computed from the featuriser's grams.

    A token's own grams (the word and its character n-grams) and each word n-gram are
    hashed by the featuriser itself (``word_rows``, ``ngram_rows``), so the row explained
    is the row scored. Adverts repeat their vocabulary (reposts, templates), so each
    token's and n-gram's hashed row is computed once and cached; this makes explaining
    cheaper than featurising.
    """

    _CACHE_LIMIT = 500_000

    def __init__(self, featurizer: HashingFeaturizer, weights: np.ndarray,
                 bias: float = 0.0) -> None:
        self.featurizer = featurizer
        self.weights = weights
        self.bias = bias
        self.width = featurizer.num_buckets
        self._cache: dict[tuple[bool, str], tuple[np.ndarray, np.ndarray]] = {}

    def _rows(self, units: list[str], ngram: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each unit's (buckets, signed counts): a token's own grams, or a word n-gram."""
        missing = list(dict.fromkeys(u for u in units if (ngram, u) not in self._cache))
        if missing:
            f = self.featurizer
            m = f.ngram_rows(missing) if ngram else f.word_rows(missing)
            m.sum_duplicates()
            if len(self._cache) + len(missing) > self._CACHE_LIMIT:
                self._cache.clear()
            for i, u in enumerate(missing):
                lo, hi = m.indptr[i], m.indptr[i + 1]
                self._cache[(ngram, u)] = (m.indices[lo:hi].astype(np.int64), m.data[lo:hi])
        return [self._cache[(ngram, u)] for u in units]

    def explain(self, text: str) -> Explanation:
        """Tokens, their spans, each token's share of ``logit - bias``, and the feature row.

        A bucket with signed count ``c_b`` and value ``row_b`` gives each unit with signed
        count ``u_b`` in it the share ``w_b row_b u_b / c_b``; a token keeps its own
        grams' shares and a word n-gram's share is split evenly over its words.
        """
        f = self.featurizer
        toks, spans = tokens_with_spans(f, text)
        units = self._rows(toks, ngram=False)  # unit i < len(toks): token i's own grams
        first = list(range(len(toks)))  # each unit's first word, and its number of words
        size = [1] * len(toks)
        for n in range(2, f.word_ngrams + 1):
            starts = list(range(len(toks) - n + 1))
            units += self._rows([" ".join(toks[i:i + n]) for i in starts], ngram=True)
            first += starts
            size += [n] * len(starts)
        if not units or not sum(b.size for b, _ in units):
            return Explanation(toks, spans, np.zeros(len(toks)), {})
        b_all = np.concatenate([b for b, _ in units])
        v_all = np.concatenate([v for _, v in units])
        unit_of = np.repeat(np.arange(len(units)), [b.size for b, _ in units])
        c = np.bincount(b_all, weights=v_all, minlength=self.width)
        value = np.sign(c) * np.log1p(np.abs(c))
        norm = math.sqrt(float(value @ value)) or 1.0
        row = value / norm
        nz = c[b_all] != 0
        share = np.zeros(b_all.size)
        share[nz] = self.weights[b_all[nz]] * row[b_all[nz]] * v_all[nz] / c[b_all[nz]]
        per_unit = np.bincount(unit_of, weights=share, minlength=len(units))
        per_token = per_unit[:len(toks)].astype(np.float64)
        for u in range(len(toks), len(units)):  # a word n-gram's share, split over its words
            per_token[first[u]:first[u] + size[u]] += per_unit[u] / size[u]
        filled = np.flatnonzero(c)
        return Explanation(toks, spans, per_token,
                           dict(zip(filled.tolist(), row[filled].tolist(), strict=True)))


def token_contributions(featurizer: HashingFeaturizer, weights: np.ndarray, text: str
                        ) -> tuple[list[str], list[tuple[int, int] | None], np.ndarray]:
    """Each token's exact share of ``logit - bias`` (see the module docstring)."""
    e = Explainer(featurizer, weights).explain(text)
    return e.units, e.spans, e.shares
