"""The advert export schema and the label schemes agencies use.

An agency's export is a table of adverts, one row per advert, with the columns in
``REQUIRED_COLUMNS``. Experts label suspicion on an ordinal 0-6 scale; agencies keep it,
collapse it to three levels, or to a yes/no flag. Training uses the binary view.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = "advert-export/1"

#: Columns every advert export must have (extra columns are allowed and ignored).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "advert_id",
    "posted_at",
    "site",
    "language",
    "category",
    "text",
    "label",
)

#: Columns the synthetic generator also writes; optional in a real export.
OPTIONAL_COLUMNS: tuple[str, ...] = ("phone", "synthetic")

#: The export file types, by suffix.
SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".parquet")

#: Every column name an error may show. Any other header cell or JSON key is the agency's
#: own (it may be content: a headerless CSV's "header" is its first advert), so errors show
#: it only as "an unexpected column (N characters)".
KNOWN_COLUMNS: frozenset[str] = frozenset(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)

#: The keys of manifest.json that mean something (others are allowed and ignored; errors
#: show them only by their length). The generator writes the optional ones.
MANIFEST_REQUIRED: tuple[str, ...] = ("agency", "label_scheme", "train", "test")
MANIFEST_OPTIONAL: tuple[str, ...] = ("display_name", "format", "schema_version", "synthetic")
MANIFEST_KEYS: frozenset[str] = frozenset(MANIFEST_REQUIRED + MANIFEST_OPTIONAL)

# Why a row is set aside: the keys of AdvertTable.rejected and of the quarantine report.
EMPTY_TEXT = "empty text"
TEXT_NOT_STRING = "text not a string"
TEXT_NOT_UNICODE = "text not usable Unicode"  # a lone surrogate, or a run of > 30 combining marks
TEXT_TOO_LONG = "text too long"  # over federation.limits.MAX_TEXT_CHARS
MISSING_LABEL = "missing label"
MISSING_ID = "missing advert_id"
ID_UNUSABLE = "advert_id unusable"  # not text or a number, too long, or not usable Unicode
CATEGORY_UNUSABLE = "category unusable"  # the same rules as advert_id
DUPLICATE_ID = "duplicate advert_id"
SET_ASIDE_REASONS: tuple[str, ...] = (
    EMPTY_TEXT, TEXT_NOT_STRING, TEXT_NOT_UNICODE, TEXT_TOO_LONG, MISSING_LABEL, MISSING_ID,
    ID_UNUSABLE, CATEGORY_UNUSABLE, DUPLICATE_ID,
)

LANGUAGES: tuple[str, ...] = ("en", "es-ES", "es-419", "pt-PT", "pt-BR")
CATEGORIES: tuple[str, ...] = ("escort", "job", "housing", "travel")


@dataclass(frozen=True)
class LabelScheme:
    """A label scheme: the values it allows and which of them count as positive."""

    name: str
    values: tuple[int, ...]
    positive_from: int

    def is_positive(self, value: int) -> bool:
        return value >= self.positive_from

    def from_expert(self, expert: int) -> int:
        """Map an expert 0-6 suspicion level into this scheme."""
        if not 0 <= expert <= 6:
            raise ValueError(f"expert level {expert} is outside 0-6")
        if self.name == "0-6":
            return expert
        if self.name == "3-level":
            return 0 if expert <= 1 else (1 if expert <= 3 else 2)
        return 1 if expert >= EXPERT_POSITIVE_FROM else 0

    def describe(self) -> str:
        vals = ", ".join(str(v) for v in self.values)
        return f"'{self.name}' (values {vals}; positive from {self.positive_from})"


#: On the expert 0-6 scale, levels 4-6 ("likely" and above) are binarised as positive.
EXPERT_POSITIVE_FROM = 4

LABEL_SCHEMES: dict[str, LabelScheme] = {
    "binary": LabelScheme("binary", (0, 1), positive_from=1),
    "3-level": LabelScheme("3-level", (0, 1, 2), positive_from=2),
    "0-6": LabelScheme("0-6", (0, 1, 2, 3, 4, 5, 6), positive_from=EXPERT_POSITIVE_FROM),
}
