"""The advert export schema and the label schemes agencies use.

An agency's export is a table of adverts, one row per advert, with the columns in
``REQUIRED_COLUMNS``. Experts label suspicion on an ordinal 0-6 scale; agencies keep it,
collapse it to three levels, or to a yes/no flag. Training uses the binary view.
"""

from __future__ import annotations

from types import MappingProxyType

from federation.records import (
    EMPTY_TEXT,
    EXPERT_POSITIVE_FROM,
    TEXT_NOT_STRING,
    TEXT_NOT_UNICODE,
    TEXT_TOO_LONG,
    Column,
    LabelScheme,
    RecordSchema,
)

__all__ = [
    "ADVERT_RECORDS", "CATEGORIES", "CATEGORY_UNUSABLE", "DUPLICATE_ID", "EMPTY_TEXT",
    "EXPERT_POSITIVE_FROM", "ID_UNUSABLE", "KNOWN_COLUMNS", "LABEL_SCHEMES", "LANGUAGES",
    "MANIFEST_KEYS", "MANIFEST_OPTIONAL", "MANIFEST_REQUIRED", "MISSING_ID", "MISSING_LABEL",
    "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "SCHEMA_VERSION", "SET_ASIDE_REASONS", "SUFFIXES",
    "TEXT_NOT_STRING", "TEXT_NOT_UNICODE", "TEXT_TOO_LONG", "LabelScheme",
]

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

# Why a row is set aside: the keys of AdvertTable.rejected and of the quarantine report
# (the text reasons are every text column's, see federation.records).
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


LABEL_SCHEMES: dict[str, LabelScheme] = {
    "binary": LabelScheme("binary", (0, 1), positive_from=1),
    "3-level": LabelScheme("3-level", (0, 1, 2), positive_from=2),
    "0-6": LabelScheme("0-6", (0, 1, 2, 3, 4, 5, 6), positive_from=EXPERT_POSITIVE_FROM),
}

#: The advert export as a record schema: the advert risk task reads it (its
#: ``record_schema``) and so does every reader of an agency's advert export. It is declared
#: here, beside the manifest and generator constants that name it, because the data layer
#: reads advert exports without importing any task (federation.tasks imports the data
#: layer, never the other way round).
ADVERT_RECORDS = RecordSchema(
    name=SCHEMA_VERSION,
    columns=(
        Column("advert_id", "id", unique=True),
        Column("posted_at", "any"),
        Column("site", "any"),
        Column("language", "any"),
        Column("category", "str"),
        Column("text", "str", text=True),
        Column("label", "label"),
    ),
    label_schemes=MappingProxyType(LABEL_SCHEMES),
)
assert ADVERT_RECORDS.required == REQUIRED_COLUMNS
assert set(ADVERT_RECORDS.reasons()) == set(SET_ASIDE_REASONS)


# --- conversations (the conversation-risk task) ---------------------------------------------

CONVERSATION_SCHEMA_VERSION = "conversation-export/1"

#: Sender roles of a conversation's messages: ``reported`` is the account the conversation
#: was reported or seized for (the one whose moves are assessed), ``contact`` the person it
#: writes to (who may be a victim), ``other`` anyone else (a third person, a system line).
CONVERSATION_ROLES: tuple[str, ...] = ("reported", "contact", "other")

#: Per-conversation stage labels, in the order a grooming or extortion conversation moves
#: through them (O'Connell 2003; Olson et al. 2007); positive from grooming.
STAGES: tuple[str, ...] = ("none", "contact", "grooming", "sexual solicitation", "extortion")

CONVERSATION_LABEL_SCHEMES: dict[str, LabelScheme] = {
    "binary": LABEL_SCHEMES["binary"],
    "stage": LabelScheme("stage", tuple(range(len(STAGES))), positive_from=2, names=STAGES),
    "0-6": LABEL_SCHEMES["0-6"],
}

#: A conversation export: JSONL or Parquet hold one conversation per record, with its
#: ``messages`` as a list of {role, timestamp, text}; CSV holds one message per row with
#: ``conversation_id``, ``position``, ``role``, optional ``timestamp``, ``text`` and the
#: conversation's ``label`` (repeated on each of its rows). ``synthetic`` is optional, as
#: for adverts.
CONVERSATION_RECORDS = RecordSchema(
    name=CONVERSATION_SCHEMA_VERSION,
    columns=(
        Column("conversation_id", "id", unique=True),
        Column("messages", "messages", text=True),
        Column("label", "label"),
        Column("synthetic", "any", required=False),
    ),
    label_schemes=MappingProxyType(CONVERSATION_LABEL_SCHEMES),
    roles=CONVERSATION_ROLES,
    position="position",
)
