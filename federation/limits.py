"""The limits on what an agency's files may hold: one set, for every format and every reader.

An export or a manifest is hostile input until it has been read: it may come from a broken
exporter, a tampered copy, or someone probing the node. Each limit below keeps a reader's
time and memory proportional to the file, and turns what no real export holds into a rule
with a name and a fix, never a traceback. ``heroes agency check``, the node (before every
round) and ``heroes agency score`` all read through federation/data.py and
federation/text.py, which apply exactly these numbers, so what ``check`` accepts is what the
node trains on and what ``score`` scores.

What happens when a limit is passed:

- a single row's value (a text too long, a text with a lone surrogate, an over-long
  ``advert_id`` or ``category``) sets that row aside, counted in the quarantine report by
  reason;
- the file's structure (nesting, numbers, file names, the manifest's size) refuses the file
  with a DataError (``heroes agency check`` exits 2).
"""

from __future__ import annotations

#: Characters in one advert text, after Unicode NFC normalisation. The longest real adverts
#: are a few thousand characters; 64 Ki leaves room for pasted listings while keeping the
#: featuriser's work per row bounded. The same limit holds in CSV, JSONL and Parquet (the
#: CSV reader's own field limit is lifted so that a long CSV text reaches this check and is
#: set aside like a long JSONL or Parquet text) and in scoring.
MAX_TEXT_CHARS = 65_536

#: Messages in one conversation record. Seized chat logs run to thousands of lines, but a
#: record is one conversation thread; a longer one is set aside ("too many messages") and
#: the agency splits it into threads. The model reads at most the first and last messages
#: of a conversation (federation/tasks/conversation_risk.py), so this bounds the reader's
#: work, not what is learnt.
MAX_MESSAGES = 2_000

#: Characters in one message of a conversation, after NFC normalisation: chat messages are
#: short; a longer one ("message too long") is a paste or a broken export.
MAX_MESSAGE_CHARS = 8_192

#: Characters in an ``advert_id`` or ``category`` cell: identifiers and labels, not prose.
MAX_FIELD_CHARS = 1_024

#: Combining characters in a row (Unicode "non-starters"). UAX #15's Stream-Safe Text
#: Format allows 30; longer runs ("zalgo" text) make Unicode normalisation quadratic in the
#: run's length (measured: 0.9 s for one 32,000-character run), so a text with one is set
#: aside as not usable Unicode.
MAX_COMBINING_RUN = 30

#: Nesting of JSON arrays and objects in a JSONL record or the manifest. A record is one
#: object (depth 1) of flat values; 16 levels leave room for nested extra columns while a
#: line of 100,000 brackets is refused before the JSON parser recurses into it.
MAX_JSON_DEPTH = 16

#: Characters in one JSON number. A 64-bit integer needs 20, a float's shortest form 24;
#: longer numbers (a 5,000-digit integer would also trip Python's int-to-str limit) are
#: refused before they are converted.
MAX_NUMBER_CHARS = 64

#: The integers a JSON value may hold: those of a Parquet int64 column, so JSONL and
#: Parquet accept the same numbers. Floats must be finite (no 1e999, no Infinity).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: Characters in a file name the manifest gives (``train``, ``test``), relative to the data
#: folder. File systems allow 255 bytes per name; a longer name cannot be a real export.
MAX_FILE_NAME_CHARS = 255

#: Characters in the manifest's ``agency`` name (it is sent with every reply).
MAX_AGENCY_CHARS = 128

#: Bytes in manifest.json: four short keys and their values.
MAX_MANIFEST_BYTES = 65_536

#: The CSV reader's field limit while an export is read (Python's default is 131,072
#: characters, which would refuse a long CSV text with a misleading fix). Any field up to
#: this size reaches the per-row checks above; a file holding a larger one cannot be read.
CSV_FIELD_LIMIT = 2**31 - 1

#: The model's shape, as the run configuration sets it. The run configuration comes from the
#: aggregator, which the threat model does not trust: a node checks these before it
#: allocates anything, so ``task.num_buckets=2**40`` is a refusal, not an attempt to
#: allocate terabytes. A dense batch is batch x buckets floats and the hidden layer
#: buckets x hidden weights; 2**18 buckets and 4096 hidden units stay within a few GiB.
MAX_BUCKETS = 2 ** 18
MAX_HIDDEN = 4096
#: Word and character n-gram lengths: each adds hashing work per token.
MAX_WORD_NGRAMS = 5
MAX_CHAR_NGRAM = 10
