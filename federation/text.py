"""Hashed text features that need no shared vocabulary.

Each agency maps its adverts to a fixed number of buckets with a public, seedless hash of
word n-grams and character n-grams. No agency sends or receives a word list, so nothing
about its vocabulary leaves the node; the only shared thing is the bucket count.

Special-category terms (ethnicity, nationality) are removed before hashing unless a
configuration turns them on explicitly: DOMAIN.md and the Law Enforcement Directive treat
them as special-category data.

Every advert text is normalised once, by :func:`normalise_text`, when it is read (the
export readers in federation/data.py, and ``heroes agency score``): what ``heroes agency
check`` accepts is then exactly what the node featurises and what scoring explains.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from federation.limits import MAX_COMBINING_RUN, MAX_TEXT_CHARS
from federation.schema import TEXT_NOT_UNICODE, TEXT_TOO_LONG

#: Ethnicity and nationality words, masked before hashing by default. Lower case,
#: accents as written. The synthetic generator draws its ethnicity phrases from here.
SPECIAL_CATEGORY_TERMS: frozenset[str] = frozenset(
    {
        "latina", "latinas", "latino", "asian", "asiatica", "asiática", "asiatique",
        "african", "africana", "ebony", "exotic", "exotica", "exótica", "brasileña",
        "brasileira", "brazilian", "colombiana", "venezolana", "dominicana", "rumana",
        "romanian", "russian", "rusa", "russa", "thai", "tailandesa", "nigerian",
        "nigeriana", "paraguaya", "ucraniana", "ukrainian", "oriental", "mulata",
        "morena", "eslava", "slavic", "europea", "european",
    }
)

#: Bump when the features for a given text change, so node caches are not reused.
#: 2: texts are normalised by normalise_text first (control characters become spaces).
FEATURES_VERSION = 2

# C0 and C1 control characters other than tab, line feed and carriage return (NUL, ESC,
# DEL, NEL, ...): terminal escapes and exporter debris, never words.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class UnusableText(ValueError):
    """A text that cannot be used; ``reason`` is one of federation.schema's set-aside
    reasons (never the text)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@functools.cache
def _combining() -> np.ndarray:
    """For every code point, whether it is a combining character (nonzero canonical
    combining class), from this Python's Unicode database; built once (about 70 ms)."""
    mask = np.zeros(0x110000, dtype=bool)
    for cp in range(0x110000):
        if unicodedata.combining(chr(cp)):
            mask[cp] = True
    return mask


def _unusable(text: str) -> bool:
    """A lone surrogate, or a run of more than MAX_COMBINING_RUN combining characters.

    Most adverts' non-ASCII characters are accented Latin letters, all below U+0300 where
    neither can occur; the rest is checked over the code points at once (a regular
    expression over the 188 ranges of combining characters cost 1.4 microseconds a
    character, this about 15 for a 450-character advert).
    """
    top = max(text)
    if top < "\u0300":
        return False
    if top >= "\ud800":
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # only a lone surrogate cannot be encoded
            return True
    marks = _combining()[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
    if np.count_nonzero(marks) <= MAX_COMBINING_RUN:
        return False
    edges = np.diff(np.concatenate(([0], marks.view(np.int8), [0])))
    return bool((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max()
                > MAX_COMBINING_RUN)


def normalise_text(text: str) -> str:
    """The one normalisation every advert text gets, before it is checked or featurised.

    Refuses (UnusableText) a text longer than MAX_TEXT_CHARS (before and after
    normalising, so a huge text costs no normalisation), one with a lone surrogate (JSON
    can spell them as ``\\ud800``; no UTF-8 file or featuriser can hold one), and one
    with a run of more than MAX_COMBINING_RUN combining marks (which makes Unicode
    normalisation quadratic). Otherwise replaces C0/C1 control characters other than tab,
    line feed and carriage return by spaces and returns the NFC form. Idempotent:
    ``normalise_text(normalise_text(t)) == normalise_text(t)``.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise UnusableText(TEXT_TOO_LONG)
    if not text.isascii() and _unusable(text):
        raise UnusableText(TEXT_NOT_UNICODE)
    text = _CONTROL.sub(" ", text)
    if not text.isascii():
        nfc = unicodedata.normalize("NFC", text)
        if nfc != text:
            if len(nfc) > MAX_TEXT_CHARS:
                raise UnusableText(TEXT_TOO_LONG)
            # Checked again: a few characters decompose into marks that do not recompose
            # (U+0344, U+0958), and the result must pass this function unchanged.
            if _unusable(nfc):
                raise UnusableText(TEXT_NOT_UNICODE)
        text = nfc
    return text


_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class HashingFeaturizer:
    """Maps texts to L2-normalised, sign-hashed log counts of n-grams.

    ``num_buckets`` must be a power of two. Word n-grams (1..word_ngrams) and character
    n-grams (char_min..char_max, inside word boundaries; char_max=0 turns them off) share
    the bucket space, each
    prefixed so that a word and an identical character string do not collide on purpose.
    """

    num_buckets: int = 1 << 12
    word_ngrams: int = 2
    char_min: int = 3
    char_max: int = 5
    exclude_special_categories: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.num_buckets < 2 or self.num_buckets & (self.num_buckets - 1):
            problems.append(f"num_buckets={self.num_buckets} must be a power of two >= 2")
        if self.word_ngrams < 1:
            problems.append(f"word_ngrams={self.word_ngrams} must be >= 1")
        if self.char_max != 0 and not 1 <= self.char_min <= self.char_max:
            problems.append(
                f"char n-gram range {self.char_min}..{self.char_max} must satisfy "
                "1 <= char_min <= char_max"
            )
        if problems:
            raise ValueError("; ".join(problems))

    def tokens(self, text: str) -> list[str]:
        norm = unicodedata.normalize("NFKC", text).lower()
        toks = _TOKEN.findall(norm)
        if self.exclude_special_categories:
            toks = [t for t in toks if t not in SPECIAL_CATEGORY_TERMS]
        return toks

    def grams(self, text: str) -> Iterable[str]:
        toks = self.tokens(text)
        for n in range(1, self.word_ngrams + 1):
            for i in range(len(toks) - n + 1):
                yield "w:" + " ".join(toks[i : i + n])
        if self.char_max == 0:
            return
        for tok in toks:
            padded = f" {tok} "
            for n in range(self.char_min, self.char_max + 1):
                for i in range(len(padded) - n + 1):
                    yield "c:" + padded[i : i + n]

    def transform(self, texts: Sequence[str]) -> SparseRows:
        """Featurise texts into compressed sparse rows (one row per text)."""
        mask = self.num_buckets - 1
        indptr = [0]
        indices: list[int] = []
        values: list[float] = []
        for text in texts:
            counts: Counter[int] = Counter()
            for gram in self.grams(text):
                h = zlib.crc32(gram.encode("utf-8"))
                sign = 1 if h & 0x80000000 else -1
                counts[h & mask] += sign
            row = {b: math.copysign(math.log1p(abs(c)), c) for b, c in counts.items() if c}
            norm = math.sqrt(sum(v * v for v in row.values())) or 1.0
            for b in sorted(row):
                indices.append(b)
                values.append(row[b] / norm)
            indptr.append(len(indices))
        return SparseRows(
            indptr=np.asarray(indptr, dtype=np.int64),
            indices=np.asarray(indices, dtype=np.int64),
            values=np.asarray(values, dtype=np.float32),
            width=self.num_buckets,
        )


@dataclass(frozen=True)
class SparseRows:
    """A minimal CSR matrix: enough to densify batches without scipy."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    width: int

    def __len__(self) -> int:
        return int(self.indptr.size - 1)

    def dense(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Dense float32 matrix of the given rows (all rows when None)."""
        sel = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.zeros((sel.size, self.width), dtype=np.float32)
        for out_row, r in enumerate(sel):
            lo, hi = self.indptr[r], self.indptr[r + 1]
            out[out_row, self.indices[lo:hi]] = self.values[lo:hi]
        return out
