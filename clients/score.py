"""``heroes agency score``: score new records with a released model, with reasons, and log it.

Order of work: check the results path (never the input, through any link, never the log,
never an existing file), verify the bundle's signature against the consortium's public key
(an unsigned, tampered or foreign bundle is refused before anything is read), read the
records the bundle's task scores (its ``record_schema``: adverts with ``advert_id`` and
``text``, conversations as federation.schema.CONVERSATION_RECORDS; CSV, JSONL or Parquet),
score them, explain each score, append the consultation to the node's log (who, when, which
file and its SHA-256, the stated purpose, the model version, how many records, the
threshold and why it applies), and only then write the results, atomically: the Law
Enforcement Directive asks for a record of who consulted what, when and why, so results
without a log entry must not exist.

Explanations come from the bundle's task (``Task.explainer``): ``bias`` plus the shares of
the explanation's units is the model's logit, checked for every record, and the explainer's
feature rows are checked against the task's own featuriser. How they are shown depends on
what a unit is. Adverts (one text): shares per word token, the strongest runs of adjacent
words shown as phrases, each labelled with the indicator it matches in
federation/indicators.py (see federation/tasks/advert_explain.py: exact for the linear
model). Any other record (a conversation): the units that raised the score most, with their
position, sender role, share, and the lexicon hits the task found in each (category and
the phrase).

Threshold: ``--threshold`` when the analyst gives one; else the operating point the release
card records (chosen by the consortium from secure sums of the pooled evaluation, see
server/release.py); else, for a bundle whose card has none, the task's default, with a
notice. The report prints which applies and why; the log records it.

A score is a lead for a trained person to assess, never a decision about anyone.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import getpass
import hashlib
import io
import json
import math
import os
import stat
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients import calibration
from clients.calibration import NONE, Calibration
from federation.bundle import VerifiedBundle, verify_bundle
from federation.data import DUPLICATE_ID, clean_id, clean_text, read_records
from federation.data import read_record_table as read_record_table
from federation.data import read_unlabelled as read_unlabelled
from federation.errors import ConfigError, DataError, DeploymentError, Rule, TaskError
from federation.files import open_private, private_dir, write_atomic
from federation.indicators import BY_NAME, categorize
from federation.schema import ADVERT_RECORDS
from federation.signing import file_sha256, load_public_key
from federation.tasks import Explainer, Explanation, Task

# The advert task's exact per-token shares, re-exported for scoring's callers and tests.
from federation.tasks.advert_explain import token_contributions as token_contributions

LEAD_NOT_DECISION = ("A score is a lead for a trained analyst to assess, never a decision "
                     "about anyone: read the phrases, check the advert, decide yourself.")
LEAD_NOT_DECISION_UNITS = ("A score is a lead for a trained analyst to assess, never a "
                           "decision about anyone: read the messages, check the whole "
                           "{noun}, decide yourself.")
CONSULTATION_LOG = "consultations.jsonl"
INPUT_FORMATS = (".csv", ".jsonl", ".parquet")
TOP_PHRASES = 3
TOP_UNITS = 3  # messages shown per conversation
MAX_PHRASE_WORDS = 4


# --- reading adverts --------------------------------------------------------------------------

@dataclass
class Adverts:
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # line (CSV/JSONL) or row (Parquet) numbers
    set_aside: Counter[str] = field(default_factory=Counter)


#: What scoring reads: the export reader's limits and text normalisation
#: (federation/data.py, federation/limits.py), with only these two columns required.
SCORE_COLUMNS = ("advert_id", "text")
INPUT_NOT_FOUND = Rule("file not found", "pass the adverts file with --input")
INPUT_NOT_A_FILE = Rule("not a regular file (a folder, device or pipe)",
                        "pass the adverts file with --input")
NO_ADVERTS = Rule("no adverts to score (set aside: {counts})",
                  "export adverts with an advert_id and a text")


def read_adverts(path: Path) -> Adverts:
    """Adverts to score, read exactly as ``heroes agency check`` reads an export (the same
    limits, the same text normalisation); rows without a usable text or id, or with a
    repeated id, are set aside by reason."""
    if not path.exists():
        raise DataError(INPUT_NOT_FOUND, file=path.name)
    if not path.is_file():
        raise DataError(INPUT_NOT_A_FILE, file=path.name)
    out = Adverts()
    seen: set[str] = set()
    for record, line, rec in read_records(path, name=path.name, required=SCORE_COLUMNS):
        text, text_reason = clean_text(rec.get("text"))
        advert_id, id_reason = clean_id(rec.get("advert_id"))
        reason = text_reason or id_reason or (DUPLICATE_ID if advert_id in seen else None)
        if reason is not None:
            out.set_aside[reason] += 1
            continue
        seen.add(advert_id)
        out.ids.append(advert_id)
        out.texts.append(text)
        out.rows.append(record if line is None else line)
    if not out.texts:
        raise DataError(NO_ADVERTS, file=path.name, counts=dict(out.set_aside))
    return out


# --- explanations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Phrase:
    text: str
    start: int | None  # character offsets in the advert as given; None if unmappable
    end: int | None
    contribution: float  # to the logit
    category: str

    def to_json(self) -> dict[str, Any]:
        return {"phrase": self.text, "start": self.start, "end": self.end,
                "contribution": round(self.contribution, 6), "category": self.category}


def top_phrases(text: str, toks: list[str], spans: list[tuple[int, int] | None],
                per_token: np.ndarray, k: int = TOP_PHRASES) -> list[Phrase]:
    """The ``k`` strongest runs of adjacent words pushing the score up.

    Greedy: seed at the word with the largest positive share, extend left or right over
    neighbouring words with a positive share (up to MAX_PHRASE_WORDS), repeat.
    """
    is_word = [t[0].isalnum() or t[0] == "_" for t in toks]
    used = [not w for w in is_word]
    phrases: list[Phrase] = []
    order = np.argsort(-per_token, kind="stable")
    for seed in order.tolist():
        if len(phrases) == k or per_token[seed] <= 0:
            break
        if used[seed]:
            continue
        lo = hi = seed
        while hi - lo + 1 < MAX_PHRASE_WORDS:
            left = lo - 1 if lo > 0 and not used[lo - 1] and per_token[lo - 1] > 0 else None
            right = hi + 1 if hi + 1 < len(toks) and not used[hi + 1] and \
                per_token[hi + 1] > 0 else None
            if left is None and right is None:
                break
            if right is None or (left is not None and per_token[left] >= per_token[right]):
                lo = left if left is not None else lo
            else:
                hi = right
        for i in range(lo, hi + 1):
            used[i] = True
        first, last = spans[lo], spans[hi]
        if first is not None and last is not None:
            start, end = first[0], last[1]
            shown = text[start:end]
        else:
            start = end = None
            shown = " ".join(toks[lo:hi + 1])
        phrases.append(Phrase(shown, start, end, float(per_token[lo:hi + 1].sum()),
                              categorize(shown)))
    return sorted(phrases, key=lambda p: -p.contribution)


# --- reading any task's records -----------------------------------------------------------

@dataclass
class ToScore:
    """The records of a file to score, as the task takes them, in file order."""

    noun: str  # what one record is: "advert", "conversation"
    id_column: str
    ids: list[str]
    records: list[Any]
    rows: list[int]  # line (CSV/JSONL) or record (Parquet) numbers
    set_aside: Counter[str]


def noun_of(task: Task) -> str:
    """What one of the task's records is called, from its id column ("conversation_id")."""
    column = task.record_schema.id
    return "record" if column is None else column.name.removesuffix("_id")


def read_to_score(path: Path, task: Task) -> ToScore:
    """The file's records through the task's record schema, with the export reader's limits,
    normalisation and quarantine. Adverts are read exactly as before (``read_adverts``: only
    the id and text columns); any other schema through federation.data's reader of files
    without labels (``read_unlabelled``: a label column is neither needed nor read)."""
    if task.record_schema is ADVERT_RECORDS:
        adverts = read_adverts(path)
        return ToScore("advert", "advert_id", adverts.ids, list(adverts.texts), adverts.rows,
                       adverts.set_aside)
    if not path.exists():
        raise DataError(INPUT_NOT_FOUND, file=path.name)
    if not path.is_file():
        raise DataError(INPUT_NOT_A_FILE, file=path.name)
    table = read_unlabelled(path, task.record_schema)
    records = task.records(table)
    column = task.record_schema.id
    return ToScore(noun_of(task), "record" if column is None else column.name,
                   list(table.ids), records, _record_rows(table), Counter(table.rejected))


def _record_rows(table: Any) -> list[int]:
    """Each usable record's number in its file (1-based, as errors and the quarantine report
    count records)."""
    rows = getattr(table, "rows", None)
    if rows is not None:
        return [int(r) for r in rows]
    set_aside = sorted(r.record for r in table.quarantine)
    out: list[int] = []
    record, k = 0, 0
    while len(out) < len(table.ids):
        record += 1
        if k < len(set_aside) and set_aside[k] == record:
            k += 1
            continue
        out.append(record)
    return out


# --- explanations of units (messages) -------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    """A lexicon hit in one unit: its indicator category and where it is in the unit."""

    category: str
    phrase: str
    start: int
    end: int

    def to_json(self) -> dict[str, Any]:
        return {"category": self.category, "phrase": self.phrase, "start": self.start,
                "end": self.end}


@dataclass(frozen=True)
class UnitReason:
    """One unit (a message) that raised the score: where it is, who sent it, its share of
    the logit, its text and its lexicon hits."""

    position: int  # 0-based, in the record's order
    role: str | None
    share: float
    text: str
    indicators: tuple[Hit, ...]

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "role": self.role,
                "share": round(self.share, 6), "text": self.text,
                "indicators": [h.to_json() for h in self.indicators]}

    def brief(self) -> str:
        hits = ", ".join(f"{h.category}: \"{h.phrase}\"" for h in self.indicators)
        return (f"#{self.position} {self.role or '-'} {self.share:+.3f}"
                + (f" [{hits}]" if hits else " [no lexicon hit]"))


def top_units(record: Any, e: Explanation, k: int = TOP_UNITS) -> list[UnitReason]:
    """The ``k`` units with the largest positive shares, largest first (ties: earlier)."""
    order = np.argsort(-np.asarray(e.shares, dtype=np.float64), kind="stable")
    out: list[UnitReason] = []
    for i in order.tolist()[:k]:
        share = float(e.shares[i])
        if share <= 0:
            break
        text = e.units[i]
        found = e.indicators[i] if i < len(e.indicators) else ()
        role = getattr(record[i], "role", None) if isinstance(record, Sequence) else None
        out.append(UnitReason(i, None if role is None else str(role), share, text,
                              tuple(Hit(c, text[a:b], a, b) for c, a, b in found)))
    return out


# --- scoring ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoredRecord:
    record_id: str
    row: int
    score: float  # the model's logit
    probability: float
    above_threshold: bool
    phrases: list[Phrase]  # a text record (an advert): its top phrases
    units: list[UnitReason] = field(default_factory=list)  # any other: its top units

    @property
    def advert_id(self) -> str:
        return self.record_id


ScoredAdvert = ScoredRecord  # the name callers of the advert-only scorer knew

SELF_CHECK_EVERY = 97  # records between checks of the explainer's features against the task's
DENSE_BATCH_VALUES = 1 << 25  # float32 values per dense batch (128 MiB), whatever the width


def score_texts(bundle: VerifiedBundle, texts: Sequence[str], ids: Sequence[str],
                rows: Sequence[int], *, threshold: float, calibration: Calibration = NONE,
                batch: int = 2048) -> list[ScoredRecord]:
    """Score and explain adverts (texts) with a verified bundle: ``score_records``."""
    return score_records(bundle, texts, ids, rows, threshold=threshold,
                         calibration=calibration, batch=batch)


def score_records(bundle: VerifiedBundle, records: Sequence[Any], ids: Sequence[str],
                  rows: Sequence[int], *, threshold: float, calibration: Calibration = NONE,
                  batch: int = 2048) -> list[ScoredRecord]:
    """Score and explain records (as the bundle's task takes them) with a verified bundle.

    The score is the bundle's model applied to the explainer's feature rows; every record's
    shares are checked to add up to that logit, and every SELF_CHECK_EVERY-th record's row
    is compared with the task's own featuriser, so reasons never drift from the score.
    """
    task, model = bundle.load_model()
    explainer = task.explainer(model)
    a, b = (calibration.a, calibration.b) if calibration.method != "none" \
        else bundle.calibration
    batch = max(1, min(batch, DENSE_BATCH_VALUES // max(1, explainer.width)))
    out: list[ScoredRecord] = []
    for lo in range(0, len(records), batch):
        chunk = list(records[lo:lo + batch])
        explained = [explainer.explain(record) for record in chunk]
        dense = np.zeros((len(chunk), explainer.width), dtype=np.float32)
        for j, e in enumerate(explained):
            if e.features:
                dense[j, list(e.features)] = list(e.features.values())
            if (lo + j) % SELF_CHECK_EVERY == 0:
                _check_features(task, chunk[j], dense[j], rows[lo + j])
        with torch.no_grad():
            logits = model(torch.from_numpy(dense)).numpy().astype(np.float64).reshape(-1)
        for j, (record, e) in enumerate(zip(chunk, explained, strict=True)):
            logit = float(logits[j])
            _check_shares(explainer, e.shares, logit, rows[lo + j])
            p = 1.0 / (1.0 + math.exp(-(a * logit + b)))
            if isinstance(record, str):
                phrases, units = top_phrases(record, e.units, e.spans, e.shares), []
            else:
                phrases, units = [], top_units(record, e)
            out.append(ScoredRecord(ids[lo + j], rows[lo + j], logit, p, p >= threshold,
                                    phrases, units))
    return out


def _check_shares(explainer: Explainer, shares: np.ndarray, logit: float, row: int) -> None:
    total = explainer.bias + shares.sum()
    if abs(total - logit) > 1e-3 * max(1.0, abs(logit)):
        raise TaskError(
            f"record at row {row}: explanation shares add to {total:.5f} but the model's "
            f"logit is {logit:.5f}; refusing to show reasons that do not match the score")


def _check_features(task: Task, record: Any, row_values: np.ndarray, row: int) -> None:
    reference = task.featurize([record]).dense()[0]
    if not np.allclose(reference, row_values, atol=1e-5):
        raise TaskError(
            f"record at row {row}: the explainer's features differ from the model's "
            "featuriser (a featuriser change the explainer did not follow); refusing to show "
            "reasons that do not match the score")


def _render_results(out: Path, scored: list[ScoredRecord], *, model_version: str,
                    threshold: float, calibration: str, id_column: str = "advert_id",
                    units: str = "") -> bytes:
    """The results file's bytes (CSV for ``.csv``, else JSONL), made in memory before the
    consultation is logged, so that nothing but the write itself can fail after it.
    ``units`` names the explanation column of a task whose records are not one text
    ("top_messages"); adverts have their ``top_phrases``, as always."""
    handle = io.StringIO(newline="")
    reasons_column = f"top_{units}" if units else "top_phrases"
    if out.suffix.lower() == ".csv":
        writer = csv.writer(handle)
        writer.writerow([id_column, "row", "score", "probability", "calibration",
                         "threshold", "above_threshold", "model_version", reasons_column])
        for s in scored:
            reasons = "; ".join(u.brief() for u in s.units) if units else "; ".join(
                f"{p.text} [{p.category} {p.contribution:+.3f}]" for p in s.phrases)
            writer.writerow([s.record_id, s.row, f"{s.score:.6f}", f"{s.probability:.6f}",
                             calibration, threshold, s.above_threshold, model_version,
                             reasons])
    else:
        for s in scored:
            handle.write(json.dumps({
                id_column: s.record_id, "row": s.row, "score": round(s.score, 6),
                "probability": round(s.probability, 6), "calibration": calibration,
                "threshold": threshold,
                "above_threshold": s.above_threshold, "model_version": model_version,
                reasons_column: [u.to_json() for u in s.units] if units
                else [p.to_json() for p in s.phrases],
            }, ensure_ascii=False) + "\n")
    return handle.getvalue().encode("utf-8")


# --- the threshold ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    """The threshold a consultation flags at, on the probability it shows, and why."""

    value: float
    source: str  # "analyst", "release card" or "task default"
    why: str


def choose_threshold(bundle: VerifiedBundle, task: Task, explicit: float | None,
                     cal: Calibration) -> Threshold:
    """``--threshold`` if given; else the card's operating point, moved onto this agency's
    calibrated probability when it has one (the point is a logit: the same records are
    flagged either way); else the task's default, saying why."""
    if explicit is not None:
        return Threshold(explicit, "analyst", "set with --threshold")
    op = bundle.card.get("operating_point")
    logit = op.get("logit") if isinstance(op, dict) else None
    if isinstance(op, dict) and isinstance(logit, int | float) and math.isfinite(logit):
        a, b = (cal.a, cal.b) if cal.method != "none" else bundle.calibration
        if a <= 0:
            raise ConfigError(["this agency's calibration for the model reverses its ranking "
                               f"(slope {a:.3g}), so the release card's operating point "
                               "cannot be carried over. Fix: pass --threshold, or fit the "
                               "calibration again on a larger labelled export"],
                              source="heroes agency score")
        value = 1.0 / (1.0 + math.exp(-(a * float(logit) + b)))
        figures = ", ".join(f"{name} {op[key]:.3f}" for name, key in (
            ("precision", "pooled_precision"), ("recall", "pooled_recall"))
            if isinstance(op.get(key), int | float))
        moved = "" if cal.method == "none" else \
            " (its logit, on this agency's calibrated probability)"
        return Threshold(value, "release card",
                         f"the release card's operating point{moved}: "
                         f"{op.get('rule', 'recorded by the consortium')}, round "
                         f"{op.get('round')}, computed from secure sums of every agency's "
                         f"score histograms, no agency's own figures ({figures} there)")
    why_none = op.get("why_none") if isinstance(op, dict) else None
    card = (f"its release card records no operating point ({why_none})" if why_none
            else "its release card has no operating point (released by an older heroes-fl)")
    return Threshold(task.default_threshold, "task default",
                     f"the task's default: {card}; a DP-trained model's probabilities are "
                     "not calibrated, so this may flag few records: set --threshold, or ask "
                     "the consortium for a release that records one")


def check_output(out: Path, *, input_path: Path, state_dir: Path) -> None:
    """Refuse, before anything is read or logged, a results path that would lose data: the
    input itself (same path, a symbolic or hard link to it: same device and inode), the
    consultation log, or any file that already exists (an earlier consultation's results
    that its log entry points at). Also refuse a folder that cannot take the file.
    A ConfigError (the --out option), exit 2."""
    source = "heroes agency score --out"
    fix = "Fix: choose a new file name for --out (results are never written over a file)"
    if os.path.lexists(out):
        try:
            same = out.exists() and input_path.exists() and os.path.samefile(out, input_path)
        except OSError:
            same = False
        if same:
            raise ConfigError([f"{out} is the input file itself (the same file, or a link to "
                               "it): writing the results there would destroy the adverts. "
                               + fix], source=source)
        what = "a folder" if out.is_dir() else "a link" if out.is_symlink() else "a file"
        raise ConfigError([f"{out} is {what} that already exists; refusing to replace it. "
                           + fix], source=source)
    if _same_place(out, state_dir / CONSULTATION_LOG):
        raise ConfigError([f"{out} is the consultation log. " + fix], source=source)
    parent = next((p for p in (out.parent, *out.parent.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError([f"{out.parent} cannot be written by this user. Fix: give a --out "
                           "in a folder you can write to"], source=source)


def _same_place(a: Path, b: Path) -> bool:
    """Whether two paths (either may not exist yet) name the same file."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def log_consultation(state_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append one consultation to the node's log (0600, in a 0700 folder when this makes
    them), chained to the previous entry's hash, under a lock so that two analysts scoring
    at once cannot fork the chain. Raises DeploymentError when the log cannot take the
    entry; the log is then as it was (a partly written line is cut off again)."""
    path = state_dir / CONSULTATION_LOG
    fix = (f"make {path} a regular file the node's user can append to, in a folder it can "
           "write, then score again; no results file was written")

    def refused(what: str, exc: BaseException | None = None) -> DeploymentError:
        why = "" if exc is None else f" ({getattr(exc, 'strerror', None) or type(exc).__name__})"
        return DeploymentError(f"{path}: {what}{why}. Fix: {fix}")

    try:
        private_dir(state_dir)
        fd = open_private(path, os.O_RDWR | os.O_APPEND)
    except OSError as exc:
        raise refused("the consultation log cannot be opened", exc) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refused("the consultation log is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor is closed
        size = os.fstat(fd).st_size
        raw = b""
        while len(raw) < size:
            chunk = os.pread(fd, size - len(raw), len(raw))
            if not chunk:
                break
            raw += chunk
        text = raw.decode("utf-8")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        prev = hashlib.sha256(lines[-1].encode("utf-8")).hexdigest() if lines else "0" * 64
        record = {"seq": len(lines), **entry, "prev_sha256": prev}
        data = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):  # no torn line for the next entry to chain to
                os.ftruncate(fd, size)
            raise
    except (OSError, UnicodeDecodeError) as exc:
        raise refused("the consultation could not be logged", exc) from None
    finally:
        os.close(fd)
    return record


@dataclass(frozen=True)
class ScoreReport:
    bundle: VerifiedBundle
    scored: list[ScoredRecord]
    set_aside: dict[str, int]
    out: Path
    log_entry: dict[str, Any]
    calibration: Calibration = NONE
    threshold: Threshold = Threshold(0.5, "task default", "")
    noun: str = "advert"


def score_file(*, model: Path, input_path: Path, consortium_key: Path, purpose: str,
               state_dir: Path, analyst: str | None = None, threshold: float | None = None,
               out: Path | None = None, calibrate_with: Path | None = None) -> ScoreReport:
    """Verify, read, score, explain, log, write: ``heroes agency score`` without the printing.

    Nothing is lost whatever fails: the results path is checked first (never the input,
    the log or any existing file); the consultation is logged before the results are
    written, so results without a log entry cannot exist; the results appear whole or not
    at all (written beside, then linked into place). Without a ``threshold``, the release
    card's operating point applies, or for a card without one the task's default
    (``choose_threshold``)."""
    if not purpose.strip():
        raise ConfigError(["the purpose of this consultation is empty. Fix: state it with "
                           "--purpose, e.g. --purpose 'case 2026/114: review of seized "
                           "adverts'"], source="heroes agency score --purpose")
    if threshold is not None and not 0.0 <= threshold <= 1.0:  # also refuses NaN
        raise ConfigError([f"--threshold {threshold} is not a probability. Fix: pass a value "
                           "between 0 and 1, e.g. --threshold 0.5"],
                          source="heroes agency score --threshold")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = out if out is not None else state_dir / "scores" / f"{input_path.stem}-{stamp}.jsonl"
    check_output(target, input_path=input_path, state_dir=state_dir)
    bundle = verify_bundle(load_public_key(consortium_key), model)
    task = bundle.load_model()[0]
    data = read_to_score(input_path, task)
    input_sha256 = file_sha256(input_path)  # the bytes that were read, before any output
    if calibrate_with is not None:
        calibration.save(state_dir, bundle.model_version, fit_calibration(bundle, calibrate_with))
    cal = calibration.load(state_dir, bundle.model_version)
    chosen = choose_threshold(bundle, task, threshold, cal)
    scored = score_records(bundle, data.records, data.ids, data.rows, threshold=chosen.value,
                           calibration=cal)
    units = "" if task.record_schema is ADVERT_RECORDS else "messages" \
        if any(c.type == "messages" for c in task.record_schema.columns) else "units"
    results = _render_results(target, scored, model_version=bundle.model_version,
                              threshold=chosen.value, calibration=cal.method,
                              id_column=data.id_column, units=units)
    check_output(target, input_path=input_path, state_dir=state_dir)  # still free?
    entry = log_consultation(state_dir, {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "analyst": analyst or getpass.getuser(),
        "purpose": purpose.strip(),
        "input": str(input_path.resolve()),
        "input_sha256": input_sha256,
        "task": task.name,
        "model_version": bundle.model_version,
        "bundle_signed_by": bundle.signer,
        f"{data.noun}s_scored": len(scored),
        f"{data.noun}s_set_aside": sum(data.set_aside.values()),
        "above_threshold": sum(s.above_threshold for s in scored),
        "threshold": chosen.value,
        "threshold_source": chosen.source,
        "threshold_why": chosen.why,
        "calibration": cal.describe(),
        "output": str(target.resolve()),
    })
    try:
        write_atomic(target, results, overwrite=False)
    except OSError as exc:
        raise DeploymentError(
            f"{target}: the results could not be written "
            f"({exc.strerror or type(exc).__name__}); the consultation is logged as entry "
            f"{entry['seq']} of {state_dir / CONSULTATION_LOG}. Fix: free space or choose "
            "another --out, and score again (that is logged as a new consultation)") from None
    return ScoreReport(bundle, scored, dict(data.set_aside), target, entry, cal, chosen,
                       data.noun)


def fit_calibration(bundle: VerifiedBundle, data_dir: Path) -> Calibration:
    """Platt scaling on this agency's labelled training export (see clients/calibration.py)."""
    task, model = bundle.load_model()
    data = task.load(data_dir)
    records = task.records(data.train)
    logits = []
    with torch.no_grad():
        for lo in range(0, len(records), 2048):
            dense = task.featurize(records[lo:lo + 2048]).dense()
            logits.append(model(torch.from_numpy(dense)).numpy().astype(np.float64))
    labels = np.asarray(data.train.positive, dtype=np.float64)
    if labels.sum() == 0 or labels.sum() == labels.size:
        raise DataError(Rule("the training split has only one class; calibration needs both",
                             "calibrate on an export with positives and negatives"),
                        file=data.train.name)
    return calibration.fitted(np.concatenate(logits), labels,
                              source=f"{data.agency} training split ({len(records):,} "
                              f"{noun_of(task)}s, {int(labels.sum())} positive)")


def render_report(report: ScoreReport, *, show: int = 10) -> str:
    s = report.scored
    noun = report.noun
    flagged = sorted((x for x in s if x.above_threshold), key=lambda x: -x.probability)
    lines = [
        f"model {report.bundle.model_version} (signature verified: {report.bundle.signer})",
        f"threshold {report.threshold.value:.4g} ({report.threshold.source}): "
        f"{report.threshold.why}",
        f"scored {len(s)} {noun}s; {len(flagged)} at or above the threshold "
        f"{report.log_entry['threshold']}"
        + (f"; set aside {report.set_aside}" if report.set_aside else ""),
    ]
    for x in flagged[:show]:
        if noun != "advert":
            lines.append(f"  {x.record_id}  p={x.probability:.3f}  messages that raised it:")
            lines += [f"    {u.brief()}" for u in x.units] or [
                "    (no message with a positive share)"]
            continue
        reasons = "; ".join(f"\"{p.text}\" ({p.category}, {BY_NAME[p.category].evidence})"
                            if p.category in BY_NAME else f"\"{p.text}\" (unlisted)"
                            for p in x.phrases)
        lines.append(f"  {x.advert_id}  p={x.probability:.3f}  {reasons}")
    if len(flagged) > show:
        lines.append(f"  ... {len(flagged) - show} more in the results file")
    lines += [f"results: {report.out}",
              f"probabilities: calibration {report.calibration.describe()}",
              f"consultation logged as entry {report.log_entry['seq']} "
              f"({report.log_entry['analyst']}, purpose recorded)",
              LEAD_NOT_DECISION if noun == "advert"
              else LEAD_NOT_DECISION_UNITS.format(noun=noun)]
    return "\n".join(lines)
