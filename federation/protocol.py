"""The wire contract between agency nodes and the aggregator, and the run summary file.

Every name two processes must agree on lives here, once: the records of a Flower Message's
content (``Record``), the keys inside them, the node statuses (``Status``), the secure-
aggregation stages (``Stage``), the keys of each stage's values (``SecAggKey``) and the
figures nodes send and the server records (``Metric``). The clients/ and server/ packages
read and write Messages with these names; simulation/ and the release tools read the run
summary (``RunSummary``, ``metrics.json``) through ``RunSummary.read`` only.

A key that should be there and is not is a ProtocolError that names the key, where it was
looked for and the fix; nothing here falls back to a default. A field that may legitimately
be absent is typed ``X | None`` and written as null.

Pure Python on purpose (no Flower, no torch): federation/ is the layer both sides import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.errors import ProtocolError
from federation.files import write_atomic

if TYPE_CHECKING:
    from federation.config import PrivacySettings


class Record(StrEnum):
    """Names of the records in a Message's content (a Flower RecordDict)."""

    AGENCY = "agency"  # config: who replied, its status and the reason
    CONFIG = "config"  # config: the server's per-round settings (SERVER_ROUND, ...)
    ARRAYS = "arrays"  # arrays: the global model sent, or a node's trained model
    METRICS = "metrics"  # metrics: what FedAvg weighs by, or a secure round's pooled result
    SHARED = "shared"  # config: per-agency figures its policy lets leave in the clear
    LEDGER = "ledger"  # config: the node's privacy-ledger head (attestation)
    OBSERVED = "observed"  # config: what the server counted of a secure round's uploads
    SECAGG = "secagg"  # config/arrays: one secure-aggregation stage's values
    SECAGG_NEXT = "secagg_next"  # config: the next round's set-up, riding on the last stage


class AgencyKey(StrEnum):
    """Keys of the ``agency`` record every node reply carries."""

    AGENCY = "agency"
    STATUS = "status"
    REASON = "reason"


#: Key of the server round in the ``config`` record (Flower's own spelling).
SERVER_ROUND = "server-round"
#: Key of FedProx's proximal weight in the ``config`` record (Flower's own spelling).
PROXIMAL_MU = "proximal-mu"
#: Key of the round in the ``secagg_next`` record: the round that set-up belongs to.
NEXT_ROUND = "server_round"
#: Marks a secure round's pooled result in a metric record (server/secagg.py).
SUM_KEY = "secure_sum"
#: Name of the masked vector in a masked-input stage's ``secagg`` array record.
MASKED_ARRAY = "masked"
#: Key of the bytes a node uploaded in the ``observed`` record.
BYTES_SENT = "bytes_sent"


class Status(StrEnum):
    """What became of one node in one round trip."""

    OK = "ok"
    REFUSED = "refused"  # the node declined (privacy budget, policy)
    WITHHELD = "withheld"  # the node evaluated but its policy keeps the figures at home
    FAILED = "failed"  # the node replied with an error
    MISSING = "missing"  # the node was sampled but did not reply in time
    REJECTED = "rejected"  # the server refused the reply (validation, ledger head)

    @classmethod
    def parse(cls, text: object, *, where: str) -> Status:
        """A status as it arrived; anything else names the rule, never the value."""
        if isinstance(text, str):
            for status in cls:
                if status.value == text:
                    return status
        raise ProtocolError(f"the status in {where} is not one of "
                            f"{', '.join(s.value for s in cls)}; a node and the aggregator "
                            "must run the same heroes-fl protocol version")


class Stage(StrEnum):
    """Secure-aggregation (SecAgg+) stages: the message action after ``train.``/``evaluate.``."""

    SETUP = "secagg_setup"
    SHARE = "secagg_share"
    MASKED = "secagg_masked"
    CONSISTENCY = "secagg_consistency"
    UNMASK = "secagg_unmask"


class SecAggKey(StrEnum):
    """Keys of the values inside a ``secagg`` record (and the ``secagg_next`` set-up), by
    stage and direction. The node takes exactly these from the server (clients/secagg.py
    refuses any other key: a server may not add weights or thresholds)."""

    # set-up, server to node (also the ``secagg_next`` record, with NEXT_ROUND)
    NONCE = "nonce"
    SUMS = "sums"
    # set-up, node to server: its signed public keys
    AGENCY = "agency"
    C_PK = "c_pk"
    S_PKS = "s_pks"  # one per sum, in the set-up's order
    SIGNATURE = "signature"  # also the consistency reply: over the survivor set
    # shares, server to node: every node id of the session (packed), and the signed keys of
    # the receiving node's neighbourhood (itself included): O(neighbours) keys per node
    SESSION = "session"
    IDS = "ids"  # also the unmask reply: whose shares it reveals
    AGENCIES = "agencies"
    C_PKS = "c_pks"
    SIGNATURES = "signatures"  # also the unmask request: the survivors' signatures
    # shares, node to server: sealed bundles and whom each is for
    TO = "to"
    BOXES = "boxes"  # also the masked-input request: the bundles addressed to the node
    # masked input, server to node
    FROM = "from"
    # consistency, server to node: one bit per node of the session (its sorted ids)
    SURVIVORS = "survivors"
    # unmask, server to node
    SIGNERS = "signers"
    # unmask, node to server: the revealed shares and the node's share coordinate
    KINDS = "kinds"
    SHARES = "shares"
    X = "x"


class ShareKind(StrEnum):
    """What a revealed share is a share of (the unmask reply's ``kinds``): a survivor's self-
    mask seed, or a dropped node's mask key seed. Never both for one node."""

    SELF_MASK = "b"
    MASK_KEY = "s"


#: The keys of each stage's request, server to node: exactly these, no more (the masked-
#: input request of an evaluation that continues a training session is empty).
SECAGG_REQUEST: dict[Stage, frozenset[SecAggKey]] = {
    Stage.SETUP: frozenset({SecAggKey.NONCE, SecAggKey.SUMS}),
    Stage.SHARE: frozenset({SecAggKey.SESSION, SecAggKey.IDS, SecAggKey.AGENCIES, SecAggKey.C_PKS,
                            SecAggKey.S_PKS, SecAggKey.SIGNATURES}),
    Stage.MASKED: frozenset({SecAggKey.FROM, SecAggKey.BOXES}),
    Stage.CONSISTENCY: frozenset({SecAggKey.SURVIVORS}),
    Stage.UNMASK: frozenset({SecAggKey.SIGNERS, SecAggKey.SIGNATURES}),
}

def secagg_value(values: Mapping[str, Any], key: SecAggKey, *, where: str) -> Any:
    """``values[key]`` of a secure-aggregation stage, or a ProtocolError naming the key and
    the message it is missing from (a KeyError would name neither)."""
    if key not in values:
        raise ProtocolError(f"{where} lacks {str(key)!r}; the node and the aggregator must "
                            "run the same heroes-fl protocol version")
    return values[key]


class Metric(StrEnum):
    """Figures a node sends or keeps, and the aggregates the server records."""

    NUM_EXAMPLES = "num-examples"  # FedAvg's weight key (Flower's default spelling)
    TRAIN_LOSS = "train_loss"
    LOSS = "loss"
    EPSILON = "epsilon"
    DELTA = "delta"
    RUN_EPSILON = "run_epsilon"
    RUN_DELTA = "run_delta"
    BUDGET = "budget"
    BUDGET_REMAINING = "budget_remaining"
    DATASET_EPSILON = "dataset_epsilon"
    EPSILON_IF_TRAINED = "epsilon_if_trained"
    NOISE_MULTIPLIER = "noise_multiplier"
    SAMPLE_RATE = "sample_rate"
    STEPS = "steps"
    ROWS_SET_ASIDE = "rows_set_aside"
    SECAGG_CLIPPED = "secagg_clipped"
    ROC_AUC = "roc_auc"
    PR_AUC = "pr_auc"
    BRIER = "brier"
    BYTES_SENT = BYTES_SENT
    SECURE_SUM = SUM_KEY
    UPDATE_NORM = "update_norm"
    KRUM_SELECTED = "krum_selected"
    # the server's aggregates
    MAX_EPSILON = "max_epsilon"
    AGENCIES = "agencies"
    EPSILON_SHARED_BY = "epsilon_shared_by"
    EXAMPLES = "examples"
    AGENCIES_IN_SUM = "agencies_in_sum"
    WORST_ROC_AUC = "worst_roc_auc"
    AGENCIES_WITH_ROC_AUC = "agencies_with_roc_auc"
    # a secure evaluation's operating point, from the summed histograms
    # (federation.metrics.operating_point; the release card's default threshold)
    OPERATING_LOGIT = "operating_logit"
    OPERATING_PRECISION = "operating_precision"
    OPERATING_RECALL = "operating_recall"
    OPERATING_F1 = "operating_f1"
    OPERATING_FLAGGED_SHARE = "operating_flagged_share"


# --- reading JSON strictly ------------------------------------------------------------------

def need(data: object, key: str, *, where: str) -> Any:
    """``data[key]``, or a ProtocolError naming the key, where it was looked for and the fix."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"{where} is not a JSON object; it was not written by this "
                            "heroes-fl version: rerun the step that wrote it")
    if key not in data:
        raise ProtocolError(f"{where} lacks {str(key)!r}; it was not written by this heroes-fl "
                            "version (or was edited): rerun the step that wrote it")
    return data[key]


def figure(table: Mapping[str, float] | None, key: str, *, where: str) -> float | None:
    """A figure of a part of the summary the run may not have had: None where the part is
    null (no such part) or the figure is, a ProtocolError naming the key where the part
    lacks it."""
    if table is None:
        return None
    value = need(table, key, where=where)
    if value is None:  # null: a figure the run left undefined
        return None
    return float(_typed(value, (int, float), key, where))


def _typed(value: object, kind: type | tuple[type, ...], key: str, where: str) -> Any:
    """``value`` if it is of ``kind``; JSON true/false (Python bools, which are ints too)
    only where a bool is asked for."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ProtocolError(f"{str(key)!r} in {where} is not a {names}; rerun the step that "
                            "wrote it")
    return value


def _number(data: object, key: str, where: str, *, optional: bool = False) -> float | None:
    value = need(data, key, where=where)
    if value is None and optional:
        return None
    return float(_typed(value, (int, float), key, where))


def _figures(data: object, key: str, where: str) -> dict[str, float]:
    """A figure table as kept in memory: null (an undefined figure) reads back as NaN."""
    table = _typed(need(data, key, where=where), dict, key, where)
    return {str(k): math.nan if v is None else float(_typed(v, (int, float), k, where))
            for k, v in table.items()}


def _nulls(figures: Mapping[str, float]) -> dict[str, float | None]:
    """NaN is not JSON: an undefined figure is written as null. Keys become plain str (a
    Metric is a str subclass, which a weights-only torch.load of a checkpoint refuses)."""
    return {str(k): None if isinstance(v, float) and math.isnan(v) else float(v)
            for k, v in figures.items()}


# --- the round log --------------------------------------------------------------------------

@dataclass
class NodeOutcome:
    """One sampled node in one round trip, as the server recorded it."""

    node_id: int
    agency: str
    status: Status
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A status spelt as text (a test, an older caller) must still be one of Status.
        self.status = Status.parse(self.status, where=f"node {self.node_id}'s outcome")

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "agency": self.agency, "status": self.status.value,
                "reason": self.reason, "metrics": _nulls(self.metrics)}

    @classmethod
    def from_json(cls, data: object, *, where: str) -> NodeOutcome:
        return cls(node_id=int(_typed(need(data, "node_id", where=where), int, "node_id", where)),
                   agency=str(_typed(need(data, "agency", where=where), str, "agency", where)),
                   status=Status.parse(need(data, "status", where=where), where=where),
                   reason=str(_typed(need(data, "reason", where=where), str, "reason", where)),
                   metrics=_figures(data, "metrics", where))


@dataclass
class RoundRecord:
    """One round as the server saw it: each sampled node's outcome and the aggregates."""

    round: int
    train: list[NodeOutcome] = field(default_factory=list)
    evaluate: list[NodeOutcome] = field(default_factory=list)
    train_aggregate: dict[str, float] = field(default_factory=dict)
    evaluate_aggregate: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = math.nan  # configure_train to the end of evaluation

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round,
                "train": [o.to_json() for o in self.train],
                "evaluate": [o.to_json() for o in self.evaluate],
                "train_aggregate": _nulls(self.train_aggregate),
                "evaluate_aggregate": _nulls(self.evaluate_aggregate),
                "wall_seconds": None if math.isnan(self.wall_seconds) else self.wall_seconds}

    @classmethod
    def from_json(cls, data: object, *, where: str) -> RoundRecord:
        n = int(_typed(need(data, "round", where=where), int, "round", where))
        at = f"round {n} of {where}"

        def nodes(kind: str) -> list[NodeOutcome]:
            rows = _typed(need(data, kind, where=at), list, kind, at)
            return [NodeOutcome.from_json(o, where=f"a {kind} outcome of {at}") for o in rows]

        wall = _number(data, "wall_seconds", at, optional=True)
        return cls(round=n, train=nodes("train"), evaluate=nodes("evaluate"),
                   train_aggregate=_figures(data, "train_aggregate", at),
                   evaluate_aggregate=_figures(data, "evaluate_aggregate", at),
                   wall_seconds=math.nan if wall is None else wall)


@dataclass(frozen=True)
class LocalEntry:
    """One entry of an agency's own per-round record (clients/local_metrics.py), as the
    summary's ``agency_rounds`` keeps it for plots. Its figure table holds what the agency
    computed that round: a figure it did not compute is absent, not a default."""

    round: int
    kind: str  # "train" or "evaluate"
    status: str  # a Status value, as the node wrote it
    figures: dict[str, float]

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @classmethod
    def from_json(cls, data: object, *, where: str) -> LocalEntry:
        return cls(round=int(_typed(need(data, "round", where=where), int, "round", where)),
                   kind=str(_typed(need(data, "kind", where=where), str, "kind", where)),
                   status=str(_typed(need(data, "status", where=where), str, "status", where)),
                   figures=_figures(data, "figures", where))


# --- the run summary ------------------------------------------------------------------------

SUMMARY_VERSION = 1
SUMMARY_FILE = "metrics.json"


@dataclass(frozen=True)
class PrivacySummary:
    """The run's privacy target as every summary states it."""

    enabled: bool
    target_epsilon: float | None
    target_delta: float | None
    unit: str
    accountant: str

    @classmethod
    def of(cls, p: PrivacySettings) -> PrivacySummary:
        """The summary of a run's privacy settings, in the unit every epsilon is about."""
        return cls(enabled=p.enabled, target_epsilon=p.target_epsilon,
                   target_delta=p.target_delta, unit=PRIVACY_UNIT, accountant=p.accountant)

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "target_epsilon": self.target_epsilon,
                "target_delta": self.target_delta, "unit": self.unit,
                "accountant": self.accountant}

    @classmethod
    def from_json(cls, data: object, *, where: str) -> PrivacySummary:
        at = f"'privacy' of {where}"
        return cls(enabled=bool(_typed(need(data, "enabled", where=at), bool, "enabled", at)),
                   target_epsilon=_number(data, "target_epsilon", at, optional=True),
                   target_delta=_number(data, "target_delta", at, optional=True),
                   unit=str(_typed(need(data, "unit", where=at), str, "unit", at)),
                   accountant=str(_typed(need(data, "accountant", where=at), str,
                                         "accountant", at)))


@dataclass(frozen=True)
class AgencyRow:
    """One agency in a simulation's summary: read from its own state folder (its local
    record and ledger, which a simulation owns) and from the server's round log (the
    outcomes it decided). None where the agency never trained, evaluated or shared."""

    agency: str
    train_examples: int
    test_examples: int
    rounds_trained: int
    epsilon: float | None  # cumulative over every run on its dataset (the ledger)
    delta: float | None
    run_epsilon: float | None  # this run alone
    ledger_epsilon: float | None
    budget_remaining: float | None
    noise_multiplier: float | None
    local_roc_auc: float | None
    local_oracle_roc_auc: float | None
    rows_set_aside: int
    failed_rounds: int
    rejected_rounds: int
    rejected: str | None  # which rounds the server rejected it in, and the last reason
    stopped: str | None  # from which round it refused, and why
    shared_with_consortium: bool

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: object, *, where: str) -> AgencyRow:
        values: dict[str, Any] = {}
        for name, kind in _AGENCY_KINDS.items():
            value = need(data, name, where=where)
            if kind is float:
                values[name] = _number(data, name, where, optional=True)
            elif kind is str and value is None and name in ("rejected", "stopped"):
                values[name] = None
            else:
                values[name] = _typed(value, kind, name, where)
        return cls(**values)


_AGENCY_KINDS: dict[str, type] = {
    "agency": str, "train_examples": int, "test_examples": int, "rounds_trained": int,
    "epsilon": float, "delta": float, "run_epsilon": float, "ledger_epsilon": float,
    "budget_remaining": float, "noise_multiplier": float, "local_roc_auc": float,
    "local_oracle_roc_auc": float, "rows_set_aside": int, "failed_rounds": int,
    "rejected_rounds": int, "rejected": str, "stopped": str, "shared_with_consortium": bool,
}


#: The unit every epsilon in heroes-fl is about.
PRIVACY_UNIT = "one advert record in one agency's training export"

JSON = dict[str, Any]


@dataclass
class RunSummary:
    """``metrics.json``: what a run left behind, written by the ServerApp (the round log,
    the simulation fields null) and by ``heroes simulate`` (the same, filled in).

    The agencies' own records, the audit and the baselines are the simulation's own reports,
    kept as JSON objects (their writers own their shape, which varies with the audit's mode
    and each row's status); readers take them strictly (``local_records``, ``gain_rows``,
    ``need``). Every key of the summary itself is required, nulls included.
    """

    rounds: list[RoundRecord]
    wall_seconds: float
    privacy: PrivacySummary
    preset: str | None = None
    seed: int | None = None
    mode: str | None = None
    oracle_roc_auc: float | None = None
    global_metrics: dict[str, float] | None = None  # "global" in the file
    agencies: list[AgencyRow] | None = None
    agency_rounds: dict[str, list[JSON]] | None = None
    consortium_sees: str | None = None
    audit: JSON | None = None
    centralised_baseline: dict[str, float] | None = None
    baselines: JSON | None = None
    version: int = SUMMARY_VERSION

    def to_json(self) -> JSON:
        return {
            "version": self.version,
            "preset": self.preset, "seed": self.seed, "mode": self.mode,
            "privacy": self.privacy.to_json(),
            "oracle_roc_auc": self.oracle_roc_auc,
            "global": self.global_metrics,
            "agencies": (None if self.agencies is None
                         else [a.to_json() for a in self.agencies]),
            "rounds": [r.to_json() for r in self.rounds],
            "agency_rounds": self.agency_rounds,
            "consortium_sees": self.consortium_sees,
            "audit": self.audit,
            "centralised_baseline": self.centralised_baseline,
            "baselines": self.baselines,
            "wall_seconds": self.wall_seconds,
        }

    def local_records(self) -> dict[str, list[LocalEntry]]:
        """Each agency's own per-round record, read strictly; none where the run kept none
        (a ServerApp's summary: the agencies' records are theirs)."""
        where = "'agency_rounds' of the run summary"
        return {agency: [LocalEntry.from_json(e, where=f"an entry of {agency} in {where}")
                         for e in _typed(entries, list, agency, where)]
                for agency, entries in (self.agency_rounds or {}).items()}

    def gain_rows(self) -> list[JSON]:
        """The baselines' per-agency gains (simulation/baselines.py writes them, smallest
        agency first); none where the run had no baselines, an error where they lack it."""
        if self.baselines is None:
            return []
        where = "'baselines' of the run summary"
        rows = _typed(need(self.baselines, "gain", where=where), list, "gain", where)
        return [_typed(r, dict, "gain", where) for r in rows]

    def arm_pooled(self, arm: str) -> dict[str, float]:
        """One baseline arm's pooled test figures, strictly (a run with baselines has every
        arm simulation/baselines.py trains)."""
        where = "'baselines' of the run summary"
        arms = need(self.baselines, "arms", where=where)
        pooled = need(need(arms, arm, where=f"'arms' of {where}"), "pooled",
                      where=f"arm {arm!r} of {where}")
        return dict(_typed(pooled, dict, "pooled", f"arm {arm!r} of {where}"))

    def write(self, path: Path) -> None:
        """Whole or not at all (a reader never sees half a summary), 0600."""
        text = json.dumps(self.to_json(), indent=2, default=_unknown)
        write_atomic(Path(path), text.encode("utf-8"))

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        where = str(path)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"{where} cannot be read as JSON ({type(exc).__name__}); "
                                "rerun the step that wrote it") from None
        return cls.from_json(data, where=where)

    @classmethod
    def from_json(cls, data: object, *, where: str) -> RunSummary:
        version = need(data, "version", where=where)
        if isinstance(version, bool) or version != SUMMARY_VERSION:
            raise ProtocolError(f"'version' of {where} is not {SUMMARY_VERSION}, the run "
                                "summary version this heroes-fl reads; read it with the "
                                "heroes-fl version that wrote it, or rerun the run")

        def opt(key: str, kind: type | tuple[type, ...]) -> Any:
            value = need(data, key, where=where)
            return None if value is None else _typed(value, kind, key, where)

        rows = _typed(need(data, "rounds", where=where), list, "rounds", where)
        seed = opt("seed", int)
        return cls(
            version=SUMMARY_VERSION,
            rounds=[RoundRecord.from_json(r, where=where) for r in rows],
            wall_seconds=float(_typed(need(data, "wall_seconds", where=where), (int, float),
                                      "wall_seconds", where)),
            privacy=PrivacySummary.from_json(need(data, "privacy", where=where), where=where),
            preset=opt("preset", str), seed=None if seed is None else int(seed),
            mode=opt("mode", str),
            oracle_roc_auc=_number(data, "oracle_roc_auc", where, optional=True),
            global_metrics=opt("global", dict),
            agencies=None if (table := opt("agencies", list)) is None else [
                AgencyRow.from_json(a, where=f"an agency row of {where}") for a in table],
            agency_rounds=opt("agency_rounds", dict),
            consortium_sees=opt("consortium_sees", str), audit=opt("audit", dict),
            centralised_baseline=opt("centralised_baseline", dict),
            baselines=opt("baselines", dict),
        )


def _unknown(value: object) -> None:
    """What json cannot write (a numpy scalar's cousin, a path) is written as null, as the
    summary writers always did."""
    return None
