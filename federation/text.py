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
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
#: 3: scikit-learn's MurmurHash3 (FeatureHasher, HashingVectorizer char_wb) instead of
#: CRC-32 over Python-built grams; a word shorter than a character n-gram gives its padded
#: self once (scikit-learn's char_wb) instead of nothing.
FEATURES_VERSION = 3

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
#: Ends each text in ``HashingFeaturizer._tokens_of_all``: NUL, a token of its own there.
_SEPARATOR = "\x00"
#: Texts per block of HashingFeaturizer.transform's sparse product.
_BLOCK = 2048


@functools.cache
def _hashers(num_buckets: int, char_min: int, char_max: int) -> tuple[Any, Any]:
    """scikit-learn's signed hashers (MurmurHash3, seed 0; compiled): ``FeatureHasher`` for
    word n-grams, each prefixed ``w:``, and ``HashingVectorizer(analyzer="char_wb")`` for
    the character n-grams of a token padded with one space each side. Imported here, not at
    the top, so that the CLI commands that never featurise do not pay for scikit-learn."""
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.feature_extraction.text import HashingVectorizer

    words = FeatureHasher(n_features=num_buckets, input_type="string", alternate_sign=True,
                          dtype=np.float64)
    chars = (HashingVectorizer(analyzer="char_wb", ngram_range=(char_min, char_max),
                               n_features=num_buckets, lowercase=False, norm=None,
                               alternate_sign=True, dtype=np.float64)
             if char_max else None)
    return words, chars


def _empty_rows(width: int) -> Any:
    from scipy import sparse

    return sparse.csr_matrix((0, width), dtype=np.float64)


@dataclass(frozen=True)
class HashingFeaturizer:
    """Maps texts to L2-normalised, sign-hashed log counts of n-grams.

    ``num_buckets`` must be a power of two. Word n-grams (1..word_ngrams, prefixed ``w:``)
    and the character n-grams of each word (char_min..char_max, the word padded with a space
    each side; char_max=0 turns them off) share the bucket space. A bucket's value is the
    signed count ``c`` of the grams hashed into it (each gram's sign is its hash's),
    mapped to ``sign(c) * log(1 + |c|)``, and each row is scaled to unit L2 norm.

    The hashing is scikit-learn's (``_hashers``), and each distinct word's grams are hashed
    once per call: adverts repeat their vocabulary, so a text's row is the sum of its
    words' rows plus its word n-grams' rows (a sparse product), not a fresh walk over its
    characters. Since FEATURES_VERSION 3.
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
        # ASCII is its own NFKC form: most adverts skip the Unicode normalisation
        norm = (text if text.isascii() else unicodedata.normalize("NFKC", text)).lower()
        toks: list[str] = _TOKEN.findall(norm)
        if self.exclude_special_categories and not SPECIAL_CATEGORY_TERMS.isdisjoint(toks):
            toks = [t for t in toks if t not in SPECIAL_CATEGORY_TERMS]
        return toks

    def _token_ids(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The distinct words of ``texts`` in order of first use, every token of every text
        as an index into them (one array for all), and each text's number of tokens.

        One normalisation and one regular-expression pass over the texts joined by
        ``_SEPARATOR``: NUL is a starter that composes with nothing, is not cased and is a
        token of its own, so the pass over the whole equals ``tokens`` of each. Texts from
        an export never hold one (normalise_text turns control characters into spaces);
        where one does, each text is tokenised alone. ``dict.fromkeys`` and ``map`` give
        the ids without a Python loop over the tokens."""
        if any(_SEPARATOR in t for t in texts):
            per_text = [self.tokens(t) for t in texts]
            flat = [t for toks in per_text for t in toks]
            words = list(dict.fromkeys(flat))
            vocab = {w: i for i, w in enumerate(words)}
            return (words, np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64,
                                       count=len(flat)),
                    np.asarray([len(toks) for toks in per_text], dtype=np.int64))
        toks = self.tokens(_SEPARATOR.join(texts) + _SEPARATOR)
        words = list(dict.fromkeys([_SEPARATOR, *toks]))  # the separator is word 0
        vocab = {w: i for i, w in enumerate(words)}
        ids = np.fromiter(map(vocab.__getitem__, toks), dtype=np.int64, count=len(toks))
        ends = np.flatnonzero(ids == 0)
        return words[1:], ids[ids != 0] - 1, np.diff(np.concatenate(([-1], ends))) - 1

    def word_rows(self, tokens: Sequence[str]) -> Any:
        """One CSR row per token: the signed counts of its own grams (the word itself and
        its character n-grams), float64."""
        if not tokens:  # scikit-learn's hashers refuse an empty input
            return _empty_rows(self.num_buckets)
        words, chars = _hashers(self.num_buckets, self.char_min, self.char_max)
        rows = words.transform([["w:" + t] for t in tokens])
        return rows + chars.transform(tokens) if chars is not None else rows

    def ngram_rows(self, grams: Sequence[str]) -> Any:
        """One CSR row per word n-gram of two or more words (joined by one space)."""
        if not grams:
            return _empty_rows(self.num_buckets)
        words, _ = _hashers(self.num_buckets, self.char_min, self.char_max)
        return words.transform([["w:" + g] for g in grams])

    def transform(self, texts: Sequence[str]) -> SparseRows:
        """Featurise texts into compressed sparse rows (one row per text).

        Each distinct word gets an id (one dictionary look-up per word); word n-grams are
        found as distinct runs of ids by numpy, so only distinct words and distinct
        n-grams are ever hashed, and a text's signed counts are the sparse product of how
        often it holds each with their hashed rows.
        """
        from scipy import sparse

        words, token_ids, lengths = self._token_ids(texts)
        indptr = np.concatenate(([0], np.cumsum(lengths)))
        doc = np.repeat(np.arange(len(texts)), lengths)
        # one occurrence matrix (texts x [words, then each n's distinct n-grams]) and one
        # matrix of their hashed rows: a single sparse product gives every text's counts
        occ_doc, occ_col, hashed = [doc], [token_ids], [self.word_rows(words)]
        columns = len(words)
        for n in range(2, self.word_ngrams + 1):
            starts = np.flatnonzero(np.arange(token_ids.size) + n <= indptr[doc + 1])
            if not starts.size:
                break
            key = token_ids[starts]
            for k in range(1, n):  # a run of n ids as one integer, kept dense (no overflow)
                key = key * len(words) + token_ids[starts + k]
                if k < n - 1:
                    key = np.unique(key, return_inverse=True)[1].reshape(-1)
            _, first, which = np.unique(key, return_index=True, return_inverse=True)
            grams = [" ".join(words[j] for j in token_ids[s:s + n].tolist())
                     for s in starts[first].tolist()]
            occ_doc.append(doc[starts])
            occ_col.append(columns + which.reshape(-1))
            hashed.append(self.ngram_rows(grams))
            columns += len(grams)
        rows_of = np.concatenate(occ_doc)
        order = np.argsort(rows_of, kind="stable")  # CSR order directly: no COO sorting
        occurrences = sparse.csr_matrix(
            (np.ones(order.size), np.concatenate(occ_col)[order],
             np.concatenate(([0], np.cumsum(np.bincount(rows_of, minlength=len(texts)))))),
            shape=(len(texts), columns))
        rows = sparse.vstack(hashed, format="csr")
        # the product in blocks of texts: its transient arrays stay small (a whole export
        # at once allocated hundreds of MB per call, and paid for it in page faults)
        return SparseRows.concat([self._finish(occurrences[lo:lo + _BLOCK] @ rows)
                                  for lo in range(0, len(texts), _BLOCK)]
                                 or [self._finish(sparse.csr_matrix((0, self.num_buckets)))])

    def _finish(self, counts: Any) -> SparseRows:
        """Signed counts (CSR) to the features: sign * log(1 + |c|), rows at unit L2 norm.
        A row's entries keep the order of the sparse product (not sorted by bucket)."""
        from scipy import sparse

        counts = sparse.csr_matrix(counts)
        counts.eliminate_zeros()
        n = counts.shape[0]
        signed = counts.data
        values = np.abs(signed)
        np.log1p(values, out=values)
        np.copysign(values, signed, out=values)
        owner = np.repeat(np.arange(n), np.diff(counts.indptr))
        norms = np.sqrt(np.bincount(owner, weights=values * values, minlength=n))
        values /= np.where(norms > 0, norms, 1.0)[owner]
        return SparseRows(
            indptr=counts.indptr.astype(np.int64),
            indices=counts.indices.astype(np.int64),
            values=values.astype(np.float32),
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

    @staticmethod
    def concat(parts: Sequence[SparseRows]) -> SparseRows:
        """The rows of ``parts`` one after another (all of one width)."""
        widths = {p.width for p in parts}
        if len(widths) != 1:
            raise ValueError(f"cannot stack rows of widths {sorted(widths)}")
        indptr = [np.zeros(1, dtype=np.int64)]
        offset = 0
        for p in parts:
            indptr.append(p.indptr[1:] + offset)
            offset += int(p.indptr[-1])
        return SparseRows(indptr=np.concatenate(indptr),
                          indices=np.concatenate([p.indices for p in parts]),
                          values=np.concatenate([p.values for p in parts]),
                          width=widths.pop())

    @functools.cached_property
    def _csr(self) -> Any:
        """The same rows as a scipy CSR matrix (sharing these arrays), built once."""
        from scipy import sparse

        return sparse.csr_matrix((self.values, self.indices, self.indptr),
                                 shape=(len(self), self.width))

    def dense(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Dense float32 matrix of the given rows (all rows when None): scipy's compiled
        row slicing and densification (a batch of 128 adverts in about 0.16 ms here,
        against 0.38 ms for a numpy scatter and more for a Python loop over rows)."""
        if rows is None:
            out: np.ndarray = self._csr.toarray()
        else:
            out = self._csr[np.asarray(rows, dtype=np.int64)].toarray()
        return out
