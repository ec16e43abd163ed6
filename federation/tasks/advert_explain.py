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
import zlib
from collections import Counter

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

    Adverts repeat their vocabulary (reposts, templates), so each token's character-gram
    hashes are computed once and cached; this makes explaining cheaper than featurising.
    """

    def __init__(self, featurizer: HashingFeaturizer, weights: np.ndarray,
                 bias: float = 0.0) -> None:
        self.featurizer = featurizer
        self.weights = weights
        self.bias = bias
        self.width = featurizer.num_buckets
        self.mask = featurizer.num_buckets - 1
        self._char_cache: dict[str, list[tuple[int, int]]] = {}

    def _hash(self, gram: str) -> tuple[int, int]:
        h = zlib.crc32(gram.encode("utf-8"))
        return h & self.mask, (1 if h & 0x80000000 else -1)

    def _char_grams(self, tok: str) -> list[tuple[int, int]]:
        cached = self._char_cache.get(tok)
        if cached is None:
            f = self.featurizer
            padded = f" {tok} "
            cached = [self._hash("c:" + padded[j:j + n])
                      for n in range(f.char_min, f.char_max + 1)
                      for j in range(len(padded) - n + 1)]
            if len(self._char_cache) < 500_000:
                self._char_cache[tok] = cached
        return cached

    def explain(self, text: str) -> Explanation:
        """Tokens, their spans, each token's share of ``logit - bias``, and the feature row."""
        f = self.featurizer
        toks, spans = tokens_with_spans(f, text)
        entries: list[tuple[int, int, int, int]] = []  # bucket, sign, first token, last + 1
        for n in range(1, f.word_ngrams + 1):
            for i in range(len(toks) - n + 1):
                b, sign = self._hash("w:" + " ".join(toks[i:i + n]))
                entries.append((b, sign, i, i + n))
        if f.char_max:
            for ti, tok in enumerate(toks):
                entries.extend((b, sign, ti, ti + 1) for b, sign in self._char_grams(tok))
        counts: Counter[int] = Counter()
        for b, sign, _, _ in entries:
            counts[b] += sign
        value = {b: math.copysign(math.log1p(abs(c)), c) for b, c in counts.items() if c}
        norm = math.sqrt(sum(v * v for v in value.values())) or 1.0
        row = {b: v / norm for b, v in value.items()}
        per_token = np.zeros(len(toks), dtype=np.float64)
        w = self.weights
        for b, sign, lo, hi in entries:
            c = counts[b]
            if c:
                share = float(w[b]) * row[b] * sign / c
                if hi - lo == 1:
                    per_token[lo] += share
                else:
                    per_token[lo:hi] += share / (hi - lo)
        return Explanation(toks, spans, per_token, row)


def token_contributions(featurizer: HashingFeaturizer, weights: np.ndarray, text: str
                        ) -> tuple[list[str], list[tuple[int, int] | None], np.ndarray]:
    """Each token's exact share of ``logit - bias`` (see the module docstring)."""
    e = Explainer(featurizer, weights).explain(text)
    return e.units, e.spans, e.shares
