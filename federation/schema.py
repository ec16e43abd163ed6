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
